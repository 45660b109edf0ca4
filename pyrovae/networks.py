"""Building blocks shared by decoders (``model/``) and encoders (``guides/``): layers,
convolution shapes, one-hot labels joined to inputs; and the discriminator of the
adversarial variants (the VAE-GAN's on images, FactorVAE's on codes).

References
----------
- Dauphin, Fan, Auli & Grangier (2017), Language Modeling with Gated Convolutional
  Networks (the gated layer).
- Tomczak & Welling (2018), VAE with a VampPrior. AISTATS (gated dense networks with
  He-normal weights, as in their code ``utils/nn.py``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from math import prod

import torch
import torch.nn.functional as F
from torch import nn

from pyrovae.errors import ConfigError

__all__ = [
    "LEAKY_SLOPE",
    "Discriminator",
    "GatedDense",
    "conv_feature_shape",
    "gated_mlp",
    "he_normal_",
    "join",
    "mlp",
    "one_hot",
]


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear layers of the given sizes with ``activation`` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class GatedDense(nn.Module):
    r"""A gated dense layer: a linear map gated elementwise by a sigmoid of another.

    .. math::

        h = (W_1 x + b_1) \odot \sigma(W_2 x + b_2)

    The gate is the layer's only nonlinearity. ``h`` is the linear map and ``g`` the
    gate's, each an ``nn.Linear(in_features, out_features)``.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.h = nn.Linear(in_features, out_features)
        self.g = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.h(x) * torch.sigmoid(self.g(x))


def he_normal_(module: nn.Module) -> nn.Module:
    r"""Draw the weight of every ``nn.Linear`` in ``module`` from
    :math:`\mathcal{N}(0, 2 / \text{fan\_in})` (He et al. 2015), in place; returns ``module``.

    The biases keep torch's default :math:`U(-1/\sqrt{\text{fan\_in}}, 1/\sqrt{\text{fan\_in}})`,
    as in the VampPrior reference code, whose ``he_init`` sets the weights only.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0 / layer.in_features))
    return module


def gated_mlp(sizes: Sequence[int]) -> nn.Sequential:
    """:class:`GatedDense` layers of the given sizes and a plain ``nn.Linear`` last, with
    He-normal weights (:func:`he_normal_`).

    ``gated_mlp([784, 300, 300, 2 * D])`` is the VampPrior paper's encoder: two gated
    layers of 300 units, no other activation, and a linear head.
    """
    pairs = list(itertools.pairwise(sizes))
    layers: list[nn.Module] = [GatedDense(n_in, n_out) for n_in, n_out in pairs[:-1]]
    layers.append(nn.Linear(*pairs[-1]))
    return he_normal_(nn.Sequential(*layers))


def conv_feature_shape(event_shape: Sequence[int], channels: Sequence[int]) -> tuple[int, int, int]:
    """Shape of the feature map after stride-2 convolutions, checking that images fit them."""
    if len(event_shape) != 3:
        raise ConfigError(
            f"convolutional networks need images of shape (channels, height, width), "
            f"got data of shape {tuple(event_shape)}; use --encoder mlp --decoder mlp"
        )
    if not channels or min(channels) < 1:
        raise ConfigError(
            f"conv networks need at least one convolution of >= 1 channels, got channels "
            f"{list(channels)}"
        )
    _, height, width = event_shape
    factor = 2 ** len(channels)
    if height % factor or width % factor:
        raise ConfigError(
            f"convolutional networks with {len(channels)} stride-2 layers need height and "
            f"width divisible by {factor}, got {height}x{width}; use the mlp networks"
        )
    return channels[-1], height // factor, width // factor


def one_hot(y: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Labels of any batch shape as one-hot vectors (last dimension ``num_classes``)."""
    return F.one_hot(y.long(), num_classes).to(dtype)


def join(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Concatenate the last dimensions of ``a`` and ``b`` after broadcasting their batch shapes.

    Broadcasting lets an enumerated label of shape ``(C, 1, C)`` meet a minibatch of shape
    ``(B, D)`` (giving ``(C, B, D + C)``), and vectorized particles meet their labels.
    """
    batch = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(*batch, a.shape[-1]), b.expand(*batch, b.shape[-1])], dim=-1)


#: the LeakyReLU slope of the discriminator (DCGAN's)
LEAKY_SLOPE = 0.2


class Discriminator(nn.Module):
    r"""``x -> logit`` of :math:`D(x)`, a stack of layers whose outputs can be read one by one.

    For images ``(C, H, W)``: stride-2 convolutions (kernel 4, padding 1, as the ``conv``
    encoder) of ``channels``, then a linear layer of ``hidden`` units, then the logit; for
    other data, linear layers of ``hidden`` units. Every hidden layer ends in a LeakyReLU
    (slope 0.2). There is no batch normalization: it would make one item's features depend
    on the other items of its minibatch, so the feature likelihood would not factorise over
    the data plate.

    Parameters
    ----------
    event_shape : sequence of int
        Shape of one data point.
    channels : tuple of int
        Channels of the convolutions (images only; H and W divisible by 2 ** their number).
    hidden : sequence of int
        Widths of the linear hidden layers (images: the first only).

    Attributes
    ----------
    layers : nn.ModuleList
        The layers in order; ``forward(x, layer=l)`` returns the output of the first ``l``
        (:math:`\mathrm{Dis}_l(x)`), the last layer gives the logit.
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        channels: Sequence[int] = (32, 64),
        hidden: Sequence[int] = (256,),
    ) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)
        if not hidden or min(hidden) < 1:
            raise ConfigError(f"the discriminator needs hidden layers of width >= 1, got {hidden}")
        layers: list[nn.Module] = []
        shapes: list[tuple[int, ...]] = []
        if len(self.event_shape) == 3:
            if not channels:
                raise ConfigError("the discriminator of images needs one or more convolutions")
            try:
                conv_feature_shape(self.event_shape, channels)
            except ConfigError:
                raise ConfigError(
                    f"the discriminator's {len(channels)} stride-2 convolutions need image "
                    f"height and width divisible by {2 ** len(channels)}, got "
                    f"{self.event_shape[1]}x{self.event_shape[2]}; give fewer "
                    "--discriminator-channels"
                ) from None
            c_in, height, width = self.event_shape
            for c_out in channels:
                layers.append(
                    nn.Sequential(
                        nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1),
                        nn.LeakyReLU(LEAKY_SLOPE),
                    )
                )
                c_in, height, width = c_out, height // 2, width // 2
                shapes.append((c_out, height, width))
            widths = [c_in * height * width, hidden[0]]
            layers.append(
                nn.Sequential(nn.Flatten(), nn.Linear(*widths), nn.LeakyReLU(LEAKY_SLOPE))
            )
            shapes.append((hidden[0],))
        else:
            widths = [prod(self.event_shape), *hidden]
            for i, (n_in, n_out) in enumerate(itertools.pairwise(widths)):
                first = [nn.Flatten()] if i == 0 else []
                layers.append(
                    nn.Sequential(*first, nn.Linear(n_in, n_out), nn.LeakyReLU(LEAKY_SLOPE))
                )
                shapes.append((n_out,))
        layers.append(nn.Linear(shapes[-1][0], 1))
        shapes.append(())
        self.layers = nn.ModuleList(layers)
        self.shapes = shapes

    @property
    def num_layers(self) -> int:
        """The number of layers, the logit's included."""
        return len(self.layers)

    def feature_shape(self, layer: int) -> tuple[int, ...]:
        """Shape of one item's output of layer ``layer`` (1-based)."""
        return self.shapes[layer - 1]

    def forward(self, x: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """The output of the first ``layer`` layers (all of them, the logit, by default) for
        ``x`` of shape ``(..., *event_shape)``: shape ``(..., *feature_shape(layer))``."""
        layer = self.num_layers if layer is None else layer
        batch_shape = x.shape[: x.dim() - len(self.event_shape)]
        h = x.reshape(-1, *self.event_shape) if self.event_shape else x.reshape(-1, 1)
        for module in self.layers[:layer]:
            h = module(h)
        return h.reshape(*batch_shape, *self.shapes[layer - 1])

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        r"""The logit of :math:`D(x)`, shape ``(...)`` for ``x`` of ``(..., *event_shape)``."""
        return self(x)

    def frozen(self, x: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """:meth:`forward` with the parameters detached: gradients reach ``x``, never them."""
        params = {name: p.detach() for name, p in self.named_parameters()}
        return torch.func.functional_call(self, params, (x,), {"layer": layer})
