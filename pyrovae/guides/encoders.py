r"""Encoders: networks from data :math:`x` to the mean and log-variance of :math:`q(z \mid x)`.

An encoder maps ``x`` of shape ``(..., *event_shape)`` to a pair ``(loc, log_var)``,
each of shape ``(..., latent_dim)``. With ``num_outputs = m > 2`` its last layer is
``m`` times ``latent_dim`` wide and it returns ``m`` such tensors: richer guides read
the extra ones (a low-rank covariance factor, a flow's context).

A guide may clamp the log-variance output to ``[log_var_min, log_var_max]``
(:func:`clip_log_var`), as the VampPrior paper's networks do with a Hardtanh to [-6, 2].

References
----------
- Tomczak & Welling (2018), VAE with a VampPrior. AISTATS (the ``gated-mlp`` networks).
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.errors import ConfigError
from pyrovae.networks import conv_feature_shape, gated_mlp, mlp
from pyrovae.registry import Registry

__all__ = [
    "ENCODERS",
    "ClippedLogVar",
    "ConvEncoder",
    "GatedMLPEncoder",
    "MLPEncoder",
    "check_log_var_bounds",
    "clip_log_var",
    "diagonal_normal",
]


def diagonal_normal(loc: torch.Tensor, log_var: torch.Tensor) -> dist.TorchDistribution:
    r""":math:`\mathcal{N}(\mu, \operatorname{diag}\exp(\log\sigma^2))` over the last
    dimension, from an encoder's mean and log-variance outputs."""
    return dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1)


def check_log_var_bounds(
    low: float | None, high: float | None
) -> tuple[float | None, float | None]:
    """``(low, high)`` of a log-variance clamp, either ``None`` (unbounded on that side);
    both given, ``low < high`` or a :class:`~pyrovae.errors.ConfigError`."""
    if low is not None and high is not None and not low < high:
        raise ConfigError(f"log_var_min must be < log_var_max, got {low} and {high}")
    return low, high


def clip_log_var(
    log_var: torch.Tensor, low: float | None = None, high: float | None = None
) -> torch.Tensor:
    r""":math:`\min(\max(\log\sigma^2, \text{low}), \text{high})`, a Hardtanh with
    either bound optional (no gradient where a bound is active, as Hardtanh's)."""
    if low is None and high is None:
        return log_var
    return log_var.clamp(low, high)


class ClippedLogVar(nn.Module):
    """An encoder whose second output (the log-variance) is clamped by :func:`clip_log_var`.

    A guide with ``log_var_min``/``log_var_max`` hands this view of its encoder to a
    prior that reads it (the VampPrior), so the prior's components are the guide's
    clamped posteriors; it holds no parameters of its own.
    """

    def __init__(self, encoder: nn.Module, low: float | None, high: float | None) -> None:
        super().__init__()
        self.encoder = encoder
        self.low, self.high = check_log_var_bounds(low, high)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        loc, log_var, *rest = self.encoder(x)
        return loc, clip_log_var(log_var, self.low, self.high), *rest


ENCODERS: Registry[type[nn.Module]] = Registry("encoder")


@ENCODERS.register("mlp")
class MLPEncoder(nn.Module):
    """``prod(event_shape) -> hidden[0] -> ... -> hidden[-1] -> 2 * latent_dim`` with ReLUs."""

    #: the network builder: ``sizes -> nn.Module``
    layers = staticmethod(mlp)

    def __init__(
        self,
        latent_dim: int,
        event_shape: Sequence[int],
        hidden: Sequence[int] = (256, 128),
        num_outputs: int = 2,
    ) -> None:
        super().__init__()
        self.event_dim = len(event_shape)
        self.num_outputs = num_outputs
        self.net = self.layers([prod(event_shape), *hidden, num_outputs * latent_dim])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.net(x.flatten(-self.event_dim) if self.event_dim else x.unsqueeze(-1))
        return h.chunk(self.num_outputs, dim=-1)


@ENCODERS.register("gated-mlp")
class GatedMLPEncoder(MLPEncoder):
    r"""``prod(event_shape) -> hidden[0] -> ... -> hidden[-1] -> 2 * latent_dim`` with gated
    layers :math:`(W_1 h + b_1) \odot \sigma(W_2 h + b_2)` and a linear head
    (:func:`~pyrovae.networks.gated_mlp`), He-normal weights.

    With ``hidden=(300, 300)`` it is the VampPrior paper's encoder; its Hardtanh on the
    log-variance is the guide's ``log_var_min``/``log_var_max`` (``-6``, ``2`` there).
    """

    layers = staticmethod(gated_mlp)


@ENCODERS.register("conv")
class ConvEncoder(nn.Module):
    """A small convolutional encoder for images ``(C, H, W)``, H and W divisible by 4.

    ``Conv(C->32, stride 2) -> Conv(32->64, stride 2) -> Linear(hidden[0]) -> 2 * latent_dim``.

    Parameters
    ----------
    channels : tuple of int
        conv networks: channels of the stride-2 convolutions (height and width must be
        divisible by 2 ** their number).
    """

    def __init__(
        self,
        latent_dim: int,
        event_shape: Sequence[int],
        hidden: Sequence[int] = (256,),
        num_outputs: int = 2,
        *,
        channels: tuple[int, ...] = (32, 64),
    ) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.num_outputs = num_outputs
        feature_shape = conv_feature_shape(self.event_shape, channels)
        layers: list[nn.Module] = []
        for c_in, c_out in zip([self.event_shape[0], *channels[:-1]], channels):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1), nn.ReLU()]
        self.conv = nn.Sequential(*layers, nn.Flatten())
        self.head = mlp([prod(feature_shape), hidden[0], num_outputs * latent_dim])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch_shape = x.shape[: x.dim() - 3]
        h = self.head(self.conv(x.reshape(-1, *self.event_shape)))
        return h.reshape(*batch_shape, -1).chunk(self.num_outputs, dim=-1)
