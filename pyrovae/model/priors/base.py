r"""The prior interface: :class:`Prior`, the ``PRIORS`` registry and :func:`make_prior`.

A prior is a :class:`torch.nn.Module` whose ``forward()`` returns a
``pyro.distributions`` distribution with ``event_shape == (latent_dim,)`` and an
empty batch shape; the model samples it inside the data plate, which broadcasts it
over the minibatch. Learnable priors keep their parameters as ``nn.Parameter`` so
they train with the rest of the model; fixed ones keep constants in buffers so
``.to(device)`` moves them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.errors import ConfigError
from pyrovae.registry import Registry

__all__ = [
    "PRIORS",
    "DiagonalNormalMixture",
    "DistributionPrior",
    "Prior",
    "check_prior",
    "make_prior",
]

PRIORS: Registry[type[Prior]] = Registry("prior")


class Prior(nn.Module):
    """Base class: ``forward()`` returns :math:`p(z)` as a distribution over ``R^latent_dim``."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def forward(self) -> dist.TorchDistribution:
        raise NotImplementedError  # abstract


class DiagonalNormalMixture(dist.MixtureSameFamily):
    r"""A mixture of :math:`K` diagonal Gaussians over :math:`\mathbb{R}^D` whose density costs
    two matrix products instead of a ``(..., K, D)`` tensor.

    .. math::

        \log p(z) = \operatorname{logsumexp}_k \Big(\log \pi_k - \sum_d \log \sigma_{kd}
            - \tfrac{D}{2} \log 2\pi - \tfrac12 \sum_d
            \frac{z_d^2 - 2 z_d \mu_{kd} + \mu_{kd}^2}{\sigma_{kd}^2}\Big)

    It is ``MixtureSameFamily(Categorical(logits), Normal(loc, scale).to_event(1))`` (and
    samples as one), with the quadratic term expanded so that scoring N codes against
    K = 500 components (the VampPrior's, the mixture prior's) needs no N x K x D tensor:
    an IWAE evaluation with K = 5000 particles then fits in memory and runs many times
    faster. Expanding the square loses float32 precision where :math:`|z|` is large
    against :math:`\sigma`; the tests bound it against the direct computation.

    Parameters
    ----------
    logits : torch.Tensor
        ``(K,)`` mixture weights, unnormalised.
    loc, scale : torch.Tensor
        ``(K, D)`` the components' means and standard deviations.
    """

    def __init__(
        self,
        logits: torch.Tensor,
        loc: torch.Tensor,
        scale: torch.Tensor,
        validate_args: bool | None = None,
    ) -> None:
        self._params = (logits, loc, scale)
        components = dist.Normal(loc, scale).to_event(1)
        super().__init__(dist.Categorical(logits=logits), components, validate_args)

    def expand(self, batch_shape: torch.Size, _instance: object = None) -> DiagonalNormalMixture:
        new = self._get_checked_instance(DiagonalNormalMixture, _instance)
        new._params = self._params  # the (K, D) parameters, for the fast density
        return super().expand(batch_shape, _instance=new)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        logits, loc, scale = self._params
        precision = scale.pow(-2)
        quadratic = (
            (value * value) @ precision.T
            - 2 * value @ (loc * precision).T
            + (loc * loc * precision).sum(-1)
        )
        normalizer = scale.log().sum(-1) + 0.5 * loc.shape[-1] * math.log(2 * math.pi)
        log_prob = torch.logsumexp(logits.log_softmax(-1) - normalizer - 0.5 * quadratic, -1)
        return log_prob.expand(torch.broadcast_shapes(log_prob.shape, self.batch_shape))


class DistributionPrior(Prior):
    """Wraps a user's distribution, or a callable returning one, as a prior.

    The distribution must have ``event_shape == (latent_dim,)`` and an empty batch
    shape (use ``.to_event(1)`` on a factorised distribution). A callable is called
    on every model run, so it may read learnable state of its own; a distribution is
    used as it is and must live on the training device.
    """

    def __init__(
        self,
        latent_dim: int,
        prior: dist.Distribution | Callable[[], dist.Distribution],
    ) -> None:
        super().__init__(latent_dim)
        self.prior = prior
        if isinstance(prior, nn.Module):  # keep a user's learnable prior's parameters
            self.module = prior
        check_prior(self.forward(), latent_dim)

    def forward(self) -> dist.TorchDistribution:
        prior = self.prior
        return prior if isinstance(prior, dist.Distribution) else prior()


def check_prior(prior: object, latent_dim: int) -> None:
    """Raise :class:`ConfigError` unless ``prior`` is a distribution over ``R^latent_dim``."""
    if not isinstance(prior, dist.Distribution):
        raise ConfigError(
            f"a prior must be a pyro.distributions distribution (or a callable returning one), "
            f"got {type(prior).__name__}"
        )
    if tuple(prior.event_shape) != (latent_dim,) or tuple(prior.batch_shape) != ():
        raise ConfigError(
            f"the prior must have event_shape ({latent_dim},) and batch_shape (); got "
            f"event_shape {tuple(prior.event_shape)} and batch_shape {tuple(prior.batch_shape)} "
            "(use .to_event(1) on a factorised distribution, and match --latent-dim)"
        )


def make_prior(
    prior: str | Prior | dist.Distribution | Callable[[], dist.Distribution],
    latent_dim: int,
    options: Mapping[str, Any] | None = None,
    **context: Any,
) -> Prior:
    """Build a prior from a registered name (with its ``options``; ``context`` is what
    the builder knows: ``event_shape``, the ``encoder`` network, ...), a :class:`Prior`,
    a distribution or a callable."""
    if isinstance(prior, str):
        return PRIORS.build(prior, options, latent_dim=latent_dim, **context)
    if options:
        raise ConfigError("options are for a registered prior, given by its name")
    if isinstance(prior, Prior):
        check_prior(prior(), latent_dim)
        return prior
    if isinstance(prior, dist.Distribution) or callable(prior):
        return DistributionPrior(latent_dim, prior)
    raise ConfigError(f"cannot use a {type(prior).__name__} as a prior")
