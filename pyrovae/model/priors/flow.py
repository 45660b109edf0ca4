r"""A learned flow prior: :math:`\mathcal{N}(0, I)` pushed through masked autoregressive steps.

.. math::

    u = f(z) = f_1 \circ \dots \circ f_T(z), \qquad
    f_t(v) = \exp(s_t(v)) \odot v + m_t(v),

    \log p(z) = \log \mathcal{N}(f(z) \mid 0, I)
        + \sum_{t=1}^T \sum_d s_{t,d}(v_t)

where :math:`(m_t, s_t)` is a MADE network, so :math:`m_{t,d}, s_{t,d}` depend on
:math:`v_{<d}` only, the Jacobian of :math:`f_t` is triangular and its
log-determinant is :math:`\sum_d s_{t,d}`; :math:`v_t` is the input of step
:math:`t`, and the variable order is reversed between steps.

Direction. Pyro's :class:`~pyro.distributions.transforms.AffineAutoregressive`
computes its forward map :math:`v \mapsto \exp(s(v)) \odot v + m(v)` with one network
pass, and its inverse sequentially, one pass per dimension. An IAF uses the forward
map for sampling; a prior is *scored* on every step (the ELBO's :math:`\log p(z)` at
the guide's draws) and sampled only to generate. So this prior uses each step's
forward map as the density direction :math:`z \to u` (a masked autoregressive flow,
MAF): its distribution is ``TransformedDistribution(base, [t.inv for t in steps])``,
whose ``log_prob`` calls the steps' cheap forward maps, one network pass per step,
and reads the log-determinant from the transform's cache of that pass (the transforms are
rebuilt on the shared MADE networks at every ``forward()``, so no cache outlives a
parameter update). Sampling runs
the inverses, ``latent_dim`` passes per step.

``TraceMeanField_ELBO`` has no closed-form KL for it and falls back to the Monte
Carlo estimate.

References
----------
- Papamakarios, Pavlakou & Murray (2017), Masked Autoregressive Flow for Density
  Estimation.
- Germain, Gregor, Murray & Larochelle (2015), MADE: Masked Autoencoder for
  Distribution Estimation.
- Chen, Kingma, Salimans, Duan, Dhariwal, Schulman, Sutskever & Abbeel (2017),
  Variational Lossy Autoencoder (autoregressive flow priors in VAEs).
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import AffineAutoregressive
from pyro.nn import AutoRegressiveNN
from torch import nn

from pyrovae.errors import ConfigError
from pyrovae.model.priors.base import PRIORS, Prior

__all__ = ["FlowPrior"]


@PRIORS.register("flow")
class FlowPrior(Prior):
    """:math:`\\mathcal{N}(0, I)` transformed by ``num_flows`` MAF steps (affine autoregressive).

    The steps are Pyro's ``AffineAutoregressive`` transforms (log-scales clipped to
    [-5, 3], Pyro's default), used in the inverse direction so that scoring is cheap
    (see the module docstring). They start at random MADE weights, not the identity.

    Parameters
    ----------
    latent_dim : int
        Dimension of :math:`z` (>= 2: a MADE on one variable has no autoregressive inputs).
    num_flows : int
        Number of autoregressive steps, >= 1.
    flow_hidden : tuple of int
        Hidden widths of each step's MADE, each >= latent_dim; empty: (2 * latent_dim,).
    """

    def __init__(
        self, latent_dim: int, *, num_flows: int = 2, flow_hidden: tuple[int, ...] = ()
    ) -> None:
        super().__init__(latent_dim)
        if latent_dim < 2:
            raise ConfigError(f"the flow prior needs latent_dim >= 2, got {latent_dim}")
        if num_flows < 1:
            raise ConfigError(f"the flow prior needs num_flows >= 1, got {num_flows}")
        hidden = list(flow_hidden) or [2 * latent_dim]
        if min(hidden) < latent_dim:
            raise ConfigError(
                f"the flow prior's hidden layers must be >= latent_dim = {latent_dim} wide "
                f"(a MADE needs that many units), got flow_hidden = {tuple(flow_hidden)}"
            )
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))
        self.mades = nn.ModuleList()
        for t in range(num_flows):
            order = torch.arange(latent_dim)
            order = order.flip(0) if t % 2 else order
            self.mades.append(AutoRegressiveNN(latent_dim, hidden, permutation=order))

    def forward(self) -> dist.TorchDistribution:
        base = dist.Normal(self.loc, self.scale).to_event(1)
        # Fresh transforms on the shared MADEs for every distribution: a transform caches
        # its last (input, output) pair by tensor identity, and a cache kept across
        # parameter updates would return stale values for a z scored again.
        steps = [AffineAutoregressive(made) for made in self.mades]
        # .inv: sampling runs the slow inverses, log_prob the one-pass forward maps
        return dist.TransformedDistribution(base, [step.inv for step in steps])
