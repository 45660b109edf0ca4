r"""The conditional encoder of :math:`q_\phi(z \mid x, y)` (the conditional VAE and M2).

The encoder reads the data and the one-hot label together: an MLP encoder reads
``[flatten(x), onehot(y)]``, a convolutional encoder reads the label as ``C`` extra
constant image channels.

References
----------
- Sohn, Lee & Yan (2015), Learning Structured Output Representation using Deep
  Conditional Generative Models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import prod
from typing import Any

import torch
from torch import nn

from pyrovae.guides.encoders import ENCODERS
from pyrovae.networks import join, one_hot

__all__ = ["ConditionalEncoder"]


class ConditionalEncoder(nn.Module):
    """A registered encoder (:data:`~pyrovae.guides.ENCODERS`) on the data and its label.

    Parameters
    ----------
    name : str
        The encoder's registered name; ``"conv"`` gets the label as image channels, every
        other encoder the flattened item concatenated with the one-hot label.
    latent_dim : int
        Dimension of :math:`z`.
    event_shape : sequence of int
        Shape of one data point.
    hidden : sequence of int
        Hidden layer sizes.
    num_classes : int
        Number of labels.
    options : mapping, optional
        The network's options (``channels`` of ``conv``).
    """

    def __init__(
        self,
        name: str,
        latent_dim: int,
        event_shape: Sequence[int],
        hidden: Sequence[int],
        num_classes: int,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.num_classes = num_classes
        #: the registered encoder's name (M2's classifier is gated with ``gated-mlp``)
        self.name = name
        self.as_channels = name == "conv"
        if self.as_channels:
            channels, *size = self.event_shape
            input_shape = (channels + num_classes, *size)
        else:
            input_shape = (prod(self.event_shape) + num_classes,)
        self.net = ENCODERS.build(
            name, options, latent_dim=latent_dim, event_shape=input_shape, hidden=tuple(hidden)
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, log_var)`` of :math:`q(z \\mid x, y)`; ``y`` broadcasts against ``x``'s batch."""
        label = one_hot(y, self.num_classes, x.dtype)
        event_dims = len(self.event_shape)
        if not self.as_channels:
            return self.net(join(x.flatten(-event_dims) if event_dims else x[..., None], label))
        size = self.event_shape[1:]
        batch = torch.broadcast_shapes(x.shape[:-event_dims], label.shape[:-1])
        planes = label[..., None, None].expand(*label.shape, *size)
        inputs = torch.cat(
            [x.expand(*batch, *self.event_shape), planes.expand(*batch, *planes.shape[-3:])],
            dim=-3,
        )
        return self.net(inputs)
