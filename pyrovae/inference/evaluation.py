r"""Evaluation: held-out ELBO, importance-weighted log-likelihood, reconstruction error.

For a data point :math:`x` and :math:`z_k \sim q(z \mid x)` the log importance
weights are :math:`\log w_k = \log p(x, z_k) - \log q(z_k \mid x)`, computed here
from Pyro traces (the guide traced, the model replayed on its samples) with
``K`` particles in a vectorized outer plate. From them:

.. math::

    \mathrm{ELBO}(x) \approx \frac{1}{K} \sum_{k=1}^K \log w_k, \qquad
    \log p(x) \approx \mathcal{L}_K(x) = \log \frac{1}{K} \sum_{k=1}^K w_k

:math:`\mathcal{L}_K` is a lower bound on :math:`\log p(x)` in expectation, it
increases with :math:`K`, and it converges to :math:`\log p(x)` (Burda et al. 2015).
Particles are processed in chunks so memory stays bounded for ``K = 5000``.

References
----------
- Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

if TYPE_CHECKING:
    from pyrovae.variants import VAE


__all__ = [
    "evaluate",
    "heldout_elbo",
    "iwae_log_likelihood",
    "log_weights",
    "reconstruction_error",
]

#: elements per particle chunk (a few hundred MB of float32 activations at most)
CHUNK_ELEMENTS = 2**24


def _log_prob(trace: poutine.Trace) -> torch.Tensor:
    trace.compute_log_prob()
    return sum(
        site["unscaled_log_prob"]
        for site in trace.nodes.values()
        if site["type"] == "sample" and not site_is_subsample(site)
    )


@torch.no_grad()
def log_weights(
    vae: VAE,
    x: torch.Tensor,
    num_samples: int = 1,
    y: torch.Tensor | None = None,
    *,
    guide: Callable | None = None,
) -> torch.Tensor:
    r"""Log importance weights :math:`\log p(x, z_k) - \log q(z_k \mid x)`, shape ``(K, len(x))``.

    Computed without the KL weight :math:`\beta` or minibatch scaling, i.e. for the
    true joint density. Labels ``y`` (one per item) are passed to the model and the
    guide of a VAE that takes them (conditional and semi-supervised variants).
    ``guide`` replaces the VAE's amortized guide as the proposal :math:`q` (any guide
    with the model's signature, e.g. a :class:`~pyrovae.guides.LocalNormalGuide`).
    """
    labels = {} if y is None else {"y": y}
    guide = vae.guide if guide is None else guide
    per_particle = max(1, len(x) * math.prod(x.shape[1:]) * 4)
    chunk = max(1, min(num_samples, CHUNK_ELEMENTS // per_particle))
    weights = []
    for start in range(0, num_samples, chunk):
        size = min(chunk, num_samples - start)
        with pyro.plate("particles", size, dim=-2):
            guide_trace = poutine.trace(guide).get_trace(x, **labels)
            model = poutine.replay(vae.model, trace=guide_trace)
            model_trace = poutine.trace(model).get_trace(x, **labels)
        weights.append(_log_prob(model_trace) - _log_prob(guide_trace))
    return torch.cat(weights).reshape(num_samples, len(x))


def _batched(x: torch.Tensor, batch_size: int, y: torch.Tensor | None = None):
    """``(x, y)`` slices of ``batch_size`` items (``y`` slices are ``None`` without labels)."""
    for start in range(0, len(x), batch_size):
        end = start + batch_size
        yield x[start:end], None if y is None else y[start:end]


@contextlib.contextmanager
def _eval_mode(vae: VAE) -> Iterator[None]:
    was_training = vae.training
    vae.eval()
    try:
        yield
    finally:
        vae.train(was_training)


@torch.no_grad()
def heldout_elbo(
    vae: VAE, x: torch.Tensor, batch_size: int = 500, y: torch.Tensor | None = None
) -> float:
    """Single-sample ELBO estimate on held-out data, nats per data point (no optimizer step)."""
    with _eval_mode(vae):
        total = sum(log_weights(vae, xb, 1, yb).sum() for xb, yb in _batched(x, batch_size, y))
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
    (of :math:`\log p(x \mid y)` for a conditional VAE given labels ``y``)."""
    return torch.cat(
        [
            torch.logsumexp(log_weights(vae, xb, num_samples, yb), dim=0) - math.log(num_samples)
            for xb, yb in _batched(x, batch_size, y)
        ]
    )


@torch.no_grad()
def reconstruction_error(
    vae: VAE, x: torch.Tensor, batch_size: int = 500, y: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Per-item mean squared error between ``x`` and :math:`E[x \mid z = \mu_\phi(x)]`."""
    return torch.cat(
        [
            (vae.reconstruct(xb, **({} if yb is None else {"y": yb})) - xb)
            .pow(2)
            .flatten(1)
            .mean(1)
            for xb, yb in _batched(x, batch_size, y)
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
    KL(q(z|x) || p(z|x)) up to Monte Carlo error) and ``reconstruction_mse``.
    """
    elbos, log_px = [], []
    with _eval_mode(vae):
        for xb, yb in _batched(x, batch_size, y):
            lw = log_weights(vae, xb, num_samples, yb)
            elbos.append(lw.mean(0))
            log_px.append(torch.logsumexp(lw, dim=0) - math.log(num_samples))
    elbo, log_px = torch.cat(elbos).mean().item(), torch.cat(log_px).mean().item()
    return {
        "num_data": len(x),
        "num_samples": num_samples,
        "elbo": elbo,
        "log_likelihood": log_px,
        "kl_gap": log_px - elbo,
        "reconstruction_mse": reconstruction_error(vae, x, batch_size, y).mean().item(),
    }
