r"""Encoders: networks from data :math:`x` to the mean and log-variance of :math:`q(z \mid x)`.

An encoder maps ``x`` of shape ``(..., *event_shape)`` to a pair ``(loc, log_var)``,
each of shape ``(..., latent_dim)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import torch
from torch import nn

from pyrovae.networks import conv_feature_shape, mlp
from pyrovae.registry import Registry

__all__ = ["ENCODERS", "ConvEncoder", "MLPEncoder"]

ENCODERS: Registry[type[nn.Module]] = Registry("encoder")


@ENCODERS.register("mlp")
class MLPEncoder(nn.Module):
    """``prod(event_shape) -> hidden[0] -> ... -> hidden[-1] -> 2 * latent_dim`` with ReLUs."""

    def __init__(
        self, latent_dim: int, event_shape: Sequence[int], hidden: Sequence[int] = (256, 128)
    ) -> None:
        super().__init__()
        self.event_dim = len(event_shape)
        self.net = mlp([prod(event_shape), *hidden, 2 * latent_dim])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(x.flatten(-self.event_dim) if self.event_dim else x.unsqueeze(-1))
        loc, log_var = h.chunk(2, dim=-1)
        return loc, log_var


@ENCODERS.register("conv")
class ConvEncoder(nn.Module):
    """A small convolutional encoder for images ``(C, H, W)``, H and W divisible by 4.

    ``Conv(C->32, stride 2) -> Conv(32->64, stride 2) -> Linear(hidden[0]) -> 2 * latent_dim``.
    """

    def __init__(
        self,
        latent_dim: int,
        event_shape: Sequence[int],
        hidden: Sequence[int] = (256,),
        channels: Sequence[int] = (32, 64),
    ) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)
        feature_shape = conv_feature_shape(self.event_shape, channels)
        layers: list[nn.Module] = []
        for c_in, c_out in zip([self.event_shape[0], *channels[:-1]], channels):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1), nn.ReLU()]
        self.conv = nn.Sequential(*layers, nn.Flatten())
        self.head = mlp([prod(feature_shape), hidden[0], 2 * latent_dim])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch_shape = x.shape[: x.dim() - 3]
        h = self.head(self.conv(x.reshape(-1, *self.event_shape)))
        loc, log_var = h.reshape(*batch_shape, -1).chunk(2, dim=-1)
        return loc, log_var
