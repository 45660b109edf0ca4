r"""Tests of the VampPrior and the flow prior, each against an independent computation.

Exact identities are checked in float64 at ``atol = 1e-10`` (the terms are of order
1-100 and float64 rounding is ~1e-16 relative, so a correct computation lands many
orders of magnitude inside); float32 identities at ``64 * eps32`` times the sum of
absolute values of the terms, as in ``test_math.py``. Monte Carlo statements use 4
standard errors computed from the samples.
"""

from __future__ import annotations

import math

import pyro
import pytest
import torch
import torch.distributions as td
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

import pyrovae  # noqa: F401  (sets module-local parameters)
from pyrovae.errors import ConfigError
from pyrovae.guides import AmortizedNormalGuide, MLPEncoder
from pyrovae.model import BernoulliLikelihood, MLPDecoder
from pyrovae.model.priors import (
    PRIORS,
    DistributionPrior,
    FlowPrior,
    LearnedNormalPrior,
    MixturePrior,
    NormalPrior,
    Prior,
    VampPrior,
    check_prior,
    make_prior,
)
from pyrovae.variants.vae import VAEModel

ATOL64 = 1e-10
NUM_SE = 4.0
EVENT_SHAPE = (5,)
LATENT_DIM = 3


def vamp_prior(
    num_pseudo_inputs: int = 4, data_range: tuple[float, float] = (0.0, 1.0), **options: float
) -> VampPrior:
    """A float64 VampPrior on a small MLP encoder, its pseudo-inputs spread over the range."""
    encoder = MLPEncoder(LATENT_DIM, EVENT_SHAPE, hidden=(8,)).double()
    prior = VampPrior(
        LATENT_DIM,
        EVENT_SHAPE,
        encoder,
        data_range,
        num_pseudo_inputs=num_pseudo_inputs,
        **options,
    ).double()
    low, high = data_range
    # distinct pseudo-inputs, so the components differ and the mixture is a real mixture
    prior.init_from_data(low + (high - low) * torch.rand(num_pseudo_inputs, *EVENT_SHAPE).double())
    return prior


def brute_force_mixture_log_prob(
    loc: torch.Tensor, log_var: torch.Tensor, z: torch.Tensor
) -> torch.Tensor:
    r""":math:`\log \frac1K \sum_k \prod_d \mathcal{N}(z_d \mid \mu_{kd}, \sigma_{kd})`, by hand."""
    z = z.unsqueeze(-2)  # (..., 1, D) against (K, D)
    log_normal = -0.5 * (math.log(2 * math.pi) + log_var + (z - loc) ** 2 / log_var.exp())
    return torch.logsumexp(log_normal.sum(-1), dim=-1) - math.log(loc.shape[0])


# ------------------------------------------------------------------------------ layout


def test_priors_package_keeps_every_export_and_registers_the_new_priors():
    assert PRIORS.names()[:3] == ["normal", "learned-normal", "mixture"]
    assert PRIORS["vamp"] is VampPrior
    assert PRIORS["flow"] is FlowPrior
    for cls in (NormalPrior, LearnedNormalPrior, MixturePrior, DistributionPrior):
        assert issubclass(cls, Prior)
    assert isinstance(make_prior("flow", 4), FlowPrior)
    check_prior(make_prior("normal", 4)(), 4)


# ----------------------------------------------------------------------------- VampPrior


def test_vamp_log_prob_matches_a_hand_built_mixture_on_batched_z():
    prior = vamp_prior()
    z = torch.randn(2, 7, LATENT_DIM, dtype=torch.float64)  # (particles, batch, D)
    loc, log_var = prior.encoder(prior.pseudo_inputs)
    k = prior.num_pseudo_inputs
    reference = td.MixtureSameFamily(
        td.Categorical(probs=torch.full((k,), 1.0 / k, dtype=torch.float64)),
        td.Independent(td.Normal(loc, torch.exp(0.5 * log_var)), 1),
    )
    d = prior()
    check_prior(d, LATENT_DIM)
    actual = d.log_prob(z)
    assert actual.shape == (2, 7)
    torch.testing.assert_close(actual, reference.log_prob(z), rtol=0, atol=ATOL64)
    torch.testing.assert_close(
        actual, brute_force_mixture_log_prob(loc, log_var, z), rtol=0, atol=ATOL64
    )
    # a real mixture: no single component explains the density
    one_component = td.Normal(loc[0], torch.exp(0.5 * log_var[0])).log_prob(z).sum(-1)
    assert (actual - one_component).abs().max() > 1e-3


def test_vamp_gradients_reach_the_pseudo_inputs_and_the_encoder():
    prior = vamp_prior()
    z = torch.randn(6, LATENT_DIM, dtype=torch.float64)
    prior().log_prob(z).sum().backward()
    assert prior.raw_pseudo_inputs.grad is not None
    assert prior.raw_pseudo_inputs.grad.abs().min() > 0
    for name, param in prior.encoder.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_vamp_does_not_register_the_encoder():
    prior = vamp_prior()
    assert list(prior.state_dict()) == ["raw_pseudo_inputs"]
    assert [p is prior.raw_pseudo_inputs for p in prior.parameters()] == [True]


@pytest.mark.parametrize("data_range", [(0.0, 1.0), (-1.0, 2.0)])
def test_vamp_pseudo_inputs_start_as_the_reference_and_stay_in_the_data_range(data_range):
    low, high = data_range
    encoder = MLPEncoder(LATENT_DIM, (10,), hidden=(8,))
    prior = VampPrior(LATENT_DIM, (10,), encoder, data_range, num_pseudo_inputs=500)
    u = prior.pseudo_inputs.detach()
    n = u.numel()
    # reference initialisation: mean 0.05, sd 0.01 of the range; 4 standard errors
    assert abs(u.mean() - (low + 0.05 * (high - low))) < NUM_SE * 0.01 * (high - low) / n**0.5
    assert abs(u.std() / (0.01 * (high - low)) - 1) < NUM_SE / (2 * (n - 1)) ** 0.5

    # one SGD step on a loss whose gradient is +-1 per entry moves each raw entry by 1,
    # out of the range on one side or the other
    sign = torch.where(torch.rand_like(u) < 0.5, -1.0, 1.0)
    optimizer = torch.optim.SGD([prior.raw_pseudo_inputs], lr=(high - low))
    (sign * prior.pseudo_inputs).sum().neg().backward()
    optimizer.step()
    raw = prior.raw_pseudo_inputs.detach()
    assert ((raw < low) | (raw > high)).all()  # the step did push every entry out
    assert (prior.pseudo_inputs >= low).all() and (prior.pseudo_inputs <= high).all()
    torch.testing.assert_close(prior.pseudo_inputs, torch.where(sign > 0, high, low))
    # and the mixture is built from the clamped pseudo-inputs
    loc, _ = encoder(prior.pseudo_inputs)
    torch.testing.assert_close(prior().component_distribution.mean, loc)


def test_vamp_samples_and_works_in_the_data_plate():
    prior = vamp_prior()
    assert prior().sample((11,)).shape == (11, LATENT_DIM)
    model = VAEModel(
        prior,
        MLPDecoder(LATENT_DIM, EVENT_SHAPE, hidden=(8,)).double(),
        BernoulliLikelihood(),
        EVENT_SHAPE,
    )
    trace = poutine.trace(model).get_trace(batch_size=7)
    assert trace.nodes["z"]["value"].shape == (7, LATENT_DIM)
    assert trace.nodes["x"]["value"].shape == (7, *EVENT_SHAPE)


def test_vamp_options_are_checked():
    encoder = MLPEncoder(LATENT_DIM, EVENT_SHAPE, hidden=(8,))
    with pytest.raises(ConfigError, match="num_pseudo_inputs"):
        VampPrior(LATENT_DIM, EVENT_SHAPE, encoder, num_pseudo_inputs=0)
    with pytest.raises(ConfigError, match="data range"):
        VampPrior(LATENT_DIM, EVENT_SHAPE, encoder, (1.0, 0.0))
    with pytest.raises(ConfigError, match="pseudo_inputs_mean"):
        VampPrior(LATENT_DIM, EVENT_SHAPE, encoder, pseudo_inputs_mean=1.5)
    with pytest.raises(ConfigError, match="pseudo_inputs_std"):
        VampPrior(LATENT_DIM, EVENT_SHAPE, encoder, pseudo_inputs_std=-0.1)
    with pytest.raises(ConfigError, match="width 3"):
        VampPrior(LATENT_DIM + 1, EVENT_SHAPE, encoder)
    with pytest.raises(ConfigError, match="at least 4 points"):
        VampPrior(LATENT_DIM, EVENT_SHAPE, encoder, num_pseudo_inputs=4).init_from_data(
            torch.rand(3, *EVENT_SHAPE)
        )


# ---------------------------------------------------------------------------- FlowPrior


def hand_flow_map(prior: FlowPrior, z: torch.Tensor) -> torch.Tensor:
    r"""The density direction :math:`u = f(z)` from the MADE networks' outputs, written out.

    The prior samples :math:`z = T_1^{-1}(\dots T_T^{-1}(u))` (``TransformedDistribution``
    applies its list in order, each entry the inverse of a step), so
    :math:`f = T_1 \circ \dots \circ T_T`: the last step is applied first. Each step is
    :math:`v \mapsto \exp(\mathrm{clip}(s(v), -5, 3)) \odot v + m(v)`.
    """
    v = z
    for made in reversed(prior.mades):
        mean, log_scale = made(v)
        v = torch.exp(log_scale.clamp(-5.0, 3.0)) * v + mean
    return v


def flow_prior(num_flows: int = 2, dtype: torch.dtype = torch.float64) -> FlowPrior:
    prior = FlowPrior(LATENT_DIM, num_flows=num_flows).to(dtype)
    with torch.no_grad():  # larger weights than the default init, so the map is far from affine
        for param in prior.parameters():
            param.mul_(3.0)
    return prior


@pytest.mark.parametrize("num_flows", [1, 3])
def test_flow_log_prob_is_the_change_of_variables_formula(num_flows):
    prior = flow_prior(num_flows)
    z = 2 * torch.randn(4, LATENT_DIM, dtype=torch.float64)
    expected = []
    for point in z:
        u = hand_flow_map(prior, point)
        jacobian = torch.autograd.functional.jacobian(lambda p: hand_flow_map(prior, p), point)
        _, log_abs_det = torch.linalg.slogdet(jacobian)
        expected.append(td.Normal(0.0, 1.0).log_prob(u).sum() + log_abs_det)
    d = prior()
    check_prior(d, LATENT_DIM)
    torch.testing.assert_close(d.log_prob(z), torch.stack(expected), rtol=0, atol=ATOL64)
    # batched z: (particles, batch, D) gives the pointwise values
    batched = z.reshape(2, 2, LATENT_DIM)
    torch.testing.assert_close(
        d.log_prob(batched), torch.stack(expected).reshape(2, 2), rtol=0, atol=ATOL64
    )


def test_flow_density_is_one_network_pass_per_step_and_sampling_inverts_it():
    # float32: Pyro 1.9's AffineAutoregressive inverse starts from float32 zeros
    prior = flow_prior(num_flows=2, dtype=torch.float32)
    calls: list[int] = []
    for made in prior.mades:
        made.register_forward_hook(lambda *_: calls.append(1))
    d = prior()
    d.log_prob(torch.randn(50, LATENT_DIM))
    assert len(calls) == 2  # MAF direction: log_prob runs each step's forward map once
    calls.clear()
    z = d.sample((4000,))
    assert z.shape == (4000, LATENT_DIM)
    assert len(calls) == 2 * LATENT_DIM  # sampling inverts each step, one pass per dimension
    # samples pushed through the density map are standard normal (4 standard errors)
    u = hand_flow_map(prior, z).detach()
    n = len(u)
    assert (u.mean(0).abs() < NUM_SE / n**0.5).all()
    assert ((u.var(0) - 1).abs() < NUM_SE * (2 / (n - 1)) ** 0.5).all()


def test_flow_parameters_round_trip_through_the_state_dict():
    prior = FlowPrior(LATENT_DIM, num_flows=2)
    names = list(dict(prior.named_parameters()))
    assert len(names) > 0 and all(n.startswith("mades.") for n in names)
    copy = FlowPrior(LATENT_DIM, num_flows=2)
    z = torch.randn(5, LATENT_DIM)
    assert not torch.allclose(copy().log_prob(z), prior().log_prob(z))
    copy.load_state_dict(prior.state_dict())
    # the same z object again: a transform cache kept from before the load would be stale
    torch.testing.assert_close(copy().log_prob(z), prior().log_prob(z), rtol=0, atol=0)


def test_flow_prior_learns_a_shifted_gaussian():
    # target N((2, -1), 0.5^2 I): its entropy bounds the mean log-likelihood at
    # -sum_d 0.5 log(2 pi e sigma^2) = -1.45; N(0, I) scores -6.2 on it in expectation
    prior = FlowPrior(2, num_flows=2)
    shift, sd = torch.tensor([2.0, -1.0]), 0.5
    heldout = shift + sd * torch.randn(2000, 2)
    with torch.no_grad():
        before = prior().log_prob(heldout).mean().item()
    optimizer = torch.optim.Adam(prior.parameters(), lr=1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        prior().log_prob(shift + sd * torch.randn(256, 2)).mean().neg().backward()
        optimizer.step()
    with torch.no_grad():
        after = prior().log_prob(heldout).mean().item()
    assert after > before + 1.0
    assert after > -2.0  # within 0.55 nats of the best possible; N(0, I) is 4 nats further off


def test_flow_options_are_checked():
    with pytest.raises(ConfigError, match="num_flows"):
        FlowPrior(3, num_flows=0)
    with pytest.raises(ConfigError, match="hidden"):
        FlowPrior(3, flow_hidden=(2,))
    with pytest.raises(ConfigError, match="latent_dim >= 2"):
        FlowPrior(1)


# ------------------------------------------------------------------- both, inside a VAE


@pytest.mark.parametrize("name", ["vamp", "flow"])
def test_new_priors_run_under_mean_field_elbo_with_vectorized_particles(name):
    encoder = MLPEncoder(LATENT_DIM, EVENT_SHAPE, hidden=(8,)).double()
    if name == "vamp":
        prior: Prior = VampPrior(LATENT_DIM, EVENT_SHAPE, encoder, num_pseudo_inputs=4).double()
    else:
        prior = FlowPrior(LATENT_DIM).double()
    model = VAEModel(
        prior,
        MLPDecoder(LATENT_DIM, EVENT_SHAPE, hidden=(8,)).double(),
        BernoulliLikelihood(),
        EVENT_SHAPE,
    )
    guide = AmortizedNormalGuide(encoder)
    x = torch.randint(0, 2, (6, *EVENT_SHAPE)).double()
    options = {"num_particles": 3, "vectorize_particles": True, "max_plate_nesting": 1}
    kwargs = {"num_data": 30, "beta": 0.5}
    # no closed-form KL for these priors: TraceMeanField_ELBO falls back to Monte Carlo,
    # so at the same noise it equals Trace_ELBO
    torch.manual_seed(1)
    mean_field = TraceMeanField_ELBO(**options).loss(model, guide, x, **kwargs)
    torch.manual_seed(1)
    plain = Trace_ELBO(**options).loss(model, guide, x, **kwargs)
    assert math.isfinite(mean_field)
    assert mean_field == pytest.approx(plain, rel=1e-12)
    # the vectorized guide draw reaches the prior with its particle dimension
    with pyro.plate("particles", 3, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(x, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, **kwargs)
    assert model_trace.nodes["z"]["value"].shape == (3, 6, LATENT_DIM)
    model_trace.compute_log_prob()
    assert model_trace.nodes["z"]["log_prob"].shape == (3, 6)
    assert torch.isfinite(model_trace.nodes["z"]["log_prob"]).all()


# --- the fast diagonal-Gaussian mixture of the mixture prior and the VampPrior -----------


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-3)])
def test_diagonal_normal_mixture_is_mixture_same_family(dtype, tol):
    """The expanded-square density equals torch's MixtureSameFamily of the same mixture,
    computed directly, for batched and vectorized-particle codes; float32 loses a little
    in the expansion (bounded here for codes and scales like those a VAE meets)."""
    from pyrovae.model.priors import DiagonalNormalMixture

    generator = torch.Generator().manual_seed(0)
    K, D = 50, 6
    logits = torch.randn(K, generator=generator, dtype=dtype)
    loc = 2 * torch.randn(K, D, generator=generator, dtype=dtype)
    scale = 0.05 + torch.rand(K, D, generator=generator, dtype=dtype)
    fast = DiagonalNormalMixture(logits, loc, scale)
    direct = td.MixtureSameFamily(
        td.Categorical(logits=logits), td.Independent(td.Normal(loc, scale), 1)
    )
    z = 3 * torch.randn(4, 7, D, generator=generator, dtype=dtype)
    torch.testing.assert_close(fast.log_prob(z), direct.log_prob(z), atol=tol, rtol=0)
    # expanded to a plate's batch shape (as pyro.sample in the data plate does)
    expanded = fast.expand(torch.Size([7]))
    assert expanded.batch_shape == (7,)
    torch.testing.assert_close(expanded.log_prob(z), direct.log_prob(z), atol=tol, rtol=0)
    assert expanded.sample((3,)).shape == (3, 7, D)
