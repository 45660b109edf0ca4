r"""The M2 guide :math:`q_\phi(y \mid x)\, q_\phi(z \mid x, y)` (Kingma et al. 2014).

For an unlabelled item the classifier :math:`q_\phi(y \mid x)` is a latent site marked
for parallel enumeration (``infer={"enumerate": "parallel"}``): ``TraceEnum_ELBO`` sums
over every class,

.. math::

    \mathcal{U}(x) = \sum_y q_\phi(y \mid x)\,\big(\mathcal{L}(x, y)\big)
        + \mathcal{H}(q_\phi(y \mid x)),

where :math:`\mathcal{L}(x, y)` is the ELBO of a labelled item. For a labelled item the
model observes ``y`` and the guide samples only :math:`z \sim q_\phi(z \mid x, y)`.
Outside an enumerating ELBO (e.g. importance-weighted evaluation) ``y`` is sampled from
the classifier.

References
----------
- Kingma, Rezende, Mohamed & Welling (2014), Semi-Supervised Learning with Deep
  Generative Models.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.guides.conditional import ConditionalEncoder
from pyrovae.guides.encoders import diagonal_normal
from pyrovae.model.generative import LocalPyroModule, data_plate, kl_weight
from pyrovae.networks import mlp

__all__ = ["Classifier", "SemiSupervisedGuide"]


class Classifier(nn.Module):
    """The MLP ``prod(event_shape) -> hidden... -> num_classes`` logits of :math:`q(y \\mid x)`."""

    def __init__(
        self, event_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (256, 128)
    ) -> None:
        super().__init__()
        self.event_dim = len(event_shape)
        self.net = mlp([prod(event_shape), *hidden, num_classes])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(-self.event_dim) if self.event_dim else x[..., None])


class SemiSupervisedGuide(LocalPyroModule):
    """``forward(x=None, y=None, *, num_data=None, batch_size=None, beta=1.0)``."""

    def __init__(self, encoder: ConditionalEncoder, classifier: Classifier) -> None:
        super().__init__()
        self.encoder = encoder
        self.classifier = classifier

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
        with data_plate(len(x), num_data, x.device):
            if y is None:
                logits = self.classifier(x)
                y = pyro.sample(
                    "y", dist.Categorical(logits=logits), infer={"enumerate": "parallel"}
                )
            loc, log_var = self.encoder(x, y)
            with kl_weight(beta):
                pyro.sample("z", diagonal_normal(loc, log_var))
        return loc, log_var
