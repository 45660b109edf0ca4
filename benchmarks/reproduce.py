"""Reproduce published log-likelihoods: named recipes trained end to end, one row each.

Each recipe is the training protocol of the VampPrior reference code (Tomczak & Welling
2018, ``jmtomczak/vae_vampprior``), which the Exemplar VAE paper (Norouzi et al. 2020)
also followed for its Fashion-MNIST numbers:

* dynamically binarized Fashion-MNIST, 50 000 training and 10 000 validation items carved
  from the 60 000 training images (``--validation-fraction``), the 10 000 test images
  touched only by the final evaluation;
* two gated dense layers of 300 units in the encoder and the decoder
  (``--encoder gated-mlp --decoder gated-mlp``), latent dimension 40, the log-variance of
  q(z|x) clipped to [-6, 2];
* batch 100, Adam with learning rate 5e-4 and each gradient tensor normalised
  (``--normalize-gradients``), a linear KL warm-up over the first 100 epochs;
* up to 2000 epochs, stopped once 50 epochs after the warm-up bring no better validation
  ELBO (``--patience 50``); the best epoch's parameters (``best.pt``) are scored with the
  IWAE bound at K = 5000 on the full test set.

Recipes:

``fmnist-mlp``
    the standard normal prior; published -228.70 nats (Norouzi et al. 2020, Table 1).
``fmnist-mlp-vamp``
    the VampPrior with 500 pseudo-inputs; published -227.35 nats (same table).
``fmnist-hvae-vamp``
    the two-level hierarchical VAE (``--model hvae``, z1 and z2 of 40 dimensions) with the
    VampPrior on z2; the target is to beat both rows above.

A recipe's run folder is ``WORKDIR/<recipe>``. Running the script again resumes a recipe
that was interrupted (or stopped by ``--time-limit``, the run's total seconds of epochs
over all its sessions) and reports a finished one without training; each session's wall
clock is added to ``WORKDIR/<recipe>.sessions.json``, also when it ends by Ctrl-C or by
SIGTERM (``kill PID``; exit status 143), which leave the last finished epoch's checkpoint.
``--quick`` runs a tiny version of every recipe (a few hundred items, 3 epochs, K = 10) for
CI.

The published numbers are scores of one fixed binarization of the test images, the
reference code's: numpy's legacy generator seeded with 777 draws the 10 000 validation
images, then the test images. A run here scores its own seeded draw (``evaluation.json``),
and the draw alone moves the mean test score: by a standard deviation of 0.08 nats over
ten draws of the test images, in one trained run (``docs/reproducing.md``).
``--score-reference-draw`` scores every finished run once more, on exactly the reference
code's draw: it writes that draw to ``RUN/reference-draw.npz`` and runs ``pyrovae evaluate
RUN -k K --data RUN/reference-draw.npz`` (the run's own K), which writes
``RUN/evaluation-k<K>-reference-draw.json``; the report shows it in a column of its own.

Examples
--------
::

    python benchmarks/reproduce.py fmnist-mlp fmnist-mlp-vamp --num-threads 1
    python benchmarks/reproduce.py --time-limit 3600       # one hour of epochs per run
    python benchmarks/reproduce.py --report                # the table, training nothing
    python benchmarks/reproduce.py --score-reference-draw  # finished runs, the reference draw
    python benchmarks/reproduce.py --quick --dataset digits
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import Parser, markdown_table, report
from pyrovae.inference.training.trainer import best_epoch, epochs_without_improvement

#: the reference protocol, shared by every recipe (config keys, as in config.toml)
PROTOCOL: dict[str, Any] = {
    "dataset": "fashion-mnist",
    "binarize": "dynamic",
    "validation_fraction": 1 / 6,  # 10 000 of the 60 000 training images
    "encoder": "gated-mlp",
    "decoder": "gated-mlp",
    "hidden": (300, 300),
    "latent_dim": 40,
    "log_var_min": -6.0,
    "log_var_max": 2.0,
    "batch_size": 100,
    "learning_rate": 5e-4,
    "normalize_gradients": True,
    "kl_schedule": "linear",
    "warmup_epochs": 100,
    "num_epochs": 2000,
    "patience": 50,
    "num_eval_samples": 5000,
    "eval_batch_size": 20,
}

#: recipe -> (its own config keys, the published log p(x) in nats or None, the source)
RECIPES: dict[str, tuple[dict[str, Any], float | None, str]] = {
    "fmnist-mlp": ({}, -228.70, "Norouzi et al. 2020, VAE, standard prior"),
    "fmnist-mlp-vamp": (
        {"prior": "vamp", "num_pseudo_inputs": 500},
        -227.35,
        "Norouzi et al. 2020, VAE, VampPrior",
    ),
    "fmnist-hvae-vamp": (
        {"model": "hvae", "top_dim": 40, "prior": "vamp", "num_pseudo_inputs": 500},
        None,
        "target: better than both rows above",
    ),
}

#: what --quick changes: a run of seconds that still goes through every stage
QUICK: dict[str, Any] = {
    "limit": 600,
    "num_epochs": 3,
    "warmup_epochs": 1,
    "patience": 1,
    "num_eval_samples": 10,
    "num_pseudo_inputs": 20,
    "eval_batch_size": 100,
}

#: the reference code's held-out binarization: numpy's legacy generator with this seed
REFERENCE_SEED = 777
#: the file (in a run folder) of that draw of the test images, and the stem of its score's
REFERENCE_DRAW = "reference-draw"

HEADER = [
    "recipe",
    "seed",
    "log p(x), K",
    "reference draw",
    "published",
    "test ELBO",
    "scored epoch",
    "epochs",
    "stopped by",
    "wall clock",
]


def recipe_flags(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The config flags of recipe ``name`` with the command line's changes."""
    own = RECIPES[name][0]
    flags = {**PROTOCOL, **own}
    if args.quick:
        flags.update({k: v for k, v in QUICK.items() if k != "num_pseudo_inputs" or k in own})
    if args.dataset is not None:
        flags["dataset"] = args.dataset
    if args.time_limit is not None:
        flags["time_limit"] = args.time_limit
    if args.num_eval_samples is not None:
        flags["num_eval_samples"] = args.num_eval_samples
    flags.update(
        seed=args.seed, num_threads=args.num_threads, device=args.device, compile=args.compile
    )
    return flags


def run_recipe(name: str, args: argparse.Namespace) -> None:
    """Train (or resume) recipe ``name`` in ``args.workdir / name`` and record the
    session's wall clock; a finished run is left as it is."""
    from pyrovae import Config, fit

    folder = args.workdir / name
    if _finished(folder):
        print(f"{name}: finished earlier; reporting it", flush=True)
        return
    config = Config.from_flags(**recipe_flags(name, args))
    resume = (folder / "checkpoint.pt").exists()
    print(f"{name}: {'resuming' if resume else 'training'} in {folder}", flush=True)
    session = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "epochs_before": len(_history(folder)),
    }
    begin = time.perf_counter()
    try:
        fit(config, folder, resume=resume, progress=args.progress)
    finally:  # an interrupted session counts too (its epochs are in the checkpoint)
        session["seconds"] = time.perf_counter() - begin
        session["epochs_after"] = len(_history(folder))
        sessions = [*_sessions(args.workdir, name), session]
        path = args.workdir / f"{name}.sessions.json"
        path.write_text(json.dumps(sessions, indent=1) + "\n")


def reference_draw(test: np.ndarray, num_validation: int) -> np.ndarray:
    """The reference code's binarization of the test images ``test`` (grey levels in
    [0, 1], one image per row), as booleans: ``np.random.seed(777)``, one
    ``np.random.binomial(1, p)`` of the ``num_validation`` validation images, then one of
    the test images. A legacy ``binomial(1, p)`` takes one uniform per pixel whatever
    ``p`` is, so only the number of validation pixels matters, not their values."""
    rng = np.random.RandomState(REFERENCE_SEED)
    rng.binomial(1, np.full((num_validation, *test.shape[1:]), 0.5))
    return rng.binomial(1, test).astype(bool)


def _grey_levels(x: Any) -> np.ndarray:
    """Grey levels as float64; 8-bit images (every value k / 255) as numpy's ``uint8 /
    255.`` gives them, so that a draw compares each uniform with the very same ``p``."""
    grey = x.double().numpy()
    levels = np.round(grey * 255) / 255
    return levels if np.abs(levels - grey).max() < 1e-6 else grey


def write_reference_draw(folder: Path) -> Path:
    """``folder/reference-draw.npz``: the reference code's draw of the test images of the
    run in ``folder`` (its data set in file order; the validation draws skipped are its
    validation split's, 10 000 images in every recipe, as in the reference code), written
    once and atomically (the caller holds the folder's lock)."""
    import torch

    from pyrovae.run import load_data, load_run, split_validation
    from pyrovae.runfolder import atomic_write

    path = folder / f"{REFERENCE_DRAW}.npz"
    if path.exists():
        return path
    _, config, _ = load_run(folder)
    grey = load_data(config.replace(binarize="none"), torch.device("cpu"), folder)
    _, validation = split_validation(grey, config)
    num_validation = 0 if validation is None else len(validation.test)
    draw = reference_draw(_grey_levels(grey.test), num_validation)
    atomic_write(path, lambda f: np.savez_compressed(f, x=draw))
    return path


def _reference_path(folder: Path) -> Path | None:
    """Where ``pyrovae evaluate`` writes the run's score on the reference draw (the K of
    its own final score), or ``None`` before that score exists."""
    evaluation = _evaluation(folder)
    if evaluation is None:
        return None
    return folder / f"evaluation-k{evaluation['num_samples']}-{REFERENCE_DRAW}.json"


def _reference_evaluation(folder: Path) -> dict[str, Any] | None:
    """The run's score on the reference draw, or ``None`` when it has none or has been
    scored again since (its ``evaluation.json`` newer: resumed, a later best epoch)."""
    path = _reference_path(folder)
    if path is None or not path.exists():
        return None
    if path.stat().st_mtime_ns < (folder / "evaluation.json").stat().st_mtime_ns:
        return None
    return json.loads(path.read_text())


def score_reference_draw(names: list[str], workdirs: list[Path], args: argparse.Namespace) -> int:
    """Score every finished run of ``names`` in ``workdirs`` on the reference draw with
    ``pyrovae evaluate`` (the run's own K and evaluation batch) unless it has been since
    its own final score, each in its folder's lock; a run that fails is reported and the
    others go on (Ctrl-C stops them all: 130). Returns the first failure's exit status, else
    0."""
    from pyrovae import runfolder
    from pyrovae.cli import main as pyrovae_main
    from pyrovae.errors import PyroVAEError, user_message

    status = 0
    for workdir in workdirs:
        for name in names:
            folder = workdir / name
            if not folder.is_dir():
                continue
            if not _finished(folder):
                print(f"{folder}: not finished; not scored on the reference draw", flush=True)
                continue
            if _reference_evaluation(folder) is not None:
                continue
            run = _config(folder).get("run", {})
            options = ["-k", str(_evaluation(folder)["num_samples"])]
            options += ["--batch-size", str(run.get("eval_batch_size", 500))]
            options += ["--device", args.device, *([] if args.progress else ["--no-progress"])]
            options += [] if args.num_threads is None else ["--num-threads", str(args.num_threads)]
            try:
                with runfolder.lock(folder):
                    draw = write_reference_draw(folder)
                    command = ["evaluate", str(folder), "--data", str(draw), *options]
                    print(f"{folder}: pyrovae {' '.join(command)}", flush=True)
                    failed = pyrovae_main(command)
            except PyroVAEError as e:
                print(f"error: {folder}: {user_message(e)}", file=sys.stderr, flush=True)
                failed = 2
            if failed == 130:  # Ctrl-C stops them all
                return failed
            status = status or failed
    return status


def _sessions(workdir: Path, name: str) -> list[dict[str, Any]]:
    path = workdir / f"{name}.sessions.json"
    return json.loads(path.read_text()) if path.exists() else []


def _history(folder: Path) -> list[dict[str, Any]]:
    path = folder / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _config(folder: Path) -> dict[str, Any]:
    import tomllib

    path = folder / "config.toml"
    return tomllib.loads(path.read_text()) if path.exists() else {}


def _evaluation(folder: Path) -> dict[str, Any] | None:
    """The run's ``evaluation.json``, or ``None`` before it has been scored."""
    path = folder / "evaluation.json"
    return json.loads(path.read_text()) if path.exists() else None


def stopped_by(folder: Path) -> str:
    """Why the run in ``folder`` ended: ``early stopping``, ``max epochs``, ``time limit``
    (it can go on: rerun with a larger ``--time-limit``), ``unfinished`` (training or
    interrupted, or trained on since it was scored or stopped in its final scoring, so that
    its ``evaluation.json`` is not of its best epoch; rerun to resume it) or ``not
    started``."""
    history, config = _history(folder), _config(folder)
    if not history or not config:
        return "not started"
    evaluation = _evaluation(folder)
    scored = None if evaluation is None else evaluation.get("parameters", {}).get("epoch")
    if scored is not None and scored != best_epoch(history, "validation_elbo"):
        return "unfinished"  # e.g. stopped in its final scoring: the score is an older one
    optimization = config["optimization"]
    patience = optimization.get("patience")
    epochs = len(history)
    if epochs >= optimization["num_epochs"]:
        return "max epochs"
    if patience is not None:
        warmup = config["objective"]["kl_schedule"].get("warmup_epochs", 0)
        _, since = epochs_without_improvement(history, "validation_elbo", settled=warmup)
        if since >= patience:
            return "early stopping"
    return "unfinished" if evaluation is None else "time limit"


def _finished(folder: Path) -> bool:
    return _evaluation(folder) is not None and stopped_by(folder) in (
        "early stopping",
        "max epochs",
    )


def table_row(name: str, workdir: Path) -> list[str]:
    """The table's row of recipe ``name`` from its run folder."""
    folder = workdir / name
    shown, seed = _published(name), _seed(folder)
    history = _history(folder)
    evaluation = _evaluation(folder)
    if evaluation is None:
        epochs = str(len(history)) if history else "-"
        return [name, seed, "-", "-", shown, "-", "-", epochs, stopped_by(folder), "-"]
    best = evaluation.get("parameters", {}).get("epoch", len(history))
    reference = _reference_evaluation(folder)
    return [
        name,
        seed,
        f"{evaluation['log_likelihood']:.2f}, {evaluation['num_samples']}",
        "-" if reference is None else f"{reference['log_likelihood']:.2f}",
        shown,
        f"{evaluation['elbo']:.2f}",
        str(best),
        str(len(history)),
        stopped_by(folder),
        _duration(wall_clock(name, workdir)),
    ]


def _published(name: str) -> str:
    published = RECIPES[name][1]
    return "-" if published is None else f"{published:.2f}"


def _seed(folder: Path) -> str:
    return str(_config(folder).get("run", {}).get("seed", "-"))


def spread_row(name: str, workdirs: list[Path]) -> list[str] | None:
    """The mean and the sample standard deviation of recipe ``name``'s log p(x), its log
    p(x) on the reference draw (when every run has one) and its test ELBO over its
    finished runs in ``workdirs`` (one per seed), or ``None`` for fewer than two: the
    spread between training runs that the published ± stands for."""
    finished = [w / name for w in workdirs if _finished(w / name)]
    if len(finished) < 2:
        return None
    scored = [_evaluation(folder) for folder in finished]
    references = [_reference_evaluation(folder) for folder in finished]
    samples = {e["num_samples"] for e in scored}
    k = f", {samples.pop()}" if len(samples) == 1 else ""

    def spread(evaluations: list[dict[str, Any] | None], key: str) -> str:
        if any(e is None for e in evaluations):
            return "-"
        values = [e[key] for e in evaluations]
        return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"

    return [
        name,
        f"mean ± sd of {len(scored)}",
        spread(scored, "log_likelihood") + k,
        spread(references, "log_likelihood"),
        _published(name),
        spread(scored, "elbo"),
        "-",
        "-",
        "-",
        "-",
    ]


def report_runs(names: list[str], workdirs: list[Path]) -> list[tuple[str, Path]]:
    """``(recipe, workdir)`` of every run to report: each recipe's run folder in every
    workdir that has one, or the first workdir's (not started) where none has."""
    runs = []
    for name in names:
        held = [w for w in workdirs if (w / name).is_dir()]
        runs += [(name, w) for w in held or workdirs[:1]]
    return runs


def wall_clock(name: str, workdir: Path) -> float:
    """The seconds recipe ``name`` has taken: every epoch's (training and validation, from
    its history), and what each recorded session spent outside its epochs (loading the
    data, compiling, the final evaluation)."""
    history = _history(workdir / name)
    seconds = sum(row["seconds"] for row in history)
    for session in _sessions(workdir, name):
        epochs = history[session["epochs_before"] : session["epochs_after"]]
        seconds += max(0.0, session["seconds"] - sum(row["seconds"] for row in epochs))
    return seconds


def _duration(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def curves_figure(runs: list[tuple[str, Path]], path: Path) -> None:
    """Train and validation ELBO per epoch of every run ``(recipe, workdir)`` that has
    epochs, the warm-up shaded and the best epoch marked, saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    drawn = [(n, w) for n, w in runs if _history(w / n)]
    if not drawn:
        return
    cols = min(3, len(drawn))
    rows = -(-len(drawn) // cols)
    fig = Figure(figsize=(5 * cols, 3.8 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for ax in axes[len(drawn) :]:
        ax.set_axis_off()
    for ax, (name, workdir) in zip(axes, drawn):
        history = _history(workdir / name)
        epochs = [r["epoch"] for r in history]
        train = [math.nan if r.get("train_elbo") is None else r["train_elbo"] for r in history]
        ax.plot(epochs, train, label="train ELBO (running average)", lw=1)
        ax.plot(
            epochs,
            [r.get("validation_elbo", math.nan) for r in history],
            label="validation ELBO",
            lw=1,
        )
        schedule = _config(workdir / name).get("objective", {}).get("kl_schedule", {})
        warmup = schedule.get("warmup_epochs", 0)
        ax.axvspan(0, min(warmup, epochs[-1]), color="0.9", label="KL warm-up")
        epoch = best_epoch(history, "validation_elbo")
        if epoch is not None:
            best = history[epoch - 1]
            ax.axvline(best["epoch"], color="k", ls=":", lw=1)
            ax.plot(
                best["epoch"], best["validation_elbo"], "k*", label=f"best (epoch {best['epoch']})"
            )
            ax.set_ylim(best["validation_elbo"] - 25, best["validation_elbo"] + 8)
        ax.set_title(f"{name}, seed {_seed(workdir / name)}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats per data point")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "recipes", nargs="*", help=f"recipes to run (default: all of {', '.join(RECIPES)})"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        action="append",
        help="folder of the recipes' run folders (default: runs/reproduce); with --report "
        "give it again for each further folder (e.g. one per --seed): a row per run and "
        "each recipe's mean and spread over its finished runs",
    )
    parser.add_argument("--quick", action="store_true", help="a tiny version of each recipe (CI)")
    parser.add_argument(
        "--report", action="store_true", help="print the table of what exists; train nothing"
    )
    parser.add_argument(
        "--score-reference-draw",
        action="store_true",
        help="train nothing; score every finished run (not yet scored so) on the reference "
        "code's binarization of the test images (numpy seeded with 777), then print the table",
    )
    parser.add_argument("--dataset", help="another built-in data set (e.g. digits, with --quick)")
    parser.add_argument(
        "--time-limit",
        type=float,
        help="stop a run once its epochs (over all its sessions) took this many "
        "seconds; rerun with a larger one to go on",
    )
    parser.add_argument(
        "--num-eval-samples", type=int, help="K of the final IWAE bound (default 5000)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-threads", type=int, help="torch CPU threads per run")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--compile", action="store_true", help="train with the compiled SVI step")
    parser.add_argument("--progress", action="store_true", help="show the training bars")
    parser.add_argument("--figure", type=Path, help="write the training curves here (PNG)")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    unknown = [r for r in args.recipes if r not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe {unknown[0]!r}; the recipes: {', '.join(RECIPES)}")
    names = args.recipes or list(RECIPES)
    # each folder once (a folder given twice would count its runs twice in the spread)
    workdirs = list(dict.fromkeys(w.resolve() for w in args.workdir or [Path("runs/reproduce")]))
    if len(workdirs) > 1 and not (args.report or args.score_reference_draw):
        parser.error(
            "a run trains in one --workdir; give several only with --report or "
            "--score-reference-draw"
        )
    args.workdir = workdirs[0]
    args.workdir.mkdir(parents=True, exist_ok=True)
    # `kill PID` (a scheduler's or a user's) ends a long run as Ctrl-C does: the run folder's
    # lock is released and the session recorded (a background job ignores SIGINT)
    signal.signal(signal.SIGTERM, _terminate)
    status = 0
    if args.score_reference_draw:  # the table follows, whatever failed
        status = score_reference_draw(names, workdirs, args)
    elif not args.report:
        from pyrovae.errors import PyroVAEError, user_message

        for name in names:
            try:
                run_recipe(name, args)
            except PyroVAEError as e:
                print(f"error: {name}: {user_message(e)}", file=sys.stderr)
                return 2
            except KeyboardInterrupt:
                print(
                    f"\n{name}: interrupted; the last finished epoch is saved and the session "
                    "recorded: run the same command again to resume",
                    file=sys.stderr,
                )
                return 130
    runs = report_runs(names, workdirs)
    rows = []
    for name in names:
        rows += [table_row(name, workdir) for n, workdir in runs if n == name]
        spread = spread_row(name, workdirs)
        rows += [] if spread is None else [spread]
    lines = [
        "Dynamically binarized Fashion-MNIST, the VampPrior reference protocol; log p(x) is "
        "the IWAE bound of the best-on-validation parameters on the 10 000 test images "
        "(nats per image), each run's own seeded binarization of them; reference draw: the "
        "same bound on the reference code's binarization (numpy seeded with 777), the one "
        "the published numbers were scored on (--score-reference-draw). Wall clock: every "
        "epoch of the run (training and validation, over its sessions) and each session's "
        "loading, compiling and final evaluation.",
    ]
    report(
        "Reproducing published log-likelihoods", lines, markdown_table(HEADER, rows), args.markdown
    )
    if args.figure is not None:
        curves_figure(runs, args.figure)
        print(f"wrote {args.figure}")
    return status


if __name__ == "__main__":
    sys.exit(main())
