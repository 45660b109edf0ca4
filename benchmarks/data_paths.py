"""What the DataLoader path costs: one training epoch on preloaded slices against a DataLoader.

Every path trains the default VAE (MLP, Bernoulli likelihood, Trace_ELBO) for one epoch of the
same shuffled order (:meth:`pyrovae.data.Dataset.batches`), from the same initial weights:

``preloaded``
    The default: batches are slices of a preloaded tensor.
``loader, N workers``
    A :class:`torch.utils.data.DataLoader` fetches each batch item by item (``--num-workers N``).
``mmap, 0 workers``
    The items saved as one ``.npy`` and memory-mapped (``--mmap``): batches read their rows
    (as many training items, split off at random).

The ``data pass`` column is a pass over the batches alone, without training; ``epoch`` is
``Trainer.epoch``; the median of ``--rounds`` rounds.

Examples
--------
::

    python benchmarks/data_paths.py --limit 10000
    python benchmarks/data_paths.py --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyrovae.config import Config
from pyrovae.data import DATASETS, Dataset, Loader, load_dataset
from pyrovae.inference.training import elbo_context
from pyrovae.run import make_trainer
from pyrovae.variants import build_variant

QUICK = {"dataset": "digits", "limit": 256, "rounds": 1, "workers": [0]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="fashion-mnist", choices=DATASETS)
    parser.add_argument("--limit", type=int, help="first N train items (default: all)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--quick", action="store_true", help="digits, 256 items, one round")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    return parser


def median_seconds(run: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_path(data: Dataset, batch_size: int, rounds: int) -> tuple[float, float]:
    """Seconds of a data pass and of a training epoch on ``data``."""
    config = Config.from_flags(batch_size=batch_size, num_epochs=1)
    torch.manual_seed(0)
    vae = build_variant(config.model, data.shape, seed=0)
    with elbo_context(config.objective["elbo"]["name"]):
        trainer = make_trainer(vae, data, config)
        data_pass = median_seconds(
            lambda: sum(1 for _ in data.batches("train", batch_size, shuffle=True)), rounds
        )
        epoch = median_seconds(lambda: trainer.epoch(data), rounds)
    return data_pass, epoch


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    torch.set_num_threads(1)
    data = load_dataset(args.dataset, limit=args.limit)
    paths: dict[str, Dataset] = {"preloaded": data}
    for workers in args.workers:
        paths[f"loader, {workers} workers"] = dataclasses.replace(data, loader=Loader(workers))
    with tempfile.TemporaryDirectory() as tmp:
        # the same number of training items, split off as the file's held-out share
        np.save(Path(tmp) / "items.npy", torch.cat([data.train, data.test]).numpy())
        share = len(data.test) / (len(data.train) + len(data.test))
        mapped = load_dataset(path=Path(tmp) / "items.npy", mmap=True, test_fraction=share)
        paths["mmap, 0 workers"] = dataclasses.replace(mapped, loader=Loader(0))
        rows = [(name, *time_path(d, args.batch_size, args.rounds)) for name, d in paths.items()]
    base = rows[0][2]
    lines = [
        f"{args.dataset}, {len(data.train)} train items, batch {args.batch_size}, "
        f"{torch.get_num_threads()} thread(s), median of {args.rounds}",
        "",
        "| path | data pass (s) | epoch (s) | epoch / preloaded |",
        "| --- | --- | --- | --- |",
        *(f"| {n} | {p:.3f} | {e:.3f} | {e / base:.2f} |" for n, p, e in rows),
    ]
    text = "\n".join(lines)
    print(text)
    if args.markdown is not None:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
