r"""Decoders: networks from the latent code :math:`z` to the likelihood's parameters.

A decoder maps ``z`` of shape ``(..., latent_dim)`` to unconstrained parameters of
shape ``(..., *event_shape)``; any number of leading batch dimensions is allowed, so
vectorized particles and predictive samples need no special case.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import torch
from torch import nn

from pyrovae.networks import conv_feature_shape, gated_mlp, mlp
from pyrovae.registry import Registry

__all__ = ["DECODERS", "ConvDecoder", "GatedMLPDecoder", "MLPDecoder"]

DECODERS: Registry[type[nn.Module]] = Registry("decoder")


@DECODERS.register("mlp")
class MLPDecoder(nn.Module):
    """``latent_dim -> hidden[-1] -> ... -> hidden[0] -> prod(event_shape)`` with ReLUs.

    The hidden sizes are given in encoder order and reversed here, so one
    ``hidden`` setting describes a symmetric autoencoder.
    """

    #: the network builder: ``sizes -> nn.Module``
    layers = staticmethod(mlp)

    def __init__(
        self, latent_dim: int, event_shape: Sequence[int], hidden: Sequence[int] = (256, 128)
    ) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.net = self.layers([latent_dim, *reversed(tuple(hidden)), prod(self.event_shape)])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).reshape(*z.shape[:-1], *self.event_shape)


@DECODERS.register("gated-mlp")
class GatedMLPDecoder(MLPDecoder):
    r"""``latent_dim -> hidden[-1] -> ... -> hidden[0] -> prod(event_shape)`` with gated
    layers :math:`(W_1 h + b_1) \odot \sigma(W_2 h + b_2)` and a linear head
    (:func:`~pyrovae.networks.gated_mlp`), He-normal weights.

    With ``hidden=(300, 300)`` it is the VampPrior paper's decoder (whose sigmoid on the
    Bernoulli means is the likelihood's here: the head outputs logits).

    References
    ----------
    - Tomczak & Welling (2018), VAE with a VampPrior. AISTATS.
    """

    layers = staticmethod(gated_mlp)


@DECODERS.register("conv")
class ConvDecoder(nn.Module):
    """A small transposed-convolution decoder for images ``(C, H, W)``, H and W divisible by 4.

    ``z -> Linear(hidden[0]) -> Linear(64 * H/4 * W/4) -> ConvT(64->32, stride 2)
    -> ConvT(32->C, stride 2)``, mirroring :class:`pyrovae.guides.encoders.ConvEncoder`.

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
        *,
        channels: tuple[int, ...] = (32, 64),
    ) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.feature_shape = conv_feature_shape(self.event_shape, channels)
        self.linear = nn.Sequential(
            mlp([latent_dim, hidden[0], prod(self.feature_shape)]), nn.ReLU()
        )
        layers: list[nn.Module] = []
        outs = [*reversed(channels[:-1]), self.event_shape[0]]
        for i, (c_in, c_out) in enumerate(zip(reversed(channels), outs)):
            layers.append(nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1))
            if i < len(channels) - 1:
                layers.append(nn.ReLU())
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch_shape = z.shape[:-1]
        h = self.linear(z.reshape(-1, z.shape[-1])).reshape(-1, *self.feature_shape)
        return self.deconv(h).reshape(*batch_shape, *self.event_shape)
