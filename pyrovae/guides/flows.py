r"""An inverse-autoregressive-flow guide: the amortized Gaussian followed by IAF steps.

.. math::

    z_0 \sim \mathcal{N}(\mu_\phi(x), \operatorname{diag}\sigma^2_\phi(x)), \qquad
    z_t = \mu_t(z_{t-1}, h) + \sigma_t(z_{t-1}, h) \odot z_{t-1}, \quad t = 1..T,

    \log q(z_T \mid x) = \log \mathcal{N}(z_0) - \sum_{t=1}^T \sum_d \log \sigma_{t,d}

where :math:`(\mu_t, \sigma_t)` is a masked autoregressive network (MADE) of
:math:`z_{t-1}` and of a context :math:`h = h_\phi(x)` that the encoder outputs next
to the mean and log-variance, so the flow is conditioned on :math:`x` as in
Kingma et al. (2016). The steps are ``pyro.distributions.transforms``'
``ConditionalAffineAutoregressive`` in its numerically stable (sigmoid-gated) form,
and the variable order is reversed between steps. Sampling and scoring the drawn
``z`` cost one network pass per step; the transforms cache the inverse, so the
density of a draw needs no inversion.

``TraceMeanField_ELBO`` has no closed-form KL for a flow and falls back to the Monte
Carlo estimate (it then equals ``Trace_ELBO``). :meth:`IAFGuide.encode` returns the
base Gaussian's mean and log-variance: the posterior's location before the flow,
which the collapse diagnostics and ``reconstruct`` read.

References
----------
- Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling (2016), Improved
  Variational Inference with Inverse Autoregressive Flow.
- Germain, Gregor, Murray & Larochelle (2015), MADE: Masked Autoencoder for
  Distribution Estimation.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn

from pyrovae.errors import ConfigError
from pyrovae.guides.amortized import GUIDES, AmortizedGuide
from pyrovae.guides.encoders import diagonal_normal

__all__ = ["IAFGuide"]


@GUIDES.register("iaf")
class IAFGuide(AmortizedGuide):
    """Diagonal Gaussian pushed through ``num_flows`` conditional IAF steps.

    Parameters
    ----------
    encoder : nn.Module
        Returns ``(loc, log_var, context)``, each ``(..., latent_dim)``.
    latent_dim : int
        Dimension of :math:`z`.
    num_flows : int
        inverse autoregressive flow steps T >= 1 of the iaf guide.
    flow_hidden : tuple of int, optional
        hidden layers of each flow step's MADE (default: 2 * latent_dim; at least
        latent_dim wide, as MADE needs).

    ``log_var_min``/``log_var_max`` clamp the base Gaussian's log-variance.
    """

    def __init__(
        self,
        encoder: nn.Module,
        latent_dim: int,
        *,
        num_flows: int = 2,
        flow_hidden: tuple[int, ...] | None = None,
        log_var_min: float | None = None,
        log_var_max: float | None = None,
    ) -> None:
        super().__init__(encoder, log_var_min=log_var_min, log_var_max=log_var_max)
        if num_flows < 1:
            raise ConfigError(f"the IAF guide needs num_flows >= 1, got {num_flows}")
        hidden = list(flow_hidden or [2 * latent_dim])
        if min(hidden) < latent_dim:
            raise ConfigError(f"IAF hidden layers must be >= latent_dim = {latent_dim} wide")
        self.flows = nn.ModuleList()
        for t in range(num_flows):
            order = torch.arange(latent_dim)
            order = order.flip(0) if t % 2 else order
            made = ConditionalAutoRegressiveNN(latent_dim, latent_dim, hidden, permutation=order)
            self.flows.append(ConditionalAffineAutoregressive(made, stable=True))

    @staticmethod
    def num_encoder_outputs(**options: object) -> int:
        return 3

    def posterior(
        self, loc: torch.Tensor, log_var: torch.Tensor, context: torch.Tensor
    ) -> dist.TorchDistribution:
        base = diagonal_normal(loc, log_var)
        return dist.TransformedDistribution(base, [f.condition(context) for f in self.flows])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_var, _ = self.clip(self.encoder(x))
        return loc, log_var
