r"""Posterior collapse on purpose, and what KL annealing, cyclical annealing and free bits do.

A VAE whose reconstruction term is weak next to its KL term lets the posterior
collapse onto the prior: with a Gaussian likelihood of a large fixed scale
:math:`\sigma` a latent direction only pays for its KL when it explains more pixel
variance than :math:`\sigma^2` (for a linear decoder this is probabilistic PCA, whose
maximum-likelihood solution drops every principal direction with variance below
:math:`\sigma^2`; Tipping & Bishop 1999). On the bundled digits (64 pixels in [0, 1])
``--scale 0.6`` puts all but a few directions below that line, so the plain ELBO
keeps few active units. Each row trains the same network for the same number of
epochs from the same initial weights and differs only in the objective:

- ``ELBO``: ``Trace_ELBO`` with :math:`\beta = 1`;
- ``linear annealing``: :math:`\beta` warms up from 0 to 1 over the first quarter
  of the run (Bowman et al. 2016);
- ``cyclical annealing``: 4 cycles, half of each spent increasing (Fu et al. 2019);
- ``free bits``: ``FreeBits_ELBO``, every dimension charged at least
  :math:`\lambda` nats (Kingma et al. 2016);
- ``InfoVAE``: ``InfoVAE_ELBO`` (Zhao et al. 2017) with :math:`\alpha = 0` (the ELBO plus
  an MMD penalty between the aggregate posterior and the prior) and with
  :math:`\alpha = 1` (the MMD-VAE: no per-point KL term, only the MMD).

Columns (all on the held-out digits): active units (Burda et al. 2016, threshold
0.01), the KL and the mutual information :math:`I(x; z)` of
:mod:`pyrovae.inference.inspection.diagnostics`, the ELBO and the IWAE log-likelihood with ``K``
importance samples (nats per image; the Gaussian likelihood is a density, so the
values can exceed 0).

Examples
--------
::

    python benchmarks/collapse.py
    python benchmarks/collapse.py --scale 1.0 --epochs 300 --markdown collapse.md
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pyro
import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import Parser, environment, markdown_table, report
from pyrovae import VAE, Config
from pyrovae.config import DEVICES
from pyrovae.errors import ConfigError
from pyrovae.inference.evaluation import evaluate
from pyrovae.inference.inspection.diagnostics import diagnose
from pyrovae.run import load_data, resolve_device, train

FULL = {"epochs": 100, "num_samples": 1000}
QUICK = {"epochs": 4, "num_samples": 10}
COLUMNS = [
    "objective",
    "active units",
    "KL",
    "I(x; z)",
    "held-out ELBO",
    "IWAE log p(x)",
    "seconds",
]


def rows(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """The objectives compared: config changes against the plain ELBO."""
    return {
        "ELBO": {},
        "linear annealing": {
            "kl_schedule": "linear",
            "warmup_epochs": max(1, args.epochs // 4),
        },
        "cyclical annealing": {"kl_schedule": "cyclical", "num_cycles": 4, "cycle_ratio": 0.5},
        f"free bits (lambda = {args.free_bits:g})": {
            "elbo": "FreeBits_ELBO",
            "free_bits": args.free_bits,
        },
        "InfoVAE (alpha = 0, lambda = 1000)": {
            "elbo": "InfoVAE_ELBO",
            "mmd_alpha": 0.0,
            "mmd_lambda": 1000.0,
        },
        "MMD-VAE (alpha = 1, lambda = 100)": {
            "elbo": "InfoVAE_ELBO",
            "mmd_alpha": 1.0,
            "mmd_lambda": 100.0,
        },
    }


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, help="epochs per row (default 100; --quick 4)")
    parser.add_argument("--scale", type=float, default=0.6, help="Gaussian likelihood scale")
    parser.add_argument("--latent-dim", type=int, default=16, help="dimension of z")
    parser.add_argument("--free-bits", type=float, default=0.5, help="lambda, nats per dim")
    parser.add_argument(
        "-k", "--num-samples", type=int, help="importance samples for log p(x) (default 1000)"
    )
    parser.add_argument("--device", default="cpu", choices=DEVICES)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="seed of data split and weights")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run (CI)")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="also write the table here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.epochs < 1 or args.num_samples < 1 or args.threads < 1:
        parser.error("--epochs, --num-samples and --threads must be positive")
    torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
        base = Config.from_flags(
            likelihood="gaussian",
            scale=args.scale,
            latent_dim=args.latent_dim,
            num_epochs=args.epochs,
            seed=args.seed,
        )
    except ConfigError as e:
        parser.error(str(e))
    data = load_data(base, device)
    table = []
    for label, changes in rows(args).items():
        config = base.replace(**changes)
        pyro.set_rng_seed(args.seed)
        vae = VAE.from_section(config.model, data.shape).to(device)
        begin = time.perf_counter()
        train(vae, data, config, progress=False)
        seconds = time.perf_counter() - begin
        codes = diagnose(vae, data.test)
        scores = evaluate(vae, data.test, args.num_samples)
        table.append(
            [
                label,
                f"{codes['active_units']} / {config.model['latent_dim']}",
                f"{codes['kl']:.2f}",
                f"{codes['mutual_information']:.2f}",
                f"{scores['elbo']:.2f}",
                f"{scores['log_likelihood']:.2f}",
                f"{seconds:.0f}",
            ]
        )
    model, optimization = base.model, base.optimization
    lines = [
        f"digits ({len(data.train)} train / {len(data.test)} held-out images), MLP "
        f"64-{'-'.join(map(str, model['hidden']))}-{model['latent_dim']}, Gaussian likelihood "
        f"with fixed scale {model['likelihood']['scale']:g}, {args.epochs} epochs at batch "
        f"{optimization['batch_size']}, Adam {optimization['learning_rate']:g}, seed "
        f"{args.seed}; log p(x) with K = {args.num_samples}",
        environment(device),
    ]
    report("Posterior collapse", lines, markdown_table(COLUMNS, table), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
