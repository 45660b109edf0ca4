r"""The inference gaps of Cremer, Li & Duvenaud (2018): approximation and amortization.

The amortized guide's ELBO falls short of :math:`\log p(x)` by
:math:`\mathrm{KL}(q_\phi(z \mid x) \,\|\, p(z \mid x))`. With :math:`q^*` the best
guide of the same family for this one data point (a Gaussian with its own mean and
log-variance, optimized on that point's ELBO, :class:`~pyrovae.guides.LocalNormalGuide`),
the shortfall splits into

.. math::

    \underbrace{\log p(x) - \mathcal{L}[q_\phi]}_{\text{inference gap}}
    = \underbrace{\log p(x) - \mathcal{L}[q^*]}_{\text{approximation gap}}
    + \underbrace{\mathcal{L}[q^*] - \mathcal{L}[q_\phi]}_{\text{amortization gap}}

The approximation gap is what the Gaussian family cannot represent; the amortization
gap is what the encoder loses by predicting the parameters instead of optimizing them
per data point. The two add up to the inference gap exactly, by construction, for the
estimates as for the true values.

Estimates (nats, per data point):

- :math:`\mathcal{L}[q_\phi]` and :math:`\mathcal{L}[q^*]`: means of ``K`` log
  importance weights :math:`\log p(x, z_k) - \log q(z_k)`. Both guides reparameterize
  the same standard-normal noise (common random numbers: the random stream is reset to
  one seed before each), so the amortization gap's Monte Carlo error is that of the
  *difference* of paired weights, smaller than with independent draws when the two
  guides are alike.
- :math:`\log p(x)`: the IWAE bound :math:`\mathcal{L}_K` (Burda et al. 2016) with the
  same ``K`` samples of :math:`q^*` as proposal (the guide closest to the posterior),
  a lower bound in expectation that tends to :math:`\log p(x)` as ``K`` grows. On the
  same weights :math:`\log\frac1K\sum_k w_k \ge \frac1K\sum_k \log w_k` (Jensen), so
  the estimated approximation gap is never negative. Its standard error is the delta
  method's :math:`\sqrt{v/K}`, :math:`v = \mathrm{Var}[w] / E[w]^2` estimated from the
  weights (Cremer et al. also use AIS; a larger ``K`` is the way to tighten it here).
- :math:`q^*` starts at the encoder's output and follows Adam on the ELBO of all
  items at once, whose gradient with respect to item :math:`n`'s parameters involves
  only item :math:`n`'s term, with a cosine-decaying learning rate so the last iterate
  is not dominated by gradient noise.

References
----------
- Cremer, Li & Duvenaud (2018), Inference Suboptimality in Variational Autoencoders. ICML.
- Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders. ICLR.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from pyrovae.errors import ConfigError
from pyrovae.guides.local import LocalNormalGuide
from pyrovae.inference.evaluation import importance_weights, log_mean_exp
from pyrovae.inference.inspection.mcmc import frozen
from pyrovae.inference.sites import require, require_single_latent
from pyrovae.inference.training.objectives import make_elbo
from pyrovae.progress import progress_bar

if TYPE_CHECKING:
    from pyrovae.variants import VAE

__all__ = ["InferenceGaps", "inference_gaps", "optimize_local_guide"]

logger = logging.getLogger(__name__)


def optimize_local_guide(
    vae: VAE,
    x: torch.Tensor,
    *,
    num_steps: int = 1000,
    learning_rate: float = 0.01,
    num_particles: int = 16,
    elbo: str = "TraceMeanField_ELBO",
) -> LocalNormalGuide:
    r"""Fit a Gaussian :math:`q^*_n` to each data point's ELBO, starting at the encoder's output.

    The model's parameters are held fixed. ``elbo`` is a Pyro ELBO name
    (``TraceMeanField_ELBO`` uses the closed-form KL where there is one, so its
    gradients are less noisy), estimated with ``num_particles`` vectorized particles;
    Adam's learning rate decays from ``learning_rate`` to 0 on a cosine schedule over
    ``num_steps`` steps.
    """
    if num_steps < 0 or num_particles < 1 or not learning_rate > 0:
        raise ConfigError(
            "the optimized guide needs num_steps >= 0, num_particles >= 1 and a positive "
            f"learning rate, got {num_steps}, {num_particles}, {learning_rate}"
        )
    if vae.component_name("guide") != "normal":
        raise ConfigError(
            f"the amortization gap compares the guide with the best per-point diagonal Gaussian, "
            f"the family of the 'normal' guide; this VAE's guide is {vae.component_name('guide')!r}"
        )
    guide = LocalNormalGuide.from_encoder(vae.guide.encoder, x).to(x.device)
    if num_steps == 0:
        return guide
    loss_fn = make_elbo(elbo, num_particles, vectorize_particles=True)(vae.model, guide)
    optimizer = torch.optim.Adam(guide.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=num_steps)
    with frozen(vae):
        for step in progress_bar(range(num_steps), desc="per-item guides", unit="step"):
            optimizer.zero_grad()
            loss = loss_fn(x)
            loss.backward()
            optimizer.step()
            schedule.step()
            if (step + 1) % max(1, num_steps // 5) == 0:
                logger.info(
                    "optimized guide: step %d/%d, ELBO %.3f nats per data point",
                    step + 1,
                    num_steps,
                    -loss.item() / len(x),
                )
    return guide


@dataclass
class InferenceGaps:
    """Per-data-point estimates (tensors of shape ``(N,)``, nats) and their Monte Carlo errors.

    ``elbo_*_se`` are Monte Carlo standard errors of the per-point ELBO estimates
    (standard deviation of the ``K`` log weights over :math:`\\sqrt K`);
    ``amortization_gap_se`` uses the common-random-number differences of the weights;
    ``log_likelihood_se`` is the delta-method error of the IWAE estimate.
    """

    log_likelihood: torch.Tensor
    log_likelihood_se: torch.Tensor
    elbo_amortized: torch.Tensor
    elbo_optimized: torch.Tensor
    elbo_amortized_se: torch.Tensor
    elbo_optimized_se: torch.Tensor
    amortization_gap_se: torch.Tensor
    num_samples: int

    @property
    def approximation_gap(self) -> torch.Tensor:
        r""":math:`\log p(x) - \mathcal{L}[q^*]`."""
        return self.log_likelihood - self.elbo_optimized

    @property
    def amortization_gap(self) -> torch.Tensor:
        r""":math:`\mathcal{L}[q^*] - \mathcal{L}[q_\phi]`."""
        return self.elbo_optimized - self.elbo_amortized

    @property
    def inference_gap(self) -> torch.Tensor:
        r""":math:`\log p(x) - \mathcal{L}[q_\phi]`, the sum of the two gaps."""
        return self.log_likelihood - self.elbo_amortized

    def summary(self) -> dict[str, float]:
        """Means over the data points, with the standard error of each mean over the points
        (``*_sem``: spread between data points, which dominates the Monte Carlo error)."""
        n = len(self.log_likelihood)
        out: dict[str, float] = {"num_data": n, "num_samples": self.num_samples}
        for name in (
            "log_likelihood",
            "elbo_optimized",
            "elbo_amortized",
            "inference_gap",
            "approximation_gap",
            "amortization_gap",
        ):
            values = getattr(self, name)
            out[name] = values.mean().item()
            out[f"{name}_sem"] = (values.std() / math.sqrt(n)).item() if n > 1 else float("nan")
        return out


@torch.no_grad()
def _gaps(vae: VAE, x: torch.Tensor, guide: LocalNormalGuide, num_samples: int) -> InferenceGaps:
    seed = int(torch.randint(2**31 - 1, ()))
    lw_amortized = importance_weights(vae, x, num_samples, seed=seed).log_weight
    lw_optimized = importance_weights(vae, x, num_samples, guide=guide, seed=seed).log_weight
    iwae = log_mean_exp(lw_optimized)
    root_k = math.sqrt(num_samples)
    w = torch.exp(lw_optimized - lw_optimized.amax(0))  # weights up to a per-point factor
    relative_var = w.var(0) / w.mean(0) ** 2 if num_samples > 1 else torch.nan * w[0]

    def se(lw: torch.Tensor) -> torch.Tensor:
        return lw.std(0) / root_k if num_samples > 1 else torch.full_like(lw[0], float("nan"))

    return InferenceGaps(
        log_likelihood=iwae.cpu(),
        log_likelihood_se=(relative_var / num_samples).sqrt().cpu(),
        elbo_amortized=lw_amortized.mean(0).cpu(),
        elbo_optimized=lw_optimized.mean(0).cpu(),
        elbo_amortized_se=se(lw_amortized).cpu(),
        elbo_optimized_se=se(lw_optimized).cpu(),
        amortization_gap_se=se(lw_optimized - lw_amortized).cpu(),
        num_samples=num_samples,
    )


def inference_gaps(
    vae: VAE,
    x: torch.Tensor,
    num_samples: int = 1000,
    *,
    num_steps: int = 1000,
    learning_rate: float = 0.01,
    num_particles: int = 16,
) -> InferenceGaps:
    r"""Estimate :math:`\log p(x)`, :math:`\mathcal{L}[q^*]`, :math:`\mathcal{L}[q_\phi]` per point.

    Parameters
    ----------
    vae : VAE
        A trained VAE.
    x : torch.Tensor
        Data points ``(N, *event_shape)``, e.g. a sample of the held-out set.
    num_samples : int
        Importance samples ``K`` for the ELBO and IWAE estimates.
    num_steps, learning_rate, num_particles : int, float, int
        The per-point optimization of :func:`optimize_local_guide`.

    Returns
    -------
    InferenceGaps
        Per-point estimates; ``.summary()`` for the means. The gaps, in nats per data
        point, are ``approximation_gap`` and ``amortization_gap``.
    """
    if num_samples < 1:
        raise ConfigError(f"-k/--num-samples must be >= 1, got {num_samples}")
    require(vae, "posterior", "the gap decomposition")
    require(vae, "likelihood", "the gap decomposition")  # before the local guides are fitted
    vae.require_unconditional("the gap decomposition")
    require_single_latent(vae, "the gap decomposition")
    vae.validate_data(x, "data for the gaps")
    x = x.to(vae.device)
    with frozen(vae):
        guide = optimize_local_guide(
            vae, x, num_steps=num_steps, learning_rate=learning_rate, num_particles=num_particles
        )
        return _gaps(vae, x, guide, num_samples)
