r"""Tests of the two-layer hierarchical VAE (model and guide of :mod:`pyrovae.variants.hvae`).

The ELBO is recomputed with ``torch.distributions`` from the networks' outputs at the
guide's draws, in float64; the two sides add up the same few dozen terms of order
1-100, so ``atol = 1e-9`` leaves float64 rounding (~1e-14 here) far behind while any
missing or misweighted term (a factor :math:`\beta` or :math:`N / B`, a lost site)
moves the value by at least ~1e-2.
"""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive, Trace_ELBO
from torch import distributions as td

import pyrovae  # noqa: F401  (sets module-local parameters)
from pyrovae.errors import ConfigError
from pyrovae.guides import MLPEncoder
from pyrovae.model import BernoulliLikelihood, MLPDecoder
from pyrovae.model.priors import NormalPrior, Prior, VampPrior
from pyrovae.variants.hvae import HierarchicalGuide, HierarchicalModel

EVENT_SHAPE = (6,)
LATENT_DIM = 2  # z1
TOP_DIM = 3  # z2
ATOL64 = 1e-9


def make_hvae(
    prior: str,
    event_shape: tuple[int, ...] = EVENT_SHAPE,
    latent_dim: int = LATENT_DIM,
    top_dim: int = TOP_DIM,
    hidden: tuple[int, ...] = (8,),
    num_pseudo_inputs: int = 4,
    decoder_reads_z2: bool = True,
) -> tuple[HierarchicalModel, HierarchicalGuide]:
    """A small float64 HVAE; with ``prior="vamp"`` the prior shares the q(z2|x) encoder;
    the decoder reads [z1, z2] (z1 alone without ``decoder_reads_z2``)."""
    encoder = MLPEncoder(top_dim, event_shape, hidden=hidden).double()
    if prior == "vamp":
        top: Prior = VampPrior(
            top_dim, event_shape, encoder, num_pseudo_inputs=num_pseudo_inputs
        ).double()
        top.init_from_data(torch.rand(num_pseudo_inputs, *event_shape, dtype=torch.float64))
    else:
        top = NormalPrior(top_dim).double()
    inputs = latent_dim + (top_dim if decoder_reads_z2 else 0)
    decoder = MLPDecoder(inputs, event_shape, hidden=hidden).double()
    model = HierarchicalModel(
        top,
        decoder,
        BernoulliLikelihood(),
        event_shape,
        latent_dim,
        hidden=hidden,
        decoder_reads_z2=decoder_reads_z2,
    ).double()
    guide = HierarchicalGuide(encoder, event_shape, latent_dim, top_dim, hidden=(*hidden, 8))
    return model, guide.double()


def hand_log_p_z2(model: HierarchicalModel, z2: torch.Tensor) -> torch.Tensor:
    """log p(z2) per item: standard normal, or the VampPrior's mixture written out."""
    prior = model.prior
    if isinstance(prior, VampPrior):
        loc, log_var = prior.encoder(prior.pseudo_inputs)
        comp = td.Normal(loc, torch.exp(0.5 * log_var)).log_prob(z2.unsqueeze(-2)).sum(-1)
        return torch.logsumexp(comp, dim=-1) - math.log(len(loc))
    return td.Normal(0.0, 1.0).log_prob(z2).sum(-1)


@pytest.mark.parametrize("decoder_reads_z2", [True, False])
@pytest.mark.parametrize("beta", [1.0, 0.3, 0.0])
@pytest.mark.parametrize("prior", ["normal", "vamp"])
def test_elbo_matches_a_hand_computation_at_fixed_noise(prior, beta, decoder_reads_z2):
    model, guide = make_hvae(prior, decoder_reads_z2=decoder_reads_z2)
    x = torch.randint(0, 2, (5, *EVENT_SHAPE)).double()
    num_data = 40
    kwargs = {"num_data": num_data, "beta": beta}

    pyro.set_rng_seed(3)
    guide_trace = poutine.trace(guide).get_trace(x, **kwargs)
    z2 = guide_trace.nodes["z2"]["value"]
    z1 = guide_trace.nodes["z1"]["value"]
    assert z2.shape == (5, TOP_DIM) and z1.shape == (5, LATENT_DIM)

    loc2, log_var2 = guide.encoder(x)
    log_q2 = td.Normal(loc2, torch.exp(0.5 * log_var2)).log_prob(z2).sum(-1)
    loc1, log_var1 = guide.z1_net(x, z2)
    log_q1 = td.Normal(loc1, torch.exp(0.5 * log_var1)).log_prob(z1).sum(-1)
    p_loc1, p_log_var1 = model.top_down(z2)
    log_p1 = td.Normal(p_loc1, torch.exp(0.5 * p_log_var1)).log_prob(z1).sum(-1)
    log_p2 = hand_log_p_z2(model, z2)
    decoded = torch.cat([z1, z2], -1) if decoder_reads_z2 else z1
    log_lik = td.Bernoulli(logits=model.decoder(decoded)).log_prob(x).sum(-1)
    per_item = log_lik - beta * (log_q2 + log_q1 - log_p2 - log_p1)
    expected = num_data / len(x) * per_item.sum()

    pyro.set_rng_seed(3)
    elbo = -Trace_ELBO(max_plate_nesting=1).loss(model, guide, x, **kwargs)
    torch.testing.assert_close(
        torch.tensor(elbo, dtype=torch.float64), expected, rtol=0, atol=ATOL64
    )


def test_generation_and_posterior_predictive_shapes():
    model, guide = make_hvae("vamp")
    trace = poutine.trace(model).get_trace(batch_size=7)
    assert trace.nodes["z2"]["value"].shape == (7, TOP_DIM)
    assert trace.nodes["z1"]["value"].shape == (7, LATENT_DIM)
    assert trace.nodes["x"]["value"].shape == (7, *EVENT_SHAPE)
    assert trace.nodes["_RETURN"]["value"].shape == (7, *EVENT_SHAPE)
    # the guide without data samples nothing, so the model draws from its prior
    guide_trace = poutine.trace(guide).get_trace()
    assert guide_trace.nodes["_RETURN"]["value"] is None
    assert not [n for n in guide_trace.nodes.values() if n["type"] == "sample"]

    x = torch.randint(0, 2, (5, *EVENT_SHAPE)).double()
    loc, log_var = guide(x)
    assert loc.shape == log_var.shape == (5, TOP_DIM)
    assert guide.encode_z1(x)[0].shape == (5, LATENT_DIM)
    samples = Predictive(model, guide=guide, num_samples=3, return_sites=["z1", "z2", "x"])(x)
    assert samples["z2"].shape == (3, 5, TOP_DIM)
    assert samples["z1"].shape == (3, 5, LATENT_DIM)
    assert samples["x"].shape == (3, 5, *EVENT_SHAPE)


def test_vectorized_particles_broadcast_through_both_layers():
    model, guide = make_hvae("vamp")
    x = torch.randint(0, 2, (5, *EVENT_SHAPE)).double()
    with pyro.plate("particles", 4, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    for site in ("z1", "z2"):
        assert model_trace.nodes[site]["log_prob"].shape == (4, 5)
        assert guide_trace.nodes[site]["log_prob"].shape == (4, 5)
    assert model_trace.nodes["x"]["log_prob"].shape == (4, 5)
    loss = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    assert math.isfinite(loss.loss(model, guide, x))


def test_vamp_encoder_lives_in_the_guide_only():
    model, guide = make_hvae("vamp")
    assert model.prior.encoder is guide.encoder
    assert not [k for k in model.state_dict() if "encoder" in k]
    assert "prior.raw_pseudo_inputs" in model.state_dict()


def test_hvae_trains_on_binarized_digits():
    from sklearn.datasets import load_digits

    data = torch.as_tensor(load_digits().data > 8, dtype=torch.float32)  # (1797, 64) in {0, 1}
    event_shape = (64,)
    encoder = MLPEncoder(8, event_shape, hidden=(64,))
    prior = VampPrior(8, event_shape, encoder, num_pseudo_inputs=20)
    model = HierarchicalModel(
        prior,
        MLPDecoder(8 + 8, event_shape, hidden=(64,)),  # reads [z1, z2]
        BernoulliLikelihood(),
        event_shape,
        8,
        hidden=(64,),
    )
    guide = HierarchicalGuide(encoder, event_shape, 8, 8, hidden=(64,))
    num_data = len(data)
    heldout = data[:500]
    evaluate = Trace_ELBO(num_particles=10, vectorize_particles=True, max_plate_nesting=1)

    def mean_elbo() -> float:
        with torch.no_grad():
            return -evaluate.loss(model, guide, heldout) / len(heldout)

    before = mean_elbo()
    pseudo_before = prior.pseudo_inputs.detach().clone()
    elbo = Trace_ELBO(max_plate_nesting=1)(model, guide)
    optimizer = torch.optim.Adam(elbo.parameters(), lr=3e-3)
    for _ in range(200):
        batch = data[torch.randint(0, num_data, (64,))]
        optimizer.zero_grad()
        elbo(batch, num_data=num_data).backward()
        optimizer.step()
    after = mean_elbo()
    # per image the ELBO starts near -64 log 2 - KL = -45 nats or below; learning the pixel
    # marginals alone gains more than 10 nats; the estimates' Monte Carlo noise (10 particles,
    # 500 images) is well under 1 nat
    assert after > before + 10.0
    assert not torch.allclose(prior.pseudo_inputs, pseudo_before)  # the prior trained too


def test_render_model_shows_both_latent_sites():
    pytest.importorskip("graphviz")
    model, _ = make_hvae("normal")
    x = torch.randint(0, 2, (5, *EVENT_SHAPE)).double()
    graph = pyro.render_model(model, model_args=(x,), render_distributions=True)
    source = graph.source
    for name in ("z1", "z2", "x", "data"):
        assert name in source
    assert "z2 -> z1" in source and "z1 -> x" in source


def test_sizes_are_checked():
    with pytest.raises(ConfigError, match="hidden"):
        make_hvae("normal", hidden=())
    encoder = MLPEncoder(TOP_DIM, EVENT_SHAPE, hidden=(8,))
    with pytest.raises(ConfigError, match="latent_dim"):
        HierarchicalGuide(encoder, EVENT_SHAPE, 0, TOP_DIM)
