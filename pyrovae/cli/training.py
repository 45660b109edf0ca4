"""``pyrovae train | evaluate | sample | score``: train a run, evaluate it, generate from it,
score its samples."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from pyrovae.cli.common import (
    check_folder,
    load_items,
    load_run,
    output_folder,
    output_name,
    run_parser,
    run_vocabulary,
    table_encoding,
)
from pyrovae.config import (
    COMPONENTS,
    SECTIONS,
    Config,
    default_help,
    flag_declarations,
    load_config,
)
from pyrovae.errors import ConfigError, PyroVAEError
from pyrovae.registry import Option
from pyrovae.runfolder import atomic_write, write_json

logger = logging.getLogger(__name__)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _site_weights(text: str) -> tuple[str, float]:
    site, _, weight = text.partition("=")
    try:
        return site, float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected SITE=WEIGHT, e.g. z2=0.5, got {text!r}"
        ) from None


def _add_typed(group: argparse._ArgumentGroup, name: str, kind: type, help: str, **kw) -> None:
    """One flag; defaults are SUPPRESSed so that only explicit flags override a config."""
    kwargs: dict = {"default": argparse.SUPPRESS, "dest": name, "help": help, **kw}
    if kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif kind is tuple:
        kwargs.update(type=int, nargs="+", metavar="N")
    elif kind is dict:
        kwargs.update(type=_site_weights, nargs="+", metavar="SITE=W")
    else:
        kwargs["type"] = kind
    group.add_argument(_flag(name), **kwargs)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """The run configuration's flags, generated from the sections' keys and from the
    options every registered component declares (one ``--help`` group each)."""
    for section, keys in SECTIONS.items():
        group = parser.add_argument_group(f"[{section}] (keys of --config FILE)")
        for key, component in COMPONENTS.items():
            if component.section == section:
                names = component.registry.names()
                _add_typed(
                    group,
                    component.flag,
                    str,
                    f"{component.help} (default: {default_help(key)})",
                    choices=names,
                )
        for key, spec in keys.items():
            choices = {"choices": list(spec.choices)} if spec.choices else {}
            # a key whose help explains its default (None: chosen) says it once
            help = (
                spec.help if "(default:" in spec.help else f"{spec.help} (default: {spec.default})"
            )
            _add_typed(group, key, spec.type, help, **choices)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, declarations in flag_declarations().items():
        owners = [owner for owner, _ in declarations]
        option = declarations[0][1]
        kind = owners[0].split(" ")[0]
        if kind not in groups:
            groups[kind] = parser.add_argument_group(
                f"{kind} options (the chosen {kind} takes its own)"
            )
        choices = {"choices": list(option.choices)} if option.choices else {}
        _add_typed(groups[kind], name, option.type, _option_help(declarations), **choices)


def _option_help(declarations: list[tuple[str, Option]]) -> str:
    """The help of a flag: its text and ``[owners; default: ...]``; each owner's own text
    and default where the owners declare it differently (``--gamma``)."""

    def default(option: Option) -> str:
        return "" if "(default:" in option.help else f"; default: {option.default}"

    first = declarations[0][1]
    if all((o.help, o.default) == (first.help, first.default) for _, o in declarations):
        owners = ", ".join(owner for owner, _ in declarations)
        return f"{first.help} [{owners}{default(first)}]"
    return " ".join(f"{o.help} [{owner}{default(o)}]" for owner, o in declarations)


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """The subcommands train, evaluate, sample and score."""
    train = sub.add_parser(
        "train",
        parents=[common],
        help="train a VAE and write a run folder",
        description="Train a VAE with SVI and write a run folder.",
    )
    train.add_argument(
        "--workdir",
        default="runs/default",
        type=Path,
        help="the run folder (default: runs/default)",
    )
    train.add_argument("--config", type=Path, help="TOML file with config keys")
    train.add_argument(
        "--resume", action="store_true", help="continue the run in --workdir where it stopped"
    )
    _add_config_flags(train)

    evaluate = run_parser(
        sub,
        common,
        "evaluate",
        help="held-out ELBO and IWAE log-likelihood of a run",
        description=(
            "Evaluate a trained run on its held-out data; prints JSON and writes it to "
            "RUN/evaluation-k<K>[-n<N>][-<data file>][-seed<S>].json (a file of its own: "
            "training's evaluation.json is kept)."
        ),
    )
    evaluate.add_argument(
        "-k",
        "--num-samples",
        type=int,
        default=1000,
        help="importance samples K for the IWAE log p(x) (default: 1000)",
    )
    evaluate.add_argument(
        "--data", help="evaluate on every item of this .npy/.npz file instead of the test set"
    )
    evaluate.add_argument("--batch-size", type=int, default=500, help="data points per batch")
    evaluate.add_argument(
        "--num-items",
        type=int,
        help="evaluate only the first N items (of the test set or --data; default: all)",
    )

    sample = run_parser(
        sub,
        common,
        "sample",
        help="generate from the prior of a trained run",
        description=(
            "Draw z from the prior and decode: a PNG grid and a .npy, named "
            "samples-n<N>[-label<C>][-seed<S>].png/.npy (training's samples.png is kept). "
            "A table run writes rows drawn from the model, x ~ p(x|z), as "
            "samples-n<N>[-seed<S>].csv in the table's columns and labels."
        ),
    )
    sample.add_argument("-n", "--num-samples", type=int, default=64, help="how many (default 64)")
    sample.add_argument("--output", type=Path, help="output folder (default: the run folder)")
    sample.add_argument(
        "--label",
        type=int,
        help="generate this class (runs of --model cvae or m2); default: the classes in turn",
    )

    score = run_parser(
        sub,
        common,
        "score",
        help="sample quality of a run: Fréchet distance, precision/recall, sharpness",
        description=(
            "Score prior samples and reconstructions against the held-out data in the feature "
            "space of a classifier trained (once, then cached) on the data set's labels; "
            "prints JSON and writes RUN/scores.json."
        ),
    )
    score.add_argument(
        "-n",
        "--num-samples",
        type=int,
        help="prior samples to draw (default: as many as held-out items)",
    )
    score.add_argument("--batch-size", type=int, default=500, help="items per batch")
    score.add_argument(
        "--cache-dir",
        type=Path,
        help="folder of the trained feature classifiers (default: $PYROVAE_CACHE, else "
        "$XDG_CACHE_HOME/pyrovae, else ~/.cache/pyrovae)",
    )


#: the arguments of ``pyrovae train`` that are not config flags
_TRAIN_ARGUMENTS = ("command", "quiet", "workdir", "config", "resume", "no_progress", "debug")


def _config_from_args(args: argparse.Namespace) -> Config:
    flags = {k: v for k, v in vars(args).items() if k not in _TRAIN_ARGUMENTS}
    for key, value in flags.items():
        if isinstance(value, list) and value and isinstance(value[0], tuple):
            flags[key] = dict(value)  # SITE=WEIGHT pairs
        elif isinstance(value, list):
            flags[key] = tuple(value)
    config_file = args.config
    if args.resume and not (args.workdir / "checkpoint.pt").exists():
        raise PyroVAEError(
            f"there is no run to resume in {args.workdir}; drop --resume to start one"
        )
    if config_file is None and args.resume:
        config_file = args.workdir / "config.toml"
        checkpoint = args.workdir / "checkpoint.pt"
        # config.toml follows each session's first checkpoint: a command killed in between
        # left none, or the previous session's, older than the checkpoint. The checkpoint's
        # own config is then the run's (a config.toml edited later, newer, is the user's).
        if not config_file.exists() or config_file.stat().st_mtime < checkpoint.stat().st_mtime:
            from pyrovae.inference.training.checkpoint import load_checkpoint
            from pyrovae.run import saved_config

            state = load_checkpoint(checkpoint)
            if state.get("config"):  # (a checkpoint of pyrovae 0.1 may hold none)
                config = saved_config(state)
                return config.replace(**flags) if flags else config
    if config_file is not None and args.config is None:
        # the run's own config.toml lists every option in force when it was written, like a
        # checkpoint's config: an option it lacks came later (the variant's legacy_options)
        from pyrovae.config import read_config
        from pyrovae.run import saved_config

        config = saved_config({"config": read_config(config_file)})
        return config.replace(**flags) if flags else config
    if config_file is not None:
        return load_config(config_file, **flags)
    return Config.from_flags(**flags)


def _cmd_train(args: argparse.Namespace) -> int:
    from pyrovae.inference.training.distributed import launched_rank
    from pyrovae.run import fit

    config = _config_from_args(args)
    check_folder(args.workdir, "--workdir")  # before the data are read
    try:
        result = fit(
            config, args.workdir, resume=args.resume, progress=False if args.no_progress else None
        )
    except KeyboardInterrupt:
        if launched_rank() == 0:
            print(
                f"\ninterrupted; the last finished epoch is saved. Continue with:\n  pyrovae "
                f"train --workdir {args.workdir} --resume",
                file=sys.stderr,
            )
        return 130
    if launched_rank() > 0:  # rank 0 reports a data-parallel run
        return 0
    last = result.history[-1] if result.history else {}
    print(
        json.dumps(
            {"workdir": str(args.workdir), **last, "evaluation": result.evaluation}, indent=2
        )
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import pyro

    from pyrovae.run import load_data

    if args.num_samples < 1 or args.batch_size < 1:
        raise ConfigError("-k/--num-samples and --batch-size must be >= 1")
    if args.num_items is not None and args.num_items < 1:
        raise ConfigError(f"--num-items must be >= 1, got {args.num_items}")
    vae, config, _ = load_run(args)
    pyro.set_rng_seed(args.seed)
    if args.data:
        x, y = load_items(args.data, config, args.run)
    else:
        data = load_data(config, vae.device, args.run)
        x, y = data.test, data.test_labels
    if args.num_items is not None:
        x = x[: args.num_items]
        y = None if y is None else y[: args.num_items]
    if args.data:
        logger.info("evaluating %d items of %s", len(x), args.data)
    x = x.to(vae.device)
    vae.validate_data(x, "evaluation data")
    labels = {}
    if vae.requires_y:
        vae.validate_labels(y, len(x), f"the labels of {args.data or 'the test set'}")
        labels = {"y": y.to(vae.device)}
    results = vae.evaluate_heldout(
        x, num_samples=args.num_samples, batch_size=args.batch_size, **labels
    )
    results.update(vae.evaluation_metrics(x, None if y is None else y.to(vae.device)))
    if args.run.is_dir():  # a file of its own: training's evaluation.json stays
        path = args.run / (output_name("evaluation", args, k=args.num_samples) + ".json")
        write_json(results, path)
        logger.info("wrote %s", path)
    print(json.dumps(results, indent=2))
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    import matplotlib
    import pyro

    from pyrovae import plots
    from pyrovae.data.tables import is_table
    from pyrovae.run import save_figure

    matplotlib.use("Agg")
    if args.num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1, got {args.num_samples}")
    vae, config, _ = load_run(args)
    pyro.set_rng_seed(args.seed)
    if is_table(config.data["data"]):  # rows, not images
        return _sample_table(args, vae, config)
    if vae.needs_labels:
        samples = vae.sample(args.num_samples, y=args.label).cpu()
    elif args.label is not None:
        raise ConfigError(
            f"--label needs a run of a model with labels (--model cvae or m2); {args.run} is a "
            f"plain {config.model['variant']['name']}: drop --label"
        )
    elif vae.reads_text:  # sentences are printed and written as text, not drawn as a grid
        return _sample_sentences(args, vae, config)
    else:
        samples = vae.sample(args.num_samples).cpu()
    out = args.output or (args.run if args.run.is_dir() else args.run.parent)
    output_folder(out)
    name = output_name("samples", args, n=args.num_samples, label=args.label)
    atomic_write(out / f"{name}.npy", lambda f: np.save(f, samples.numpy()))
    title, nrow = "samples from the prior", 8
    if vae.needs_labels:  # the classes in turn (one per column), or the requested one
        title, nrow = (
            (f"samples of class {args.label}", 8)
            if args.label is not None
            else ("samples, one class per column", vae.num_classes)
        )
    save_figure(plots.image_grid(samples, nrow=nrow, title=title), out / f"{name}.png")
    print(f"wrote {out / (name + '.png')} and {out / (name + '.npy')} ({tuple(samples.shape)})")
    return 0


def _sample_table(args: argparse.Namespace, vae, config) -> int:
    """``pyrovae sample`` on a table run: rows drawn from the model as CSV, in the
    training table's columns and labels."""
    from pyrovae.run import write_table_samples

    if args.label is not None:
        raise ConfigError("--label applies to a run of a model with labels; drop it")
    table = table_encoding(config, args.run)
    out = args.output or (args.run if args.run.is_dir() else args.run.parent)
    output_folder(out)
    path = out / f"{output_name('samples', args, n=args.num_samples, label=None)}.csv"
    write_table_samples(vae, table, args.num_samples, path)
    print(f"wrote {path} ({args.num_samples} rows of {len(table.columns)} columns)")
    return 0


def _sample_sentences(args: argparse.Namespace, vae, config) -> int:
    """Sentences of a sentence run from codes :math:`z \\sim p(z)`: drawn token by token
    (ancestral sampling), then the greedy sentence of each same code; printed and written
    to ``samples-n<N>[-seed<S>].txt``."""
    from pyrovae.runfolder import write_text

    vocabulary = run_vocabulary(config)
    sampled, z = vae.sample(args.num_samples, return_latents=True)
    greedy = vae.decode(z)
    lines = ["# sampled: z ~ p(z), then each token drawn from p(x_t | x_<t, z)"]
    lines += [vocabulary.decode(row) for row in sampled]
    lines += ["", "# greedy: the same z, then the most probable token at each step"]
    lines += [vocabulary.decode(row) for row in greedy]
    out = args.output or (args.run if args.run.is_dir() else args.run.parent)
    output_folder(out)
    path = out / (output_name("samples", args, n=args.num_samples) + ".txt")
    text = "\n".join(lines) + "\n"
    write_text(path, text)
    print(text + f"wrote {path}")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from pyrovae.run import score_run

    if args.num_samples is not None and args.num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.num_threads is not None and args.num_threads < 1:
        raise ConfigError(f"--num-threads must be >= 1, got {args.num_threads}")
    if args.cache_dir is not None and args.cache_dir.exists() and not args.cache_dir.is_dir():
        raise ConfigError(f"--cache-dir {args.cache_dir} is a file; give a folder")
    scores = score_run(
        args.run,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        seed=args.seed,
        cache_dir=args.cache_dir,
        device=args.device,
        num_threads=args.num_threads,
        checkpoint=args.checkpoint,
    )
    print(json.dumps(scores, indent=2))
    return 0


COMMANDS = {
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
    "sample": _cmd_sample,
    "score": _cmd_score,
}
