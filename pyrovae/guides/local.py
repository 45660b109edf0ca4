r"""A non-amortized Gaussian guide: free mean and log-variance for each data point.

.. math::

    q_{\lambda_n}(z_n) = \mathcal{N}\big(z_n \mid \mu_n,
        \operatorname{diag}\exp(\log\sigma^2_n)\big), \qquad \lambda_n = (\mu_n, \log\sigma^2_n)

Optimizing each :math:`\lambda_n` on its own ELBO gives the best guide of the
encoder's family for that data point; the difference from the amortized guide's ELBO
is the amortization gap (Cremer, Li & Duvenaud 2018; see
:mod:`pyrovae.inference.inspection.gaps`).

References
----------
- Cremer, Li & Duvenaud (2018), Inference Suboptimality in Variational Autoencoders.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.errors import DataError
from pyrovae.model.base import LocalPyroModule, data_plate, kl_weight

__all__ = ["LocalNormalGuide"]


class LocalNormalGuide(LocalPyroModule):
    """Diagonal-Gaussian guide with its own ``loc`` and ``log_var`` for each of N data points.

    It has the model's signature, so Pyro's ELBOs and
    :func:`pyrovae.inference.log_weights` take it where they take the amortized guide;
    ``x`` must be the N data points it was made for (only their number is used).

    Parameters
    ----------
    loc, log_var : torch.Tensor
        Initial values, shape ``(N, latent_dim)`` (e.g. the encoder's output).
    """

    def __init__(self, loc: torch.Tensor, log_var: torch.Tensor) -> None:
        super().__init__()
        if loc.shape != log_var.shape or loc.dim() != 2:
            raise ValueError(
                f"loc and log_var must both have shape (N, latent_dim), got {tuple(loc.shape)} "
                f"and {tuple(log_var.shape)}"
            )
        self.loc = nn.Parameter(loc.detach().clone())
        self.log_var = nn.Parameter(log_var.detach().clone())

    @classmethod
    def from_encoder(cls, encoder: nn.Module, x: torch.Tensor) -> LocalNormalGuide:
        """Start at the amortized guide's output for ``x``."""
        with torch.no_grad():
            loc, log_var = encoder(x)
        return cls(loc, log_var)

    @property
    def scale(self) -> torch.Tensor:
        return torch.exp(0.5 * self.log_var)

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
        if len(x) != len(self.loc):
            raise DataError(
                f"this guide holds parameters for {len(self.loc)} data points but got "
                f"{len(x)}; build one for these data with LocalNormalGuide.from_encoder"
            )
        with data_plate(len(x), num_data, x.device), kl_weight(beta):
            pyro.sample("z", dist.Normal(self.loc, self.scale).to_event(1))
        return self.loc, self.log_var
