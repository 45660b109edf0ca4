"""Building blocks shared by decoders (``model/``) and encoders (``guides/``): layers,
convolution shapes, one-hot labels joined to inputs.

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

import torch
import torch.nn.functional as F
from torch import nn

from pyrovae.errors import ConfigError

__all__ = [
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
