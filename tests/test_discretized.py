"""The discretized logistic and its mixture (likelihoods for 8-bit images) and bits per
dimension: log-masses against a numerical integration of the logistic density over each bin
(scipy's ``quad``) and against 50-digit arithmetic (mpmath) in the far tails, the masses'
sum, sampling frequencies, the exact mean, training from Python and from the command line,
and the refusal of data off the grid."""

from __future__ import annotations

import json
import math

import mpmath
import numpy as np
import pyro
import pytest
import torch
from cli_checks import run_cli
from pyro.infer import Trace_ELBO
from scipy import integrate, stats

from pyrovae import VAE, Config, DataError, evaluate, load_dataset
from pyrovae.inference import bits_per_dim
from pyrovae.inference.applications.inpainting import inpaint
from pyrovae.model import (
    DiscretizedLogistic,
    DiscretizedLogisticMixture,
    make_likelihood,
)
from pyrovae.run import make_step
from pyrovae.variants import VARIANTS, build_variant

B = 256
H = 1 / (2 * (B - 1))  # half a grid step
GRID = torch.arange(B, dtype=torch.float64) / (B - 1)

#: (loc, scale) pairs: ordinary, at the floor of the scale, very broad, far outside [0, 1]
PAIRS = [(0.3, 0.05), (0.5, 1e-3), (0.02, 0.004), (0.9, 3.0), (-2.0, 0.2), (4.0, 100.0)]


def logistic_pdf(z: float) -> float:
    """The standard logistic density, written with |z| so it never overflows."""
    e = math.exp(-abs(z))
    return e / (1 + e) ** 2


def quad_mass(x: float, loc: float, scale: float) -> tuple[float, float]:
    """The logistic's mass on the bin of grid value ``x`` (the edge bins open to +-inf), by
    quad in the standardised variable ``z = (t - loc) / scale`` (the same integral), with
    quad's error estimate."""
    lower = -math.inf if x < H else (x - H - loc) / scale
    upper = math.inf if x > 1 - H else (x + H - loc) / scale
    points = {}
    if math.isfinite(lower) and math.isfinite(upper) and lower < 0 < upper:
        points = {"points": [0.0]}
    mass, err = integrate.quad(
        logistic_pdf, lower, upper, epsabs=0.0, epsrel=1e-12, limit=200, **points
    )
    return mass, err


def test_log_prob_matches_the_integral_of_the_logistic_over_each_bin():
    """Every bin's log-mass (float64) against quad, for each (loc, scale) of :data:`PAIRS`.

    Where quad's mass is above 1e-250 (below it the integrand underflows) the two must agree
    to quad's own relative error estimate plus 1e-9 (the float64 formula is good to ~1e-13
    relative; quad's estimate bounds its error, with a margin of 10)."""
    checked = 0
    for loc, scale in PAIRS:
        d = DiscretizedLogistic(*torch.tensor([loc, scale], dtype=torch.float64))
        ours = d.log_prob(GRID)
        for k, x in enumerate(GRID.tolist()):
            mass, err = quad_mass(x, loc, scale)
            if mass < 1e-250:
                continue
            tol = 10 * err / mass + 1e-9
            assert abs(float(ours[k]) - math.log(mass)) < tol, (loc, scale, k)
            checked += 1
    assert checked > 700  # most of the 6 x 256 bins carry measurable mass


def test_mixture_log_prob_matches_the_weighted_integrals():
    """A 3-component mixture per element, log-masses against sum_j pi_j * quad_j."""
    logits = torch.tensor([[0.3, -1.0, 2.0], [0.0, 0.0, -5.0]], dtype=torch.float64)
    loc = torch.tensor([[0.2, 0.7, 0.5], [-1.0, 1.5, 0.5]], dtype=torch.float64)
    scale = torch.tensor([[0.01, 0.3, 1e-3], [0.5, 2.0, 0.05]], dtype=torch.float64)
    d = DiscretizedLogisticMixture(logits, loc, scale)
    ours = d.log_prob(GRID[:, None])  # (256, 2)
    weights = torch.softmax(logits, -1)
    for i in range(2):
        for k, x in enumerate(GRID.tolist()):
            parts = [quad_mass(x, float(loc[i, j]), float(scale[i, j])) for j in range(3)]
            mass = sum(float(weights[i, j]) * m for j, (m, _) in enumerate(parts))
            err = sum(float(weights[i, j]) * e for j, (_, e) in enumerate(parts))
            if mass < 1e-250:
                continue
            assert abs(float(ours[k, i]) - math.log(mass)) < 10 * err / mass + 1e-9


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_far_tails_and_edge_bins_are_exact_where_a_difference_would_underflow(dtype):
    """Bins far in the tail (masses like e^-4000, zero in any float) against the difference
    of the two sigmoids in 50-digit arithmetic; float32 to its precision relative to the
    size of the log-mass; the gradients are finite."""
    mpmath.mp.dps = 50
    cases = [  # (x, loc, scale)
        (1.0, -30.0, 1e-2),  # the last bin, the logistic far below it
        (0.0, 40.0, 1e-2),  # the first bin, far above
        (128 / 255, 0.0, 1e-3),  # an inner bin 500 scales out: both sigmoids round to 1
        (100 / 255, 0.9, 1e-3),
        (0.0, 0.0, 1e-3),  # the edge bin at its own location
        (128 / 255, 0.5, 50.0),  # a very broad logistic: a - b = 2h / s is tiny
    ]
    for case in cases:
        # the reference reads the very inputs (rounded to dtype) that the distribution gets
        x, loc, scale = torch.tensor(case, dtype=dtype).tolist()
        loc_t = torch.tensor(loc, dtype=dtype, requires_grad=True)
        scale_t = torch.tensor(scale, dtype=dtype, requires_grad=True)
        value = DiscretizedLogistic(loc_t, scale_t).log_prob(torch.tensor(x, dtype=dtype))
        value.backward()
        a = mpmath.inf if x > 1 - H else (mpmath.mpf(x) + mpmath.mpf(H) - loc) / scale
        b = -mpmath.inf if x < H else (mpmath.mpf(x) - mpmath.mpf(H) - loc) / scale
        sig = lambda t: 1 / (1 + mpmath.exp(-t))  # noqa: E731
        exact = float(mpmath.log(sig(a) - sig(b)))
        eps = torch.finfo(dtype).eps
        assert abs(value.item() - exact) <= 8 * eps * (abs(exact) + 1), (x, loc, scale)
        assert torch.isfinite(loc_t.grad) and torch.isfinite(scale_t.grad)


def test_the_masses_sum_to_one():
    """Over all 256 bins, in float64, to rounding (the masses telescope to 1)."""
    loc = torch.tensor([0.3, -5.0, 0.5, 2.0, 0.0], dtype=torch.float64)
    scale = torch.tensor([0.1, 1e-3, 1e3, 0.01, 1e-3], dtype=torch.float64)
    total = DiscretizedLogistic(loc, scale).log_prob(GRID[:, None]).exp().sum(0)
    torch.testing.assert_close(total, torch.ones(5, dtype=torch.float64), rtol=0, atol=1e-13)
    mix = DiscretizedLogisticMixture(torch.randn(5, 4), torch.randn(5, 4), torch.rand(5, 4) + 1e-3)
    mix_total = mix.log_prob(GRID.float()[:, None]).double().exp().sum(0)
    torch.testing.assert_close(mix_total, torch.ones(5, dtype=torch.float64), rtol=0, atol=1e-5)


def test_mean_is_the_sum_over_the_bins():
    """The summation-by-parts mean equals sum_k v_k P(v_k), single and mixture (float64)."""
    loc = torch.tensor([0.3, -5.0, 0.5, 2.0, 0.01], dtype=torch.float64)
    scale = torch.tensor([0.1, 1e-3, 1e3, 0.5, 1e-3], dtype=torch.float64)
    d = DiscretizedLogistic(loc, scale)
    by_bins = (GRID[:, None] * d.log_prob(GRID[:, None]).exp()).sum(0)
    torch.testing.assert_close(d.mean, by_bins, rtol=0, atol=1e-13)
    mix = DiscretizedLogisticMixture(
        torch.randn(3, 2, dtype=torch.float64),
        torch.rand(3, 2, dtype=torch.float64),
        torch.rand(3, 2, dtype=torch.float64) * 0.1 + 1e-3,
    )
    by_bins = (GRID[:, None] * mix.log_prob(GRID[:, None]).exp()).sum(0)
    torch.testing.assert_close(mix.mean, by_bins, rtol=0, atol=1e-13)


def _chi_square_p(samples: torch.Tensor, log_prob: torch.Tensor) -> float:
    """The chi-square test's p-value of grid ``samples`` against the masses, bins with an
    expected count under 5 pooled into one."""
    n = len(samples)
    counts = torch.bincount((samples * (B - 1)).round().long(), minlength=B).double()
    expected = n * log_prob.exp()
    big = expected >= 5
    observed = torch.cat([counts[big], counts[~big].sum()[None]])
    expected = torch.cat([expected[big], expected[~big].sum()[None]])
    expected = expected * observed.sum() / expected.sum()  # rounding in the pooled masses
    return float(stats.chisquare(observed.numpy(), expected.numpy()).pvalue)


def test_sampling_frequencies_match_the_masses():
    """200 000 draws (fixed seed) from a logistic spread over ~40 bins with an edge bin
    carrying mass, and from a 2-component mixture: chi-square p-values above 1e-3 (a
    correct sampler fails this one time in 1000; a sampler off by half a bin fails it)."""
    torch.manual_seed(0)
    d = DiscretizedLogistic(*torch.tensor([0.02, 0.03], dtype=torch.float64))
    samples = d.sample((200_000,))
    assert bool(d.support.check(samples).all())
    assert _chi_square_p(samples, d.log_prob(GRID)) > 1e-3
    mix = DiscretizedLogisticMixture(
        torch.tensor([0.0, 1.0], dtype=torch.float64),
        torch.tensor([0.3, 0.95], dtype=torch.float64),
        torch.tensor([0.02, 0.05], dtype=torch.float64),
    )
    assert _chi_square_p(mix.sample((200_000,)), mix.log_prob(GRID)) > 1e-3


def test_mixture_of_one_equals_the_single_logistic_and_the_layout_is_documented():
    """With K = 1 the mixture's log-mass and mean are the single logistic's (its logits map
    ignored); the decoder's maps are read as map ``m * C + c`` for channel ``c``."""
    event_shape = (3, 2, 2)
    single = make_likelihood("discretized-logistic", event_shape)
    mixture = make_likelihood("discretized-logistic-mixture", event_shape, num_components=1)
    assert single.param_shape(event_shape) == (6, 2, 2)
    assert mixture.param_shape(event_shape) == (9, 2, 2)
    params = torch.randn(4, 6, 2, 2)
    x = torch.randint(0, B, (4, *event_shape)) / 255.0
    mixed_params = torch.cat([torch.randn(4, 3, 2, 2), params], dim=1)
    torch.testing.assert_close(mixture(mixed_params).log_prob(x), single(params).log_prob(x))
    torch.testing.assert_close(mixture.mean(mixed_params), single.mean(params))
    k2 = make_likelihood("discretized-logistic-mixture", event_shape, num_components=2)
    maps = torch.arange(18.0)[:, None, None].expand(18, 2, 2)  # map index as its value
    d = k2(maps)
    assert d.batch_shape == event_shape
    # logits are maps 0..5, locs 6..11, raw scales 12..17; component j of channel c: m = j
    logits = d.mixture_distribution.logits  # normalised: compare differences
    assert torch.allclose(logits[1, 0, 0, 1] - logits[1, 0, 0, 0], torch.tensor(3.0))
    assert d.component_distribution.loc[2, 1, 1].tolist() == [6 + 2, 6 + 3 + 2]


def test_distribution_shapes_expand_and_support():
    likelihood = make_likelihood("discretized-logistic-mixture", (1, 4, 4), num_components=3)
    d = likelihood(torch.randn(7, 9, 4, 4))
    assert d.batch_shape == (7, 1, 4, 4) and d.event_shape == ()
    assert d.sample().shape == (7, 1, 4, 4) and d.mean.shape == (7, 1, 4, 4)
    e = d.expand((2, 7, 1, 4, 4))
    assert isinstance(e, DiscretizedLogisticMixture) and e.batch_shape == (2, 7, 1, 4, 4)
    grid_value, off = torch.tensor([0.0, 3 / 255, 1.0]), torch.tensor([0.5, -1 / 255, 1.01])
    assert d.support.check(grid_value).all() and not d.support.check(off).any()
    single = DiscretizedLogistic(torch.zeros(3), torch.ones(3)).expand((2, 3))
    assert single.batch_shape == (2, 3) and single.sample((4,)).shape == (4, 2, 3)


def test_off_grid_data_are_refused_with_the_right_num_bins():
    likelihood = make_likelihood("discretized-logistic", (1, 8, 8))
    with pytest.raises(DataError, match=r"lie off it.*use --num-bins 17"):
        likelihood.validate(torch.arange(17.0).repeat(4)[:64].reshape(1, 1, 8, 8) / 16)
    with pytest.raises(DataError, match="grid k/255") as info:
        likelihood.validate(torch.rand(2, 1, 8, 8))
    assert "--num-bins" in str(info.value)
    likelihood.validate(torch.randint(0, 256, (2, 1, 8, 8)) / 255.0)  # 8-bit data pass
    make_likelihood("discretized-logistic", (1, 8, 8), num_bins=17).validate(
        torch.arange(17.0).repeat(4)[:64].reshape(1, 1, 8, 8) / 16
    )


def test_bits_per_dim_by_hand():
    """-log p(x) / (D ln 2): 784 values at 3.5 bits each are 784 * 3.5 * ln 2 nats."""
    assert bits_per_dim(-784 * 3.5 * math.log(2), 784) == pytest.approx(3.5, rel=1e-15)
    assert bits_per_dim(-3072 * math.log(2), 3072) == pytest.approx(1.0, rel=1e-15)


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's digits on their own grid of 17 values."""
    return load_dataset("digits", limit=300)


def test_a_vae_trains_end_to_end_and_reports_bits_per_dim(digits):
    """30 Adam steps on 64 digits raise the held-out ELBO; ``evaluate`` adds bits/dim, the
    same numbers converted by hand; samples lie on the grid; inpainting runs (obs_mask)."""
    pyro.set_rng_seed(0)
    vae = VAE(
        digits.shape,
        latent_dim=4,
        hidden=(32,),
        likelihood="discretized-logistic-mixture",
        num_components=2,
        num_bins=17,
    )
    vae.validate_data(digits.train)
    x, held_out = digits.train[:64], digits.test[:64]
    elbo = Trace_ELBO()(vae.model, vae.guide)
    optimizer = torch.optim.Adam(elbo.parameters(), lr=3e-3)
    before = evaluate(vae, held_out, num_samples=4)
    for _ in range(30):
        optimizer.zero_grad()
        elbo(x).backward()
        optimizer.step()
    after = evaluate(vae, held_out, num_samples=4)
    assert after["elbo"] > before["elbo"] + 10  # nats per 64-pixel item
    assert after["bits_per_dim"] == pytest.approx(-after["log_likelihood"] / (64 * math.log(2)))
    assert after["elbo_bits_per_dim"] == pytest.approx(-after["elbo"] / (64 * math.log(2)))
    drawn = vae.model.likelihood(vae.model.decoder(torch.randn(5, 4))).sample()
    assert drawn.shape == (5, 1, 8, 8) and bool(torch.all(drawn * 16 == (drawn * 16).round()))
    mask = torch.rand(held_out[:4].shape) < 0.5
    filled = inpaint(vae, held_out[:4], mask, num_samples=4, rounds=1)
    assert filled.shape == (4, 1, 8, 8) and torch.equal(filled[mask], held_out[:4][mask])
    bernoulli = VAE(digits.shape, latent_dim=2, hidden=(8,))
    assert "bits_per_dim" not in evaluate(bernoulli, held_out, num_samples=2)


TINY = ["--dataset", "digits", "--binarize", "none", "--limit", "200", "--num-epochs", "2"]
TINY += ["--latent-dim", "2", "--hidden", "16", "--num-eval-samples", "3", "--no-progress"]


def test_train_and_evaluate_from_the_cli_in_bits_per_dim(tmp_path, capsys):
    workdir = tmp_path / "run"
    argv = ["train", *TINY, "--likelihood", "discretized-logistic-mixture"]
    code, _, err = run_cli(
        [*argv, "--num-components", "2", "--num-bins", "17", "--workdir", workdir], capsys
    )
    assert code == 0, err
    evaluation = json.loads((workdir / "evaluation.json").read_text())
    expected = -evaluation["log_likelihood"] / (64 * math.log(2))
    assert evaluation["bits_per_dim"] == pytest.approx(expected)
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    epochs = [row for row in rows if "test_elbo" in row]
    assert epochs and all(
        row["test_elbo_bits_per_dim"] == pytest.approx(-row["test_elbo"] / (64 * math.log(2)))
        for row in epochs
    )
    code, out, err = run_cli(["evaluate", workdir, "-k", "2"], capsys)
    assert code == 0, err
    printed = json.loads(out)
    assert printed["bits_per_dim"] == pytest.approx(-printed["log_likelihood"] / (64 * math.log(2)))


def test_off_grid_data_exit_2_from_the_cli_and_leave_no_run_folder(tmp_path, capsys):
    workdir = tmp_path / "refused"
    argv = ["train", *TINY, "--likelihood", "discretized-logistic", "--workdir", workdir]
    code, out, err = run_cli(argv, capsys)
    assert code == 2
    assert "use --num-bins 17" in err and "Traceback" not in err + out
    assert not workdir.exists() or not any(workdir.iterdir())
    code, _, err = run_cli([*argv, "--num-bins", "1"], capsys)
    assert code == 2 and "num_bins must be >= 2" in err
    mixture = ["--likelihood", "discretized-logistic-mixture", "--num-bins", "17"]
    code, _, err = run_cli([*argv, *mixture, "--num-components", "0"], capsys)
    assert code == 2 and "num_components must be >= 1" in err
    assert not workdir.exists() or not any(workdir.iterdir())


def test_digits_values_on_the_grid_are_seen_as_such():
    """The digits loader's 0..16 / 16 are exactly on the grid of 17 (a check on the data the
    tests above use)."""
    data = load_dataset("digits", limit=50)
    k = data.train.numpy() * 16
    assert np.abs(k - np.round(k)).max() < 1e-6


@pytest.mark.parametrize(
    "variant", [name for name in VARIANTS.names() if not VARIANTS[name].reads_text]
)
def test_every_variant_takes_the_mixture_for_one_step(variant, digits):
    """Each variant of images builds its decoder to the likelihood's ``param_shape`` (3K
    maps per channel here) and takes one step of its own kind on a batch of its own kind
    (the sentence VAE has its own likelihood over tokens and refuses any other)."""
    labels = {"num_classes": 10} if "num_classes" in VARIANTS.options(variant) else {}
    config = Config.from_flags(
        **labels,
        model=variant,
        likelihood="discretized-logistic-mixture",
        num_components=2,
        num_bins=17,
        latent_dim=2,
        hidden=[16],
        batch_size=16,
    )
    vae = build_variant(config.model, digits.shape)
    step = make_step(vae, config)
    batch = next(iter(vae.training_batches(digits, 16)))
    loss = step(batch, num_data=len(digits.train))["loss"]
    assert torch.isfinite(torch.as_tensor(loss))


@pytest.mark.parametrize("binarize", ["threshold", "dynamic"])
def test_binarized_pixels_are_refused(binarize, tmp_path, capsys):
    """0/1 pixels lie on every grid, so the grid check let --binarize threshold (and static)
    train a 256- or 17-value likelihood and report bits per dimension of binary data, while
    dynamic was refused with advice (--num-bins 17) that led to the same; now both are
    refused with one message and no run folder."""
    workdir = tmp_path / "refused"
    argv = ["train", *TINY, "--likelihood", "discretized-logistic", "--num-bins", "17"]
    code, out, err = run_cli([*argv, "--binarize", binarize, "--workdir", workdir], capsys)
    assert code == 2 and "Traceback" not in err + out, err
    assert not workdir.exists() or not any(workdir.iterdir())
    assert f"--binarize {binarize} makes every pixel 0 or 1" in err
