r"""Priors :math:`p(z)` over the latent code.

A prior is a :class:`torch.nn.Module` whose ``forward()`` returns a
``pyro.distributions`` distribution with ``event_shape == (latent_dim,)`` and an
empty batch shape; the model samples it inside the data plate, which broadcasts it
over the minibatch. Learnable priors keep their parameters as ``nn.Parameter`` so
they train with the rest of the model; fixed ones keep constants in buffers so
``.to(device)`` moves them.

References
----------
- Kingma & Welling (2014), Auto-Encoding Variational Bayes.
- Tomczak & Welling (2018), VAE with a VampPrior (mixture priors).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.errors import ConfigError
from pyrovae.registry import Registry

__all__ = [
    "PRIORS",
    "DistributionPrior",
    "LearnedNormalPrior",
    "MixturePrior",
    "NormalPrior",
    "Prior",
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


@PRIORS.register("normal")
class NormalPrior(Prior):
    r"""The standard normal :math:`p(z) = \mathcal{N}(0, I)` (the default)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


@PRIORS.register("learned-normal")
class LearnedNormalPrior(Prior):
    r"""A diagonal Gaussian with learnable mean and log-scale, starting at N(0, I)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.log_scale = nn.Parameter(torch.zeros(latent_dim))

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.log_scale.exp()).to_event(1)


@PRIORS.register("mixture")
class MixturePrior(Prior):
    r"""A mixture of :math:`K` diagonal Gaussians with learnable weights, means and scales.

    .. math::

        p(z) = \sum_{k=1}^K \pi_k \, \mathcal{N}(z \mid \mu_k, \operatorname{diag}\sigma_k^2)

    The means start spread out (standard normal draws from a fixed generator) so the
    components do not start identical. No closed-form KL exists against a Gaussian
    guide, so ``TraceMeanField_ELBO`` falls back to a Monte Carlo estimate for it.

    Parameters
    ----------
    latent_dim : int
        Dimension of :math:`z`.
    num_components : int
        components K of the mixture prior.
    """

    def __init__(self, latent_dim: int, *, num_components: int = 10) -> None:
        super().__init__(latent_dim)
        if num_components < 1:
            raise ConfigError(f"mixture prior needs num_components >= 1, got {num_components}")
        generator = torch.Generator().manual_seed(0)
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.loc = nn.Parameter(torch.randn(num_components, latent_dim, generator=generator))
        self.log_scale = nn.Parameter(torch.zeros(num_components, latent_dim))

    def forward(self) -> dist.TorchDistribution:
        components = dist.Normal(self.loc, self.log_scale.exp()).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)


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
