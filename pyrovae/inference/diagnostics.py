r"""Diagnostics of the latent code: KL per dimension, active units, mutual information.

They tell whether the posterior has collapsed onto the prior (a decoder that ignores
:math:`z`): a collapsed dimension has :math:`\mathrm{KL}_d \approx 0`, its posterior
mean does not vary with :math:`x` (an inactive unit), and it carries no information
about :math:`x`.

All of them read the Gaussian :math:`q(z \mid x) = \mathcal{N}(\mu_\phi(x),
\operatorname{diag}\sigma^2_\phi(x))` that :meth:`pyrovae.VAE.encode` returns.

References
----------
- Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders (active units).
- Hoffman & Johnson (2016), ELBO surgery: yet another way to carve up the variational
  evidence lower bound.
- He, Spokoyny, Neubig & Berg-Kirkpatrick (2019), Lagging Inference Networks and
  Posterior Collapse in Variational Autoencoders.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pyro.distributions as dist
import torch
from torch.distributions import kl_divergence

from pyrovae.errors import ConfigError, DataError
from pyrovae.guides.encoders import diagonal_normal

if TYPE_CHECKING:
    from pyrovae.variants import VAE

__all__ = [
    "active_units",
    "diagnose",
    "encode_all",
    "kl_per_dimension",
    "mutual_information",
    "total_kl",
]


@torch.no_grad()
def encode_all(
    vae: VAE, x: torch.Tensor, batch_size: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and log-variances of ``q(z | x)`` for every item, shape ``(N, D)``."""
    was_training = vae.training
    vae.eval()
    try:
        pairs = [vae.encode(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    finally:
        vae.train(was_training)
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


@torch.no_grad()
def kl_per_dimension(vae: VAE, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    r"""Mean over items of :math:`\mathrm{KL}(q(z_d \mid x) \,\|\, p(z_d))`, shape ``(D,)``.

    .. math::

        \mathrm{KL}_d = \frac{1}{N} \sum_{n=1}^N
        \mathrm{KL}\big(\mathcal{N}(\mu_{nd}, \sigma^2_{nd}) \,\|\, p(z_d)\big)

    computed in closed form with ``torch.distributions.kl_divergence``. It is defined
    when the prior factorises over dimensions (``normal``, ``learned-normal``, or any
    diagonal Normal); then the total KL is the sum over ``d``.

    Raises
    ------
    ConfigError
        If the prior does not factorise over dimensions (e.g. the mixture prior).
    """
    return _kl_per_dimension(vae.model.prior(), *encode_all(vae, x, batch_size))


def _kl_per_dimension(
    prior: dist.Distribution, loc: torch.Tensor, log_var: torch.Tensor
) -> torch.Tensor:
    base = prior
    while isinstance(base, dist.Independent):
        base = base.base_dist
    if not isinstance(base, dist.Normal):
        raise ConfigError(
            f"KL per dimension needs a prior that factorises over dimensions (a diagonal "
            f"Normal such as 'normal' or 'learned-normal'); this VAE's prior is "
            f"{type(prior).__name__}: use total_kl() for it"
        )
    q = dist.Normal(loc, torch.exp(0.5 * log_var))
    return kl_divergence(q, base).mean(0)


@torch.no_grad()
def total_kl(vae: VAE, x: torch.Tensor, num_samples: int = 16, batch_size: int = 500) -> float:
    r"""Mean over items of :math:`\mathrm{KL}(q(z \mid x) \,\|\, p(z))` in nats.

    In closed form where ``torch.distributions`` has one; otherwise (e.g. the mixture
    prior) the Monte Carlo estimate
    :math:`\frac{1}{S}\sum_s \log q(z_s \mid x) - \log p(z_s)` with ``num_samples``
    draws :math:`z_s \sim q(z \mid x)` per item.
    """
    return _total_kl(vae.model.prior(), *encode_all(vae, x, batch_size), num_samples)


def _total_kl(
    prior: dist.Distribution, loc: torch.Tensor, log_var: torch.Tensor, num_samples: int
) -> float:
    q = diagonal_normal(loc, log_var)
    try:
        return kl_divergence(q, prior).mean().item()
    except NotImplementedError:  # torch has no closed form for this pair
        z = q.rsample((num_samples,))
        return (q.log_prob(z) - prior.log_prob(z)).mean().item()


@torch.no_grad()
def active_units(
    vae: VAE, x: torch.Tensor, threshold: float = 0.01, batch_size: int = 500
) -> tuple[int, torch.Tensor]:
    r"""Number of active latent units and each unit's activity, after Burda et al. (2016).

    .. math::

        A_d = \operatorname{Cov}_x\big(E_{q(z \mid x)}[z_d]\big) > \text{threshold}

    Returns ``(count, activity)`` where ``activity`` (shape ``(D,)``) is the variance
    over the items of the posterior mean of each dimension (unbiased, ``N - 1``).
    """
    if len(x) < 2:
        raise DataError("active units need at least 2 items to measure a variance")
    return _active_units(encode_all(vae, x, batch_size)[0], threshold)


def _active_units(loc: torch.Tensor, threshold: float) -> tuple[int, torch.Tensor]:
    activity = loc.var(0)
    return int((activity > threshold).sum()), activity


@torch.no_grad()
def mutual_information(vae: VAE, x: torch.Tensor, batch_size: int = 500) -> float:
    r"""Minibatch estimate of the mutual information :math:`I_q(x; z)` in nats.

    Under :math:`q(x, z) = p_\text{data}(x)\,q(z \mid x)` (Hoffman & Johnson 2016),

    .. math::

        I_q(x; z) = E_x\big[E_{q(z \mid x)}[\log q(z \mid x)]\big] - E_{q(z)}[\log q(z)],
        \qquad q(z) \approx \frac{1}{N} \sum_{j=1}^N q(z \mid x_j)

    with one draw :math:`z_n \sim q(z \mid x_n)` per item and the aggregate posterior
    :math:`q(z)` replaced by the mixture over the ``N`` given items, as in He et al.
    (2019). The first term is the negative entropy of the Gaussians in closed form.
    The estimate is biased for small ``N`` and at most :math:`\log N`; compare values
    computed on the same number of items. Memory and time grow as :math:`N^2 D`.
    """
    return _mutual_information(*encode_all(vae, x, batch_size), batch_size)


def _mutual_information(loc: torch.Tensor, log_var: torch.Tensor, batch_size: int) -> float:
    n, d = loc.shape
    if n < 2:
        raise DataError("the mutual information estimate needs at least 2 items")
    neg_entropy = (-0.5 * d * math.log(2 * math.pi) - 0.5 * (1 + log_var).sum(-1)).mean()
    q = dist.Normal(loc, torch.exp(0.5 * log_var))
    z = q.sample()
    # log q(z_i | x_j) for every pair, reduced over j a block of rows at a time; a block
    # holds rows x N x D values, at most 2^24 (64 MB of float32) whatever N and D are
    rows = max(1, min(batch_size, 2**24 // (n * d)))
    log_qz = torch.cat(
        [
            torch.logsumexp(q.log_prob(z[start : start + rows, None, :]).sum(-1), dim=1)
            for start in range(0, n, rows)
        ]
    ) - math.log(n)
    return (neg_entropy - log_qz.mean()).item()


@torch.no_grad()
def diagnose(
    vae: VAE, x: torch.Tensor, threshold: float = 0.01, batch_size: int = 500
) -> dict[str, object]:
    """All diagnostics on ``x`` as a JSON-ready dict.

    Keys: ``kl`` (total, nats per item), ``kl_per_dim`` (list, or ``None`` when the
    prior does not factorise), ``active_units``, ``mutual_information``. ``x`` is
    encoded once for all of them (the trainer calls this every epoch).
    """
    if len(x) < 2:
        raise DataError("the diagnostics need at least 2 items")
    loc, log_var = encode_all(vae, x, batch_size)
    prior = vae.model.prior()
    try:
        per_dim: list[float] | None = _kl_per_dimension(prior, loc, log_var).tolist()
    except ConfigError:
        per_dim = None
    count, _ = _active_units(loc, threshold)
    return {
        "kl": _total_kl(prior, loc, log_var, num_samples=16),
        "kl_per_dim": per_dim,
        "active_units": count,
        "mutual_information": _mutual_information(loc, log_var, batch_size),
    }
