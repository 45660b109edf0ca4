r"""A gold-standard posterior: NUTS on :math:`p_\theta(z \mid x)` under the trained decoder.

The guide :math:`q_\phi(z \mid x)` is an approximation; Hamiltonian Monte Carlo
samples the exact posterior of the same model,

.. math::

    p_\theta(z \mid x) \propto p(z)\, p_\theta(x \mid z),

with Pyro's ``MCMC(NUTS(vae.model))`` on the model conditioned on ``x`` (the decoder's
weights held fixed). The items of ``x`` are independent given the decoder, so one run
samples all of them jointly (an ``N * latent_dim``-dimensional target with a
diagonal mass matrix adapted during warmup). Chains run one after another in this
process, each started from a draw of the prior (``init_to_sample``), which is
overdispersed relative to the posterior as the split-:math:`\hat R` diagnostic
requires. The draws go into ``InferenceData`` with the dims of
:mod:`pyrovae.inference.inspection.posterior`, and ``sample_stats.diverging``;
``arviz.summary`` then gives :math:`\hat R` and bulk/tail ESS.

References
----------
- Hoffman & Gelman (2014), The No-U-Turn Sampler. JMLR 15.
- Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021), Rank-normalization, folding,
  and localization: an improved R-hat for assessing convergence of MCMC. Bayesian Analysis.
- Cremer, Li & Duvenaud (2018), Inference Suboptimality in Variational Autoencoders.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide.initialization import init_to_sample

from pyrovae.errors import ConfigError
from pyrovae.inference.evaluation import eval_mode
from pyrovae.inference.inspection.posterior import coords_and_dims, import_arviz
from pyrovae.inference.sites import latent_sites, require, require_single_latent
from pyrovae.progress import active as progress_active

if TYPE_CHECKING:
    import arviz

    from pyrovae.variants import VAE

__all__ = ["frozen", "max_r_hat", "nuts_posterior"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """Hold a module's parameters fixed (``requires_grad=False``) and in eval mode for a while."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with eval_mode(module):
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def nuts_posterior(
    vae: VAE,
    x: torch.Tensor,
    *,
    num_samples: int = 500,
    num_warmup: int = 500,
    num_chains: int = 4,
    items: Sequence[int] | None = None,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    progress: bool | None = None,
) -> arviz.InferenceData:
    r"""Sample :math:`p_\theta(z \mid x)` with NUTS; return ``InferenceData``.

    Parameters
    ----------
    vae : VAE
        A trained VAE (its decoder and prior define the target).
    x : torch.Tensor
        Inputs of shape ``(N, *event_shape)``.
    num_samples, num_warmup : int
        Draws kept per chain, and warmup (step size and mass matrix adaptation) steps.
    num_chains : int
        Independent chains (run sequentially), each started from a prior draw.
    items : sequence of int, optional
        Coordinates of the ``item`` dimension, as in :func:`posterior_draws`.
    target_accept_prob, max_tree_depth : float, int
        NUTS settings (Pyro's defaults).
    progress : bool, optional
        Show Pyro's progress bar of each chain; ``None``: as :mod:`pyrovae.progress` says
        (inside a :func:`~pyrovae.progress.enabled` block, on a terminal).

    Returns
    -------
    arviz.InferenceData
        ``posterior.z`` (chain, draw, item, latent_dim), ``sample_stats.diverging``
        (chain, draw), ``observed_data.x``; ``attrs`` hold the adapted step sizes.
    """
    az = import_arviz()
    for name, value, low in (
        ("num_samples", num_samples, 1),
        ("num_warmup", num_warmup, 0),
        ("num_chains", num_chains, 1),
    ):
        if value < low:
            raise ConfigError(f"NUTS {name} must be >= {low}, got {value}")
    require(vae, "posterior", "NUTS on p(z | x)")
    require(vae, "likelihood", "NUTS on p(z | x)")
    vae.require_unconditional("NUTS on p(z | x)")
    require_single_latent(vae, "NUTS on p(z | x)")
    vae.validate_data(x, "inputs to inspect")
    x = x.to(vae.device)
    (site,) = latent_sites(vae)
    coords, dims = coords_and_dims(vae, x, items, {site: vae.latent_dim})
    draws, diverging, step_sizes = [], [], []
    show = progress_active() if progress is None else progress
    with frozen(vae):
        for chain in range(num_chains):
            kernel = NUTS(
                vae.model,
                init_strategy=init_to_sample,
                target_accept_prob=target_accept_prob,
                max_tree_depth=max_tree_depth,
                max_plate_nesting=1,
            )
            mcmc = MCMC(
                kernel,
                num_samples=num_samples,
                warmup_steps=num_warmup,
                num_chains=1,
                disable_progbar=not show,
            )
            mcmc.run(x)
            z = mcmc.get_samples()[site]
            draws.append(z.detach().cpu().numpy())
            flags = np.zeros(num_samples, dtype=bool)
            divergent = [i for i in mcmc.diagnostics()["divergences"]["chain 0"] if i >= 0]
            flags[divergent] = True
            diverging.append(flags)
            step_sizes.append(float(kernel.step_size))
            logger.info(
                "NUTS chain %d/%d: step size %.3g, %d divergent transitions",
                chain + 1,
                num_chains,
                kernel.step_size,
                flags.sum(),
            )
    return az.from_dict(
        posterior={site: np.stack(draws)},
        sample_stats={"diverging": np.stack(diverging)},
        observed_data={"x": x.cpu().numpy()},
        coords=coords,
        dims=dims,
        attrs={
            "inference_library": "pyro",
            "sampler": "NUTS",
            "target": "p(z|x) under the trained decoder",
            "num_warmup": num_warmup,
            "step_size": step_sizes,
        },
    )


def max_r_hat(idata: arviz.InferenceData) -> float:
    """The largest rank-normalized split-:math:`\\hat R` of ``z`` (unrounded; NaN if undefined,
    e.g. for a chain that never moved, and for a single chain, which has no other chain to
    compare with). Below 1.01 is the usual criterion of mixing."""
    if idata.posterior.sizes["chain"] < 2:
        return float("nan")  # (ArviZ would log a shape-validation warning)
    az = import_arviz()
    with np.errstate(divide="ignore", invalid="ignore"):
        r_hat = az.rhat(idata, var_names=["z"])["z"].values
    return float("nan") if np.isnan(r_hat).any() else float(r_hat.max())
