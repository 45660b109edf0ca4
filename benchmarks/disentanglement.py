"""Does a larger beta buy disentanglement? beta-VAE, beta-TCVAE and FactorVAE on dSprites.

Every setting trains on the procedural ``dsprites-small`` (32x32, shape 3 x scale 6 x
orientation 10 x posX 16 x posY 16, all 46 080 items, 20 % held out) with the same
networks and budget, once per seed, through the command line a user would type::

    pyrovae train --dataset dsprites-small --latent-dim 10 --num-epochs E --seed S \\
        [--beta B | --elbo TCVAE_ELBO --tc-weight B | --model factorvae --gamma G] ...
    pyrovae disentanglement RUN --dci-classifier forest

and the table gives, per setting, the mean and range over the seeds of the held-out ELBO
and of each metric (MIG, the FactorVAE score, the beta-VAE score, DCI disentanglement and
SAP; :mod:`pyrovae.inference.evaluation.disentanglement`). beta = 1, a TC weight of 1 and
gamma = 0 are the same model, the plain VAE, which is the first row. ``--figures DIR``
copies the traversal figures of the runs with the best and the worst MIG there.

Runs go ``--jobs`` at a time (one torch thread each), in ``WORKDIR/<setting>-s<seed>``;
running the script again skips what is finished and resumes an interrupted training, so
the table can be built over several sessions. ``--quick`` is a seconds-long version for CI
(a few hundred items, 1 epoch, few metric points).

Examples
--------
::

    python benchmarks/disentanglement.py --jobs 2                 # the README table
    python benchmarks/disentanglement.py --report                 # the table, training nothing
    python benchmarks/disentanglement.py --quick --workdir /tmp/d
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import Parser, markdown_table, report

#: model -> (the name of its weight, the weights of the table, the flags that select it)
MODELS: dict[str, tuple[str, tuple[float, ...], tuple[str, ...]]] = {
    "beta-VAE": ("beta", (1.0, 4.0, 16.0), ()),
    "beta-TCVAE": ("tc_weight", (4.0, 16.0), ("--elbo", "TCVAE_ELBO")),
    "FactorVAE": ("gamma", (10.0, 40.0), ("--model", "factorvae")),
}

#: the training flags every setting shares
TRAIN_FLAGS: tuple[str, ...] = (
    "--dataset", "dsprites-small",
    "--latent-dim", "10",
    "--num-eval-samples", "100",
)  # fmt: skip

#: the metric flags (disentanglement_lib's point counts; random forests for DCI, which
#: scikit-learn's gradient boosting makes the slowest metric by far)
METRIC_FLAGS: tuple[str, ...] = ("--dci-classifier", "forest")

#: what --quick changes
QUICK_TRAIN: tuple[str, ...] = ("--limit", "600", "--num-eval-samples", "5")
QUICK_METRICS: tuple[str, ...] = ("--num-points", "300", "--num-test-points", "200")


def outputs(quick: bool) -> tuple[str, str]:
    """The names of the scores and the figure that ``pyrovae disentanglement`` writes with
    :data:`METRIC_FLAGS` (and, for ``quick``, :data:`QUICK_METRICS`)."""
    settings = "-p300-t200-dciforest" if quick else "-dciforest"
    return f"disentanglement{settings}.json", f"traversals{settings}.png"


METRICS = ("mig", "factor_vae", "beta_vae", "dci_disentanglement", "sap")
HEADER = [
    "model",
    "weight",
    "held-out ELBO",
    "MIG",
    "FactorVAE score",
    "beta-VAE score",
    "DCI disent.",
    "SAP",
    "active dims",
]


@dataclass(frozen=True)
class Setting:
    """One row of the table: a model and the value of its weight."""

    model: str
    weight: float

    @property
    def name(self) -> str:
        return f"{self.model.lower()}-{self.weight:g}"

    def flags(self) -> list[str]:
        option, _, selector = MODELS[self.model]
        return [*selector, f"--{option.replace('_', '-')}", f"{self.weight:g}"]


def settings(models: list[str]) -> list[Setting]:
    """The table's rows: the plain VAE (beta = 1) first, then each model's larger weights."""
    rows = [Setting("beta-VAE", 1.0)]
    for model in models:
        weights = MODELS[model][1]
        rows += [Setting(model, w) for w in weights if (model, w) != ("beta-VAE", 1.0)]
    return rows


def _pyrovae(*args: str) -> list[str]:
    return [sys.executable, "-m", "pyrovae", *args]


def run_one(setting: Setting, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train (or resume) and score one run; returns its row of numbers. A finished step
    is not repeated."""
    folder = args.workdir / f"{setting.name}-s{seed}"
    log = args.workdir / f"{setting.name}-s{seed}.log"
    begin = time.perf_counter()
    if not (folder / "evaluation.json").exists():
        resume = ["--resume"] if (folder / "checkpoint.pt").exists() else []
        command = _pyrovae(
            "train", "--workdir", str(folder), "--seed", str(seed), "-q",
            "--num-threads", "1", "--num-epochs", str(args.num_epochs),
            *TRAIN_FLAGS, *setting.flags(), *(QUICK_TRAIN if args.quick else ()), *resume,
        )  # fmt: skip
        _call(command, log)
    if not args.train_only and not (folder / outputs(args.quick)[0]).exists():
        command = _pyrovae(
            "disentanglement", str(folder), "--num-threads", "1", "-q",
            *METRIC_FLAGS, *(QUICK_METRICS if args.quick else ()),
        )  # fmt: skip
        _call(command, log)
    seconds = time.perf_counter() - begin
    print(f"{folder.name}: done ({seconds:.0f} s this session)", file=sys.stderr, flush=True)
    return {} if args.train_only else read_run(folder, args.quick)


def _call(command: list[str], log: Path) -> None:
    with log.open("a") as out:
        out.write("$ " + " ".join(command[1:]) + "\n")
        out.flush()
        status = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT)
    if status != 0:
        raise RuntimeError(f"{' '.join(command[2:4])} failed (exit {status}); see {log}")


def read_run(folder: Path, quick: bool = False) -> dict[str, Any]:
    """The held-out ELBO, the metrics, the active dimensions and the seconds of a run."""
    evaluation = json.loads((folder / "evaluation.json").read_text())
    scores = json.loads((folder / outputs(quick)[0]).read_text())
    history = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {
        "folder": folder,
        "elbo": evaluation["elbo"],
        **{m: scores["scores"][m] for m in METRICS},
        "active": sum(row["active"] for row in scores["dims"]),
        "seconds": sum(row["seconds"] for row in history),
    }


def _summary(values: list[float], digits: int) -> str:
    """Mean and range over the seeds: ``0.31 [0.22, 0.40]``."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    low, high = min(values), max(values)
    return f"{statistics.fmean(values):.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def table_rows(results: dict[Setting, list[dict[str, Any]]]) -> list[list[str]]:
    rows = []
    for setting, runs in results.items():
        option = MODELS[setting.model][0]
        rows.append(
            [
                setting.model,
                f"{option} = {setting.weight:g}",
                _summary([r["elbo"] for r in runs], 1),
                *(_summary([r[m] for r in runs], 2) for m in METRICS),
                _summary([float(r["active"]) for r in runs], 1),
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = Parser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=Path("runs/disentanglement"))
    parser.add_argument(
        "--models", nargs="+", choices=list(MODELS), default=list(MODELS), help="(all)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num-epochs", type=int, default=15)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, 1 thread each")
    parser.add_argument("--quick", action="store_true", help="a tiny version (CI)")
    parser.add_argument("--report", action="store_true", help="the table of what exists")
    parser.add_argument(
        "--train-only", action="store_true", help="train the runs; score them in a later call"
    )
    parser.add_argument("--figures", type=Path, help="copy the best and worst traversals here")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.num_epochs < 1 or args.jobs < 1:
        parser.error("--num-epochs and --jobs must be positive")
    if args.quick:
        args.num_epochs = 1
    args.workdir.mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()
    pairs = [(s, seed) for s in settings(args.models) for seed in args.seeds]
    if args.report:
        done = [(s, p) for s, p in pairs if _done(args.workdir / f"{s.name}-s{p}", args.quick)]
        found = [read_run(args.workdir / f"{s.name}-s{seed}", args.quick) for s, seed in done]
    else:
        with ThreadPoolExecutor(args.jobs) as pool:
            try:
                found = list(pool.map(lambda p: run_one(*p, args), pairs))
            except RuntimeError as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
        if args.train_only:
            return 0
        done = pairs
    results: dict[Setting, list[dict[str, Any]]] = {}
    for (setting, _), row in zip(done, found):
        results.setdefault(setting, []).append(row)
    if not results:
        print("no finished runs in " + str(args.workdir), file=sys.stderr)
        return 1
    seconds = sum(r["seconds"] for runs in results.values() for r in runs)
    lines = [
        f"dsprites-small, latent dimension 10, {args.num_epochs} epochs, seeds "
        f"{', '.join(map(str, args.seeds))}: mean [min, max] over the seeds; the held-out "
        f"ELBO in nats per image. Training took {seconds / 60:.0f} min of epochs in all; "
        f"this session {(time.perf_counter() - begin) / 60:.0f} min with {args.jobs} job(s).",
    ]
    report("Disentanglement on dSprites", lines, markdown_table(HEADER, table_rows(results)),
           args.markdown)  # fmt: skip
    if args.figures is not None:
        runs = sorted((r for rs in results.values() for r in rs), key=lambda r: r["mig"])
        args.figures.mkdir(parents=True, exist_ok=True)
        for label, run in (("best", runs[-1]), ("worst", runs[0])):
            target = args.figures / f"disentanglement-{label}.png"
            shutil.copyfile(run["folder"] / outputs(args.quick)[1], target)
            print(f"{label} MIG {run['mig']:.2f}: {run['folder'].name} -> {target}")
    return 0


def _done(folder: Path, quick: bool) -> bool:
    return (folder / "evaluation.json").exists() and (folder / outputs(quick)[0]).exists()


if __name__ == "__main__":
    sys.exit(main())
