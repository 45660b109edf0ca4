r"""The conditional VAE's generative story :math:`p(z)\,p_\theta(x \mid z, y)` (Sohn et al. 2015).

.. math::

    z_n \sim p(z), \qquad x_n \mid z_n, y_n \sim
        p_\theta\big(x \mid \mathrm{decoder}_\theta([z_n, \mathrm{onehot}(y_n)])\big)

The label :math:`y` is an input of the model, not a random variable: the decoder reads
the latent code concatenated with the one-hot label. The prior does not depend on the
label, :math:`p(z \mid y) = p(z)` (any registered prior), so :math:`z` is free to carry
what the label does not (style), and class-conditional generation draws
:math:`z \sim p(z)` and decodes it with the requested label.

References
----------
- Sohn, Lee & Yan (2015), Learning Structured Output Representation using Deep
  Conditional Generative Models.
- Kingma, Rezende, Mohamed & Welling (2014), Semi-Supervised Learning with Deep
  Generative Models.
"""

from __future__ import annotations

import pyro
import torch
import torch.nn.functional as F
from torch import nn

from pyrovae.errors import DataError
from pyrovae.model.generative import VAEModel, data_plate, kl_weight
from pyrovae.model.likelihoods import Likelihood
from pyrovae.model.priors import Prior

__all__ = ["ConditionalVAEModel", "join", "one_hot"]


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


class ConditionalVAEModel(VAEModel):
    """The model ``(z, y) -> x``: a prior, a decoder on ``[z, onehot(y)]`` and a likelihood.

    Parameters
    ----------
    prior : Prior
        :math:`p(z)`, the same for every label.
    decoder : nn.Module
        ``[z, onehot(y)] -> likelihood parameters`` (built for ``latent_dim + num_classes``
        inputs).
    likelihood : Likelihood
        ``parameters -> p(x | z, y)`` (elementwise over pixels).
    event_shape : tuple of int
        Shape of one data point.
    num_classes : int
        Number of labels :math:`C`; labels are ``0, ..., C - 1``.
    """

    def __init__(
        self,
        prior: Prior,
        decoder: nn.Module,
        likelihood: Likelihood,
        event_shape: tuple[int, ...],
        num_classes: int,
    ) -> None:
        super().__init__(prior, decoder, likelihood, event_shape)
        self.num_classes = num_classes

    def label(self, y: torch.Tensor | None) -> torch.Tensor:
        """The label inside the data plate: the conditional VAE requires it as an input."""
        if y is None:
            raise DataError(
                "the conditional VAE needs the labels y of its data (one class index per item)"
            )
        return y

    def forward(
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        *,
        num_data: int | None = None,
        batch_size: int | None = None,
        beta: float = 1.0,
    ) -> torch.Tensor:
        """Run the generative story given labels ``y``; with ``x=None`` draw new data.

        Returns the decoder's output (the likelihood's parameters) for the batch.
        """
        if x is not None:
            size = len(x)
        elif y is not None:
            size = y.shape[-1]
        else:
            size = batch_size or 1
        device = x.device if x is not None else self.device
        with data_plate(size, num_data, device):
            y = self.label(y)
            with kl_weight(beta):
                z = pyro.sample("z", self.prior())
            params = self.decoder(join(z, one_hot(y, self.num_classes, z.dtype)))
            self.observe(params, x)
        return params
