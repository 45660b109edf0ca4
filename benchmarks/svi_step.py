"""Time one SVI step of pyrovae against a plain-PyTorch VAE of the same network and loss.

pyrovae runs its variant's SVI step (what :func:`pyrovae.train` calls); the reference
runs the hand-written loss of :mod:`benchmarks.common` with ``torch.optim.Adam``.
Both train the MLP 784-400-50 with the same initial weights on the same minibatches
of random binary 28x28 images, scaled as minibatches of ``--num-data`` points
(Fashion-MNIST's 60000 by default: the size of the plate matters, since the plate
draws a random subsample of it every step).

Examples
--------
::

    python benchmarks/svi_step.py
    python benchmarks/svi_step.py --batch-sizes 256 --elbo Trace_ELBO --rounds 15
    python benchmarks/svi_step.py --device cuda --markdown step.md
    python benchmarks/svi_step.py --batch-sizes 256 --elbo Trace_ELBO --profile 12

``--profile N`` also prints, for each candidate, the N operations that took the most time
of its own (``torch.profiler``, over the timed steps of one extra round): where a step's
time goes, and what compiling removes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
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
from pyrovae.inference.training import elbo_context

EVENT_SHAPE = (1, 28, 28)
FULL = {"batch_sizes": [64, 256, 1024], "rounds": 9, "steps": 40, "warmup": 10}
QUICK = {"batch_sizes": [32], "rounds": 2, "steps": 2, "warmup": 1}
COLUMNS = list(Timing.COLUMNS)
COLUMNS[2] = "torch ms"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--steps", type=int, help="timed steps per method per round")
    parser.add_argument(
        "--num-data", type=int, default=60000, help="N of the plate (minibatch scale N/B)"
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="print each candidate's N costliest operations (torch.profiler)",
    )
    return parser


def profile(name: str, run: Callable[[], None], device: torch.device, rows: int) -> None:
    """Print the ``rows`` operations of ``run`` with the most self time."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        run()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=48)
    print(f"\n### {name}\n{table}", flush=True)


def _run(
    step: Callable[[torch.Tensor], torch.Tensor], batches: torch.Tensor, steps: int
) -> Callable[[], None]:
    """``steps`` calls of ``step``, cycling through ``batches``."""

    def run() -> None:
        for i in range(steps):
            step(batches[i % len(batches)])

    return run


def time_steps(
    args: argparse.Namespace, device: torch.device, batch_size: int, elbo: str
) -> Timing:
    """Per-step seconds of pyrovae and the reference, one entry per round."""
    generator = torch.Generator().manual_seed(args.seed)
    shape = (min(args.steps, 8), batch_size, *EVENT_SHAPE)
    batches = torch.randint(0, 2, shape, generator=generator).float().to(device)
    with elbo_context(elbo):
        candidates = build_candidates(
            elbo, batch_size, EVENT_SHAPE, args.num_data, device, args.seed, warm_up=batches[0]
        )
        steps = {name: candidate.step for name, candidate in candidates.items()}
        for step in steps.values():
            _run(step, batches, max(args.warmup, 1))()  # torch.compile compiles at its first call
        seconds = time_paired(
            {name: _run(step, batches, args.steps) for name, step in steps.items()},
            args.rounds,
            device,
        )
        if args.profile:
            for name, step in steps.items():
                profile(
                    f"{name}, batch {batch_size}, {elbo}",
                    _run(step, batches, args.steps),
                    device,
                    args.profile,
                )
    per_step = {name: [s / args.steps for s in times] for name, times in seconds.items()}
    return Timing(batch_size, elbo, per_step)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, device = parse_args(parser, argv, FULL, QUICK)
    if args.steps < 1 or args.num_data < max(args.batch_sizes):
        parser.error("--steps must be positive and --num-data at least the largest batch size")
    rows = []
    for batch_size in args.batch_sizes:
        for elbo in args.elbo:
            timing = time_steps(args, device, batch_size, elbo)
            rows.append(timing.summary(scale=1e3, digits=2))
            print(" ".join(rows[-1]), flush=True)
    report(
        "SVI step: pyrovae vs plain PyTorch",
        [
            environment(device),
            f"MLP 784-400-50, Bernoulli logits, Adam lr 1e-3, random binary data scaled as "
            f"N={args.num_data}; {args.rounds} rounds of {args.steps} steps per method "
            f"after {args.warmup} warm-up steps",
            "torch ms = eager PyTorch's median milliseconds per step; X / torch = median over "
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
