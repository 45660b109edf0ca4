r"""Tests of the VQ-VAE (:mod:`pyrovae.variants.vqvae`, the codebook of
:mod:`pyrovae.guides.quantizer`, the priors over codes of :mod:`pyrovae.model.priors.codes`).

The losses, the moving-average update and the bounds are recomputed by hand from their
formulas on tiny inputs, in float64 where the two sides add up different terms (atol
1e-10: float64 rounding of sums of a few dozen terms of order 1-100 is ~1e-13, while a
missing term, factor or scale moves them by far more than 1e-3); where both sides run
the same arithmetic they must agree exactly.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pyro
import pytest
import torch
from pyro import poutine
from torch import distributions as td

from pyrovae import Config, fit, load_dataset, load_run, train
from pyrovae.cli import main
from pyrovae.errors import ConfigError
from pyrovae.guides.quantizer import VectorQuantizer, perplexity
from pyrovae.inference.evaluation import evaluate, importance_weights
from pyrovae.inference.training.checkpoint import load_checkpoint
from pyrovae.model.priors.codes import AutoregressiveCodePrior, CategoricalCodePrior
from pyrovae.variants import VARIANTS, VQVAE
from pyrovae.variants.vqvae import VQVAEStep

EVENT_SHAPE = (1, 8, 8)
ATOL64 = 1e-10
#: a small, fast VQ-VAE: one stride-2 convolution (a 4x4 grid of 3-dimensional codes)
SMALL = {"latent_dim": 3, "num_codes": 5, "encoder_channels": (4,), "hidden": (16,)}
#: flags of a quick run of the CLI on 200 digits
QUICK = ["--model", "vqvae", "--latent-dim", "4", "--num-codes", "16", "--hidden", "16"]
QUICK += ["--prior-epochs", "3", "--limit", "200", "--num-eval-samples", "2", "--no-progress"]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def bernoulli(logits: torch.Tensor) -> td.Bernoulli:
    """The Bernoulli likelihood by hand (grayscale digits are allowed, as pyrovae allows them)."""
    return td.Bernoulli(logits=logits, validate_args=False)


def small_vqvae(**options) -> VQVAE:
    return VQVAE(EVENT_SHAPE, **{**SMALL, **options}).double()


def brute_force_codes(vq: VQVAE, x: torch.Tensor) -> torch.Tensor:
    """The nearest codebook vector of every encoder output, by comparing with each one."""
    z_e = vq.guide.encoder(x)
    distances = (z_e[..., None, :] - vq.quantizer.codebook).pow(2).sum(-1)  # (N, P, K)
    return distances.argmin(-1)


# --- the codebook ----------------------------------------------------------------------


def test_quantization_picks_the_nearest_code():
    quantizer = VectorQuantizer(7, 3).double()
    quantizer.codebook.normal_()
    z = torch.randn(50, 4, 3, dtype=torch.float64)
    brute = torch.stack(
        [
            torch.tensor(
                [
                    min(range(7), key=lambda j: float((v - quantizer.codebook[j]).norm()))
                    for v in item
                ]
            )
            for item in z
        ]
    )
    assert torch.equal(quantizer.nearest(z), brute)
    k, e, z_q = quantizer(z)
    assert torch.equal(k, brute) and torch.equal(e, quantizer.codebook[brute])
    assert torch.equal(z_q, e)  # the straight-through input has the value e_k exactly
    quantizer.codebook[4] = quantizer.codebook[2]  # ties go to the first index
    assert quantizer.nearest(quantizer.codebook[[2]]).tolist() == [2]


def test_the_straight_through_gradient_reaches_the_encoder_as_the_decoder_input_gradient(digits):
    vq = small_vqvae(codebook="loss")
    x = digits.train[:8].double()
    z_e = vq.guide.encoder(x)
    _, _, z_q = vq.quantizer(z_e)
    z_e.retain_grad()
    z_q.retain_grad()
    reconstruction = -vq.model.log_likelihood(vq.model.decoder(z_q), x).sum()
    reconstruction.backward()
    assert torch.equal(z_e.grad, z_q.grad) and z_q.grad.abs().sum() > 0
    # the encoder's parameters get the decoder input's gradient through z_e(x) ...
    params = list(vq.guide.encoder.parameters())
    expected = torch.autograd.grad(vq.guide.encoder(x), params, grad_outputs=z_q.grad)
    for param, grad in zip(params, expected):
        torch.testing.assert_close(param.grad, grad, rtol=0, atol=ATOL64)
    # ... and the codebook none: the reconstruction reads e_k through the straight-through path
    assert vq.quantizer.codebook.grad is None


@pytest.mark.parametrize("codebook", ["loss", "ema"])
def test_the_loss_and_its_gradients_match_a_hand_computation(codebook, digits):
    vq = small_vqvae(codebook=codebook, commitment=0.3)
    step = VQVAEStep(vq)
    x, num_data = digits.train[:6].double(), 100
    terms = step.terms(x, num_data=num_data)
    z_e = terms["z_e"]
    z_e.retain_grad()
    terms["loss"].backward()

    with torch.no_grad():
        z = vq.guide.encoder(x)
        k = brute_force_codes(vq, x)
        e = vq.quantizer.codebook[k]
    assert torch.equal(terms["k"], k)
    log_lik = bernoulli(vq.model.decoder(e)).log_prob(x).sum((1, 2, 3))
    distance = (z - e).pow(2).sum((1, 2))  # over the grid's 16 positions and 3 dimensions
    codebook_term = distance if codebook == "loss" else torch.zeros_like(distance)
    scale = num_data / len(x)
    expected = scale * (-log_lik + 0.3 * distance + codebook_term).sum()
    torch.testing.assert_close(terms["loss"], expected, rtol=0, atol=ATOL64)
    torch.testing.assert_close(terms["commitment"], 0.3 * distance, rtol=0, atol=ATOL64)
    torch.testing.assert_close(terms["reconstruction"], -log_lik, rtol=0, atol=ATOL64)

    # d/dz_e: the decoder input's gradient (straight through) plus the commitment term's
    z_q = e.clone().requires_grad_()
    decoder_input_grad = torch.autograd.grad(
        -scale * bernoulli(vq.model.decoder(z_q)).log_prob(x).sum(), z_q
    )[0]
    commitment_grad = scale * 0.3 * 2 * (z - e)
    torch.testing.assert_close(z_e.grad, decoder_input_grad + commitment_grad, rtol=0, atol=1e-9)
    if codebook == "loss":  # d/de_j: the codebook term over the outputs assigned to j
        hand = torch.zeros_like(vq.quantizer.codebook)
        hand.index_add_(0, k.flatten(), (scale * 2 * (e - z)).reshape(-1, 3))
        torch.testing.assert_close(vq.quantizer.codebook.grad, hand, rtol=0, atol=1e-9)
        assert "codebook" in terms
    else:  # a buffer, moved by the moving averages only
        assert "codebook" not in terms and not vq.quantizer.codebook.requires_grad


@pytest.mark.parametrize("codebook", ["loss", "ema"])
def test_one_step_logs_its_terms_and_moves_the_codebook(codebook, digits):
    vq = small_vqvae(codebook=codebook, restart_after=0)
    step = VQVAEStep(vq, learning_rate=1e-2)
    x, num_data = digits.train[:6].double(), 100
    with torch.no_grad():
        log_lik = -step.terms(x, num_data=num_data)["reconstruction"]
    before = vq.quantizer.codebook.detach().clone()
    stats = step({"x": x}, num_data=num_data)
    names = {"loss", "elbo", "perplexity", "reconstruction", "commitment"}
    assert set(stats) == names | ({"codebook"} if codebook == "loss" else set())
    expected = num_data / 6 * log_lik.sum() - num_data * 16 * math.log(5)  # uniform prior
    torch.testing.assert_close(stats["elbo"], expected, rtol=0, atol=ATOL64)
    assert not torch.equal(vq.quantizer.codebook.detach(), before)  # by Adam or by EMA
    assert set(step.optimizers) == {"vqvae"}


def test_the_moving_averages_follow_the_formula():
    decay, epsilon = 0.9, 0.1
    quantizer = VectorQuantizer(3, 2, decay=decay, epsilon=epsilon, restart_after=0).double()
    quantizer.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]))
    quantizer.ema_sum.copy_(quantizer.codebook)
    z = torch.tensor([[0.1, -0.1], [0.3, 0.1], [0.9, 1.3], [1.2, 0.8]], dtype=torch.float64)
    k = quantizer.nearest(z)
    assert k.tolist() == [0, 0, 1, 1]  # code 2 gets nothing
    quantizer.ema_update(z, k)

    # by hand: counts n = (2, 2, 0), sums s = ((0.4, 0), (2.1, 2.1), (0, 0))
    count = [decay * 1 + (1 - decay) * 2, decay * 1 + (1 - decay) * 2, decay * 1]
    sums = [
        [(1 - decay) * 0.4, 0.0],
        [decay * 1 + (1 - decay) * 2.1, decay * 1 + (1 - decay) * 2.1],
        [decay * 5, decay * 5],
    ]
    n = sum(count)
    smoothed = [(c + epsilon) / (n + 3 * epsilon) * n for c in count]
    expected = torch.tensor(
        [[s / c for s in row] for row, c in zip(sums, smoothed)], dtype=torch.float64
    )
    torch.testing.assert_close(quantizer.ema_count, torch.tensor(count, dtype=torch.float64))
    torch.testing.assert_close(quantizer.ema_sum, torch.tensor(sums, dtype=torch.float64))
    torch.testing.assert_close(quantizer.codebook, expected, rtol=0, atol=1e-12)
    # the unused code 2 stays near where it was (the averages start at N_j = 1, m_j = e_j)
    assert (quantizer.codebook[2] - 5.0).abs().max() < 0.1


@pytest.mark.parametrize("ema", [True, False])
def test_dead_codes_restart_at_encoder_outputs_of_the_batch(ema):
    quantizer = VectorQuantizer(4, 2, ema=ema, restart_after=3)
    z = torch.randn(5, 3, 2)  # 15 encoder outputs
    flat = z.reshape(-1, 2)
    # every code starts unused: the first step draws the whole codebook from the batch
    torch.manual_seed(7)
    expected = flat[torch.randperm(15)[:4]]
    torch.manual_seed(7)
    assert quantizer.restart_dead(z) == 4
    assert torch.equal(quantizer.codebook.detach(), expected)
    # codes 0 and 1 are used in three steps, codes 2 and 3 in none: those two restart
    before = quantizer.codebook.detach().clone()
    for _ in range(3):
        assert quantizer.restart_dead(z) == 0
        quantizer.record_usage(torch.tensor([[0, 1, 0]]))
    assert quantizer.unused_steps.tolist() == [0, 0, 3, 3]
    torch.manual_seed(8)
    expected = flat[torch.randperm(15)[:2]]
    torch.manual_seed(8)
    assert quantizer.restart_dead(z) == 2
    codebook = quantizer.codebook.detach()
    assert torch.equal(codebook[:2], before[:2]) and torch.equal(codebook[2:], expected)
    assert quantizer.unused_steps.tolist() == [0, 0, 0, 0]
    if ema:  # a restarted code counts as assigned once, to itself
        assert quantizer.ema_count[2:].tolist() == [1.0, 1.0]
        assert torch.equal(quantizer.ema_sum[2:], codebook[2:])
    assert quantizer.take_restarts() == 6 and quantizer.take_restarts() == 0
    never = VectorQuantizer(4, 2, ema=ema, restart_after=0)
    assert never.restart_dead(z) == 0


def test_perplexity_is_the_exponentiated_entropy_of_the_usage():
    assert float(perplexity(torch.ones(8))) == pytest.approx(8.0)
    assert float(perplexity(torch.tensor([0.0, 5.0, 0.0]))) == pytest.approx(1.0)
    assert float(perplexity(torch.tensor([0.0, 2.0, 2.0]))) == pytest.approx(2.0)
    # p = (1/4, 1/4, 1/2): H = 1.5 log 2
    assert float(perplexity(torch.tensor([1.0, 1.0, 2.0]))) == pytest.approx(2**1.5)


# --- the Pyro program -------------------------------------------------------------------


def test_the_elbo_from_importance_weights_is_the_likelihood_minus_p_log_k(digits):
    vq = small_vqvae()
    x = digits.test[:7].double()
    k = brute_force_codes(vq, x)
    with torch.no_grad():
        log_lik = bernoulli(vq.model.decoder(vq.quantizer.codebook[k]))
        log_lik = log_lik.log_prob(x).sum((1, 2, 3))
    num_positions, num_codes = 16, 5
    weights = importance_weights(vq, x, 3)
    assert torch.equal(weights.log_guide, torch.zeros(3, 7))  # log q = 0: a point mass
    expected = log_lik - num_positions * math.log(num_codes)
    for row in weights.log_weight:  # every draw is the same
        torch.testing.assert_close(row, expected, rtol=0, atol=ATOL64)
    summary = evaluate(vq, x, num_samples=3)
    assert summary["log_likelihood"] == pytest.approx(summary["elbo"])  # IWAE = ELBO

    # after fitting a prior, log p(k) is the fitted one's
    prior = vq.model.prior = CategoricalCodePrior(num_positions, num_codes).double()
    prior.fit(torch.randint(0, num_codes, (20, num_positions)))
    log_prior = prior.logits.log_softmax(-1)[torch.arange(num_positions), k].sum(-1)
    weights = importance_weights(vq, x, 1)
    torch.testing.assert_close(weights.log_weight[0], log_lik + log_prior, rtol=0, atol=ATOL64)
    held = vq.evaluate_heldout(x, num_samples=10)
    assert held["elbo"] == pytest.approx(float((log_lik + log_prior).mean()), abs=1e-9)
    assert held["elbo_uniform_prior"] == pytest.approx(float(expected.mean()), abs=1e-9)
    assert held["code_log_likelihood"] == pytest.approx(float(log_prior.mean()), abs=1e-9)


def test_the_steps_reconstruction_is_the_models_log_likelihood_at_the_guides_codes(digits):
    vq = small_vqvae()
    x = digits.test[:9].double()
    guide = poutine.trace(vq.guide).get_trace(x)
    model = poutine.trace(poutine.replay(vq.model, trace=guide)).get_trace(x)
    model.compute_log_prob()
    terms = VQVAEStep(vq).terms(x, num_data=len(x))
    assert torch.equal(guide.nodes["k"]["value"], terms["k"])
    assert torch.equal(-terms["reconstruction"], model.nodes["x"]["log_prob"])


def test_generation_and_posterior_predictive_shapes():
    vq = small_vqvae()
    trace = poutine.trace(vq.model).get_trace(batch_size=7)
    assert trace.nodes["k"]["value"].shape == (7, 16)
    assert trace.nodes["x"]["value"].shape == (7, *EVENT_SHAPE)
    x = torch.rand(5, *EVENT_SHAPE, dtype=torch.float64).bernoulli()
    draws = vq.predictive(x, num_samples=3)
    assert draws["k"].shape == (3, 5, 16) and draws["x"].shape == (3, 5, *EVENT_SHAPE)
    assert (draws["k"] == vq.encode(x)).all()  # the guide is a point mass
    assert vq.reconstruct(x).shape == x.shape
    assert torch.equal(vq.reconstruct(x), vq.decode(vq.encode(x)))
    assert "model.quantizer.codebook" in vq.state_dict()
    assert not [k for k in vq.state_dict() if "guide.quantizer" in k]  # the model owns it


def test_render_model_shows_k_to_x():
    pytest.importorskip("graphviz")
    vq = small_vqvae()
    x = torch.rand(3, *EVENT_SHAPE, dtype=torch.float64).bernoulli()
    source = pyro.render_model(vq.model, model_args=(x,), render_distributions=True).source
    assert "k -> x" in source and "k ~ Categorical" in source


# --- priors over codes --------------------------------------------------------------------


def test_the_fitted_categorical_prior_is_the_smoothed_counts():
    codes = torch.tensor([[0, 1], [0, 2], [1, 1]])
    prior = CategoricalCodePrior(2, 3, smoothing=0.5)
    assert torch.equal(prior().log_prob(codes), torch.full((3,), -2 * math.log(3)))  # uniform
    prior.fit(codes)
    expected = torch.tensor([[2.5, 1.5, 0.5], [0.5, 2.5, 1.5]]) / (3 + 3 * 0.5)
    torch.testing.assert_close(prior.logits.exp(), expected)
    torch.testing.assert_close(
        prior().log_prob(torch.tensor([0, 2])), (expected[0, 0] * expected[1, 2]).log()
    )
    with pytest.raises(ConfigError, match="smoothing > 0"):
        CategoricalCodePrior(2, 3, smoothing=0.0)


def test_the_autoregressive_prior_normalises_and_looks_only_backwards():
    num_positions, num_codes = 3, 4
    prior = AutoregressiveCodePrior(num_positions, num_codes, hidden=(8, 8), epochs=2)
    prior.fit(torch.randint(0, num_codes, (60, num_positions)), generator=torch.Generator())
    with torch.no_grad():  # any weights: the masks alone make the conditionals a chain
        for layer in prior.net:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.normal_()
                layer.bias.normal_()
    grids = torch.tensor(list(itertools.product(range(num_codes), repeat=num_positions)))
    with torch.no_grad():
        log_p = prior().log_prob(grids).double()
    assert log_p.std() > 0.5  # far from the uniform prior
    assert abs(float(torch.logsumexp(log_p, 0))) < 1e-5  # sums to 1 over the 64 grids
    # the logits of position p do not move when the codes at p and after it change
    logits = prior.logits(grids)
    for i, grid in enumerate(grids):
        for p in range(num_positions):
            other = grid.clone()
            other[p:] = (other[p:] + 1) % num_codes
            # (to rounding: one grid and a batch of them take different matrix kernels)
            torch.testing.assert_close(prior.logits(other)[p], logits[i, p], rtol=0, atol=1e-5)


def test_the_autoregressive_prior_beats_the_categorical_on_dependent_codes():
    """Codes whose positions copy the first one: the categorical prior cannot see that."""
    torch.manual_seed(1)
    first = torch.randint(0, 4, (600, 1))
    codes = torch.cat([first, first, (first + 1) % 4], dim=1)
    noise = torch.rand(codes.shape) < 0.1
    codes = torch.where(noise, torch.randint(0, 4, codes.shape), codes)
    train, test = codes[:500], codes[500:]
    categorical = CategoricalCodePrior(3, 4)
    categorical.fit(train)
    autoregressive = AutoregressiveCodePrior(3, 4, hidden=(32,))
    autoregressive.fit(train, generator=torch.Generator().manual_seed(0))
    # independent positions score about 3 log 4 = 4.2 nats; knowing the first code makes
    # the others nearly certain (about log 4 + 2 x 0.4 = 2.2 nats): the gap is ~2 nats,
    # and the standard error of a mean over 100 items well under 0.2
    gain = autoregressive().log_prob(test).mean() - categorical().log_prob(test).mean()
    assert gain > 1.0


def test_sampling_draws_codes_from_the_fitted_prior():
    vq = small_vqvae(code_prior="categorical", prior_smoothing=1e-6)
    _, k = vq.sample(200, return_latents=True)
    assert len(torch.unique(k)) == 5  # before fitting: uniform draws
    grid = torch.randint(0, 5, (16,))
    vq.model.prior.fit(grid.expand(30, 16))
    samples, k = vq.sample(50, return_latents=True)
    assert (k == grid).all()
    assert torch.equal(samples, vq.decode(k))

    ar = small_vqvae(code_prior="autoregressive", prior_epochs=100)
    ar.model.prior.fit(grid.expand(300, 16), generator=torch.Generator().manual_seed(0))
    _, k = ar.sample(200, return_latents=True)
    # uniform draws agree with the grid at a fifth of the positions (sd 0.007 over 3200)
    assert (k == grid).float().mean() > 0.4


def test_ancestral_sampling_draws_from_the_autoregressive_prior():
    prior = AutoregressiveCodePrior(2, 3, hidden=(8,))
    with torch.no_grad():
        for layer in prior.net:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.normal_()
                layer.bias.normal_()
    prior.fitted.fill_(True)
    draws = prior().sample((6000,))
    grids = torch.tensor(list(itertools.product(range(3), repeat=2)))
    with torch.no_grad():
        p = prior().log_prob(grids).exp()
    frequency = (draws[:, None, :] == grids).all(-1).float().mean(0)
    # within 4 binomial standard errors of each grid's probability
    assert ((frequency - p).abs() < 4 * (p * (1 - p) / 6000).sqrt() + 1e-3).all()


# --- training -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(digits):
    """A VQ-VAE trained for 8 epochs on the digits (1437 images, 22 steps an epoch)."""
    config = Config.from_flags(model="vqvae", num_epochs=8, eval_batch_size=500)
    torch.manual_seed(0)
    vq = VQVAE(digits.shape, num_codes=32, hidden=(64,))
    before = vq.evaluate_epoch(digits)
    history = train(vq, digits, config, progress=False)
    return vq, before, history


def test_a_few_epochs_improve_the_heldout_reconstruction(trained):
    """Untrained, the decoder's logits are near 0: about 64 log 2 = 44 nats per image. The
    held-out reconstruction over 360 images has a standard error under 0.5 nats, so a
    10-nat gain is learning, not noise."""
    _, before, history = trained
    assert before["test_reconstruction"] > 40
    assert history[-1]["test_reconstruction"] < before["test_reconstruction"] - 10
    assert history[-1]["test_elbo"] > history[0]["test_elbo"] + 5
    row = history[-1]
    for key in ("train_reconstruction", "train_commitment", "train_perplexity"):
        assert key in row
    assert row["test_codes_used"] > 5 and 1 < row["test_perplexity"] <= 32
    assert sum(r["codes_restarted"] for r in history) >= 32  # the first step draws them all
    assert "train_codebook" not in row  # EMA: no codebook loss
    assert {k for k in row if k.startswith("train_")} == {
        "train_objective",
        "train_elbo",
        "train_perplexity",
        "train_reconstruction",
        "train_commitment",
    }


def test_the_fitted_autoregressive_prior_at_least_matches_the_categorical(trained, digits):
    vq, _, _ = trained
    assert bool(vq.model.prior.fitted)
    train_codes, test_codes = vq.encode(digits.train), vq.encode(digits.test)
    categorical = CategoricalCodePrior(vq.num_positions, vq.num_codes)
    categorical.fit(train_codes)
    with torch.no_grad():
        ar = float(vq.model.prior().log_prob(test_codes).mean())
    cat = float(categorical().log_prob(test_codes).mean())
    uniform = -vq.num_positions * math.log(vq.num_codes)
    # both learn the codes' marginals, far above the uniform prior (-27.7 nats); the
    # autoregressive one also the positions' dependence: -9.7 against -12.0 nats measured,
    # a gap ten times the ~0.2-nat standard error of the paired mean over 360 items
    assert cat > uniform + 1
    assert ar > cat
    assert vq.evaluate_heldout(digits.test)["code_log_likelihood"] == pytest.approx(ar)


def test_refusals_of_the_step():
    vq = small_vqvae()
    from pyrovae.inference.training import make_elbo

    with pytest.raises(ConfigError, match="drop --elbo"):
        vq.training_step(make_elbo("IWAE", 5), learning_rate=1e-3)
    step = vq.training_step(make_elbo("Trace_ELBO"), learning_rate=1e-3)
    x = torch.rand(4, *EVENT_SHAPE, dtype=torch.float64)
    with pytest.raises(ConfigError, match="KL weight does not apply"):
        step.check({"x": x}, num_data=10, beta=0.5)
    step.check({"x": x}, num_data=10, beta=1.0)
    assert int(vq.quantizer.restarts) == 0  # the check updates nothing


@pytest.mark.parametrize(
    "kwargs, phrase",
    [
        ({"prior": "mixture"}, "takes no --prior"),
        ({"encoder": "conv"}, "takes no --encoder"),
        ({"guide": "iaf"}, "has its own guide"),
        ({"codebook": "kmeans"}, "codebook must be one of ema, loss"),
        ({"num_codes": 1}, "num_codes >= 2"),
        ({"decay": 1.0}, "decay must be in"),
        ({"encoder_channels": (8, 8, 8, 8)}, "divisible by 16"),
    ],
)
def test_bad_options_are_refused(kwargs, phrase):
    with pytest.raises(ConfigError, match=phrase):
        VQVAE(EVENT_SHAPE, **kwargs)


def test_it_is_a_registered_variant_and_refuses_flat_data():
    assert VARIANTS["vqvae"] is VQVAE
    with pytest.raises(ConfigError, match="encodes images"):
        VQVAE((64,))


def _rows(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_resume_after_one_of_two_epochs_equals_a_straight_run(tmp_path):
    flags = {"model": "vqvae", "num_codes": 16, "hidden": (16,), "prior_epochs": 3}
    flags.update(limit=300, num_eval_samples=2, restart_after=5)
    whole = fit(Config.from_flags(num_epochs=2, **flags), tmp_path / "whole", progress=False)
    fit(Config.from_flags(num_epochs=1, **flags), tmp_path / "cut", progress=False)
    resumed = fit(
        Config.from_flags(num_epochs=2, **flags), tmp_path / "cut", resume=True, progress=False
    )
    assert _rows(resumed.history) == _rows(whole.history)
    assert resumed.evaluation == whole.evaluation
    a, b = whole.vae.state_dict(), resumed.vae.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert bool(b["model.prior.fitted"])  # the fitted prior, refitted after the resume
    saved = [load_checkpoint(tmp_path / run / "checkpoint.pt") for run in ("whole", "cut")]
    assert set(saved[0]["optimizers"]) == {"vqvae"}
    adam = [s["optimizers"]["vqvae"]["state"] for s in saved]
    assert all(torch.equal(adam[0][i][k], adam[1][i][k]) for i in adam[0] for k in adam[0][i])
    for key, value in saved[0]["vae"].items():  # the checkpoint holds the fitted prior
        assert torch.equal(value, saved[1]["vae"][key]), key


# --- the command line ---------------------------------------------------------------------


def test_train_help_shows_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in (
        "--num-codes",
        "--commitment",
        "--codebook {ema,loss}",
        "--decay",
        "--epsilon",
        "--restart-after",
        "--code-prior {categorical,autoregressive}",
        "--prior-epochs",
        "--prior-smoothing",
        "--encoder-channels",
    ):
        assert flag in text, flag


def test_train_sample_and_evaluate_from_the_cli(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *QUICK, "--num-epochs", "2", "--workdir", str(run), "-q"]) == 0
    capsys.readouterr()
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["code_prior"] == "autoregressive"
    vq, config, _ = load_run(run)
    assert isinstance(vq, VQVAE) and bool(vq.model.prior.fitted)
    assert config.model["variant"]["num_codes"] == 16

    assert main(["sample", str(run), "-n", "12", "--output", str(tmp_path), "-q"]) == 0
    import numpy as np

    assert np.load(tmp_path / "samples-n12.npy").shape == (12, *EVENT_SHAPE)
    capsys.readouterr()
    assert main(["evaluate", str(run), "-k", "3", "-q"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["code_log_likelihood"] == pytest.approx(evaluation["code_log_likelihood"])
    assert again["elbo"] == pytest.approx(evaluation["elbo"])
    assert again["log_likelihood"] == again["elbo"]
    assert main(["train", "--workdir", str(run), "--resume", "--num-epochs", "3", "-q"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("vqvae") / "run"
    assert main(["train", *QUICK, "--num-epochs", "1", "--workdir", str(run), "-q"]) == 0
    return run


@pytest.mark.parametrize(
    "argv, phrase",
    [
        (["inspect"], "--model vqvae cannot be used for posterior inspection"),
        (["latent"], "--model vqvae cannot be used for"),
        (["disentanglement"], "--model vqvae cannot be used for the disentanglement metrics"),
        (["interpolate", "--items", "0", "1"], "cannot be used for latent-space operations"),
        (["traverse"], "cannot be used for latent-space operations"),
        (["inpaint"], "--model vqvae cannot be used for inpainting and denoising"),
        (["denoise"], "--model vqvae cannot be used for inpainting and denoising"),
    ],
)
def test_refused_tools_exit_2_with_one_message(argv, phrase, cli_run, capsys):
    before = {p.name: p.read_bytes() for p in cli_run.iterdir()}
    assert main([argv[0], str(cli_run), *argv[1:], "-q"]) == 2
    err = capsys.readouterr().err
    assert phrase in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in cli_run.iterdir()} == before


@pytest.mark.parametrize(
    "argv, phrase",
    [
        (["--prior", "mixture"], "takes no --prior"),
        (["--elbo", "IWAE", "--num-particles", "3"], "drop --elbo"),
        (["--beta", "0.5"], "KL weight does not apply"),
        (["--kl-schedule", "linear"], "KL weight does not apply"),
        (["--num-codse", "8"], "did you mean '--num-codes'"),
        (["--encoder-channels", "8", "8", "8", "8"], "divisible by 16"),
    ],
)
def test_refused_training_flags_exit_2_and_write_nothing(argv, phrase, tmp_path, capsys):
    run = tmp_path / "run"
    try:
        code = main(["train", *QUICK, "--num-epochs", "1", "--workdir", str(run), *argv, "-q"])
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and phrase in err and "Traceback" not in err
    assert not run.exists()


def test_a_validation_split_scores_the_best_epoch_with_its_own_fitted_prior(tmp_path, monkeypatch):
    """With a validation split the final evaluation, ``load_run`` and ``evaluate`` use
    ``best.pt``, whose prior over codes is fitted to the best epoch's own codes: not left
    uniform, and not the last epoch's fit. best.pt is pinned to epoch 1 of 3 (only the
    first epoch's save_best writes), so the two fits see different codes."""
    from pyrovae.inference.training.trainer import Trainer

    save_best = Trainer.save_best

    def first_epoch_only(self, path, history, *args, **kwargs):
        if len(history) == 1:
            save_best(self, path, history, *args, **kwargs)

    monkeypatch.setattr(Trainer, "save_best", first_epoch_only)
    flags = {"model": "vqvae", "num_codes": 16, "hidden": (16,), "prior_epochs": 3}
    flags.update(limit=300, num_eval_samples=2, validation_fraction=0.2, num_threads=1)
    result = fit(Config.from_flags(num_epochs=3, **flags), tmp_path / "run", progress=False)
    assert result.evaluation["code_prior"] == "autoregressive"
    assert result.evaluation["parameters"]["epoch"] == 1
    best = load_checkpoint(tmp_path / "run" / "best.pt")["vae"]
    last = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["vae"]
    assert bool(best["model.prior.fitted"]) and bool(last["model.prior.fitted"])
    prior = [k for k in best if k.startswith("model.prior.") and best[k].is_floating_point()]
    assert any(not torch.equal(best[k], last[k]) for k in prior)  # not the last epoch's fit
    # best.pt's parameters refitted from scratch give best.pt's prior
    vq, _, _ = load_run(tmp_path / "run")
    refit, _, _ = load_run(tmp_path / "run")
    refit.finish_training(result.data)
    a, b = vq.state_dict(), refit.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
