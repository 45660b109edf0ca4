"""Inspect a trained VAE's posteriors from Python: ArviZ draws, NUTS, inference gaps, latent space.
================================================================================================

The Python side of ``pyrovae inspect``, ``pyrovae latent``:

1. ``posterior_draws(vae, x, S)``: draws of the amortized guide q(z|x) for three held-out
   digits (and their decoded posterior predictive, the prior and the prior predictive) as
   an ``arviz.InferenceData``; ``posterior_summary`` is ``arviz.summary`` of it;
2. ``nuts_posterior(vae, x)``: the exact posterior p(z|x) under the trained decoder,
   sampled with Pyro's NUTS, and ``compare_posteriors``: the guide against it, marginal by
   marginal (mean and sd differences, overlap);
3. ``inference_gaps(vae, x)``: log p(x), the ELBO of a per-point optimized Gaussian and of
   the amortized guide, hence the approximation and amortization gaps (Cremer et al. 2018);
4. ``latent_report(vae, data)``: KL per latent dimension, active units, I(x; z) and the
   accuracy of a linear probe on the posterior means.

Run it with::

    .venv/bin/python examples/inspect_posterior.py          # about a minute on 2 CPU cores
    .venv/bin/python examples/inspect_posterior.py --num-epochs 1 --limit 64 \\
        --num-warmup 20 --num-mcmc-samples 20 --num-gap-items 4 -k 10 --gap-steps 10
    .venv/bin/python examples/inspect_posterior.py --figures figs   # also save the figures
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pyro
import torch

from pyrovae import Config, fit, plots
from pyrovae.inference import (
    compare_posteriors,
    inference_gaps,
    latent_report,
    nuts_posterior,
    posterior_draws,
    posterior_summary,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--num-epochs", type=int, default=100)
    parser.add_argument("--limit", type=int, help="use only the first N train and test digits")
    parser.add_argument("--num-warmup", type=int, default=200)
    parser.add_argument("--num-mcmc-samples", type=int, default=200)
    parser.add_argument("--num-gap-items", type=int, default=50)
    parser.add_argument("-k", type=int, default=1000, help="importance samples for the gaps")
    parser.add_argument("--gap-steps", type=int, default=500)
    parser.add_argument("--figures", type=Path, help="also save the figures as PNGs in this folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small sequential ops (NUTS): threads only add overhead

    config = Config.from_flags(num_epochs=args.num_epochs, limit=args.limit, num_eval_samples=10)
    with tempfile.TemporaryDirectory() as workdir:
        result = fit(config, workdir, progress=False)
    vae, data = result.vae.eval(), result.data
    pyro.set_rng_seed(0)

    x = data.test[:3]
    q = posterior_draws(vae, x, num_samples=1000, items=[0, 1, 2])
    print("groups:", ", ".join(q.groups()))
    print("dims of posterior z:", dict(q.posterior["z"].sizes))
    print("q(z|x), arviz.summary:")
    print(posterior_summary(q).round(2).to_string())

    nuts = nuts_posterior(
        vae, x, num_samples=args.num_mcmc_samples, num_warmup=args.num_warmup, num_chains=2
    )
    table = compare_posteriors(q, nuts)
    print("\nq(z|x) against NUTS p(z|x), per item and latent dim:")
    print(table[["mean_q", "mean_p", "sd_q", "sd_p", "overlap"]].round(3).to_string())
    if args.figures:
        # the guide's Gaussian marginals over histograms of the NUTS draws, first 4 dims
        figure = plots.posterior_comparison(q, nuts, dims=range(4))
        args.figures.mkdir(parents=True, exist_ok=True)
        figure.savefig(args.figures / "q-against-nuts.png", dpi=100)

    gaps = inference_gaps(
        vae, data.test[: args.num_gap_items], num_samples=args.k, num_steps=args.gap_steps
    )
    summary = gaps.summary()
    print("\ninference gaps, nats per data point:")
    for name in ("log_likelihood", "elbo_optimized", "elbo_amortized"):
        print(f"  {name:<18} {summary[name]:9.3f}")
    for name in ("approximation_gap", "amortization_gap", "inference_gap"):
        print(f"  {name:<18} {summary[name]:9.3f} +- {summary[name + '_sem']:.3f}")

    report = latent_report(vae, data)
    print(f"\nactive units: {report['active_units']} of {report['latent_dim']}")
    print("KL per dim:", " ".join(f"{v:.2f}" for v in report["kl_per_dim"]))
    print(f"linear probe accuracy: {report['probe_accuracy']:.3f}")


if __name__ == "__main__":
    main()
