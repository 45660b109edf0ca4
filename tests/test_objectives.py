"""Objectives and posterior collapse: KL schedules, beta, free bits, IWAE, InfoVAE, the
richer guides, and the per-epoch collapse diagnostics. Every bound is checked against an
independent computation with ``torch.distributions`` at the same draws of ``z``."""

from __future__ import annotations

import json
import logging
import math

import pyro
import pytest
import torch
import torch.distributions as td
from pyro import poutine
from torch.nn import functional as F

from pyrovae import VAE, Config, ConfigError, load_dataset, load_run, train
from pyrovae.config import load_config, save_config
from pyrovae.guides import GUIDES
from pyrovae.inference.inspection.diagnostics import diagnose
from pyrovae.inference.training.objectives import (
    ELBOS,
    IWAE,
    TC_ESTIMATORS,
    TCVAEELBO,
    FreeBitsELBO,
    InfoVAEELBO,
    RenyiObjective,
    log_aggregate_posterior,
    make_elbo,
    mmd,
)
from pyrovae.inference.training.schedules import (
    SCHEDULES,
    ConstantSchedule,
    CyclicalSchedule,
    LinearSchedule,
    make_schedule,
)
from pyrovae.run import fit, make_step

FAST = {"num_eval_samples": 8, "batch_size": 64}
NUM_DATA = 1000


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture
def one_thread():
    """Training tests run on one torch thread: on a busy small machine OpenMP threads stall."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def vae_and_batch(digits):
    torch.manual_seed(1)
    vae = VAE(digits.shape, latent_dim=4, hidden=(32,))
    return vae, digits.train[:16]


# --- schedules -------------------------------------------------------------------------


def test_constant_schedule():
    schedule = ConstantSchedule(2.5)
    assert [schedule(t) for t in (0, 1, 10**6)] == [2.5, 2.5, 2.5]


def test_linear_schedule_values():
    schedule = LinearSchedule(beta=2.0, warmup_steps=4)
    assert [schedule(t) for t in range(7)] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert [LinearSchedule(1.0, 0)(t) for t in range(3)] == [1.0, 1.0, 1.0]


def test_cyclical_schedule_values():
    # T = 8 steps, M = 2 cycles of P = 4 steps, R = 0.5: tau = 0, 1/4, 1/2, 3/4 per cycle
    schedule = CyclicalSchedule(beta=1.0, total_steps=8, num_cycles=2, cycle_ratio=0.5)
    assert [schedule(t) for t in range(10)] == [0.0, 0.5, 1.0, 1.0] * 2 + [0.0, 0.5]
    # P = 10 / 3 steps: tau(t) = (t mod P) / P, beta = min(1, tau / 0.8)
    schedule = CyclicalSchedule(beta=3.0, total_steps=10, num_cycles=3, cycle_ratio=0.8)
    expected = [3.0 * min(1.0, ((t % (10 / 3)) / (10 / 3)) / 0.8) for t in range(10)]
    assert [schedule(t) for t in range(10)] == pytest.approx(expected, abs=1e-12)
    assert schedule(4) == pytest.approx(3.0 * (2 / 3 * 3 / 10) / 0.8)  # 4 - P = 2/3


def _schedule(config: Config, steps_per_epoch: int):
    """The schedule of ``config`` as the trainer builds it."""
    return make_schedule(
        config.objective["kl_schedule"]["name"],
        config.options("objective", "kl_schedule"),
        beta=config.objective["beta"],
        steps_per_epoch=steps_per_epoch,
        num_epochs=config.optimization["num_epochs"],
    )


def test_make_schedule_reads_epochs_or_steps():
    config = Config.from_flags(kl_schedule="linear", warmup_epochs=2, beta=1.0)
    assert _schedule(config, steps_per_epoch=3).warmup_steps == 6
    assert _schedule(config.replace(warmup_steps=5), 3).warmup_steps == 5
    cyclical = _schedule(config.replace(kl_schedule="cyclical", num_epochs=7), 3)
    assert (cyclical.total_steps, cyclical.num_cycles, cyclical.cycle_ratio) == (21, 4, 0.5)
    assert set(SCHEDULES) == {"constant", "linear", "cyclical"}


def test_trainer_follows_the_schedule_and_resume_continues_it(one_thread, tmp_path):
    digits = load_dataset("digits", limit=320)
    config = Config.from_flags(kl_schedule="linear", warmup_epochs=1, num_epochs=2, **FAST)
    steps = len(digits.train) // config.optimization["batch_size"]  # 5 full batches
    whole = train(VAE.from_section(config.model, digits.shape), digits, config, progress=False)
    assert whole[0]["beta"] == pytest.approx((steps - 1) / steps)
    assert whole[0]["beta_mean"] == pytest.approx((steps - 1) / 2 / steps)
    assert whole[0]["train_elbo"] is None  # a Pyro ELBO with beta != 1: not the ELBO
    assert (whole[1]["beta"], whole[1]["beta_mean"]) == (1.0, 1.0)
    assert whole[1]["train_elbo"] == whole[1]["train_objective"]

    pyro.set_rng_seed(0)
    torch.manual_seed(0)
    first = train(
        VAE.from_section(config.model, digits.shape), digits, config.replace(num_epochs=1), tmp_path
    )
    vae = VAE.from_section(config.model, digits.shape)
    resumed = train(vae, digits, config, tmp_path, resume=True, progress=False)
    assert [r["beta_mean"] for r in resumed] == [r["beta_mean"] for r in whole]
    assert first[0]["beta"] == whole[0]["beta"]


# --- beta, free bits, IWAE, InfoVAE against hand computations ---------------------------


def _draw(vae, x, particles=None):
    """A guide trace (z fixed) and the independent torch.distributions terms at its z."""
    if particles is None:
        trace = poutine.trace(vae.guide).get_trace(x, num_data=NUM_DATA)
    else:
        with pyro.plate("num_particles_vectorized", particles, dim=-2):
            trace = poutine.trace(vae.guide).get_trace(x, num_data=NUM_DATA)
    z = trace.nodes["z"]["value"].detach()
    loc, log_var = vae.guide.encoder(x)
    q = td.Normal(loc, torch.exp(0.5 * log_var))
    p = td.Normal(torch.zeros(4), torch.ones(4))
    terms = {
        # Bernoulli log-density of grayscale pixels: minus the binary cross-entropy
        "log_px": -F.binary_cross_entropy_with_logits(
            vae.model.decoder(z), x.expand(*z.shape[:-1], *x.shape[1:]), reduction="none"
        )
        .flatten(-3)
        .sum(-1),
        "log_pz": p.log_prob(z).sum(-1),
        "log_qz": q.log_prob(z).sum(-1),
        "kl": 0.5 * (loc**2 + log_var.exp() - 1 - log_var),  # per point and dimension
    }
    return trace, terms


def _loss(elbo, vae, x, trace, beta=1.0):
    guide = poutine.replay(vae.guide, trace=trace)
    return elbo.differentiable_loss(vae.model, guide, x, num_data=NUM_DATA, beta=beta)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 4.0])
def test_beta_scales_exactly_the_kl_term(beta, vae_and_batch):
    vae, x = vae_and_batch
    trace, t = _draw(vae, x)
    scale = NUM_DATA / len(x)
    monte_carlo = make_elbo("Trace_ELBO")
    expected = -scale * (t["log_px"] + beta * (t["log_pz"] - t["log_qz"])).sum()
    torch.testing.assert_close(_loss(monte_carlo, vae, x, trace, beta), expected)
    closed_form = make_elbo("TraceMeanField_ELBO")
    expected = -scale * (t["log_px"] - beta * t["kl"].sum(-1)).sum()
    torch.testing.assert_close(_loss(closed_form, vae, x, trace, beta), expected)


@pytest.mark.parametrize("beta", [1.0, 2.0, 0.0])
def test_free_bits_charge_at_least_lambda_per_dimension(beta, vae_and_batch):
    vae, x = vae_and_batch
    trace, t = _draw(vae, x)
    kl_per_dim = t["kl"].mean(0)  # minibatch average per dimension
    lam = kl_per_dim.median().item()  # some dimensions below the floor, some above
    assert (kl_per_dim < lam).any() and (kl_per_dim > lam).any()
    loss = _loss(FreeBitsELBO(free_bits=lam, max_plate_nesting=1), vae, x, trace, beta)
    charged = torch.where(kl_per_dim < lam, torch.full_like(kl_per_dim, lam), kl_per_dim)
    expected = -(NUM_DATA / len(x)) * t["log_px"].sum() + beta * NUM_DATA * charged.sum()
    torch.testing.assert_close(loss, expected)
    # the KL part of the loss, per point and dimension, is never below lambda
    kl_part = (loss + (NUM_DATA / len(x)) * t["log_px"].sum()) / NUM_DATA
    assert kl_part >= beta * 4 * lam - 1e-4
    # lambda = 0 is the closed-form ELBO
    zero = _loss(FreeBitsELBO(free_bits=0.0, max_plate_nesting=1), vae, x, trace, beta)
    torch.testing.assert_close(zero, _loss(make_elbo("TraceMeanField_ELBO"), vae, x, trace, beta))


def test_free_bits_give_no_gradient_below_the_floor(vae_and_batch):
    vae, x = vae_and_batch
    trace, _ = _draw(vae, x)
    loss = _loss(FreeBitsELBO(free_bits=1e6, max_plate_nesting=1), vae, x, trace)
    loss.backward()  # every dimension is below the floor: the KL term is a constant
    decoder_free = _loss(make_elbo("TraceMeanField_ELBO"), vae, x, trace)
    assert loss.item() > decoder_free.item() + NUM_DATA * 4 * 1e6 * 0.99


def test_free_bits_refuse_a_mixture_prior(digits):
    vae = VAE(digits.shape, latent_dim=4, prior="mixture")
    elbo = FreeBitsELBO(max_plate_nesting=1)(vae.model, vae.guide)
    with pytest.raises(ConfigError, match="factorises over dimensions"):
        elbo(digits.train[:8], num_data=100)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_iwae_is_the_log_mean_exp_of_independent_importance_weights(alpha, vae_and_batch):
    vae, x = vae_and_batch
    K = 7
    objective = RenyiObjective(num_particles=K, max_plate_nesting=1, renyi_alpha=alpha)
    if alpha == 0:
        objective = IWAE(num_particles=K, max_plate_nesting=1)
    pyro.set_rng_seed(5)  # the objective draws z first (guide, then the model replayed)
    loss = objective.differentiable_loss(vae.model, vae.guide, x, num_data=NUM_DATA)
    pyro.set_rng_seed(5)  # the same K draws, again
    _, t = _draw(vae, x, particles=K)
    log_w = t["log_px"] + t["log_pz"] - t["log_qz"]  # (K, B)
    assert log_w.shape == (K, len(x))
    a = 1 - alpha
    bound = (torch.logsumexp(a * log_w, 0) - math.log(K)) / a
    torch.testing.assert_close(loss, -(NUM_DATA / len(x)) * bound.sum())
    # it reports the true ELBO of the same draws next to it
    torch.testing.assert_close(
        objective.last_elbo, (NUM_DATA / len(x)) * log_w.detach().mean(0).sum()
    )


def test_mmd_matches_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3, generator=g), torch.randn(4, 3, generator=g) + 1.0

    def k(u, v):
        return math.exp(-float(((u - v) ** 2).sum()) / 6.0)

    aa = sum(k(a[i], a[j]) for i in range(5) for j in range(5) if i != j) / 20
    bb = sum(k(b[i], b[j]) for i in range(4) for j in range(4) if i != j) / 12
    ab = sum(k(a[i], b[j]) for i in range(5) for j in range(4)) / 20
    assert mmd(a, b).item() == pytest.approx(aa + bb - 2 * ab, rel=1e-5)
    imq = mmd(a, b, "imq").item()
    c = 6.0
    kk = lambda u, v: c / (c + float(((u - v) ** 2).sum()))  # noqa: E731
    aa = sum(kk(a[i], a[j]) for i in range(5) for j in range(5) if i != j) / 20
    bb = sum(kk(b[i], b[j]) for i in range(4) for j in range(4) if i != j) / 12
    ab = sum(kk(a[i], b[j]) for i in range(5) for j in range(4)) / 20
    assert imq == pytest.approx(aa + bb - 2 * ab, rel=1e-5)


def test_infovae_with_alpha_0_lambda_1_is_the_elbo(vae_and_batch):
    vae, x = vae_and_batch
    trace, _ = _draw(vae, x)
    info = InfoVAEELBO(mmd_alpha=0.0, mmd_lambda=1.0, max_plate_nesting=1)
    torch.testing.assert_close(
        _loss(info, vae, x, trace), _loss(make_elbo("Trace_ELBO"), vae, x, trace)
    )


def test_infovae_penalty_is_the_mmd_to_prior_draws(vae_and_batch):
    vae, x = vae_and_batch
    trace, t = _draw(vae, x)
    info = InfoVAEELBO(mmd_alpha=1.0, mmd_lambda=10.0, max_plate_nesting=1)
    pyro.set_rng_seed(3)
    loss = _loss(info, vae, x, trace)
    pyro.set_rng_seed(3)
    zp = td.Normal(torch.zeros(4), torch.ones(4)).sample((len(x),))
    z = trace.nodes["z"]["value"]
    # alpha = 1: no KL term; the MMD weight is alpha + lambda - 1 = 10, times N
    expected = -(NUM_DATA / len(x)) * t["log_px"].sum() + 10 * NUM_DATA * mmd(z, zp)
    torch.testing.assert_close(loss, expected)


def _aggregate_by_hand(z, loc, scale, num_data, estimator):
    """log q(z_i) and sum_d log q(z_id) by loops over torch.distributions densities."""
    batch, dim = z.shape
    joint, marginals = torch.zeros(batch), torch.zeros(batch)
    for i in range(batch):
        if estimator == "mws":
            w = [1.0 / (num_data * batch)] * batch
        else:
            w = [
                1.0 / num_data if j == i else (num_data - 1) / (num_data * (batch - 1))
                for j in range(batch)
            ]
        q = [td.Normal(loc[j], scale[j]) for j in range(batch)]
        joint[i] = math.log(sum(w[j] * q[j].log_prob(z[i]).sum().exp() for j in range(batch)))
        marginals[i] = sum(
            math.log(sum(w[j] * q[j].log_prob(z[i])[d].exp() for j in range(batch)))
            for d in range(dim)
        )
    return joint, marginals


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_aggregate_posterior_estimates_match_loops(estimator):
    torch.manual_seed(0)
    loc, scale = torch.randn(5, 3, dtype=torch.float64), torch.rand(5, 3).double() + 0.5
    z = loc + scale * torch.randn(5, 3, dtype=torch.float64)
    joint, marginals = log_aggregate_posterior(z, loc, scale, 40, estimator)
    expected = _aggregate_by_hand(z, loc, scale, 40, estimator)
    torch.testing.assert_close(joint, expected[0].double())
    torch.testing.assert_close(marginals, expected[1].double())
    assert set(TC_ESTIMATORS) == {"mws", "mss"}


def test_stratified_estimate_of_q_z_is_unbiased_over_minibatches():
    # N = 6 points, minibatches of B = 3 that contain point i: averaged over every choice of
    # the other 2 (uniform without replacement), mss's q(z_i) is the exact aggregate density
    import itertools

    torch.manual_seed(1)
    n, b = 6, 3
    loc, scale = torch.randn(n, 2, dtype=torch.float64), torch.rand(n, 2).double() + 0.3
    z0 = torch.randn(2, dtype=torch.float64)
    exact = sum(td.Normal(loc[m], scale[m]).log_prob(z0).sum().exp() for m in range(n)) / n
    estimates = []
    for others in itertools.combinations(range(1, n), b - 1):
        rows = [0, *others]  # point 0 and its minibatch
        z = z0.expand(b, 2)  # only row 0's estimate is read
        joint, _ = log_aggregate_posterior(z, loc[rows], scale[rows], n, "mss")
        estimates.append(joint[0].exp())
    assert float(sum(estimates) / len(estimates)) == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize("beta", [0.5, 1.0])
def test_tcvae_with_unit_weights_is_the_elbo(beta, vae_and_batch):
    vae, x = vae_and_batch
    trace, _ = _draw(vae, x)
    for estimator in TC_ESTIMATORS:
        tcvae = TCVAEELBO(tc_weight=1.0, tc_estimator=estimator, max_plate_nesting=1)
        torch.testing.assert_close(
            _loss(tcvae, vae, x, trace, beta),
            _loss(make_elbo("Trace_ELBO"), vae, x, trace, beta),
        )


@pytest.mark.parametrize("estimator", ["mws", "mss"])
@pytest.mark.parametrize("weights", [(1.0, 6.0, 1.0), (2.0, 6.0, 3.0)])
def test_tcvae_charges_each_weight_on_its_own_term(weights, estimator, vae_and_batch):
    vae, x = vae_and_batch
    trace, t = _draw(vae, x)
    (alpha, tc_weight, gamma), beta = weights, 0.5
    tcvae = TCVAEELBO(
        mi_weight=alpha,
        tc_weight=tc_weight,
        dim_kl_weight=gamma,
        tc_estimator=estimator,
        max_plate_nesting=1,
    )
    loss = _loss(tcvae, vae, x, trace, beta)
    z = trace.nodes["z"]["value"].detach()
    loc, log_var = vae.guide.encoder(x)
    joint, marginals = _aggregate_by_hand(
        z.double(),
        loc.detach().double(),
        log_var.detach().mul(0.5).exp().double(),
        NUM_DATA,
        estimator,
    )
    terms = {
        "mi": t["log_qz"] - joint.float(),
        "tc": (joint - marginals).float(),
        "dim_kl": marginals.float() - t["log_pz"],
    }
    penalty = alpha * terms["mi"] + tc_weight * terms["tc"] + gamma * terms["dim_kl"]
    expected = -(NUM_DATA / len(x)) * (t["log_px"] - beta * penalty).sum()
    # float32 sums of terms up to ~1e3: relative rounding ~1e-6
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-2)
    for key, value in terms.items():
        torch.testing.assert_close(tcvae.last_stats[key], value.mean(), rtol=1e-4, atol=1e-4)


def test_tcvae_logs_the_tc_its_objective_charged(one_thread, digits):
    tc_weight = 4.0
    config = Config.from_flags(
        elbo="TCVAE_ELBO", tc_weight=tc_weight, latent_dim=4, num_epochs=1, **FAST
    )
    data = load_dataset("digits", limit=256)
    history = train(VAE.from_section(config.model, data.shape), data, config, progress=False)
    row = history[-1]
    assert all(math.isfinite(row[f"train_{k}"]) for k in ("mi", "tc", "dim_kl"))
    # at KL weight 1, per point: objective = ELBO - (tc_weight - 1) TC, over the same draws
    assert row["train_objective"] == pytest.approx(
        row["train_elbo"] - (tc_weight - 1) * row["train_tc"], rel=1e-5
    )


# --- every objective and guide trains; collapse --------------------------------------


@pytest.mark.parametrize("guide", GUIDES.names())
def test_every_guide_trains_one_step_and_encodes(guide, digits):
    options = {"lowrank": {"guide_rank": 3}, "iaf": {"num_flows": 2}}.get(guide, {})
    config = Config.from_flags(guide=guide, latent_dim=4, **options)
    vae = VAE.from_section(config.model, digits.shape)
    x = digits.train[:32]
    step = make_step(vae, config)
    with pyro.validation_enabled(True):
        step.check({"x": x}, num_data=1000)
    before = [p.detach().clone() for p in step.parameters]
    assert torch.isfinite(step({"x": x}, num_data=1000)["loss"])
    assert all(not torch.equal(a, b) for a, b in zip(before, step.parameters))
    loc, log_var = vae.encode(x)
    assert loc.shape == log_var.shape == (32, 4)
    assert vae.spec["guide"]["name"] == guide
    # every objective runs with every guide except free bits' closed form
    for elbo in ("TraceMeanField_ELBO", "IWAE", "InfoVAE_ELBO"):
        objective = make_elbo(elbo, num_particles=3, vectorize_particles=True)
        assert torch.isfinite(objective(vae.model, vae.guide)(x, num_data=1000))


def test_lowrank_guide_is_the_gaussian_it_says():
    vae = VAE((1, 8, 8), latent_dim=3, guide="lowrank", guide_rank=2)
    x = torch.rand(5, 1, 8, 8)
    loc, log_var, c1, c2 = vae.guide.encoder(x)
    factor = torch.stack([c1, c2], -1)
    cov = factor @ factor.transpose(-1, -2) + torch.diag_embed(log_var.exp())
    q = td.MultivariateNormal(loc, covariance_matrix=cov)
    trace = poutine.trace(vae.guide).get_trace(x)
    z = trace.nodes["z"]["value"]
    torch.testing.assert_close(trace.nodes["z"]["fn"].log_prob(z), q.log_prob(z))
    _, marginal = vae.encode(x)
    torch.testing.assert_close(marginal.exp(), cov.diagonal(dim1=-2, dim2=-1))


def test_iaf_guide_density_is_base_density_minus_log_scales():
    torch.manual_seed(0)
    vae = VAE((1, 8, 8), latent_dim=3, guide="iaf", num_flows=1)
    for p in vae.guide.flows.parameters():  # move the flow away from its initial identity-ish map
        torch.nn.init.normal_(p, std=0.3)
    x = torch.rand(5, 1, 8, 8)
    trace = poutine.trace(vae.guide).get_trace(x)
    site = trace.nodes["z"]
    loc, log_var, context = vae.guide.encoder(x)
    transform = vae.guide.flows[0].condition(context)
    z0 = transform.inv(site["value"])
    base = td.Normal(loc, torch.exp(0.5 * log_var)).log_prob(z0).sum(-1)
    expected = base - transform.log_abs_det_jacobian(z0, site["value"])
    torch.testing.assert_close(site["fn"].log_prob(site["value"]), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("guide", ["lowrank", "iaf"])
def test_richer_guides_survive_a_checkpoint(one_thread, guide, tmp_path):
    config = Config.from_flags(guide=guide, num_epochs=1, limit=200, latent_dim=4, **FAST)
    result = fit(config, tmp_path / guide, progress=False)
    vae, loaded, _ = load_run(tmp_path / guide)
    assert loaded.model["guide"]["name"] == guide
    x = result.data.test[:10]
    torch.testing.assert_close(vae.encode(x), result.vae.encode(x))
    pyro.set_rng_seed(0)
    expected = result.vae.predictive(x, 2)["z"]
    pyro.set_rng_seed(0)
    torch.testing.assert_close(vae.predictive(x, 2)["z"], expected)


def test_config_round_trip_keeps_the_objective(tmp_path):
    config = Config.from_flags(
        elbo="InfoVAE_ELBO",
        mmd_alpha=0.5,
        mmd_lambda=50.0,
        mmd_kernel="imq",
        kl_schedule="cyclical",
        num_cycles=3,
        cycle_ratio=0.25,
        guide="lowrank",
        guide_rank=4,
        diagnostic_items=10,
    )
    save_config(config, tmp_path / "c.toml")
    assert load_config(tmp_path / "c.toml") == config


@pytest.mark.parametrize(
    "changes, phrase",
    [
        ({"elbo": "IWAE"}, "num-particles K >= 2"),
        ({"elbo": "FreeBits_ELBO", "prior": "mixture"}, "mixture prior"),
        ({"elbo": "FreeBits_ELBO", "guide": "iaf"}, "--guide normal"),
        ({"elbo": "InfoVAE_ELBO", "mmd_lambda": 0.5}, "mmd_alpha \\+ mmd_lambda >= 1"),
        ({"kl_schedule": "cyclical", "cycle_ratio": 0.0}, "cycle_ratio"),
        ({"elbo": "JitTrace_ELBO", "kl_schedule": "linear"}, "recompile"),
        ({"elbo": "FreeBits_ELBO", "free_bits": -1.0}, "free_bits"),
        ({"elbo": "TCVAE_ELBO", "tc_weight": -1.0}, "tc_weight must be >= 0"),
        ({"elbo": "TCVAE_ELBO", "tc_estimator": "mcmc"}, "tc_estimator. must be one of mws, mss"),
        ({"guide": "flow"}, "unknown guide"),
        ({"kl_schedule": "cosine"}, "unknown KL schedule"),
    ],
)
def test_bad_objective_settings_are_refused(changes, phrase):
    with pytest.raises(ConfigError, match=phrase):
        Config.from_flags(**changes)


def test_objectives_report_the_true_elbo_and_diagnostics(one_thread, digits, caplog):
    config = Config.from_flags(
        elbo="FreeBits_ELBO", free_bits=2.0, num_epochs=1, diagnostic_items=100, **FAST
    )
    history = train(VAE.from_section(config.model, digits.shape), digits, config, progress=False)
    row = history[0]
    # the floor is charged on top of the true KL: the objective is below the true ELBO
    assert row["train_objective"] < row["train_elbo"]
    assert {"kl", "kl_per_dim", "active_units", "mutual_information"} <= row.keys()
    assert len(row["kl_per_dim"]) == config.model["latent_dim"]
    assert sum(row["kl_per_dim"]) == pytest.approx(row["kl"], rel=1e-4)
    json.dumps(row)  # JSON-ready for metrics.jsonl


def test_collapse_is_logged(one_thread, digits, caplog):
    config = Config.from_flags(beta=500.0, num_epochs=3, diagnostic_items=100, **FAST)
    with caplog.at_level(logging.WARNING, logger="pyrovae"):
        history = train(
            VAE.from_section(config.model, digits.shape), digits, config, progress=False
        )
    assert history[-1]["kl"] < 0.1
    messages = [r.getMessage() for r in caplog.records if "collapsing" in r.getMessage()]
    assert len(messages) == 1  # once, not every epoch
    assert messages[0].startswith("epoch 3:")  # after COLLAPSE_PATIENCE epochs in a row


def test_collapse_warning_waits_for_a_run_of_collapsed_epochs(caplog):
    """One collapsed-looking epoch (as at the start of training) does not warn; three in a
    row do, once; the last epoch of a run warns at once; recovery is logged."""
    from pyrovae.inference.training.trainer import _warn_if_collapsed

    low, high = {"kl": 0.01, "active_units": 0}, {"kl": 2.0, "active_units": 3}
    with caplog.at_level(logging.INFO, logger="pyrovae"):
        run = 0
        for epoch, row in enumerate([low, high, low, low, low, low, high], start=1):
            run = _warn_if_collapsed(row, epoch, run, last=False, patience=3)
        assert _warn_if_collapsed(low, 8, 0, last=True, patience=3) == 1
    warned = [r.getMessage()[:8] for r in caplog.records if "collapsing" in r.getMessage()]
    assert warned == ["epoch 5:", "epoch 8:"]
    assert [r.getMessage()[:8] for r in caplog.records if "recovered" in r.getMessage()] == [
        "epoch 7:"
    ]


def test_large_beta_reduces_kl_and_active_units(one_thread, digits):
    """The beta-VAE objective trades rate for distortion: at its optimum the KL (rate) is
    non-increasing in beta. With beta = 8 each nat of KL must buy 8 nats of
    reconstruction, which few latent directions of 8x8 digits can."""
    results = {}
    for beta in (1.0, 8.0):
        config = Config.from_flags(
            beta=beta, num_epochs=20, latent_dim=8, diagnostic_items=0, **FAST
        )
        torch.manual_seed(0)
        vae = VAE.from_section(config.model, digits.shape)
        train(vae, digits, config, progress=False)
        results[beta] = diagnose(vae, digits.test)
    assert results[8.0]["kl"] < results[1.0]["kl"]
    assert results[8.0]["active_units"] < results[1.0]["active_units"]


def test_every_registered_objective_is_a_pyro_elbo():
    from pyro.infer import ELBO

    assert {"IWAE", "RenyiELBO", "FreeBits_ELBO", "InfoVAE_ELBO"} <= set(ELBOS)
    for name in ELBOS:
        assert issubclass(ELBOS[name], ELBO)


@pytest.mark.parametrize("guide", ["lowrank", "iaf"])
def test_amortization_gap_needs_the_diagonal_guide(guide):
    from pyrovae.inference.inspection.gaps import optimize_local_guide

    vae = VAE((1, 8, 8), latent_dim=3, guide=guide)
    with pytest.raises(ConfigError, match="per-point diagonal Gaussian"):
        optimize_local_guide(vae, torch.rand(4, 1, 8, 8), num_steps=1)


def test_jit_elbo_compiles_once_for_a_whole_run(one_thread):
    """Pyro's JIT compiles once per value of the keyword arguments, hashing a tensor by its
    id: the training step passes the minibatch positionally, so three epochs (new minibatch
    tensors every step) run on the one graph traced at the first step."""
    from pyrovae.inference.training import Trainer, elbo_context

    data = load_dataset("digits", limit=300)
    config = Config.from_flags(elbo="JitTrace_ELBO", hidden=(16,), latent_dim=2, batch_size=64)
    with elbo_context("JitTrace_ELBO"):
        vae = VAE.from_section(config.model, data.shape)
        step = make_step(vae, config)
        Trainer(vae, step, num_epochs=3, batch_size=64).fit(data, progress=False)
        assert len(step.loss.elbo._loss_and_surrogate_loss.compiled) == 1
