"""Building blocks shared by decoders (``model/``) and encoders (``guides/``)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from torch import nn

from pyrovae.errors import ConfigError

__all__ = ["conv_feature_shape", "mlp"]


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
    _, height, width = event_shape
    factor = 2 ** len(channels)
    if height % factor or width % factor:
        raise ConfigError(
            f"convolutional networks with {len(channels)} stride-2 layers need height and "
            f"width divisible by {factor}, got {height}x{width}; use the mlp networks"
        )
    return channels[-1], height // factor, width // factor
