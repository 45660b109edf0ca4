r"""The conditional guide :math:`q_\phi(z \mid x, y)` of the conditional VAE and of M2.

.. math::

    q_\phi(z \mid x, y) = \mathcal{N}\big(z \mid \mu_\phi(x, y),
        \operatorname{diag} \exp(\log\sigma^2_\phi(x, y))\big)

The encoder reads the data and the one-hot label together: an MLP encoder reads
``[flatten(x), onehot(y)]``, a convolutional encoder reads the label as ``C`` extra
constant image channels.

References
----------
- Sohn, Lee & Yan (2015), Learning Structured Output Representation using Deep
  Conditional Generative Models.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import pyro
import torch
from torch import nn

from pyrovae.errors import DataError
from pyrovae.guides.encoders import ENCODERS, diagonal_normal
from pyrovae.model.conditional import join, one_hot
from pyrovae.model.generative import LocalPyroModule, data_plate, kl_weight

__all__ = ["ConditionalEncoder", "ConditionalNormalGuide"]


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
    """

    def __init__(
        self,
        name: str,
        latent_dim: int,
        event_shape: Sequence[int],
        hidden: Sequence[int],
        num_classes: int,
    ) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.num_classes = num_classes
        self.as_channels = name == "conv"
        if self.as_channels:
            channels, *size = self.event_shape
            input_shape = (channels + num_classes, *size)
        else:
            input_shape = (prod(self.event_shape) + num_classes,)
        self.net = ENCODERS.build(
            name, latent_dim=latent_dim, event_shape=input_shape, hidden=tuple(hidden)
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


class ConditionalNormalGuide(LocalPyroModule):
    """Diagonal-Gaussian guide :math:`q(z \\mid x, y)` with the model's signature
    ``forward(x=None, y=None, *, num_data=None, batch_size=None, beta=1.0)``.

    With ``x=None`` (generation) there is nothing to infer and the guide samples nothing.
    """

    def __init__(self, encoder: ConditionalEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        *,
        num_data: int | None = None,
        batch_size: int | None = None,
        beta: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        if x is None:
            return None
        if y is None:
            raise DataError(
                "the conditional VAE needs the labels y of its data (one class index per item)"
            )
        with data_plate(len(x), num_data, x.device):
            loc, log_var = self.encoder(x, y)
            with kl_weight(beta):
                pyro.sample("z", diagonal_normal(loc, log_var))
        return loc, log_var
