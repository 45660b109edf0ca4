"""What the subcommands share: a parser for a command on a run, reading items from a file,
naming output files."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from pyrovae.config import Config, check_seed
from pyrovae.errors import ConfigError, DataError, file_error_message


def seed_value(text: str) -> int:
    """A command's ``--seed``: an integer in the range every seed must be in
    (:func:`pyrovae.config.check_seed`); argparse reports the error."""
    try:
        return check_seed(int(text), "--seed")
    except ValueError as e:  # ConfigError is a ValueError
        message = str(e) if isinstance(e, ConfigError) else f"invalid integer {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def run_parser(
    sub: argparse._SubParsersAction,
    common: argparse.ArgumentParser,
    name: str,
    *,
    seed: bool = True,
    **kwargs: str,
) -> argparse.ArgumentParser:
    """A subcommand on a trained run: ``RUN``, ``--checkpoint``, ``--device``,
    ``--num-threads`` and (with ``seed``) ``--seed``; ``kwargs`` are ``help`` and
    ``description``."""
    parser = sub.add_parser(name, parents=[common], **kwargs)
    parser.add_argument("run", type=Path, help="run folder (or a checkpoint file in it)")
    parser.add_argument(
        "--checkpoint",
        choices=["best", "last"],
        default="best",
        help="a run folder's parameters: best (best.pt, the best epoch on the validation "
        "split, when the run has one; else the last) or last (checkpoint.pt) (default: best)",
    )
    if seed:
        parser.add_argument("--seed", type=seed_value, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--num-threads",
        type=int,
        help="torch CPU threads (default: chosen from the run's network and batch size)",
    )
    return parser


def load_run(args: argparse.Namespace):
    """The run of a command on a run (``RUN``, ``--device``): ``(vae, config, checkpoint)``
    of :func:`pyrovae.run.load_run`, with torch's threads set by the rule training uses
    (:func:`pyrovae.threads.set_threads`) unless ``--num-threads`` is given."""
    from pyrovae.run import load_run
    from pyrovae.threads import set_threads

    if args.num_threads is not None and args.num_threads < 1:  # before reading anything
        raise ConfigError(f"--num-threads must be >= 1, got {args.num_threads}")
    vae, config, checkpoint = load_run(args.run, args.device, args.checkpoint)
    set_threads(args.num_threads, vae, config.optimization["batch_size"])
    return vae, config, checkpoint


def table_encoding(config: Config, run: Path):
    """The :class:`~pyrovae.data.tables.TableEncoding` of a run trained on a table: its
    ``table.json`` (:func:`~pyrovae.data.tables.read_table_run`); for a run written before
    that file existed, derived again from its training file (types, categories, the
    training split's standardisation), which must still give the run's column types."""
    from pyrovae.data import load_dataset
    from pyrovae.data.tables import is_table, read_table_run

    d = config.data
    if not is_table(d["data"]):
        raise ConfigError(
            "this run was not trained on a table (--data FILE.csv or .parquet); its items "
            "come from .npy/.npz files"
        )
    stored = read_table_run(run if run.is_dir() else run.parent)
    if stored is not None:
        return stored[0]
    data = load_dataset(
        path=d["data"],
        column_types=d["column_types"],
        label_column=d["label_column"],
        test_fraction=d["test_fraction"],
        seed=config.run["seed"],
    )
    trained = config.model["likelihood"].get("columns")
    if data.table.column_types != trained:
        raise DataError(
            f"the run's table {d['data']} now gives the column types "
            f"{data.table.column_types!r}, but the run was trained with {trained!r}; "
            "restore the file the run was trained on"
        )
    return data.table


def load_items(path: str | Path, config: Config, run: Path):
    """Every item of a .npy/.npz file in file order (and its labels, if it has them), as a
    run scores them (:func:`~pyrovae.data.load_labeled_items`); the rows of a table encoded
    as the run ``run`` (folder or checkpoint) encoded its training table
    (:func:`table_encoding`)."""
    import torch

    from pyrovae.data import load_dataset, load_labeled_items
    from pyrovae.data.tables import is_table, read_table

    if is_table(path) or is_table(config.data["data"]):
        if not is_table(path):
            raise DataError(f"the run was trained on a table; give a .csv or .parquet, not {path}")
        return table_encoding(config, run).encode(read_table(path), Path(path).name)

    # a dynamic binarization is drawn once, as for a test set
    binarize = "static" if config.data["binarize"] == "dynamic" else config.data["binarize"]
    if Path(path).suffix in (".npy", ".npz"):  # in file order (--num-items: the first N)
        return load_labeled_items(path, binarize=binarize, seed=config.run["seed"])
    # a text file reads the run's vocabulary and length cap (a sentence run)
    text = {k: config.data[k] for k in ("max_length", "vocabulary")}
    data = load_dataset(path=path, binarize=binarize, seed=config.run["seed"], **text)
    x = torch.cat([data.train, data.test])
    y = None
    if data.train_labels is not None and data.test_labels is not None:
        y = torch.cat([data.train_labels, data.test_labels])
    return x, y


def run_vocabulary(config: Config):
    """The :class:`~pyrovae.data.Vocabulary` of a sentence run (its ``vocabulary.json``)."""
    from pyrovae.data import Vocabulary

    if config.data["vocabulary"] is None:
        raise ConfigError("this run has no vocabulary: it is not a run of sentences")
    return Vocabulary.load(config.data["vocabulary"])


def check_folder(path: Path, flag: str) -> None:
    """Refuse, before any work and without writing anything, a folder ``flag`` that is a
    file or cannot be created or written: a folder is made and removed in its nearest
    existing ancestor, which must be a folder (so a path under a regular file, under
    ``/proc``, on a read-only disk or without permission is refused with the reason)."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file; give a folder")
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(
            f"{flag} {path} cannot be created: {existing} is a file, not a folder; choose "
            "another path"
        )
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".pyrovae-probe-"))
    except OSError as e:
        verb = "written" if existing == path.absolute() else "created"
        where = OSError(e.errno, e.strerror, str(existing))  # the folder, not the probe
        raise ConfigError(f"{flag} {path} cannot be {verb}: {file_error_message(where)}") from None


def output_folder(path: Path, flag: str = "--output") -> Path:
    """The folder ``path`` of a command's outputs, created (a clear error when it cannot
    be: :func:`check_folder`)."""
    check_folder(path, flag)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{flag} {path} cannot be created: {file_error_message(e)}") from None
    return path


def locks_run(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``command`` holding the lock of its run folder (:func:`pyrovae.runfolder.lock`) when
    it writes there: a command on a run (``RUN``) whose output (``--output``, or its
    default in the run folder) lies in the run folder. ``train`` and ``score`` lock in the
    library (:func:`pyrovae.fit`, :func:`pyrovae.run.score_run`)."""

    @functools.wraps(command)
    def locked(args: argparse.Namespace) -> int:
        with _run_lock(args):
            return command(args)

    return locked


@contextlib.contextmanager
def _run_lock(args: argparse.Namespace) -> Iterator[None]:
    from pyrovae.runfolder import lock

    run = getattr(args, "run", None)
    if run is None:  # not a command on a run
        yield
        return
    folder = run if run.is_dir() else run.parent
    output = getattr(args, "output", None)
    target = (output if output is not None else folder).resolve()
    inside = target == folder.resolve() or folder.resolve() in target.parents
    # a path that is no run is refused by load_run, with its own message
    if inside and (folder / "checkpoint.pt").is_file():
        with lock(folder):
            yield
    else:
        yield


def output_name(stem: str, args: argparse.Namespace, **options: object) -> str:
    """The name (without suffix) of what a command on a run writes, from what sets it apart:
    ``stem`` then ``-<key><value>`` for each of ``options`` given, ``-n<N>`` for
    ``--num-items``, the stem of ``--data``, ``-seed<S>`` for a seed other than 0, and
    ``-last`` for ``--checkpoint last``, e.g. ``evaluation-k1000-n200-seed3``. Training's
    own files (``evaluation.json``, ``samples.png``) never match one, and rerunning a
    command replaces its own file only."""
    parts = [stem]
    parts += [f"{key}{value}" for key, value in options.items() if value is not None]
    if getattr(args, "num_items", None) is not None:
        parts.append(f"n{args.num_items}")
    if getattr(args, "data", None):
        parts.append(Path(args.data).stem)
    if getattr(args, "seed", 0):
        parts.append(f"seed{args.seed}")
    if getattr(args, "checkpoint", "best") == "last":
        parts.append("last")
    return "-".join(parts)


def output_file(path: Path, suffix: str) -> Path:
    """``--output`` as a file name ending in ``suffix``, its folder created."""
    if path.suffix != suffix:
        raise ConfigError(f"--output {path} must end in {suffix}")
    if path.is_dir():
        raise ConfigError(f"--output {path} is a folder; give a {suffix} file name")
    output_folder(path.parent)
    return path
