r"""The prior interface: :class:`Prior`, the ``PRIORS`` registry and :func:`make_prior`.

A prior is a :class:`torch.nn.Module` whose ``forward()`` returns a
``pyro.distributions`` distribution with ``event_shape == (latent_dim,)`` and an
empty batch shape; the model samples it inside the data plate, which broadcasts it
over the minibatch. Learnable priors keep their parameters as ``nn.Parameter`` so
they train with the rest of the model; fixed ones keep constants in buffers so
``.to(device)`` moves them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pyro.distributions as dist
from torch import nn

from pyrovae.errors import ConfigError
from pyrovae.registry import Registry

__all__ = ["PRIORS", "DistributionPrior", "Prior", "check_prior", "make_prior"]

PRIORS: Registry[type[Prior]] = Registry("prior")


class Prior(nn.Module):
    """Base class: ``forward()`` returns :math:`p(z)` as a distribution over ``R^latent_dim``."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def forward(self) -> dist.TorchDistribution:
        raise NotImplementedError  # abstract


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
