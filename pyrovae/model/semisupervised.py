r"""The M2 model (Kingma et al. 2014): :math:`p(y)\,p(z)\,p(x \mid y, z)`.

.. math::

    y_n \sim \mathrm{Categorical}(1/C, \dots, 1/C), \qquad z_n \sim p(z), \qquad
    x_n \mid y_n, z_n \sim p_\theta\big(x \mid \mathrm{decoder}_\theta([z_n,
        \mathrm{onehot}(y_n)])\big)

The class is a latent variable: observed for labelled items, summed out for unlabelled
ones (the guide enumerates it, see :mod:`pyrovae.guides.semisupervised`).

References
----------
- Kingma, Rezende, Mohamed & Welling (2014), Semi-Supervised Learning with Deep
  Generative Models.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.model.conditional import ConditionalVAEModel
from pyrovae.model.likelihoods import Likelihood
from pyrovae.model.priors import Prior

__all__ = ["SemiSupervisedModel"]


class SemiSupervisedModel(ConditionalVAEModel):
    """:class:`~pyrovae.model.conditional.ConditionalVAEModel` with a uniform prior on ``y``.

    ``forward(x=None, y=None, ...)``: ``y`` is observed when given, otherwise a latent
    site (sampled from :math:`p(y)` when generating, enumerated or sampled by the guide
    when inferring).
    """

    def __init__(
        self,
        prior: Prior,
        decoder: nn.Module,
        likelihood: Likelihood,
        event_shape: tuple[int, ...],
        num_classes: int,
    ) -> None:
        super().__init__(prior, decoder, likelihood, event_shape, num_classes)
        self.register_buffer("label_logits", torch.zeros(num_classes))

    def label(self, y: torch.Tensor | None) -> torch.Tensor:
        """:math:`y \\sim p(y)`, uniform over the classes (observed when ``y`` is given)."""
        return pyro.sample("y", dist.Categorical(logits=self.label_logits), obs=y)
