r"""Amortized guides :math:`q_\phi(z \mid x)`: the diagonal Gaussian and the ``GUIDES`` registry.

.. math::

    q_\phi(z \mid x) = \mathcal{N}\big(z \mid \mu_\phi(x),
        \operatorname{diag} \exp(\log\sigma^2_\phi(x))\big)

One encoder network serves every data point (amortized inference). ``z`` is drawn
with ``rsample`` (the reparameterization trick), so gradients of the ELBO flow into
the encoder's outputs. Richer guides (:mod:`pyrovae.guides.lowrank`,
:mod:`pyrovae.guides.flows`) share the signature and register in ``GUIDES``.

References
----------
- Kingma & Welling (2014), Auto-Encoding Variational Bayes.
- Rezende, Mohamed & Wierstra (2014), Stochastic Backpropagation and Approximate
  Inference in Deep Generative Models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.guides.encoders import (
    ENCODERS,
    ClippedLogVar,
    check_log_var_bounds,
    clip_log_var,
    diagonal_normal,
)
from pyrovae.model.base import LocalPyroModule, data_plate, kl_weight
from pyrovae.registry import Registry

__all__ = ["GUIDES", "AmortizedGuide", "AmortizedNormalGuide", "make_guide"]

GUIDES: Registry[type[AmortizedGuide]] = Registry("guide")


class AmortizedGuide(LocalPyroModule):
    """Base class of the guides: ``encoder(x)`` parameterizes ``posterior(...)``, drawn as ``z``.

    Shares the model's signature ``forward(x=None, *, num_data=None, batch_size=None,
    beta=1.0)``; with ``x=None`` (generation) there is nothing to infer and the guide
    samples nothing, so the model draws ``z`` from its prior. ``forward`` returns what
    :meth:`encode` returns.

    With ``log_var_min``/``log_var_max`` the encoder's log-variance output is clamped
    (a Hardtanh, :func:`~pyrovae.guides.encoders.clip_log_var`) before anything reads it:
    the sampled posterior, :meth:`encode` and a VampPrior built on :attr:`gaussian_encoder`.

    Parameters
    ----------
    encoder : nn.Module
        ``x -> (loc, log_var, ...)``, each ``(..., latent_dim)``.
    log_var_min : float, optional
        guides: clamp the encoder's log-variance output from below (the VampPrior paper
        uses -6; with --model hvae it bounds every Gaussian log-variance, p(z1|z2)'s too).
    log_var_max : float, optional
        guides: clamp the encoder's log-variance output from above (the VampPrior paper
        uses 2; with --model hvae it bounds every Gaussian log-variance, p(z1|z2)'s too).
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        log_var_min: float | None = None,
        log_var_max: float | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.log_var_min, self.log_var_max = check_log_var_bounds(log_var_min, log_var_max)

    def clip(self, params: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The encoder's outputs with the log-variance (the second) clamped to
        ``[log_var_min, log_var_max]``."""
        loc, log_var, *rest = params
        return loc, clip_log_var(log_var, self.log_var_min, self.log_var_max), *rest

    @property
    def gaussian_encoder(self) -> nn.Module:
        """The encoder as a prior should read it: ``x -> (loc, log_var, ...)`` of
        :math:`q(z \\mid x)`'s Gaussian, clamped like the guide's (the encoder itself
        when there are no bounds)."""
        if self.log_var_min is None and self.log_var_max is None:
            return self.encoder
        return ClippedLogVar(self.encoder, self.log_var_min, self.log_var_max)

    @staticmethod
    def num_encoder_outputs(**options: Any) -> int:
        """How many ``latent_dim``-wide outputs the encoder needs (given the guide's options)."""
        return 2

    def posterior(self, *params: torch.Tensor) -> dist.TorchDistribution:
        """:math:`q(z \\mid x)` from the encoder's outputs, ``event_shape == (latent_dim,)``."""
        raise NotImplementedError  # abstract

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A Gaussian summary ``(loc, log_var)`` of :math:`q(z \\mid x)`, shape ``(..., D)``."""
        raise NotImplementedError  # abstract

    def forward(
        self,
        x: torch.Tensor | None = None,
        *,
        num_data: int | None = None,
        batch_size: int | None = None,
        beta: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        if x is None:
            return None
        with data_plate(len(x), num_data, x.device):
            params = self.clip(self.encoder(x))
            with kl_weight(beta):
                pyro.sample("z", self.posterior(*params))
        return self._summary(*params)

    def _summary(self, *params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return params[0], params[1]


@GUIDES.register("normal")
class AmortizedNormalGuide(AmortizedGuide):
    """Diagonal-Gaussian guide whose mean and log-variance come from ``encoder(x)``.

    :meth:`encode` returns that mean and log-variance.
    """

    def posterior(self, loc: torch.Tensor, log_var: torch.Tensor) -> dist.TorchDistribution:
        return diagonal_normal(loc, log_var)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_var = self.clip(self.encoder(x))
        return loc, log_var


def make_guide(
    name: str,
    encoder: str,
    *,
    latent_dim: int,
    event_shape: Sequence[int],
    hidden: Sequence[int],
    options: Mapping[str, Any] | None = None,
    encoder_options: Mapping[str, Any] | None = None,
    input_transform: nn.Module | None = None,
) -> AmortizedGuide:
    """Build the guide registered as ``name`` with a fresh ``encoder`` network.

    ``options`` are the guide's own settings (``guide_rank`` of ``lowrank``,
    ``num_flows`` of ``iaf``, ``log_var_min``/``log_var_max`` of all), ``encoder_options``
    the network's (``channels`` of ``conv``); each is checked against what the entry
    declares. ``input_transform`` (a likelihood's
    :meth:`~pyrovae.model.Likelihood.input_transform`, e.g. a table's one-hot categories)
    runs before the network, which is built for its ``num_features``.
    """
    options = GUIDES.check_options(name, options or {})
    if input_transform is not None:  # the network reads the transform's features
        event_shape = (input_transform.num_features,)
    net = ENCODERS.build(
        encoder,
        encoder_options,
        latent_dim=latent_dim,
        event_shape=tuple(event_shape),
        hidden=tuple(hidden),
        num_outputs=GUIDES[name].num_encoder_outputs(**options),
    )
    if input_transform is not None:
        net = nn.Sequential(input_transform, net)
    return GUIDES.build(name, options, encoder=net, latent_dim=latent_dim)
