r"""Evaluation: held-out ELBO, importance-weighted log-likelihood, reconstruction error.

From the log importance weights :math:`\log w_k = \log p(x, z_k) - \log q(z_k \mid x)`
of ``K`` draws :math:`z_k \sim q(z \mid x)`
(:func:`~pyrovae.inference.evaluation.weights.importance_weights`):

.. math::

    \mathrm{ELBO}(x) \approx \frac{1}{K} \sum_{k=1}^K \log w_k, \qquad
    \log p(x) \approx \mathcal{L}_K(x) = \log \frac{1}{K} \sum_{k=1}^K w_k

:math:`\mathcal{L}_K` is a lower bound on :math:`\log p(x)` in expectation, it
increases with :math:`K`, and it converges to :math:`\log p(x)` (Burda et al. 2015).

References
----------
- Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders.
"""

from __future__ import annotations

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
    "evaluate",
    "heldout_elbo",
    "is_active",
    "iwae_log_likelihood",
    "reconstruction_error",
]


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
    (:func:`~pyrovae.inference.evaluation.tables.table_reconstruction_errors`).

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
    }
    if columns_likelihood(vae) is not None:
        return {**summary, **table_reconstruction_errors(vae, x, batch_size)}
    summary["reconstruction_mse"] = reconstruction_error(vae, x, batch_size, y).mean().item()
    return summary
