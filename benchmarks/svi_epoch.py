"""Time one training epoch of pyrovae against a plain-PyTorch VAE of the same network and loss.

pyrovae runs ``Trainer.epoch`` (what :func:`pyrovae.train` calls once per epoch)
over a preloaded :class:`pyrovae.Dataset`, eagerly and with ``--compile``; the
reference does the same by hand, eagerly and with its loss in ``torch.compile``:
``randperm`` the training set, index minibatches out of the preloaded tensor, drop
a last short batch, one Adam step per batch, one ``.item()`` at the end. All train
the MLP 784-400-50 on real Fashion-MNIST from the same initial weights. The targets:
pyrovae with ``Trace_ELBO`` at most 1.15x eager PyTorch, and with ``--compile`` at
most 0.9x at batch 256 and 1.0x at batch 128.

Examples
--------
::

    python benchmarks/svi_epoch.py
    python benchmarks/svi_epoch.py --batch-sizes 256 --rounds 5
    python benchmarks/svi_epoch.py --limit 10000 --device cuda --markdown epoch.md
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    Parser,
    Timing,
    add_common_arguments,
    build_candidates,
    environment,
    markdown_table,
    parse_args,
    report,
    time_paired,
)
from pyrovae.data import DATASETS, Dataset, load_dataset
from pyrovae.inference.training import elbo_context

FULL = {"batch_sizes": [64, 256, 1024], "rounds": 3, "warmup": 10, "limit": None}
QUICK = {"batch_sizes": [64], "rounds": 2, "warmup": 1, "limit": 256}
COLUMNS = [*Timing.COLUMNS, "steps/epoch"]
COLUMNS[2] = "torch s"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument(
        "--limit", type=int, help="use only the first N training items (default: all)"
    )
    parser.add_argument(
        "--dataset", default="fashion-mnist", choices=DATASETS, help="the data to train on"
    )
    parser.add_argument("--data-dir", type=Path, help="folder holding the IDX files")
    return parser


def time_epochs(
    args: argparse.Namespace, device: torch.device, data: Dataset, batch_size: int, elbo: str
) -> Timing:
    """Seconds per epoch of pyrovae and the reference, one entry per round."""
    num_data = len(data.train)
    warmup = data.train[:batch_size]
    with elbo_context(elbo):
        candidates = build_candidates(
            elbo, batch_size, data.shape, num_data, device, args.seed, warm_up=warmup
        )
        candidates["pyrovae"].vae.validate_data(data.train, "training data")  # as train does
        for candidate in candidates.values():
            for _ in range(max(args.warmup, 1)):  # torch.compile compiles at its first call
                candidate.step(warmup)
        seconds = time_paired(
            {name: (lambda c=c: c.epoch(data)) for name, c in candidates.items()},
            args.rounds,
            device,
        )
    return Timing(batch_size, elbo, seconds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, device = parse_args(parser, argv, FULL, QUICK)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be positive")
    # preloaded on the device, as pyrovae.run.load_data does when the data fits
    data = load_dataset(args.dataset, data_dir=args.data_dir, limit=args.limit).to(device)
    num_items = len(data.train)
    rows = []
    for batch_size in args.batch_sizes:
        steps = num_items // batch_size if num_items > batch_size else 1
        for elbo in args.elbo:
            timing = time_epochs(args, device, data, batch_size, elbo)
            rows.append([*timing.summary(scale=1.0, digits=3), str(steps)])
            print(" ".join(rows[-1]), flush=True)
    report(
        "SVI epoch: pyrovae vs plain PyTorch",
        [
            environment(device),
            f"MLP {'-'.join(map(str, (data.train[0].numel(), 400, 50)))}, Bernoulli logits, "
            f"Adam lr 1e-3, {args.dataset} ({num_items} training items, grayscale); "
            f"{args.rounds} epochs per method, alternating, after {args.warmup} warm-up steps",
            "torch s = eager PyTorch's median seconds per epoch; X / torch = median over "
            "rounds of X's time / torch's time in the same round (min-max over rounds); "
            "--compile = the SVI step traced and compiled as one graph, fused Adam; "
            "torch.compile = the reference's loss compiled, default Adam; minimal Pyro = "
            "the same VAE in the fewest lines of Pyro (Pyro's tutorial, in logits)",
        ],
        markdown_table(COLUMNS, rows),
        args.markdown,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
