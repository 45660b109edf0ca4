"""Building blocks shared by decoders (``model/``) and encoders (``guides/``): layers,
convolution shapes, one-hot labels joined to inputs."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pyrovae.errors import ConfigError

__all__ = ["conv_feature_shape", "join", "mlp", "one_hot"]


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear layers of the given sizes with ``activation`` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


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
