"""Sample quality of the variants at one wall-clock budget: does a discriminator make the
decoder's samples sharper?

Every row trains with the same encoder and decoder widths (convolutional, channels 32 and
64, a hidden layer of 256, a 16-dimensional code), batch 64, Adam 1e-3 and the same
``--time-limit`` (training stops after the first epoch that ends past it), on grey-level
pixels. Then ``pyrovae score`` measures, on the held-out items, in the feature space of a
classifier pyrovae trains on the data set's labels: the Fréchet distance of prior samples
and of reconstructions, the precision and recall of the samples (Kynkäänniemi et al.
2019; and density and coverage, Naeem et al. 2020), their sharpness (mean variance of the
Laplacian; the data's alongside) and the pixel reconstruction error. The held-out
log-likelihood is the IWAE bound with ``--num-eval-samples`` draws where the model
defines one.

Rows: the VAE with each likelihood (Bernoulli, continuous Bernoulli, Gaussian and Laplace
with a learned scale), the VAE-GAN and the VQ-VAE (samples from its fitted prior over
codes). Each row is its own run folder under ``--out`` and its own processes, so the
benchmark resumes: finished rows are kept, an unfinished one continues from its
checkpoint. ``OUT/samples.png`` shows 64 samples of every row side by side.

Examples
--------
::

    python benchmarks/sample_quality.py --dataset fashion-mnist --time-limit 300
    python benchmarks/sample_quality.py --dataset digits --time-limit 60
    python benchmarks/sample_quality.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import Parser, markdown_table, report

#: row name -> (label, the row's own flags)
CONV = ["--encoder", "conv", "--decoder", "conv"]
ROWS: dict[str, tuple[str, list[str]]] = {
    "vae-bernoulli": ("VAE, Bernoulli", [*CONV, "--likelihood", "bernoulli"]),
    "vae-cb": ("VAE, continuous Bernoulli", [*CONV, "--likelihood", "continuous-bernoulli"]),
    "vae-gaussian": ("VAE, Gaussian", [*CONV, "--likelihood", "gaussian"]),
    "vae-laplace": ("VAE, Laplace", [*CONV, "--likelihood", "laplace"]),
    "vaegan": ("VAE-GAN", ["--model", "vaegan"]),  # conv networks by default
    # its own conv encoder to a grid of codes (channels 32, 64) and decoder; --hidden sizes
    # the autoregressive prior over codes, --latent-dim is the code dimension
    "vqvae": ("VQ-VAE + fitted prior", ["--model", "vqvae"]),
}

HEADER = [
    "model",
    "FD samples",
    "FD recon.",
    "precision",
    "recall",
    "density",
    "coverage",
    "sharpness",
    "recon. MSE",
    "log p(x)",
    "epochs",
    "train s",
]


def _run(argv: Sequence[str], threads: int, output: Path) -> None:
    """``python -m pyrovae ARGV`` in its own process with ``threads`` OpenMP threads, its
    standard output (the command's JSON) written to ``output``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with output.open("w") as out:
        subprocess.run([sys.executable, "-m", "pyrovae", *argv], check=True, env=env, stdout=out)


def train_and_score(name: str, args: argparse.Namespace) -> None:
    """Train row ``name`` within the budget (or continue it), then score it; skips what is
    done."""
    workdir = args.out / name
    if (workdir / "scores.json").exists():
        return
    flags = ROWS[name][1]
    common = [
        "--dataset", args.dataset,
        "--hidden", "256", "--latent-dim", "16",
        "--batch-size", "64", "--learning-rate", "1e-3",
        "--num-epochs", str(args.max_epochs), "--time-limit", str(args.time_limit),
        "--num-eval-samples", str(args.num_eval_samples), "--diagnostic-items", "0",
        "--num-threads", str(args.num_threads), "--seed", str(args.seed),
    ]  # fmt: skip
    if args.limit is not None:
        common += ["--limit", str(args.limit)]
    if not (workdir / "evaluation.json").exists():
        train = ["--resume"] if (workdir / "checkpoint.pt").exists() else [*common, *flags]
        argv = ["train", "-q", "--no-progress", "--workdir", str(workdir), *train]
        _run(argv, args.num_threads, args.out / f"{name}.train.json")
    score = ["score", str(workdir), "-q", "--seed", str(args.seed)]
    if args.num_samples is not None:
        score += ["--num-samples", str(args.num_samples)]
    if args.cache_dir is not None:
        score += ["--cache-dir", str(args.cache_dir)]
    _run(score, args.num_threads, args.out / f"{name}.score.json")


def table_row(name: str, out: Path) -> list[str]:
    """One row of the table from the run folder's files."""
    scores = json.loads((out / name / "scores.json").read_text())
    evaluation = json.loads((out / name / "evaluation.json").read_text())
    history = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    log_px = evaluation.get("log_likelihood")
    return [
        ROWS[name][0],
        f"{scores['fd_samples']:.2f}",
        f"{scores['fd_reconstructions']:.2f}",
        f"{scores['precision']:.3f}",
        f"{scores['recall']:.3f}",
        f"{scores['density']:.3f}",
        f"{scores['coverage']:.3f}",
        f"{scores['sharpness_samples']:.4f}",
        f"{scores['reconstruction_mse']:.4f}",
        "n/a" if log_px is None else f"{log_px:.1f}",
        str(len(history)),
        f"{sum(r['seconds'] for r in history):.0f}",
    ]


def samples_figure(names: Sequence[str], out: Path, seed: int) -> Path:
    """64 prior samples of every row side by side, as ``out/samples.png``."""
    import matplotlib
    import pyro

    from pyrovae import load_run, plots

    matplotlib.use("Agg")
    panels = {}
    for name in names:
        vae, _, _ = load_run(out / name)
        pyro.set_rng_seed(seed)
        panels[ROWS[name][0]] = vae.sample(64)
    path = out / "samples.png"
    figure = plots.side_by_side(panels, ncols=3, title="64 samples from the prior of each model")
    figure.savefig(path, dpi=150)
    return path


def _parser() -> argparse.ArgumentParser:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", default="fashion-mnist", help="data set (default: %(default)s)"
    )
    parser.add_argument(
        "--time-limit", type=float, default=300.0, help="seconds of epochs per row (%(default)s)"
    )
    parser.add_argument(
        "--max-epochs", type=int, default=1000, help="epochs at most per row (%(default)s)"
    )
    parser.add_argument(
        "--num-eval-samples", type=int, default=100, help="IWAE draws K (%(default)s)"
    )
    parser.add_argument("--num-samples", type=int, help="samples to score (default: held-out size)")
    parser.add_argument("--num-threads", type=int, default=2, help="torch threads (%(default)s)")
    parser.add_argument("--limit", type=int, help="only the first N train and test items")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), help="default: every row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, help="the score classifier's cache folder")
    parser.add_argument("--out", type=Path, help="run folders (default: runs/quality-DATASET)")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument(
        "--quick", action="store_true", help="digits, a few seconds per row: a smoke test"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.dataset, args.time_limit, args.max_epochs = "digits", 1.0, 2
        args.num_eval_samples, args.num_samples, args.num_threads = 4, 200, 1
        args.rows = args.rows or ["vae-bernoulli", "vaegan", "vqvae"]
    args.rows = args.rows or list(ROWS)
    if args.time_limit <= 0 or args.max_epochs < 1:
        raise SystemExit("--time-limit must be positive and --max-epochs at least 1")
    args.out = args.out or Path(f"runs/quality-{args.dataset}")
    args.out.mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()
    for name in args.rows:
        train_and_score(name, args)
    rows = [table_row(name, args.out) for name in args.rows]
    figure = samples_figure(args.rows, args.out, args.seed)
    scores = json.loads((args.out / args.rows[0] / "scores.json").read_text())
    notes = [
        f"{args.dataset}: {args.time_limit:g} s of epochs per row, {args.num_threads} torch "
        f"thread(s), {scores['num_samples']} samples scored; feature classifier held-out "
        f"accuracy {scores['classifier_accuracy']:.3f}",
        f"real held-out data: sharpness {scores['sharpness_data']:.4f}, FD against as many "
        f"training items {scores['fd_train_test']:.2f}; figure {figure}; wall clock "
        f"{time.perf_counter() - begin:.0f} s",
    ]
    report(
        "Sample quality at one wall-clock budget",
        notes,
        markdown_table(HEADER, rows),
        args.markdown,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
