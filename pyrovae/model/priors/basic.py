r"""The Gaussian priors: standard normal, learned diagonal normal, Gaussian mixture.

References
----------
- Kingma & Welling (2014), Auto-Encoding Variational Bayes.
- Tomczak & Welling (2018), VAE with a VampPrior (mixture priors).
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.errors import ConfigError
from pyrovae.model.priors.base import PRIORS, DiagonalNormalMixture, Prior

__all__ = ["LearnedNormalPrior", "MixturePrior", "NormalPrior"]


@PRIORS.register("normal")
class NormalPrior(Prior):
    r"""The standard normal :math:`p(z) = \mathcal{N}(0, I)` (the default)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


@PRIORS.register("learned-normal")
class LearnedNormalPrior(Prior):
    r"""A diagonal Gaussian with learnable mean and log-scale, starting at N(0, I)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.log_scale = nn.Parameter(torch.zeros(latent_dim))

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.log_scale.exp()).to_event(1)


@PRIORS.register("mixture")
class MixturePrior(Prior):
    r"""A mixture of :math:`K` diagonal Gaussians with learnable weights, means and scales.

    .. math::

        p(z) = \sum_{k=1}^K \pi_k \, \mathcal{N}(z \mid \mu_k, \operatorname{diag}\sigma_k^2)

    The means start spread out (standard normal draws from a fixed generator) so the
    components do not start identical. No closed-form KL exists against a Gaussian
    guide, so ``TraceMeanField_ELBO`` falls back to a Monte Carlo estimate for it.

    Parameters
    ----------
    latent_dim : int
        Dimension of :math:`z`.
    num_components : int
        components K of the mixture prior.
    """

    def __init__(self, latent_dim: int, *, num_components: int = 10) -> None:
        super().__init__(latent_dim)
        if num_components < 1:
            raise ConfigError(f"mixture prior needs num_components >= 1, got {num_components}")
        generator = torch.Generator().manual_seed(0)
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.loc = nn.Parameter(torch.randn(num_components, latent_dim, generator=generator))
        self.log_scale = nn.Parameter(torch.zeros(num_components, latent_dim))

    def forward(self) -> dist.TorchDistribution:
        return DiagonalNormalMixture(self.logits, self.loc, self.log_scale.exp())
