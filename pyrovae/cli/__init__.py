"""The command line: ``pyrovae COMMAND``, one module per group of subcommands.

A thin layer over the library: it parses flags into a :class:`~pyrovae.config.Config`
(explicit flags override ``--config FILE``), calls :func:`pyrovae.fit` and friends,
and turns every failure a user can cause (a :class:`~pyrovae.errors.PyroVAEError`, a file
system that refuses a file, memory that runs out: :func:`~pyrovae.errors.user_message`)
into one message on stderr and exit status 2; Ctrl-C ends it with status 130, and any
other exception, a bug, with one ``internal error`` line and status 1. Every command
takes ``-q`` (log warnings only), ``--no-progress`` (no progress bars; they show only when
stderr is a terminal anyway, see :mod:`pyrovae.progress`) and ``--debug`` (print the
traceback of any error, for a bug report; so does ``PYROVAE_DEBUG=1``).

Subcommands live in :mod:`~pyrovae.cli.training` (train, evaluate, sample, score),
:mod:`~pyrovae.cli.inspection` (inspect, graph, latent, disentanglement) and
:mod:`~pyrovae.cli.applications` (augment, anomaly, interpolate, traverse, arithmetic,
inpaint, impute, denoise); each module has ``add_parsers(sub, common)`` and ``COMMANDS``.

Under ``torchrun`` (``torchrun --nproc-per-node 4 -m pyrovae train ...``) every process runs
the command; rank 0 prints and logs, the other ranks log errors only and show no bars. A
refusal of the configuration, which every rank meets alike, is printed once, by rank 0;
another error that a rank other than 0 meets is printed with its rank.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from pyrovae import progress
from pyrovae.cli import applications, inspection, training
from pyrovae.cli.common import locks_run
from pyrovae.errors import ConfigError, user_message
from pyrovae.inference.training.distributed import launched_rank
from pyrovae.registry import closest

__all__ = ["COMMANDS", "main"]

logger = logging.getLogger("pyrovae")

GROUPS = (training, inspection, applications)

#: subcommand name -> function(args) -> exit status
#: (each locks its run folder while it writes there: :func:`pyrovae.cli.common.locks_run`)
COMMANDS = {
    name: locks_run(command) for group in GROUPS for name, command in group.COMMANDS.items()
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyrovae", description="Variational autoencoders as Pyro programs."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    common.add_argument(
        "--no-progress",
        action="store_true",
        help="hide the progress bars (they show only when stderr is a terminal)",
    )
    common.add_argument(
        "--debug",
        action="store_true",
        help="print the traceback of an error, for a bug report (or set PYROVAE_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_parsers(sub, common)
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; an unknown flag is an error (exit 2) naming the closest flag of its
    subcommand, e.g. ``--num-componets`` -> ``--num-components``."""
    parser = _parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        command = parser._subparsers._group_actions[0].choices[args.command]
        flags = [f for action in command._actions for f in action.option_strings]
        unknown = next((e for e in extras if e.startswith("-")), extras[0])
        hint = closest(unknown.split("=")[0], flags) if unknown.startswith("-") else ""
        print(
            f"pyrovae {args.command}: error: unrecognized arguments: {' '.join(extras)}{hint}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return args


def debugging(args: argparse.Namespace | None = None) -> bool:
    """Whether errors show their traceback: ``--debug``, or ``PYROVAE_DEBUG`` set to
    anything but empty or 0."""
    flag = args is not None and getattr(args, "debug", False)
    return flag or os.environ.get("PYROVAE_DEBUG", "") not in ("", "0")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status: 0, 2 for a user error (with one message),
    130 for Ctrl-C, 1 for a bug (one ``internal error`` line; ``--debug`` shows its
    traceback)."""
    args = _parse(argv)
    rank = launched_rank()  # 0 outside torchrun
    if rank > 0:  # one rank speaks for a data-parallel run
        args.no_progress = True
    if not logging.getLogger().handlers:
        level = logging.WARNING if args.quiet else logging.INFO
        logging.basicConfig(format="%(message)s", level=level if rank == 0 else logging.ERROR)
    who = f"pyrovae {args.command}" + (f" [rank {rank}]" if rank > 0 else "")
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm(), progress.enabled(not args.no_progress):
            return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        if debugging(args):
            traceback.print_exc()
        print(f"\n{who}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # whoever read our output stopped (e.g. `| head`): end quietly, as shell tools do;
        # stdout goes to devnull so the interpreter's final flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:
        if debugging(args):
            traceback.print_exc()
        message = user_message(e)
        if message is None:  # a bug: one line, and the way to its traceback
            detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
            print(
                f"{who}: internal error: {type(e).__name__}: {detail} (rerun with --debug "
                "for the traceback and please report it)",
                file=sys.stderr,
            )
            return 1
        # a refusal of the configuration, which every rank meets alike, is printed once
        if rank == 0 or not isinstance(e, ConfigError):
            print(f"{who}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
