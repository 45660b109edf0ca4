"""Applications on a VAE trained on the digits: anomaly scores, latent-space operations
and inpainting."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import pyro
import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from pyrovae import Config, DataError, load_dataset, train
from pyrovae.errors import ConfigError
from pyrovae.inference import importance_weights, iwae_log_likelihood
from pyrovae.inference.applications.anomaly import (
    SCORES,
    anomaly_scores,
    detection_metrics,
    threshold,
)
from pyrovae.inference.applications.inpainting import (
    corrupt,
    denoise,
    inpaint,
    make_mask,
)
from pyrovae.inference.applications.latent_ops import (
    INTERPOLATIONS,
    interpolate,
    latent_arithmetic,
    lerp,
    slerp,
    traverse,
)
from pyrovae.plots import score_histograms
from pyrovae.variants import VAE


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on two shared cores stall each other
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def vae(digits) -> VAE:
    config = Config.from_flags(num_epochs=30, learning_rate=3e-3, num_eval_samples=8)
    torch.manual_seed(0)
    model = VAE.from_section(config.model, digits.shape)
    with one_thread():
        train(model, digits, config, progress=False)
    return model.eval()


# -- anomaly detection ---------------------------------------------------------------------


def test_iwae_score_is_the_negative_iwae_bound(vae, digits):
    x = digits.test[:50]
    torch.manual_seed(3)
    scores = anomaly_scores(vae, x, num_samples=20)
    torch.manual_seed(3)  # the same guide samples
    torch.testing.assert_close(scores["iwae-nll"], -iwae_log_likelihood(vae, x, 20))
    assert set(scores) == set(SCORES) and all(s.shape == (50,) for s in scores.values())


def test_kl_score_matches_the_closed_form(vae, digits):
    """The Monte Carlo KL over K = 4000 samples against torch's closed form; the standard
    error of the mean of log q - log p is below 0.05 nats here, we allow 0.2."""
    x = digits.test[:8]
    kl = anomaly_scores(vae, x, num_samples=4000)["kl"]
    loc, log_var = vae.encode(x)
    exact = kl_divergence(Normal(loc, (0.5 * log_var).exp()), Normal(0.0, 1.0)).sum(-1)
    assert (kl - exact).abs().max() < 0.2


def test_scores_separate_a_clearly_different_distribution(vae, digits):
    """Inverted digits (1 - x) are far from anything the VAE saw. With 360 normal and 360
    anomalous items, the ROC-AUC of an uninformative score has a standard error of
    sqrt((n1 + n2 + 1) / (12 n1 n2)) = 0.022 around 0.5; we ask for 0.9 (~18 standard
    errors) from the likelihood-based scores and from the reconstruction error."""
    x = digits.test
    both = torch.cat([x, 1 - x])
    is_anomaly = torch.cat([torch.zeros(len(x)), torch.ones(len(x))])
    scores = anomaly_scores(vae, both, num_samples=20)
    metrics = detection_metrics(scores, is_anomaly)
    for name in ("neg-elbo", "iwae-nll", "reconstruction"):
        assert metrics[name]["roc_auc"] > 0.9, (name, metrics[name])
        assert metrics[name]["average_precision"] > 0.9
    fig = score_histograms(scores, is_anomaly, {"neg-elbo": 30.0})
    assert len(fig.axes) == len(SCORES)


def test_threshold_is_a_percentile_of_the_reference(vae, digits):
    reference = anomaly_scores(vae, digits.train, num_samples=5)["neg-elbo"]
    cut = threshold(reference, 95)
    assert cut == pytest.approx(float(np.percentile(reference.numpy(), 95)))
    assert abs((reference > cut).float().mean().item() - 0.05) < 0.002
    with pytest.raises(ConfigError):
        threshold(reference, 101)
    with pytest.raises(DataError, match="both kinds"):
        detection_metrics({"kl": reference}, torch.zeros(len(reference)))
    assert math.isfinite(cut)


# -- latent-space operations ----------------------------------------------------------------


@pytest.mark.parametrize("method", ["lerp", "slerp"])
def test_interpolation_ends_decode_to_the_reconstructions(vae, digits, method):
    x0, x1 = digits.test[0], digits.test[7]
    path = interpolate(vae, x0, x1, steps=6, method=method)
    assert path.shape == (6, 1, 8, 8)
    ends = vae.reconstruct(torch.stack([x0, x1]))
    # the path's ends are the means themselves (exactly); only the batch size of the
    # decoder's matrix products differs, so the images agree to float32 rounding
    torch.testing.assert_close(path[[0, -1]], ends, rtol=1e-6, atol=1e-6)
    z = vae.encode(torch.stack([x0, x1]))[0]
    path_z = INTERPOLATIONS[method](z[0], z[1], 6)
    assert torch.equal(path_z[0], z[0]) and torch.equal(path_z[-1], z[1])


def test_slerp_follows_the_great_circle():
    """Between orthogonal unit vectors the arc is (cos(t pi/2), sin(t pi/2))."""
    t = torch.linspace(0, 1, 5)
    expected = torch.stack([torch.cos(t * torch.pi / 2), torch.sin(t * torch.pi / 2)], -1)
    torch.testing.assert_close(
        slerp(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), 5), expected
    )
    torch.testing.assert_close(lerp(torch.zeros(2), torch.ones(2), 3)[1], torch.full((2,), 0.5))
    # parallel codes: the arc is undefined, slerp falls back to the straight line
    a = torch.tensor([1.0, 2.0])
    torch.testing.assert_close(slerp(a, 2 * a, 3), lerp(a, 2 * a, 3))


def test_traversal_varies_one_coordinate(vae, digits):
    x = digits.test[3]
    grid = traverse(vae, x, dims=[2, 5], span=2.0, steps=5)
    assert grid.shape == (2, 5, 1, 8, 8)
    mu = vae.encode(x[None])[0][0]
    z = mu.repeat(5, 1)
    z[:, 5] = torch.linspace(-2, 2, 5)
    torch.testing.assert_close(grid[1], vae.decode(z))
    with pytest.raises(ConfigError, match=r"latent dimensions 0\.\.7"):
        traverse(vae, x, dims=[8])


def test_latent_arithmetic(vae, digits):
    a, b, c = digits.test[:3]
    # mu(a) - mu(a) + mu(c) = mu(c) exactly
    torch.testing.assert_close(
        latent_arithmetic(vae, a, a, c), vae.reconstruct(c[None])[0], rtol=1e-6, atol=1e-6
    )
    mu = vae.encode(torch.stack([a, b, c]))[0]
    torch.testing.assert_close(latent_arithmetic(vae, a, b, c), vae.decode(mu[0] - mu[1] + mu[2]))


# -- inpainting and denoising ---------------------------------------------------------------


def test_masked_likelihood_ignores_the_missing_pixels(vae, digits):
    """With a mask, the model observes x through Pyro's obs_mask: log p(x_obs | z) sums the
    observed pixels only (changing the missing ones leaves it unchanged, and it equals
    torch's Bernoulli log-density over the observed), the missing pixels are a latent site
    whose density does not count, and the site's value keeps every observed pixel."""
    x = digits.test[:5]
    mask = make_mask("center", 5, x.shape[1:])
    other = torch.where(mask, x, 1 - x)  # the missing pixels changed
    guide_trace = pyro.poutine.trace(vae.guide).get_trace(x)

    def per_item(trace, name):
        return trace.nodes[name]["log_prob"].flatten(1).sum(1)

    traces = []
    for items in (x, other):
        model = pyro.poutine.replay(vae.model, trace=guide_trace)
        trace = pyro.poutine.trace(model).get_trace(items, mask=mask)
        trace.compute_log_prob()
        traces.append(trace)
    assert {"x_observed", "x_unobserved", "x"} <= set(traces[0].nodes)
    observed = [per_item(t, "x_observed") for t in traces]
    torch.testing.assert_close(observed[0], observed[1], rtol=0, atol=0)
    logits = traces[0].nodes["_RETURN"]["value"]
    hand = (Bernoulli(logits=logits, validate_args=False).log_prob(x) * mask).flatten(1).sum(1)
    torch.testing.assert_close(observed[0], hand)
    # the missing pixels are a latent site, masked where pixels are observed
    unobserved = traces[0].nodes["x_unobserved"]
    assert not unobserved["is_observed"]
    assert torch.count_nonzero(unobserved["log_prob"][mask]) == 0
    value = traces[1].nodes["x"]["value"]
    assert torch.equal(value[mask], other[mask])  # observed pixels untouched
    # without the mask the changed pixels do count
    unmasked = pyro.poutine.trace(pyro.poutine.replay(vae.model, trace=guide_trace)).get_trace(
        other
    )
    unmasked.compute_log_prob()
    assert not torch.allclose(unmasked.nodes["x"]["log_prob"], observed[1])


def test_masked_importance_weights_match_a_hand_computation(vae, digits):
    """log w_k = log p(x_obs | z_k) + log p(z_k) - log q(z_k | x_fill) at the same draws,
    computed with torch.distributions (the imputed pixels' density cancels)."""
    x = digits.test[:3]
    mask = make_mask("half", 3, x.shape[1:])
    x_fill = torch.where(mask, x, 0.5)
    num_samples = 4
    pyro.set_rng_seed(7)
    weights = importance_weights(vae, x_fill, num_samples, mask=mask, mean=True)
    log_w, means = weights.log_weight, weights.mean
    pyro.set_rng_seed(7)  # the guide draws first, so the same z come out
    copies = x_fill.repeat(num_samples, 1, 1, 1)
    z = pyro.poutine.trace(vae.guide).get_trace(copies).nodes["z"]["value"]
    loc, log_var = vae.encode(copies)
    logits = vae.model.decoder(z)
    observed = Bernoulli(logits=logits, validate_args=False).log_prob(copies)
    hand = (
        (observed * mask.repeat(num_samples, 1, 1, 1)).flatten(1).sum(1)
        + Normal(0.0, 1.0).log_prob(z).sum(-1)
        - Normal(loc, torch.exp(0.5 * log_var)).log_prob(z).sum(-1)
    )
    torch.testing.assert_close(log_w, hand.reshape(num_samples, 3), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(means, torch.sigmoid(logits).reshape(num_samples, *x.shape))


def _paired_margin(baseline: torch.Tensor, ours: torch.Tensor) -> tuple[float, float]:
    """Mean per-item improvement and its standard error."""
    d = baseline - ours
    return d.mean().item(), d.std().item() / math.sqrt(len(d))


@pytest.mark.parametrize("pattern", ["center", "random"])
def test_inpainting_beats_the_mean_image(vae, digits, pattern):
    """The per-item squared error on the missing pixels, inpainting vs the mean training
    image: the mean improvement must exceed 3 of its standard errors (paired over 360
    held-out digits); observed pixels come back unchanged."""
    x, mean = digits.test, digits.train.mean(0)
    mask = make_mask(pattern, len(x), x.shape[1:])
    completed = inpaint(vae, x, mask, fill=mean, num_samples=50, rounds=2)
    assert torch.equal(completed[mask], x[mask])
    missing = (~mask).float()

    def per_item(estimate):
        return ((estimate - x).pow(2) * missing).flatten(1).sum(1) / missing.flatten(1).sum(1)

    gain, se = _paired_margin(per_item(mean.expand_as(x)), per_item(completed))
    assert gain > 3 * se, (gain, se)


def test_denoising_removes_flip_noise(vae, digits):
    x = digits.test
    noisy = corrupt(x, "flip", 0.1)
    assert 0.07 < (noisy != x).float().mean() < 0.13  # 10% flipped
    per_item = lambda e: (e - x).pow(2).flatten(1).mean(1)  # noqa: E731
    gain, se = _paired_margin(per_item(noisy), per_item(denoise(vae, noisy)))
    assert gain > 3 * se, (gain, se)


def test_mask_patterns():
    half = make_mask("half", 2, (1, 8, 8))
    assert half[:, :, :4].all() and not half[:, :, 4:].any()
    center = make_mask("center", 1, (1, 8, 8))
    assert (~center).sum() == 16 and not center[0, 0, 2:6, 2:6].any()
    random = make_mask("random", 1000, (1, 8, 8), fraction=0.3)
    assert abs((~random).float().mean().item() - 0.3) < 0.01  # sd 0.0018
    with pytest.raises(ConfigError, match="use --mask random"):
        make_mask("center", 3, (64,))
