r"""The VampPrior: a mixture of the encoder's posteriors at learned pseudo-inputs.

.. math::

    p_\lambda(z) = \frac1K \sum_{k=1}^K q_\phi(z \mid u_k)
    = \frac1K \sum_{k=1}^K \mathcal{N}\big(z \mid \mu_\phi(u_k),
        \operatorname{diag} \exp(\log\sigma^2_\phi(u_k))\big)

The :math:`K` pseudo-inputs :math:`u_k` have the shape of a data point and are
learned with the model; the encoder :math:`(\mu_\phi, \log\sigma^2_\phi)` is the
guide's own network, shared, so the prior "variationally mixes" the posteriors and
the encoder's parameters also receive gradients through :math:`\log p(z)`.

No closed-form KL exists against a Gaussian guide, so ``TraceMeanField_ELBO`` falls
back to the Monte Carlo estimate :math:`\log q(z \mid x) - \log p(z)` at the drawn
:math:`z`. The encoder runs on all :math:`K` pseudo-inputs on every call of
``forward()``; the model calls it once per step, so a step costs one extra encoder
pass over :math:`K` inputs (500 by default, as in the paper).

References
----------
- Tomczak & Welling (2018), VAE with a VampPrior. AISTATS.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.errors import ConfigError
from pyrovae.model.priors.base import PRIORS, DiagonalNormalMixture, Prior

__all__ = ["VampPrior"]

Encoder = Callable[[torch.Tensor], Sequence[torch.Tensor]]


@PRIORS.register("vamp")
class VampPrior(Prior):
    r"""An equal-weight mixture of :math:`q_\phi(z \mid u_k)` over :math:`K` learned pseudo-inputs.

    The pseudo-inputs are kept inside the data range by clamping them in the forward
    pass, as the reference code does with its ``Hardtanh(0, 1)`` layer (a pseudo-input
    pushed past the range sits on its edge and receives no gradient there). They start
    as :math:`\mathrm{low} + (\mathrm{high} - \mathrm{low})(m + s\,\epsilon)` with
    :math:`\epsilon \sim \mathcal{N}(0, 1)` per entry; the defaults :math:`m = 0.05,
    s = 0.01` are the reference code's for binary images (it uses 0.5 / 0.02 for
    Caltech silhouettes and Frey faces, 0.4 / 0.05 for histopathology and CIFAR-10).
    :meth:`init_from_data` starts them at data points instead (the reference's
    ``--use_training_data_init``).

    The encoder is held but not registered as a submodule: it belongs to the guide,
    which saves and moves it; registering it here too would duplicate it in the
    model's ``state_dict``. Its first two outputs are read as ``(loc, log_var)``; the
    variants pass it only when those are the guide's q(z|x) exactly (the diagonal
    Gaussian guide, hvae's q(z2|x)), and ``None`` otherwise, which is refused here with
    one message, as is an open data range (``None``, a Gaussian or Laplace likelihood).

    Parameters
    ----------
    latent_dim : int
        Dimension of :math:`z` (the encoder's output width).
    event_shape : tuple of int
        Shape of one data point, and of each pseudo-input.
    encoder : callable
        The guide's encoder, ``x -> (loc, log_var, ...)`` of shape ``(..., latent_dim)``.
    data_range : tuple of float
        ``(low, high)``, the closed interval the pseudo-inputs are kept in.
    num_pseudo_inputs : int
        Number of pseudo-inputs K (mixture components), >= 1.
    pseudo_inputs_mean : float
        Initial mean of the pseudo-inputs' entries, as a fraction of the data range, in [0, 1].
    pseudo_inputs_std : float
        Initial standard deviation of the pseudo-inputs' entries, as a fraction of the data range.
    """

    def __init__(
        self,
        latent_dim: int,
        event_shape: Sequence[int],
        encoder: Encoder | None,
        data_range: tuple[float, float] | None = (0.0, 1.0),
        *,
        num_pseudo_inputs: int = 500,
        pseudo_inputs_mean: float = 0.05,
        pseudo_inputs_std: float = 0.01,
    ) -> None:
        super().__init__(latent_dim)
        if num_pseudo_inputs < 1:
            raise ConfigError(
                f"the vamp prior needs num_pseudo_inputs >= 1, got {num_pseudo_inputs}"
            )
        if encoder is None:
            raise ConfigError(
                "the vamp prior mixes the guide's diagonal Gaussian posteriors q(z|u) at its "
                "pseudo-inputs, which this model's guide does not have (use --guide normal; "
                "the encoders of --model cvae and m2 also read labels)"
            )
        if data_range is None:
            raise ConfigError(
                "the vamp prior keeps its pseudo-inputs inside the data's range, which this "
                "likelihood does not bound: for data in [0, 1] use --likelihood bernoulli or "
                "continuous-bernoulli; a table (--likelihood columns: category codes, counts, "
                "missing cells) has no such range, so give it another --prior (normal, "
                "learned-normal, mixture or flow)"
            )
        low, high = (float(v) for v in data_range)
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ConfigError(
                f"the vamp prior needs a finite data range with low < high, got {data_range}"
            )
        if not 0.0 <= pseudo_inputs_mean <= 1.0:
            raise ConfigError(
                "pseudo_inputs_mean is a fraction of the data range and must lie in [0, 1], "
                f"got {pseudo_inputs_mean}"
            )
        if not pseudo_inputs_std >= 0.0:
            raise ConfigError(f"pseudo_inputs_std must be >= 0, got {pseudo_inputs_std}")
        if not callable(encoder):
            raise ConfigError(
                f"the vamp prior needs a callable encoder, got {type(encoder).__name__}"
            )
        self.event_shape = tuple(event_shape)
        self.data_range = (low, high)
        # not nn.Module.__setattr__: the guide owns the encoder (see the class docstring)
        object.__setattr__(self, "encoder", encoder)
        # on the encoder's device and dtype, so the width check below can run it
        like = next(encoder.parameters(), None) if isinstance(encoder, nn.Module) else None
        factory = {} if like is None else {"dtype": like.dtype, "device": like.device}
        noise = torch.randn(num_pseudo_inputs, *self.event_shape, **factory)
        init = low + (high - low) * (pseudo_inputs_mean + pseudo_inputs_std * noise)
        #: the unconstrained pseudo-inputs; :attr:`pseudo_inputs` clamps them to the data range
        self.raw_pseudo_inputs = nn.Parameter(init)
        with torch.no_grad():
            loc = self._encode(self.pseudo_inputs[:1])[0]
        if loc.shape[-1] != latent_dim:
            raise ConfigError(
                f"the vamp prior's encoder returns codes of width {loc.shape[-1]}, but the "
                f"prior is over latent_dim = {latent_dim}"
            )

    @property
    def num_pseudo_inputs(self) -> int:
        """:math:`K`, the number of mixture components."""
        return self.raw_pseudo_inputs.shape[0]

    @property
    def pseudo_inputs(self) -> torch.Tensor:
        """The pseudo-inputs :math:`u_k` clamped to the data range, shape ``(K, *event_shape)``."""
        return self.raw_pseudo_inputs.clamp(*self.data_range)

    def _encode(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.encoder(u)  # type: ignore[operator]  # held outside nn.Module's registry
        return outputs[0], outputs[1]

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, noise_std: float = 0.01) -> None:
        """Set the pseudo-inputs to the first K data points plus Gaussian noise.

        ``noise_std`` is a fraction of the data range (the reference code uses 0.01).
        """
        k = self.num_pseudo_inputs
        if len(x) < k or tuple(x.shape[1:]) != self.event_shape:
            raise ConfigError(
                f"init_from_data needs at least {k} points of shape {self.event_shape}, "
                f"got data of shape {tuple(x.shape)}"
            )
        low, high = self.data_range
        noise = torch.randn_like(self.raw_pseudo_inputs)
        self.raw_pseudo_inputs.copy_(x[:k] + noise_std * (high - low) * noise)

    def forward(self) -> dist.TorchDistribution:
        loc, log_var = self._encode(self.pseudo_inputs)  # (K, D) each
        logits = loc.new_zeros(loc.shape[0])  # equal weights 1/K
        return DiagonalNormalMixture(logits, loc, torch.exp(0.5 * log_var))
