r"""The one importance-weights function against torch.distributions at the guide's own draws:
plain, with an observation mask, with a custom guide, chunked, and seeded.

:math:`\log w_k = \log p(x_{obs} \mid z_k) + \log p(z_k) - \log q(z_k \mid x)` with a
Bernoulli likelihood and a standard normal prior, every term recomputed by hand.
"""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine
from torch import nn
from torch.distributions import Bernoulli, Normal

from pyrovae import VAE
from pyrovae.guides import LocalNormalGuide
from pyrovae.inference.evaluation import chunk_size, importance_weights, log_weights, seeded
from pyrovae.inference.evaluation import weights as weights_module

NUM_ITEMS, NUM_SAMPLES, LATENT = 5, 8, 3


class Recording(nn.Module):
    """Runs a guide under ``poutine.trace`` and keeps each call's ``z`` (messages still
    reach the handlers outside, so the caller's tracing and replay work unchanged)."""

    def __init__(self, guide: nn.Module) -> None:
        super().__init__()
        self.guide = guide
        self.draws: list[torch.Tensor] = []

    def forward(self, x=None, **kwargs):
        tracer = poutine.trace(self.guide)
        out = tracer(x, **kwargs)
        self.draws.append(tracer.trace.nodes["z"]["value"])
        return out


def with_draws(guide, z: torch.Tensor):
    """``guide`` with its draw of ``z`` replaced by the given values (its density kept)."""
    trace = poutine.Trace()
    trace.add_node("z", type="sample", name="z", is_observed=False, value=z, infer={})
    return poutine.replay(guide, trace=trace)


@pytest.fixture
def vae() -> VAE:
    return VAE((1, 4, 4), latent_dim=LATENT, hidden=(8,)).eval()


@pytest.fixture
def x() -> torch.Tensor:
    return (torch.rand(NUM_ITEMS, 1, 4, 4) > 0.5).float()


def by_hand(vae, x, z, loc, log_var, mask=None):
    """``(log p(x_obs | z), log p(z), log q(z | x))`` per particle and item, ``z`` ``(K, N, D)``."""
    logits = vae.model.decoder(z)  # (K, N, 1, 4, 4)
    pixels = Bernoulli(logits=logits, validate_args=False).log_prob(x)
    if mask is not None:
        pixels = pixels * mask
    log_lik = pixels.flatten(2).sum(-1)
    log_p = Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_q = Normal(loc, torch.exp(0.5 * log_var)).log_prob(z).sum(-1)
    return log_lik, log_p, log_q


def test_weights_and_their_terms_match_a_hand_computation(vae, x):
    recording = Recording(vae.guide)
    w = importance_weights(vae, x, NUM_SAMPLES, guide=recording, mean=True)
    (z,) = recording.draws
    assert z.shape == (NUM_SAMPLES, NUM_ITEMS, LATENT)
    with torch.no_grad():
        log_lik, log_p, log_q = by_hand(vae, x, z, *vae.encode(x))
        mean = torch.sigmoid(vae.model.decoder(z))
    torch.testing.assert_close(w.log_likelihood, log_lik)
    torch.testing.assert_close(w.log_prior, log_p)
    torch.testing.assert_close(w.log_guide, log_q)
    torch.testing.assert_close(w.log_weight, log_lik + log_p - log_q)
    torch.testing.assert_close(w.log_ratio, log_p - log_q)
    torch.testing.assert_close(w.mean, mean)


def test_a_mask_conditions_on_the_observed_pixels_only(vae, x):
    """With ``mask=`` the K draws are K copies of the batch; the weight counts the
    observed pixels only (the imputed ones, x_unobserved, cancel)."""
    mask = torch.rand(x.shape) > 0.3
    recording = Recording(vae.guide)
    w = importance_weights(vae, x, NUM_SAMPLES, guide=recording, mask=mask, mean=True)
    (z,) = recording.draws
    assert z.shape == (NUM_SAMPLES * NUM_ITEMS, LATENT)  # copies, particle-major
    z = z.reshape(NUM_SAMPLES, NUM_ITEMS, LATENT)
    with torch.no_grad():
        log_lik, log_p, log_q = by_hand(vae, x, z, *vae.encode(x), mask=mask)
    torch.testing.assert_close(w.log_likelihood, log_lik)
    torch.testing.assert_close(w.log_weight, log_lik + log_p - log_q)
    torch.testing.assert_close(w.mean, torch.sigmoid(vae.model.decoder(z)).detach())
    # the missing pixels' values never matter to the model's term
    other = torch.where(mask, x, 1 - x)
    again = importance_weights(
        vae, other, NUM_SAMPLES, guide=with_draws(vae.guide, z.flatten(0, 1)), mask=mask
    )
    torch.testing.assert_close(again.log_likelihood, w.log_likelihood)


def test_an_all_observed_mask_gives_the_plain_weights(vae, x):
    """Copies of the batch and a particle plate draw the same noise in the same order."""
    everything = torch.ones_like(x, dtype=torch.bool)
    plain = importance_weights(vae, x, NUM_SAMPLES, seed=3).log_weight
    masked = importance_weights(vae, x, NUM_SAMPLES, mask=everything, seed=3).log_weight
    torch.testing.assert_close(masked, plain, rtol=1e-5, atol=1e-4)


def test_a_custom_guide_is_the_proposal(vae, x):
    """A LocalNormalGuide's own Gaussians, not the encoder's, are q."""
    loc, log_var = torch.randn(NUM_ITEMS, LATENT), torch.randn(NUM_ITEMS, LATENT) - 1
    recording = Recording(LocalNormalGuide(loc, log_var))
    w = importance_weights(vae, x, NUM_SAMPLES, guide=recording)
    (z,) = recording.draws
    with torch.no_grad():
        log_lik, log_p, log_q = by_hand(vae, x, z, loc, log_var)
    torch.testing.assert_close(w.log_weight, log_lik + log_p - log_q)


def test_a_seed_gives_common_random_numbers_and_restores_the_stream(vae, x):
    """One seed: the same weights twice, and the amortized guide and a local guide started
    at the encoder's output reparameterize the same noise (the gaps' paired estimate);
    the caller's random stream goes on as if nothing had been drawn."""
    state = torch.get_rng_state()
    first = importance_weights(vae, x, NUM_SAMPLES, seed=11).log_weight
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(importance_weights(vae, x, NUM_SAMPLES, seed=11).log_weight, first)
    local = LocalNormalGuide.from_encoder(vae.guide.encoder, x)
    paired = importance_weights(vae, x, NUM_SAMPLES, guide=local, seed=11).log_weight
    torch.testing.assert_close(paired, first)
    assert not torch.allclose(importance_weights(vae, x, NUM_SAMPLES, seed=12).log_weight, first)


def test_seeded_draws_the_same_numbers_and_puts_the_stream_back():
    state = torch.get_rng_state()
    with seeded(5):
        first = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), state)
    with seeded(5):
        assert torch.equal(torch.rand(4), first)
    with seeded(6):
        assert not torch.equal(torch.rand(4), first)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_seed_on_one_gpu_leaves_the_other_gpus_streams_as_they_were(vae, x):
    """The seeded draw on the second GPU: the same weights twice, and the streams of the
    CPU and of every GPU go on as if nothing had been drawn (torch.manual_seed under
    fork_rng(devices=[1]) left the first GPU's stream reseeded)."""
    vae, x = vae.to("cuda:1"), x.to("cuda:1")
    cpu, gpus = torch.get_rng_state(), torch.cuda.get_rng_state_all()
    first = importance_weights(vae, x, NUM_SAMPLES, seed=11).log_weight
    assert torch.equal(torch.get_rng_state(), cpu)
    assert all(map(torch.equal, torch.cuda.get_rng_state_all(), gpus))
    torch.testing.assert_close(importance_weights(vae, x, NUM_SAMPLES, seed=11).log_weight, first)


@pytest.mark.parametrize("masked", [False, True])
def test_chunking_gives_the_numbers_of_one_pass(vae, x, monkeypatch, masked):
    """Three particles per pass (chunk_size of the budget) give the weights that one pass
    over all of them gives at the same draws."""
    mask = torch.rand(x.shape) > 0.3 if masked else None
    monkeypatch.setattr(weights_module, "CHUNK_ELEMENTS", 3 * x.numel())
    assert chunk_size(NUM_SAMPLES, x.numel()) == 3
    recording = Recording(vae.guide)
    chunked = importance_weights(vae, x, NUM_SAMPLES, guide=recording, mask=mask)
    assert [len(z) for z in recording.draws] == [
        n * (NUM_ITEMS if masked else 1) for n in (3, 3, 2)
    ]
    monkeypatch.undo()
    z = torch.cat(recording.draws)
    one_pass = importance_weights(vae, x, NUM_SAMPLES, guide=with_draws(vae.guide, z), mask=mask)
    for name in ("log_joint", "log_likelihood", "log_prior", "log_guide"):
        torch.testing.assert_close(getattr(chunked, name), getattr(one_pass, name))


def test_log_weights_is_the_log_weight(vae, x):
    pyro.set_rng_seed(5)
    expected = importance_weights(vae, x, NUM_SAMPLES).log_weight
    pyro.set_rng_seed(5)
    torch.testing.assert_close(log_weights(vae, x, NUM_SAMPLES), expected, rtol=0, atol=0)
