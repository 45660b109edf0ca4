r"""Evaluation: held-out ELBO, importance-weighted log-likelihood, reconstruction error.

From the log importance weights :math:`\log w_k = \log p(x, z_k) - \log q(z_k \mid x)`
of ``K`` draws :math:`z_k \sim q(z \mid x)`
(:func:`~pyrovae.inference.evaluation.weights.importance_weights`):

.. math::

    \mathrm{ELBO}(x) \approx \frac{1}{K} \sum_{k=1}^K \log w_k, \qquad
    \log p(x) \approx \mathcal{L}_K(x) = \log \frac{1}{K} \sum_{k=1}^K w_k

:math:`\mathcal{L}_K` is a lower bound on :math:`\log p(x)` in expectation, it
increases with :math:`K`, and it converges to :math:`\log p(x)` (Burda et al. 2015).

When the likelihood is a probability mass function on the data's grid (8-bit images under
the discretized logistic: :attr:`Likelihood.discrete_bins <pyrovae.model.Likelihood>`),
the same numbers are also given in bits per dimension, the unit of the image-modelling
literature (:func:`bits_per_dim`):

.. math::

    \mathrm{bits/dim} = \frac{-\log p(x)}{D \ln 2},

with :math:`D` the values of one item (784 for a 28x28 grey image, 3072 for 32x32 colour).

References
----------
- Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from pyrovae.inference.evaluation.tables import (
    columns_likelihood,
    reconstruction_nll,
    table_reconstruction_errors,
)
from pyrovae.inference.evaluation.weights import batches, eval_mode, log_mean_exp, log_weights

if TYPE_CHECKING:
    from pyrovae.variants import VAE

#: a latent dimension is active when the variance over the items of its posterior mean
#: exceeds this (Burda et al. 2016); every tool that counts active units reads it
ACTIVE_THRESHOLD = 0.01


def is_active(variance: Any, threshold: float = ACTIVE_THRESHOLD) -> Any:
    """Which latent dimensions are active units, from the variance over the items of each
    one's posterior mean (a tensor or an array; the same type of booleans back)."""
    return variance > threshold


__all__ = [
    "ACTIVE_THRESHOLD",
    "bits_per_dim",
    "bits_per_dim_entries",
    "evaluate",
    "heldout_elbo",
    "is_active",
    "iwae_log_likelihood",
    "reconstruction_error",
]


def bits_per_dim(log_likelihood: float, num_dims: int) -> float:
    r"""A log-likelihood per item in nats as bits per dimension,
    :math:`-\log p(x) / (D \ln 2)` for items of ``num_dims`` values :math:`D` (lower is
    better)."""
    return -float(log_likelihood) / (num_dims * math.log(2))


def bits_per_dim_entries(vae: VAE, x: torch.Tensor, nats: Mapping[str, float]) -> dict[str, float]:
    """Each named log-likelihood (or bound) per item of ``nats`` in bits per dimension of the
    items ``x``, when ``vae``'s likelihood is a probability mass function on the data's grid
    (its ``discrete_bins`` is set); nothing otherwise, as a density's bits or a Bernoulli's
    on grey values do not compare with the literature's."""
    likelihood = getattr(getattr(vae, "model", None), "likelihood", None)
    if getattr(likelihood, "discrete_bins", None) is None:
        return {}
    num_dims = math.prod(x.shape[1:])
    return {key: bits_per_dim(value, num_dims) for key, value in nats.items()}


@torch.no_grad()
def heldout_elbo(
    vae: VAE, x: torch.Tensor, batch_size: int = 500, y: torch.Tensor | None = None
) -> float:
    """Single-sample ELBO estimate on held-out data, nats per data point (no optimizer step)."""
    with eval_mode(vae):
        total = sum(log_weights(vae, xb, 1, yb).sum() for xb, yb in batches(x, batch_size, y))
    return float(total) / len(x)


@torch.no_grad()
def iwae_log_likelihood(
    vae: VAE,
    x: torch.Tensor,
    num_samples: int = 1000,
    batch_size: int = 500,
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Per-item IWAE estimate :math:`\mathcal{L}_K(x)` of :math:`\log p(x)` in nats
    (of :math:`\log p(x \mid y)` for a conditional VAE given labels ``y``); a progress bar
    as in :func:`evaluate`."""
    with eval_mode(vae):
        return torch.cat(
            [
                log_mean_exp(log_weights(vae, xb, num_samples, yb))
                for xb, yb in batches(x, batch_size, y, desc=f"IWAE log p(x), K={num_samples}")
            ]
        )


@torch.no_grad()
def reconstruction_error(
    vae: VAE, x: torch.Tensor, batch_size: int = 500, y: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Per-item mean squared error between ``x`` and :math:`E[x \mid z = \mu_\phi(x)]`;
    for a table (the ``columns`` likelihood), where squared differences of category codes
    mean nothing, the negative log-likelihood :math:`-\log p(x_{obs} \mid z = \mu_\phi(x))`
    in nats (:func:`~pyrovae.inference.evaluation.tables.reconstruction_nll`)."""
    if columns_likelihood(vae) is not None:
        return reconstruction_nll(vae, x, batch_size)
    return torch.cat(
        [
            (vae.reconstruct(xb, **({} if yb is None else {"y": yb})) - xb)
            .pow(2)
            .flatten(1)
            .nanmean(1)
            for xb, yb in batches(x, batch_size, y)
        ]
    )


@torch.no_grad()
def evaluate(
    vae: VAE,
    x: torch.Tensor,
    num_samples: int = 1000,
    batch_size: int = 500,
    y: torch.Tensor | None = None,
) -> dict[str, float]:
    """Held-out summary in nats per data point (higher ELBO and log p(x) are better).

    Returns ``elbo`` (mean over the same ``K`` samples), ``log_likelihood`` (IWAE
    with ``K`` samples), ``kl_gap`` (their difference, an upper bound on the mean
    KL(q(z|x) || p(z|x)) up to Monte Carlo error) and ``reconstruction_mse``; for a table
    (the ``columns`` likelihood), its errors per column type instead
    (:func:`~pyrovae.inference.evaluation.tables.table_reconstruction_errors`). With a
    likelihood that is a probability mass function on the data's grid also
    ``bits_per_dim`` (of the IWAE ``log_likelihood``) and ``elbo_bits_per_dim`` (of the
    ELBO, an upper bound; :func:`bits_per_dim_entries`).

    Inside a :func:`pyrovae.progress.enabled` block, a bar on a terminal counts the items.
    """
    elbos, log_px = [], []
    with eval_mode(vae):
        for xb, yb in batches(x, batch_size, y, desc=f"IWAE log p(x), K={num_samples}"):
            lw = log_weights(vae, xb, num_samples, yb)
            elbos.append(lw.mean(0))
            log_px.append(log_mean_exp(lw))
    elbo, log_px = torch.cat(elbos).mean().item(), torch.cat(log_px).mean().item()
    summary = {
        "num_data": len(x),
        "num_samples": num_samples,
        "elbo": elbo,
        "log_likelihood": log_px,
        "kl_gap": log_px - elbo,
        **bits_per_dim_entries(vae, x, {"bits_per_dim": log_px, "elbo_bits_per_dim": elbo}),
    }
    if columns_likelihood(vae) is not None:
        return {**summary, **table_reconstruction_errors(vae, x, batch_size)}
    summary["reconstruction_mse"] = reconstruction_error(vae, x, batch_size, y).mean().item()
    return summary
