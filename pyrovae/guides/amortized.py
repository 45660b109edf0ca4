r"""The amortized Gaussian guide :math:`q_\phi(z \mid x)`.

.. math::

    q_\phi(z \mid x) = \mathcal{N}\big(z \mid \mu_\phi(x),
        \operatorname{diag} \exp(\log\sigma^2_\phi(x))\big)

One encoder network serves every data point (amortized inference). ``z`` is drawn
with ``rsample`` (the reparameterization trick), so gradients of the ELBO flow into
the encoder's mean and log-variance outputs.

References
----------
- Kingma & Welling (2014), Auto-Encoding Variational Bayes.
- Rezende, Mohamed & Wierstra (2014), Stochastic Backpropagation and Approximate
  Inference in Deep Generative Models.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from pyrovae.model.generative import LocalPyroModule, data_plate

__all__ = ["AmortizedNormalGuide"]


class AmortizedNormalGuide(LocalPyroModule):
    """Diagonal-Gaussian guide whose mean and log-variance come from ``encoder(x)``.

    Shares the model's signature ``forward(x=None, *, num_data=None, batch_size=None,
    beta=1.0)``; with ``x=None`` (generation) there is nothing to infer and the guide
    samples nothing, so the model draws ``z`` from its prior.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(
        self,
        x: torch.Tensor | None = None,
        *,
        num_data: int | None = None,
        batch_size: int | None = None,
        beta: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        if x is None:
            return None
        with data_plate(len(x), num_data, x.device):
            loc, log_var = self.encoder(x)
            with poutine.scale(scale=beta):
                pyro.sample("z", dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1))
        return loc, log_var
