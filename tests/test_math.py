r"""Tests of the mathematics of pyrovae, each against an independent computation.

Every quantity that pyrovae (through Pyro) computes is recomputed here from first
principles: densities with ``torch.distributions`` built by hand from the encoder's
``(loc, log_var)``, the decoder's output and the configured scale; the Gaussian KL
from its closed form; the marginal likelihood of a linear-Gaussian decoder
(probabilistic PCA) from :math:`x \sim \mathcal{N}(b, W W^\top + s^2 I)`; and the
pathwise gradients of a one-dimensional toy model from their hand derivation.

Tolerances come from the mathematics, never from trial runs:

- *Exact identities* (same noise on both sides) are compared at float32 precision:
  a bound of ``64 * eps32`` times the sum of the absolute values of the terms that
  were added up (``eps32`` = 1.19e-7; a sum of :math:`n` float32 terms has rounding
  error at most about :math:`n \cdot \mathrm{eps}` relative to the sum of absolute
  values, and no sum here has more than a few dozen terms per entry).
- *Monte Carlo statements* are checked to within 4 standard errors, where the
  standard error is computed from per-sample values (or, for the toy gradients, from
  its closed form). A correct implementation fails such a check with probability
  about 6e-5 per comparison; the seeds are fixed, so the outcome is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from pyro import poutine
from torch import distributions as td
from torch import nn
from torch.nn import functional as F

from pyrovae import VAE, iwae_log_likelihood
from pyrovae.inference import make_elbo
from pyrovae.inference.evaluation import weights as weights_module
from pyrovae.model import LIKELIHOODS, MixturePrior, make_likelihood

EPS32 = torch.finfo(torch.float32).eps
#: rounding allowance for a float32 sum, relative to the sum of absolute values
FLOAT32_RTOL = 64 * EPS32
#: number of standard errors a Monte Carlo estimate may deviate
NUM_SE = 4.0


LikelihoodFn = Callable[[torch.Tensor], td.Distribution]


# --------------------------------------------------------------------------- helpers


def assert_float32_equal(
    actual: torch.Tensor | float, expected: torch.Tensor, abs_terms: torch.Tensor | float
) -> None:
    """Assert equality up to float32 rounding of terms whose magnitudes sum to ``abs_terms``."""
    actual = torch.as_tensor(actual, dtype=expected.dtype)
    atol = FLOAT32_RTOL * torch.as_tensor(abs_terms).max().item()
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=atol)


def small_vae(
    likelihood: str = "gaussian",
    scale: float = 0.5,
    prior: str = "normal",
    event_shape: tuple[int, ...] = (5,),
    latent_dim: int = 2,
    hidden: tuple[int, ...] = (8,),
) -> VAE:
    """A tiny randomly initialized VAE (the test seed fixes its weights)."""
    # options go to the components that declare them (a mixture's components, a scale)
    return VAE(
        event_shape,
        latent_dim=latent_dim,
        prior={"name": prior, "num_components": 3} if prior == "mixture" else prior,
        likelihood={"name": likelihood, "scale": scale} if likelihood == "gaussian" else likelihood,
        hidden=hidden,
    )


def event_sum(log_prob: torch.Tensor, event_dim: int) -> torch.Tensor:
    """Sum a log density over the last ``event_dim`` (pixel) dimensions."""
    return log_prob.sum(dim=tuple(range(-event_dim, 0))) if event_dim else log_prob


def hand_mixture_log_prob(prior: MixturePrior, z: torch.Tensor) -> torch.Tensor:
    r""":math:`\log \sum_k \pi_k \prod_j \mathcal{N}(z_j \mid \mu_{kj}, \sigma_{kj})`, by hand."""
    log_pi = torch.log_softmax(prior.logits, dim=-1)
    components = td.Normal(prior.loc, prior.log_scale.exp())  # (K, d)
    log_comp = components.log_prob(z.unsqueeze(-2)).sum(-1)  # (..., K)
    return torch.logsumexp(log_pi + log_comp, dim=-1)


def hand_log_densities(
    vae: VAE, x: torch.Tensor, z: torch.Tensor, likelihood: LikelihoodFn
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Per-item :math:`\log p(x \mid z)`, :math:`\log p(z)` and :math:`\log q(z \mid x)`.

    ``z`` may carry leading particle dimensions. Densities are built with
    ``torch.distributions``: :math:`q = \mathcal{N}(\mu, \exp(\tfrac12 \log\sigma^2))`
    from the encoder's outputs, the prior :math:`\mathcal{N}(0, I)` (or the mixture
    recomputed by :func:`hand_mixture_log_prob`), and ``likelihood(decoder(z))``.
    """
    loc, log_var = vae.guide.encoder(x)
    log_q = td.Normal(loc, torch.exp(0.5 * log_var)).log_prob(z).sum(-1)
    if isinstance(vae.model.prior, MixturePrior):
        log_p = hand_mixture_log_prob(vae.model.prior, z)
    else:
        log_p = td.Normal(0.0, 1.0).log_prob(z).sum(-1)
    params = vae.model.decoder(z)
    log_lik = event_sum(likelihood(params).log_prob(x.expand(params.shape)), len(vae.event_shape))
    return log_lik, log_p, log_q


def hand_gaussian_kl(loc: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    r""":math:`\mathrm{KL}(\mathcal{N}(\mu, \sigma^2) \| \mathcal{N}(0, 1))
    = \tfrac12 \sum_j (\sigma_j^2 + \mu_j^2 - 1 - \log\sigma_j^2)`, per item."""
    return 0.5 * (log_var.exp() + loc**2 - 1.0 - log_var).sum(-1)


def sample_q(vae: VAE, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """``num_samples`` draws of ``z ~ q(z | x)`` by hand: ``loc + sigma * eps``."""
    loc, log_var = vae.guide.encoder(x)
    eps = torch.randn(num_samples, *loc.shape)
    return loc + torch.exp(0.5 * log_var) * eps


class RecordingGuide(nn.Module):
    """Runs a guide under ``poutine.trace`` and keeps each call's ``(x, z)``.

    Messages still reach the handlers outside (the trace inside records them as they
    pass), so the caller's own tracing and replay work unchanged.
    """

    def __init__(self, guide: nn.Module) -> None:
        super().__init__()
        self.guide = guide
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x=None, **kwargs):
        tracer = poutine.trace(self.guide)
        out = tracer(x, **kwargs)
        self.calls.append((x, tracer.trace.nodes["z"]["value"]))
        return out


# ------------------------------------------- 1. Trace_ELBO equals a hand computation

GAUSSIAN_SCALE = 0.5
ELBO_CASES = {
    # name: (likelihood name, prior name, reference likelihood, data sampler)
    "gaussian": (
        "gaussian",
        "normal",
        lambda p: td.Normal(p, GAUSSIAN_SCALE),
        lambda n: torch.randn(n, 5),
    ),
    "bernoulli": (
        "bernoulli",
        "normal",
        lambda p: td.Bernoulli(logits=p),
        lambda n: torch.bernoulli(torch.full((n, 5), 0.3)),
    ),
    "bernoulli-mixture-prior": (
        "bernoulli",
        "mixture",
        lambda p: td.Bernoulli(logits=p),
        lambda n: torch.bernoulli(torch.full((n, 5), 0.3)),
    ),
}


@pytest.mark.parametrize("num_data", [None, 100])
@pytest.mark.parametrize("beta", [1.0, 0.25])
@pytest.mark.parametrize("case", list(ELBO_CASES))
def test_trace_elbo_equals_hand_computation_at_same_z(case, beta, num_data):
    r"""Pyro's single-sample ``Trace_ELBO`` loss equals the hand-computed ELBO at the same ``z``.

    The guide is traced once and replayed inside ``Trace_ELBO``, so both sides use the
    same :math:`z`. By hand, with :math:`N` = ``num_data`` (or the batch size) and
    :math:`B` the batch size,

    .. math::

        \text{loss} = -\frac{N}{B} \sum_{n=1}^B \Big[\log p(x_n \mid z_n)
            - \beta \big(\log q(z_n \mid x_n) - \log p(z_n)\big)\Big],

    which checks the reconstruction term, the KL term, the minibatch scaling
    :math:`N/B` and the KL weight :math:`\beta` at once. Exact identity: float32
    tolerance.
    """
    likelihood, prior, reference, sample_data = ELBO_CASES[case]
    vae = small_vae(likelihood=likelihood, prior=prior, scale=GAUSSIAN_SCALE)
    x = sample_data(4)
    kwargs = {"num_data": num_data, "beta": beta}

    guide_trace = poutine.trace(vae.guide).get_trace(x, **kwargs)
    replayed_guide = poutine.replay(vae.guide, trace=guide_trace)
    loss = make_elbo("Trace_ELBO").loss(vae.model, replayed_guide, x, **kwargs)

    with torch.no_grad():
        z = guide_trace.nodes["z"]["value"]
        loc, _ = vae.guide.encoder(x)
        assert not torch.allclose(z, loc)  # a real draw, not the mean
        log_lik, log_p, log_q = hand_log_densities(vae, x, z, reference)
        scale = (num_data or len(x)) / len(x)
        expected = -scale * (log_lik - beta * (log_q - log_p)).sum()
        abs_terms = scale * (log_lik.abs() + beta * (log_q.abs() + log_p.abs())).sum()
    assert_float32_equal(loss, expected, abs_terms)


# ----------------------------------- 2. Trace_ELBO and TraceMeanField_ELBO agree (MC)


def test_trace_elbo_and_mean_field_elbo_agree_within_monte_carlo_error():
    r"""``Trace_ELBO`` (Monte Carlo KL) and ``TraceMeanField_ELBO`` (closed-form KL) agree.

    Both estimate :math:`-\sum_n \mathrm{ELBO}(x_n)` with :math:`M = 2000` vectorized
    particles. Their per-particle values are recomputed by hand from independent draws
    :math:`z = \mu + \sigma\epsilon`: for ``Trace_ELBO``
    :math:`-\sum_n[\log p(x_n|z_n) + \log p(z_n) - \log q(z_n|x_n)]`, for the mean-field
    ELBO :math:`-\sum_n[\log p(x_n|z_n) - \mathrm{KL}_n]`. The two Pyro estimates are
    independent, so their difference has standard error
    :math:`\sqrt{s_T^2/M + s_{MF}^2/M}`; the difference must be within 4 of them, and
    each Pyro estimate must be within 4 standard errors of the hand average.
    """
    num_particles = 2000
    vae = small_vae(scale=1.0)
    x = torch.randn(8, 5)
    trace_loss = make_elbo("Trace_ELBO", num_particles, vectorize_particles=True).loss(
        vae.model, vae.guide, x
    )
    mean_field_loss = make_elbo("TraceMeanField_ELBO", num_particles, True).loss(
        vae.model, vae.guide, x
    )

    with torch.no_grad():
        z = sample_q(vae, x, num_particles)
        log_lik, log_p, log_q = hand_log_densities(vae, x, z, lambda p: td.Normal(p, 1.0))
        loc, log_var = vae.guide.encoder(x)
        kl = hand_gaussian_kl(loc, log_var).sum()
        trace_particles = -(log_lik + log_p - log_q).sum(-1)
        mean_field_particles = -(log_lik.sum(-1) - kl)
    se_trace = trace_particles.std().item() / math.sqrt(num_particles)
    se_mean_field = mean_field_particles.std().item() / math.sqrt(num_particles)
    assert abs(trace_loss - mean_field_loss) < NUM_SE * math.hypot(se_trace, se_mean_field)
    assert abs(trace_loss - trace_particles.mean().item()) < NUM_SE * math.sqrt(2) * se_trace
    assert abs(mean_field_loss - mean_field_particles.mean().item()) < (
        NUM_SE * math.sqrt(2) * se_mean_field
    )


# ------------------------------------------------------ 3. the closed-form Gaussian KL


def test_guide_prior_kl_matches_torch_and_hand_formula():
    r"""KL between the guide's and the prior's distributions in the traces, three ways.

    The ``fn`` of site ``z`` in the guide and model traces, fed to
    ``torch.distributions.kl_divergence``, must equal the KL between independently
    built ``torch.distributions`` objects
    :math:`\mathcal{N}(\mu, \exp(\tfrac12\log\sigma^2))` and :math:`\mathcal{N}(0, I)`,
    and the hand formula :math:`\tfrac12\sum_j(\sigma_j^2 + \mu_j^2 - 1 - \log\sigma_j^2)`.
    This pins down that the guide uses :math:`\sigma = \exp(\log\sigma^2/2)` (not
    :math:`\exp(\log\sigma^2)`). Exact identity: float32 tolerance.
    """
    vae = small_vae(latent_dim=3)
    x = 3.0 * torch.randn(6, 5)  # spread the encoder outputs over a wider range
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)

    with torch.no_grad():
        kl_traces = td.kl_divergence(guide_trace.nodes["z"]["fn"], model_trace.nodes["z"]["fn"])
        loc, log_var = vae.guide.encoder(x)
        q = td.Independent(td.Normal(loc, torch.exp(0.5 * log_var)), 1)
        p = td.Independent(td.Normal(torch.zeros_like(loc), torch.ones_like(loc)), 1)
        kl_torch = td.kl_divergence(q, p)
        kl_hand = hand_gaussian_kl(loc, log_var)
        abs_terms = 0.5 * (log_var.exp() + loc**2 + 1 + log_var.abs()).sum(-1)
    assert log_var.abs().max() > 0.5  # the check is not confined to sigma close to 1
    assert kl_traces.shape == (6,)
    assert_float32_equal(kl_traces, kl_hand, abs_terms)
    assert_float32_equal(kl_torch, kl_hand, abs_terms)


@pytest.mark.parametrize("num_data", [None, 40])
@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_mean_field_elbo_is_exact_when_decoder_ignores_z(beta, num_data):
    r"""With a decoder whose output does not depend on :math:`z`, TraceMeanField is exact.

    All decoder weights are zero, so the decoder returns its last bias :math:`b` and
    :math:`\log p(x \mid z) = \log \mathcal{N}(x \mid b, s)` for every :math:`z`. The
    mean-field ELBO then has no Monte Carlo noise at all:

    .. math::

        \text{loss} = -\frac{N}{B} \sum_n \big[\log\mathcal{N}(x_n \mid b, s)
            - \beta\,\mathrm{KL}(q(z \mid x_n) \,\|\, \mathcal{N}(0, I))\big]

    with the KL from the hand formula. Exact identity: float32 tolerance.
    """
    scale = 0.7
    vae = small_vae(scale=scale)
    bias = torch.randn(5)
    with torch.no_grad():
        for layer in vae.model.decoder.modules():
            if isinstance(layer, nn.Linear):
                layer.weight.zero_()
        last = [m for m in vae.model.decoder.modules() if isinstance(m, nn.Linear)][-1]
        last.bias.copy_(bias)
    x = torch.randn(4, 5)
    loss = make_elbo("TraceMeanField_ELBO").loss(
        vae.model, vae.guide, x, num_data=num_data, beta=beta
    )

    with torch.no_grad():
        log_lik = td.Normal(bias, scale).log_prob(x).sum(-1)
        kl = hand_gaussian_kl(*vae.guide.encoder(x))
        n_over_b = (num_data or len(x)) / len(x)
        expected = -n_over_b * (log_lik - beta * kl).sum()
        abs_terms = n_over_b * (log_lik.abs() + beta * kl.abs()).sum()
    assert_float32_equal(loss, expected, abs_terms)


def test_mean_field_elbo_falls_back_to_monte_carlo_kl_for_the_mixture_prior():
    r"""With the mixture prior (no closed-form KL) TraceMeanField is Trace_ELBO at the same ``z``.

    ``kl_divergence`` has no rule for a Gaussian against a mixture, so the mean-field
    ELBO must fall back to the sampled :math:`\log q(z \mid x) - \log p(z)` (as the
    objectives module documents). At a replayed :math:`z` its loss is then the
    hand-computed :math:`-\sum_n[\log p(x_n|z_n) + \log p(z_n) - \log q(z_n|x_n)]` with
    the mixture density by hand. Exact identity: float32 tolerance.
    """
    vae = small_vae(likelihood="bernoulli", prior="mixture")
    x = torch.bernoulli(torch.full((4, 5), 0.3))
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    replayed_guide = poutine.replay(vae.guide, trace=guide_trace)
    loss = make_elbo("TraceMeanField_ELBO").loss(vae.model, replayed_guide, x)
    with torch.no_grad():
        z = guide_trace.nodes["z"]["value"]
        reference = lambda p: td.Bernoulli(logits=p)  # noqa: E731
        log_lik, log_p, log_q = hand_log_densities(vae, x, z, reference)
        expected = -(log_lik + log_p - log_q).sum()
        abs_terms = (log_lik.abs() + log_p.abs() + log_q.abs()).sum()
    assert_float32_equal(loss, expected, abs_terms)


# ------------------------------------------- 4. reparameterized (pathwise) gradients

TOY_SCALE = 0.5
TOY_W = (1.5, -0.5, 0.8)
TOY_C = (0.2, -0.1, 0.3)


def toy_linear_vae() -> tuple[VAE, torch.Tensor, torch.Tensor]:
    r"""A toy VAE with a 1-D latent and a linear-Gaussian decoder with known weights.

    :math:`z \sim \mathcal{N}(0, 1)`, :math:`x \mid z \sim \mathcal{N}(wz + c, s^2 I_3)`.
    Built with pyrovae's MLP decoder with no hidden layer (a single ``Linear(1, 3)``)
    whose weight and bias are set to :math:`w` and :math:`c` by hand.
    """
    vae = VAE((3,), latent_dim=1, likelihood="gaussian", scale=TOY_SCALE, hidden=())
    w, c = torch.tensor(TOY_W), torch.tensor(TOY_C)
    (linear,) = [m for m in vae.model.decoder.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        linear.weight.copy_(w[:, None])
        linear.bias.copy_(c)
    return vae, w, c


def record_encoder_outputs(vae: VAE) -> tuple[dict[str, torch.Tensor], object]:
    """Hook the encoder so its outputs keep their ``.grad`` after ``backward()``."""
    recorded: dict[str, torch.Tensor] = {}

    def hook(module, inputs, outputs):
        loc, log_var = outputs
        loc.retain_grad()
        log_var.retain_grad()
        recorded["loc"], recorded["log_var"] = loc, log_var

    return recorded, vae.guide.encoder.register_forward_hook(hook)


def test_single_sample_gradients_equal_hand_derived_pathwise_gradients():
    r"""The one-particle mean-field loss has hand-derived gradients in :math:`\mu, \log\sigma^2`.

    With :math:`z = \mu + \sigma\epsilon`, :math:`\sigma = e^{\log\sigma^2/2}` and
    :math:`g_z = \partial_z \log\mathcal{N}(x \mid wz + c, s) = w^\top(x - c - wz)/s^2`,
    the per-item loss :math:`-\log\mathcal{N}(x \mid wz + c, s) + \mathrm{KL}` has

    .. math::

        \frac{\partial L}{\partial\mu} = -g_z + \mu, \qquad
        \frac{\partial L}{\partial\log\sigma^2} = -g_z\,\epsilon\,\frac{\sigma}{2}
            + \frac12(\sigma^2 - 1),

    where :math:`\epsilon = (z - \mu)/\sigma` is read off the sampled :math:`z`. The
    encoder is a single ``Linear`` layer, so its weight gradient is
    :math:`\sum_n [\partial L/\partial\mu_n, \partial L/\partial\log\sigma^2_n]^\top x_n`.
    Exact identities: float32 tolerance.
    """
    vae, w, c = toy_linear_vae()
    x = torch.randn(4, 3)
    recorded, handle = record_encoder_outputs(vae)
    guide = poutine.trace(vae.guide)
    try:
        loss = make_elbo("TraceMeanField_ELBO").differentiable_loss(vae.model, guide, x)
        loss.backward()
    finally:
        handle.remove()

    with torch.no_grad():
        mu, log_var = recorded["loc"], recorded["log_var"]
        sigma = torch.exp(0.5 * log_var)
        z = guide.trace.nodes["z"]["value"]
        eps = (z - mu) / sigma
        g_z = (w * (x - c - w * z)).sum(-1, keepdim=True) / TOY_SCALE**2
        grad_mu = -g_z + mu
        grad_log_var = -g_z * eps * sigma / 2 + 0.5 * (sigma**2 - 1)
        abs_terms = (g_z.abs() * (1 + eps.abs() * sigma) + mu.abs() + sigma**2 + 1).max()
    assert eps.abs().min() > 0  # a real draw
    assert_float32_equal(mu.grad, grad_mu, abs_terms)
    assert_float32_equal(log_var.grad, grad_log_var, abs_terms)

    (encoder_linear,) = [m for m in vae.guide.encoder.modules() if isinstance(m, nn.Linear)]
    expected_weight_grad = torch.cat([grad_mu, grad_log_var], dim=-1).T @ x
    assert_float32_equal(
        encoder_linear.weight.grad, expected_weight_grad, abs_terms * x.abs().sum(0).max()
    )


def test_average_gradient_approaches_closed_form_expected_gradient():
    r"""Averaged over many particles, the gradients approach the closed-form gradient.

    :math:`E_q[\log\mathcal{N}(x \mid wz + c, s)] = \log\mathcal{N}(x \mid w\mu + c, s)
    - |w|^2\sigma^2/(2s^2)`, so with :math:`a = w^\top(x - c - w\mu)/s^2` and
    :math:`b = |w|^2\sigma/s^2` the expected loss has

    .. math::

        \partial_\mu E[L] = -a + \mu, \qquad
        \partial_{\log\sigma^2} E[L] = \frac{|w|^2\sigma^2}{2s^2} + \frac12(\sigma^2 - 1).

    The per-particle gradients are :math:`-a + b\epsilon + \mu` and
    :math:`-(a\epsilon - b\epsilon^2)\sigma/2 + (\sigma^2 - 1)/2`, with standard
    deviations :math:`b` and :math:`\tfrac{\sigma}{2}\sqrt{a^2 + 2b^2}` (as
    :math:`\mathrm{Var}\,\epsilon = 1`, :math:`\mathrm{Var}\,\epsilon^2 = 2`,
    :math:`\mathrm{Cov}(\epsilon, \epsilon^2) = 0`). The average over :math:`M` particles
    must lie within 4 of these standard deviations divided by :math:`\sqrt M`. The
    loss itself is checked likewise against its closed-form expectation.
    """
    num_particles = 4000
    vae, w, c = toy_linear_vae()
    x = torch.randn(4, 3)
    recorded, handle = record_encoder_outputs(vae)
    try:
        elbo = make_elbo("TraceMeanField_ELBO", num_particles, vectorize_particles=True)
        loss = elbo.differentiable_loss(vae.model, vae.guide, x)
        loss.backward()
    finally:
        handle.remove()

    with torch.no_grad():
        mu, log_var = recorded["loc"], recorded["log_var"]
        sigma2 = log_var.exp()
        sigma = sigma2.sqrt()
        w2 = (w**2).sum()
        a = (w * (x - c - w * mu)).sum(-1, keepdim=True) / TOY_SCALE**2
        b = w2 * sigma / TOY_SCALE**2
        expected_grad_mu = -a + mu
        expected_grad_log_var = w2 * sigma2 / (2 * TOY_SCALE**2) + 0.5 * (sigma2 - 1)
        se_mu = b / math.sqrt(num_particles)
        se_log_var = sigma / 2 * (a**2 + 2 * b**2).sqrt() / math.sqrt(num_particles)

        kl = hand_gaussian_kl(mu, log_var)
        expected_loss = -(
            td.Normal(w * mu + c, TOY_SCALE).log_prob(x).sum(-1)
            - w2 * sigma2.squeeze(-1) / (2 * TOY_SCALE**2)
            - kl
        ).sum()
        z = sample_q(vae, x, num_particles)
        per_particle = -(td.Normal(w * z + c, TOY_SCALE).log_prob(x).sum(-1) - kl).sum(-1)
        se_loss = per_particle.std() / math.sqrt(num_particles)

    assert (mu.grad - expected_grad_mu).abs().le(NUM_SE * se_mu).all()
    assert (log_var.grad - expected_grad_log_var).abs().le(NUM_SE * se_log_var).all()
    assert abs(loss.item() - expected_loss.item()) < NUM_SE * se_loss.item()


# ---------------------------------------------------------- 5. the IWAE estimator


def test_iwae_increases_with_k_and_is_above_the_elbo():
    r""":math:`\mathcal{L}_K` is an unbiased ELBO estimate at :math:`K=1` and grows with :math:`K`.

    Burda et al. (2016): :math:`E[\mathcal{L}_1] = \mathrm{ELBO}` and
    :math:`E[\mathcal{L}_K]` is non-decreasing in :math:`K`. A randomly initialized
    encoder is far from the posterior, so the gap to :math:`\log p(x)` is large and the
    increase is much larger than the noise. Over 300 data points, with the ELBO per
    point computed by hand from 1000 independent draws, the paired per-point
    differences :math:`d_n` give the standard error :math:`\mathrm{sd}(d)/\sqrt{300}`:

    - :math:`K=1`: :math:`|\bar d| < 4\,\mathrm{SE}` against the ELBO (unbiasedness);
    - :math:`K = 10, 100, 1000`: :math:`\bar d > 4\,\mathrm{SE}` against the ELBO;
    - each step :math:`K \to 10K`: :math:`\bar d > -4\,\mathrm{SE}` (no significant
      decrease; the expected increase shrinks with :math:`K`, so a significant increase
      is required only over the whole range) and :math:`\mathcal{L}_{1000} - \mathcal{L}_1`:
      :math:`\bar d > 4\,\mathrm{SE}`.
    """
    scale = 0.3
    vae = small_vae(scale=scale)
    x = torch.randn(300, 5)
    with torch.no_grad():
        z = sample_q(vae, x, 1000)
        log_lik, log_p, log_q = hand_log_densities(vae, x, z, lambda p: td.Normal(p, scale))
        elbo = (log_lik + log_p - log_q).mean(0)

    def mean_and_se(d: torch.Tensor) -> tuple[float, float]:
        return d.mean().item(), d.std().item() / math.sqrt(len(d))

    estimates = {k: iwae_log_likelihood(vae, x, num_samples=k) for k in (1, 10, 100, 1000)}
    mean, se = mean_and_se(estimates[1] - elbo)
    assert abs(mean) < NUM_SE * se
    for previous, k in [(1, 10), (10, 100), (100, 1000)]:
        mean, se = mean_and_se(estimates[k] - elbo)
        assert mean > NUM_SE * se, f"IWAE K={k} not above the ELBO"
        mean, se = mean_and_se(estimates[k] - estimates[previous])
        assert mean > -NUM_SE * se, f"IWAE K={k} below K={previous}"
    mean, se = mean_and_se(estimates[1000] - estimates[1])
    assert mean > NUM_SE * se


PPCA_SCALE = 0.5
PPCA_DIM, PPCA_LATENT = 4, 2


def ppca_vae(
    loc_shift: float = 0.0, var_factor: float = 1.0
) -> tuple[VAE, torch.Tensor, torch.Tensor]:
    r"""Probabilistic PCA as a pyrovae VAE, with the encoder set to (a perturbed) exact posterior.

    :math:`z \sim \mathcal{N}(0, I_2)`, :math:`x \mid z \sim \mathcal{N}(Wz + b, s^2 I_4)`,
    built with ``hidden=()`` so the decoder is one ``Linear`` layer holding :math:`W, b`.
    :math:`W` has orthogonal columns of norms 2 and 1, so the posterior is diagonal:

    .. math::

        p(z \mid x) = \mathcal{N}\big(\Sigma W^\top (x - b)/s^2,\ \Sigma\big), \qquad
        \Sigma = \operatorname{diag}\big(1 / (1 + \|W_{:j}\|^2 / s^2)\big),

    which the linear encoder represents exactly. ``loc_shift`` (in posterior standard
    deviations) and ``var_factor`` perturb it.
    """
    vae = VAE(
        (PPCA_DIM,), latent_dim=PPCA_LATENT, likelihood="gaussian", scale=PPCA_SCALE, hidden=()
    )
    q, _ = torch.linalg.qr(torch.randn(PPCA_DIM, PPCA_LATENT))
    weight = q * torch.tensor([2.0, 1.0])
    bias = torch.randn(PPCA_DIM)
    post_var = 1.0 / (1.0 + (weight**2).sum(0) / PPCA_SCALE**2)
    gain = post_var[:, None] * weight.T / PPCA_SCALE**2  # (2, 4)
    (decoder_linear,) = [m for m in vae.model.decoder.modules() if isinstance(m, nn.Linear)]
    (encoder_linear,) = [m for m in vae.guide.encoder.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        decoder_linear.weight.copy_(weight)
        decoder_linear.bias.copy_(bias)
        encoder_linear.weight.copy_(torch.cat([gain, torch.zeros_like(gain)]))
        encoder_linear.bias.copy_(
            torch.cat([-gain @ bias + loc_shift * post_var.sqrt(), (var_factor * post_var).log()])
        )
    return vae, weight, bias


def ppca_log_marginal(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r""":math:`\log p(x) = \log\mathcal{N}(x \mid b, WW^\top + s^2 I)`, exactly."""
    cov = weight @ weight.T + PPCA_SCALE**2 * torch.eye(PPCA_DIM)
    return td.MultivariateNormal(bias, cov).log_prob(x)


def sample_ppca(weight: torch.Tensor, bias: torch.Tensor, n: int) -> torch.Tensor:
    return torch.randn(n, PPCA_LATENT) @ weight.T + bias + PPCA_SCALE * torch.randn(n, PPCA_DIM)


def test_iwae_is_exact_with_the_exact_posterior_on_ppca():
    r"""With :math:`q = p(z \mid x)` every weight equals :math:`p(x)`, so even :math:`K=1` is exact.

    :math:`\log p(x, z) - \log p(z \mid x) = \log p(x)` for every :math:`z`, so the IWAE
    estimate has no Monte Carlo error and must equal the multivariate-normal marginal up
    to float32 rounding of the three log densities (each a sum of a few O(10)-nat
    terms; the allowance is ``64 * eps32`` times the sum of their magnitudes).
    """
    vae, weight, bias = ppca_vae()
    x = sample_ppca(weight, bias, 20)
    exact = ppca_log_marginal(weight, bias, x)
    with torch.no_grad():
        z = sample_q(vae, x, 1)
        log_lik, log_p, log_q = hand_log_densities(vae, x, z, lambda p: td.Normal(p, PPCA_SCALE))
        abs_terms = (log_lik.abs() + log_p.abs() + log_q.abs()).max()
        # the hand weights confirm that the encoder really is the exact posterior
        assert_float32_equal((log_lik + log_p - log_q)[0], exact, abs_terms)
    for k in (1, 10):
        assert_float32_equal(iwae_log_likelihood(vae, x, num_samples=k), exact, abs_terms)


def test_iwae_converges_to_exact_log_likelihood_on_ppca():
    r"""With an imperfect guide, :math:`\mathcal{L}_{5000}` matches PPCA's exact :math:`\log p(x)`.

    The encoder's means are shifted by 0.5 posterior standard deviations and its
    variances doubled (a wider :math:`q` keeps the weights' variance finite). By the
    delta method, :math:`\mathcal{L}_K` has standard deviation :math:`\sqrt{v/K}` and
    bias :math:`-v/(2K)` (Burda et al. 2016; Maddison et al. 2017), where
    :math:`v = \mathrm{Var}_q[w] / E_q[w]^2` is estimated per data point from 5000
    independent hand-computed weights. Each point must satisfy
    :math:`|\mathcal{L}_K - \log p(x)| < 4\sqrt{v/K} + v/(2K)`.
    """
    num_samples = 5000
    vae, weight, bias = ppca_vae(loc_shift=0.5, var_factor=2.0)
    x = sample_ppca(weight, bias, 20)
    exact = ppca_log_marginal(weight, bias, x)
    with torch.no_grad():
        z = sample_q(vae, x, num_samples)
        log_lik, log_p, log_q = hand_log_densities(vae, x, z, lambda p: td.Normal(p, PPCA_SCALE))
        log_w = log_lik + log_p - log_q
        w = torch.exp(log_w - log_w.max(0).values)
        rel_var = (w**2).mean(0) / w.mean(0) ** 2 - 1
    assert rel_var.min() > 0.05  # the guide is really imperfect: the check has teeth
    estimate = iwae_log_likelihood(vae, x, num_samples=num_samples)
    tolerance = NUM_SE * (rel_var / num_samples).sqrt() + rel_var / (2 * num_samples)
    assert ((estimate - exact).abs() < tolerance).all(), (estimate - exact, tolerance)


def test_iwae_equals_log_mean_exp_of_hand_weights_at_the_same_z(monkeypatch):
    r"""``iwae_log_likelihood`` is :math:`\log\frac1K\sum_k w_k` of the weights at its own draws.

    The guide is wrapped so every ``z`` it samples is recorded; the weights
    :math:`\log p(x \mid z_k) + \log p(z_k) - \log q(z_k \mid x)` are then recomputed
    by hand with ``torch.distributions`` and log-mean-exp'd. A ``batch_size`` smaller
    than the data, and a chunk size that splits the particles (128 per chunk), exercise
    the batching over data and the chunking over particles. Exact identity: float32
    tolerance.
    """
    num_samples, batch_size, particles_per_chunk = 300, 4, 128
    vae, weight, bias = ppca_vae(loc_shift=0.5, var_factor=2.0)
    x = sample_ppca(weight, bias, 10)
    # chunk_size gives each pass CHUNK_ELEMENTS // (batch elements) particles
    monkeypatch.setattr(
        weights_module, "CHUNK_ELEMENTS", particles_per_chunk * batch_size * PPCA_DIM
    )
    recording = RecordingGuide(vae.guide)
    vae.guide = recording
    try:
        estimate = iwae_log_likelihood(vae, x, num_samples=num_samples, batch_size=batch_size)
    finally:
        vae.guide = recording.guide

    # calls come batch by batch (consecutive calls share the batch tensor), chunk by chunk
    batches: list[tuple[torch.Tensor, list[torch.Tensor]]] = []
    for xb, z in recording.calls:
        if batches and xb is batches[-1][0]:
            batches[-1][1].append(z)
        else:
            batches.append((xb, [z]))
    assert torch.equal(torch.cat([xb for xb, _ in batches]), x)
    assert len(batches) == 3 and len(batches[0][1]) > 1  # batched and chunked
    log_w, abs_terms = [], torch.tensor(0.0)
    with torch.no_grad():
        for xb, chunks in batches:
            z = torch.cat(chunks)  # (K, batch, d)
            log_lik, log_p, log_q = hand_log_densities(
                vae, xb, z, lambda p: td.Normal(p, PPCA_SCALE)
            )
            log_w.append(log_lik + log_p - log_q)
            abs_terms = torch.maximum(abs_terms, (log_lik.abs() + log_p.abs() + log_q.abs()).max())
        log_w = torch.cat(log_w, dim=1)
        assert log_w.shape == (num_samples, len(x))
        expected = torch.logsumexp(log_w, dim=0) - math.log(num_samples)
    assert_float32_equal(estimate, expected, abs_terms)


# -------------------------------------------------- 6. priors' and likelihoods' densities


def test_mixture_prior_log_prob_matches_hand_logsumexp():
    r"""The mixture prior's ``log_prob`` is a logsumexp over components, computed by hand.

    .. math::

        \log p(z) = \operatorname{logsumexp}_k \Big[\log\pi_k
            + \sum_j \log\mathcal{N}(z_j \mid \mu_{kj}, \sigma_{kj})\Big]

    The mixture's weights, means and scales are set to random values, and
    :math:`\log\pi = \operatorname{log\_softmax}(\text{logits})` is computed by hand.
    Exact identity: float32 tolerance.
    """
    prior = MixturePrior(latent_dim=3, num_components=4)
    with torch.no_grad():
        prior.logits.copy_(torch.randn(4))
        prior.loc.copy_(2 * torch.randn(4, 3))
        prior.log_scale.copy_(0.5 * torch.randn(4, 3))
    z = 2 * torch.randn(50, 3)
    with torch.no_grad():
        log_pi = prior.logits - torch.logsumexp(prior.logits, 0)
        per_dim = td.Normal(prior.loc, prior.log_scale.exp()).log_prob(z[:, None, :])
        log_joint = log_pi + per_dim.sum(-1)
        expected = torch.logsumexp(log_joint, dim=-1)
        actual = prior().log_prob(z)
    assert prior().event_shape == (3,)
    assert_float32_equal(actual, expected, log_joint.abs().max())


EVENT_SHAPE = (2, 3)
MIN_SCALE = 1e-3


def test_bernoulli_on_grayscale_data_is_the_binary_cross_entropy():
    r"""On grayscale :math:`x \in [0, 1]` the Bernoulli "log-likelihood" is minus the cross-entropy.

    :math:`x \log\sigma(\eta) + (1 - x)\log\sigma(-\eta)` by hand, which is what training
    on grayscale images with the Bernoulli likelihood optimizes (the likelihood turns
    off torch's support check for this). Exact identity: float32 tolerance.
    """
    likelihood = make_likelihood("bernoulli", EVENT_SHAPE)
    logits = 3 * torch.randn(7, *EVENT_SHAPE)
    x = torch.rand(7, *EVENT_SHAPE)
    expected = x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits)
    assert_float32_equal(likelihood(logits).log_prob(x), expected, logits.abs() + 1)


def softplus_by_hand(raw: torch.Tensor) -> torch.Tensor:
    return torch.log1p(torch.exp(raw))


#: name -> (reference distribution from (params, scale), data sampler); scale is None
#: for likelihoods without one
REFERENCE_LIKELIHOODS: dict[str, tuple[Callable, Callable[[], torch.Tensor]]] = {
    "bernoulli": (
        lambda p, s: td.Bernoulli(logits=p),
        lambda: torch.bernoulli(torch.full(EVENT_SHAPE, 0.5)),
    ),
    "continuous-bernoulli": (
        lambda p, s: td.ContinuousBernoulli(logits=p),
        lambda: torch.rand(EVENT_SHAPE),
    ),
    "gaussian": (lambda p, s: td.Normal(p, s), lambda: torch.randn(EVENT_SHAPE)),
    "laplace": (lambda p, s: td.Laplace(p, s), lambda: torch.randn(EVENT_SHAPE)),
}
SCALED = ("gaussian", "laplace")
#: likelihoods whose decoder output is not one parameter per value, checked elsewhere
REFERENCED_ELSEWHERE = {
    "columns": "test_tables.py::test_every_column_density_matches_scipy",
    "discretized-logistic": "test_discretized.py (quad and mpmath references)",
    "discretized-logistic-mixture": "test_discretized.py (quad and mpmath references)",
}


def test_every_registered_likelihood_has_a_reference():
    """A new likelihood must get a reference distribution in this file (or another test)."""
    assert set(REFERENCE_LIKELIHOODS) | set(REFERENCED_ELSEWHERE) == set(LIKELIHOODS.names())


@pytest.mark.parametrize("name", sorted(REFERENCE_LIKELIHOODS))
def test_likelihood_log_prob_and_mean_match_torch(name):
    """Each likelihood's elementwise ``log_prob`` and ``mean`` match ``torch.distributions``.

    Bernoulli-type likelihoods take the decoder output as logits. Exact identity:
    float32 tolerance relative to the largest term.
    """
    reference, sample = REFERENCE_LIKELIHOODS[name]
    options = LIKELIHOODS.options(name)  # a scale where the likelihood has one
    scale = {"scale": 0.3, "learn_scale": "fixed"} if "scale" in options else {}
    likelihood = make_likelihood(name, EVENT_SHAPE, **scale)
    params = 2 * torch.randn(7, *EVENT_SHAPE)
    x = torch.stack([sample() for _ in range(7)])
    with torch.no_grad():
        expected = reference(params, 0.3 if name in SCALED else None)
        actual = likelihood(params)
        assert actual.batch_shape == params.shape
        assert_float32_equal(actual.log_prob(x), expected.log_prob(x), expected.log_prob(x).abs())
        assert_float32_equal(likelihood.mean(params), expected.mean, expected.mean.abs() + 1)


@pytest.mark.parametrize("learn_scale", ["fixed", "global", "pixel"])
@pytest.mark.parametrize("name", SCALED)
def test_learned_scale_is_min_scale_plus_softplus_raw(name, learn_scale):
    r"""Location-scale likelihoods use :math:`\sigma = \sigma_{\min} + \operatorname{softplus}(r)`.

    At construction :math:`\sigma` equals the configured scale (for every
    ``learn_scale``); after setting the raw parameter :math:`r` to random values (one,
    or one per pixel), ``log_prob`` must match ``torch.distributions`` with
    :math:`\sigma_{\min} + \log(1 + e^r)` computed by hand. Exact identity: float32
    tolerance.
    """
    reference, sample = REFERENCE_LIKELIHOODS[name]
    likelihood = make_likelihood(
        name, EVENT_SHAPE, scale=0.3, learn_scale=learn_scale, min_scale=MIN_SCALE
    )
    params = torch.randn(7, *EVENT_SHAPE)
    x = torch.stack([sample() for _ in range(7)])
    with torch.no_grad():
        initial = reference(params, torch.tensor(0.3)).log_prob(x)
        assert_float32_equal(likelihood(params).log_prob(x), initial, initial.abs().max())
        if learn_scale != "fixed":
            expected_shape = EVENT_SHAPE if learn_scale == "pixel" else ()
            assert isinstance(likelihood.raw_scale, nn.Parameter)
            assert likelihood.raw_scale.shape == expected_shape
            likelihood.raw_scale.copy_(torch.randn(expected_shape))
        else:  # a fixed scale is a buffer: it moves with .to(device) but does not train
            assert not isinstance(likelihood.raw_scale, nn.Parameter)
        scale = MIN_SCALE + softplus_by_hand(likelihood.raw_scale)
        expected = reference(params, scale).log_prob(x)
        assert_float32_equal(likelihood(params).log_prob(x), expected, expected.abs().max())
