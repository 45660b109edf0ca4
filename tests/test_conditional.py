"""The conditional VAE: its densities match a hand computation with torch.distributions,
it trains with the shared loop, and its samples carry the requested class."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pyro
import pytest
import torch
import torch.distributions as td

from pyrovae import Config, DataError, fit, load_dataset, load_run, train
from pyrovae.errors import ConfigError
from pyrovae.inference import log_weights
from pyrovae.networks import join, one_hot
from pyrovae.run import make_step
from pyrovae.variants import VARIANTS, ConditionalVAE


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def test_join_broadcasts_enumerated_labels_against_a_batch():
    x = torch.randn(5, 7)
    y = one_hot(torch.arange(3).reshape(3, 1), 3)  # an enumerated label: shape (3, 1, 3)
    joined = join(x, y)
    assert joined.shape == (3, 5, 10)
    assert torch.equal(joined[2, 4, :7], x[4]) and torch.equal(joined[2, 4, 7:], y[2, 0])


@pytest.mark.parametrize("network", ["mlp", "conv"])
def test_log_weights_match_a_hand_computation(network):
    """log p(x | z, y) + log p(z) - log q(z | x, y), rebuilt from the networks with
    torch.distributions, equals the traced log weight of pyrovae."""
    cvae = ConditionalVAE(
        (1, 8, 8), num_classes=4, latent_dim=3, encoder=network, decoder=network, hidden=(16,)
    )
    x = torch.rand(6, 1, 8, 8).round()
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    guide_trace = pyro.poutine.trace(cvae.guide).get_trace(x, y)
    z = guide_trace.nodes["z"]["value"]
    loc, log_var = cvae.encode(x, y)
    logits = cvae.model.decoder(torch.cat([z, one_hot(y, 4)], -1))
    expected = (
        td.Bernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
        + td.Normal(0.0, 1.0).log_prob(z).sum(1)
        - td.Normal(loc, (0.5 * log_var).exp()).log_prob(z).sum(1)
    )
    with pyro.poutine.replay(trace=guide_trace):  # the same z
        got = log_weights(cvae, x, 1, y)[0]
    torch.testing.assert_close(got, expected.detach())


def test_models_registry_builds_every_variant():
    assert {"vae", "cvae"} <= set(VARIANTS.names())
    with pytest.raises(ConfigError, match="choose one of: vae"):
        Config.from_flags(model="gan")


def test_cvae_refuses_the_jit():
    config = Config.from_flags(model="cvae", elbo="JitTrace_ELBO", num_classes=10)
    cvae = ConditionalVAE.from_section(config.model, (1, 8, 8))
    with pytest.raises(ConfigError, match="treats as constants"):
        make_step(cvae, config)  # the variant's training step refuses the objective


def test_cvae_needs_labels(tmp_path):
    np.save(tmp_path / "x.npy", torch.rand(40, 6).numpy())
    config = Config.from_flags(
        model="cvae", data=str(tmp_path / "x.npy"), num_epochs=1, num_eval_samples=2
    )
    with pytest.raises(DataError, match="trains on labels"):
        fit(config, tmp_path / "run", progress=False)
    cvae = ConditionalVAE((6,), num_classes=3, likelihood="continuous-bernoulli")
    with pytest.raises(DataError, match=r"class indices 0\.\.2"):
        cvae.sample(4, y=3)


@pytest.fixture(scope="module")
def cvae_run(tmp_path_factory):
    config = Config.from_flags(model="cvae", num_epochs=20, learning_rate=3e-3, num_eval_samples=8)
    with one_thread():  # two threads on two shared cores stall each other (~6x slower)
        return fit(config, tmp_path_factory.mktemp("cvae") / "run", progress=False)


def test_cvae_checkpoint_roundtrip(cvae_run):
    loaded, config, _ = load_run(cvae_run.workdir)
    assert isinstance(loaded, ConditionalVAE) and config.model["variant"]["num_classes"] == 10
    y = torch.arange(10)
    x = cvae_run.data.test[:10]
    torch.testing.assert_close(loaded.reconstruct(x, y), cvae_run.vae.reconstruct(x, y))


def test_samples_carry_the_requested_class(cvae_run):
    """A logistic regression trained on the real digits recognises the class asked of
    the CVAE. Were samples independent of the label, the classifier's prediction would
    match a uniformly requested label with probability exactly 1/10; over 500 samples
    that chance rate has a standard error of sqrt(0.1 * 0.9 / 500) = 0.013, so 0.5 is
    about 30 standard errors above it (the trained CVAE scores 1.0 on three seeds)."""
    from sklearn.linear_model import LogisticRegression

    digits = load_dataset("digits")
    classifier = LogisticRegression(max_iter=2000)
    classifier.fit(digits.train.flatten(1).numpy(), digits.train_labels.numpy())
    x, y = cvae_run.vae.generate(50)
    accuracy = (classifier.predict(x.flatten(1).numpy()) == y.numpy()).mean()
    assert accuracy >= 0.5
    # and the same latent code decodes differently under different labels
    z = torch.zeros(2, 8)
    a, b = cvae_run.vae.decode(z, torch.tensor([0, 1]))
    assert (a - b).abs().max() > 0.1


def test_cvae_trains_under_a_kl_warmup_and_refuses_other_guides():
    """A linear warm-up starts at beta = 0, where the latent sites are masked out."""
    digits = load_dataset("digits", limit=128)
    config = Config.from_flags(model="cvae", kl_schedule="linear", num_epochs=1, num_classes=10)
    cvae = ConditionalVAE.from_section(config.model, digits.shape)
    history = train(cvae, digits, config, progress=False)
    assert np.isfinite(history[-1]["test_elbo"])
    with pytest.raises(ConfigError, match="drop --guide iaf"):
        ConditionalVAE.from_section(config.replace(guide="iaf").model, digits.shape)


def test_inspection_of_a_conditional_model_is_refused_with_one_message():
    """posterior draws, NUTS and the gaps read q(z | x); a CVAE's guide also needs y."""
    from pyrovae.inference.inspection.gaps import inference_gaps
    from pyrovae.inference.inspection.mcmc import nuts_posterior
    from pyrovae.inference.inspection.posterior import posterior_draws

    cvae = ConditionalVAE((6,), num_classes=3, likelihood="continuous-bernoulli")
    x = torch.rand(2, 6)
    for call in (posterior_draws, nuts_posterior, inference_gaps):
        with pytest.raises(ConfigError, match="guide reads x alone"):
            call(cvae, x)
