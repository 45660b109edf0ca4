r"""A low-rank-plus-diagonal Gaussian guide: correlated posteriors at linear cost.

.. math::

    q_\phi(z \mid x) = \mathcal{N}\big(z \mid \mu_\phi(x),\;
        W_\phi(x) W_\phi(x)^\top + \operatorname{diag}\exp(\log\sigma^2_\phi(x))\big),
    \qquad W_\phi(x) \in \mathbb{R}^{D \times r}

The encoder's last layer is ``(2 + r) * D`` wide: the mean, the log of the diagonal
and the ``r`` columns of the factor :math:`W`. With ``r = D`` it can express any
covariance. ``pyro.distributions.LowRankMultivariateNormal`` samples and scores it
in :math:`O(D r^2)`. ``TraceMeanField_ELBO`` has no closed-form KL for it against a
diagonal prior and falls back to the Monte Carlo estimate.

References
----------
- Rezende, Mohamed & Wierstra (2014), Stochastic Backpropagation and Approximate
  Inference in Deep Generative Models (rank-one covariance).
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.errors import ConfigError
from pyrovae.guides.amortized import GUIDES, AmortizedGuide

__all__ = ["LowRankNormalGuide"]


@GUIDES.register("lowrank")
class LowRankNormalGuide(AmortizedGuide):
    """Gaussian guide with covariance :math:`W W^\\top + \\operatorname{diag}\\sigma^2`.

    :meth:`encode` returns the mean and the log of the marginal variances
    :math:`\\sigma_d^2 + \\sum_j W_{dj}^2` (the diagonal of the covariance).
    ``log_var_min``/``log_var_max`` clamp the log of the diagonal part :math:`\\sigma^2`.

    Parameters
    ----------
    encoder : nn.Module
        Returns ``2 + guide_rank`` tensors of shape ``(..., latent_dim)``.
    guide_rank : int
        rank r >= 1 of the low-rank guide's covariance factor.
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        guide_rank: int = 2,
        log_var_min: float | None = None,
        log_var_max: float | None = None,
    ) -> None:
        super().__init__(encoder, log_var_min=log_var_min, log_var_max=log_var_max)
        self.rank = self.num_encoder_outputs(guide_rank=guide_rank) - 2

    @staticmethod
    def num_encoder_outputs(*, guide_rank: int = 2, **options: object) -> int:
        if guide_rank < 1:
            raise ConfigError(f"the low-rank guide needs guide_rank >= 1, got {guide_rank}")
        return 2 + guide_rank

    def posterior(self, loc: torch.Tensor, log_var: torch.Tensor, *columns: torch.Tensor):
        factor = torch.stack(columns, dim=-1)  # (..., D, r)
        return dist.LowRankMultivariateNormal(loc, factor, log_var.exp())

    def _summary(
        self, loc: torch.Tensor, log_var: torch.Tensor, *columns: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        variance = log_var.exp() + torch.stack(columns, dim=-1).pow(2).sum(-1)
        return loc, variance.log()

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._summary(*self.clip(self.encoder(x)))
