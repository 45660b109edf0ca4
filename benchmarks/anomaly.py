"""Anomaly and out-of-distribution detection with pyrovae's four scores: a table of ROC-AUC
and average precision.

Experiments (each trains a default VAE, MLP 256-128, latent 8, Bernoulli likelihood on
grayscale pixels, with :func:`pyrovae.train`, then scores held-out items with
:func:`pyrovae.inference.applications.anomaly.anomaly_scores`):

``fashion-holdout``
    Train on Fashion-MNIST without one class (``--held-out-class``, default 0, T-shirt/top);
    score the whole test set, the held-out class being the anomalies (1000 of 10000).
``digits-vs-fashion``
    Train on the 8x8 digits; score the digits' test split (360, normal) and the first 360
    Fashion-MNIST test images shrunk to 8x8 (``torch.nn.functional.interpolate``,
    ``mode="area"``, anomalous).
``digits-holdout``
    The first experiment on the digits (``--quick`` runs only this, in seconds).

Fashion-MNIST is read offline (``--data-dir``, or Debian's ``dataset-fashion-mnist``);
without it, its experiments are skipped with a message.

Examples
--------
::

    python benchmarks/anomaly.py
    python benchmarks/anomaly.py --quick
    python benchmarks/anomaly.py --fashion-epochs 10 -k 100 --markdown anomaly.md
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import Parser, markdown_table, report
from pyrovae import VAE, Config, Dataset, load_dataset, train
from pyrovae.errors import DataError
from pyrovae.inference.applications.anomaly import anomaly_scores, detection_metrics

HEADER = ["experiment", "score", "ROC-AUC", "average precision", "anomalies / items"]


def _without_class(data: Dataset, label: int) -> Dataset:
    keep = data.train_labels != label
    return dataclasses.replace(data, train=data.train[keep], train_labels=data.train_labels[keep])


def _fit(data: Dataset, epochs: int, seed: int) -> VAE:
    config = Config.from_flags(num_epochs=epochs, batch_size=128, learning_rate=1e-3, seed=seed)
    torch.manual_seed(seed)
    vae = VAE.from_section(config.model, data.shape)
    train(vae, data, config, progress=False)
    return vae.eval()


def _rows(name: str, vae: VAE, normal: torch.Tensor, anomalous: torch.Tensor, k: int):
    x = torch.cat([normal, anomalous])
    is_anomaly = torch.cat([torch.zeros(len(normal)), torch.ones(len(anomalous))])
    metrics = detection_metrics(anomaly_scores(vae, x, num_samples=k), is_anomaly)
    count = f"{len(anomalous)} / {len(x)}"
    return [
        [name, score, f"{m['roc_auc']:.3f}", f"{m['average_precision']:.3f}", count]
        for score, m in metrics.items()
    ]


def holdout(data: Dataset, label: int, epochs: int, k: int, seed: int) -> list[list[str]]:
    """Train without class ``label``; its test items are the anomalies."""
    vae = _fit(_without_class(data, label), epochs, seed)
    is_held_out = data.test_labels == label
    name = f"{data.name}-holdout (class {label}, {epochs} epochs)"
    return _rows(name, vae, data.test[~is_held_out], data.test[is_held_out], k)


def digits_vs_fashion(fashion: Dataset, epochs: int, k: int, seed: int) -> list[list[str]]:
    """Train on the digits; Fashion-MNIST shrunk to 8x8 is out of distribution."""
    digits = load_dataset("digits", seed=seed)
    vae = _fit(digits, epochs, seed)
    shrunk = F.interpolate(fashion.test[: len(digits.test)], size=(8, 8), mode="area")
    return _rows(f"digits-vs-fashion ({epochs} epochs)", vae, digits.test, shrunk, k)


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="digits only, few epochs")
    parser.add_argument("--held-out-class", type=int, default=0)
    parser.add_argument("--fashion-epochs", type=int, default=5)
    parser.add_argument("--digits-epochs", type=int, default=100)
    parser.add_argument("-k", "--num-samples", type=int, default=50, help="guide samples K")
    parser.add_argument("--data-dir", help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    if min(args.fashion_epochs, args.digits_epochs, args.num_samples) < 1:
        parser.error("epochs and --num-samples must be positive")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.num_threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> int:
    begin = time.perf_counter()
    k = 10 if args.quick else args.num_samples
    rows = holdout(
        load_dataset("digits", seed=args.seed),
        args.held_out_class,
        10 if args.quick else args.digits_epochs,
        k,
        args.seed,
    )
    if not args.quick:
        try:
            fashion = load_dataset("fashion-mnist", data_dir=args.data_dir)
        except DataError as e:
            print(f"skipping the Fashion-MNIST experiments: {e}", file=sys.stderr)
        else:
            rows += holdout(fashion, args.held_out_class, args.fashion_epochs, k, args.seed)
            rows += digits_vs_fashion(fashion, args.digits_epochs, k, args.seed)
    seconds = time.perf_counter() - begin
    lines = [
        f"K = {k} guide samples per item; {seconds:.0f} s in all, "
        f"{torch.get_num_threads()} torch thread(s)"
    ]
    report("Anomaly detection", lines, markdown_table(HEADER, rows), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
