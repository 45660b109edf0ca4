"""Swap the prior p(z) and the likelihood p(x | z) of a VAE by name, and compare them.
===================================================================================

Each row of the table trains the same encoder/decoder on scikit-learn's bundled 8x8
digits with another prior x likelihood pair, then scores the held-out images with
the single-sample ELBO and the importance-weighted (IWAE) estimate of log p(x)::

    .venv/bin/python examples/swap_prior_likelihood.py            # under a minute on 2 CPU cores
    .venv/bin/python examples/swap_prior_likelihood.py --num-epochs 1 --limit 64   # smoke test

Read the table row against row only where the likelihood is the same: each likelihood
measures x in its own units, so their nats are not comparable to one another. The
Bernoulli scores grey levels with a probability mass function for {0, 1} (a
cross-entropy, not a normalised density of grey pixels); the continuous Bernoulli is
a density on [0, 1] and the Gaussian a density on the real line, and densities of
concentrated data can be far above 1, which is why their "log p(x)" is positive.
"""

from __future__ import annotations

import argparse
import time

import pyro
import torch

from pyrovae import VAE, Config, evaluate, load_dataset, train

# (prior, likelihood, extra options for VAE(...)): every name is a registry key, the
# same names the command line accepts (`pyrovae train --prior mixture ...`).
COMBINATIONS = [
    # the textbook VAE: N(0, I) prior, Bernoulli pixels
    ("normal", "bernoulli", {}),
    # a learnable mixture of 10 Gaussians, and the normalised continuous Bernoulli
    ("mixture", "continuous-bernoulli", {"num_components": 10}),
    # a learnable diagonal Gaussian prior, and Gaussian pixels with one learned scale
    # (``scale`` is its initial value; "pixel" would learn one scale per pixel)
    ("learned-normal", "gaussian", {"learn_scale": "global", "scale": 0.1}),
]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--num-epochs", type=int, default=100, help="SVI epochs per model")
    parser.add_argument("--limit", type=int, help="use only the first N train and test images")
    parser.add_argument(
        "--num-eval-samples", type=int, default=500, help="importance samples K for IWAE"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--latent-dim", type=int, default=8)
    parser.add_argument(
        "--num-threads", type=int, default=1, help="torch CPU threads (0: torch's default)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.num_threads > 0:
        # The networks are tiny: one thread per process is as fast as several, and far
        # faster when the cores are shared (idle threads busy-wait for work).
        torch.set_num_threads(args.num_threads)

    data = load_dataset("digits", limit=args.limit, seed=args.seed)
    # The training settings. Config also has prior/likelihood fields, but train() only
    # reads the optimisation settings from it; the model is whatever VAE we hand it.
    config = Config.from_flags(
        num_epochs=args.num_epochs, batch_size=args.batch_size, seed=args.seed
    )
    print(f"{len(data.train)} training and {len(data.test)} held-out {data.name} images")

    rows = []
    for prior, likelihood, options in COMBINATIONS:
        pyro.set_rng_seed(args.seed)  # the same initial networks for every row
        vae = VAE(
            data.shape, latent_dim=args.latent_dim, prior=prior, likelihood=likelihood, **options
        )
        start = time.perf_counter()
        train(vae, data, config, progress=False)
        # Both numbers are nats per held-out image; higher is better. The IWAE bound
        # with K samples is >= the ELBO and approaches log p(x) as K grows.
        result = evaluate(vae, data.test, num_samples=args.num_eval_samples)
        rows.append(
            {
                "prior": prior,
                "likelihood": likelihood,
                "elbo": result["elbo"],
                "log_likelihood": result["log_likelihood"],
                "seconds": time.perf_counter() - start,
            }
        )
        if likelihood == "gaussian":  # its scale was learned along with the networks
            learned = vae.model.likelihood.scale.item()
            rows[-1]["note"] = f"learned pixel scale {learned:.3f}"

    print()
    print(f"{'prior':<16} {'likelihood':<22} {'ELBO':>9} {'IWAE log p(x)':>14} {'time':>7}")
    for row in rows:
        line = (
            f"{row['prior']:<16} {row['likelihood']:<22} {row['elbo']:>9.2f} "
            f"{row['log_likelihood']:>14.2f} {row['seconds']:>6.1f}s  {row.get('note', '')}"
        )
        print(line.rstrip())
    print(f"\nnats per held-out image (higher is better), IWAE with K={args.num_eval_samples};")
    print("compare rows only within one likelihood: each measures x in its own units")
    return rows


if __name__ == "__main__":
    main()
