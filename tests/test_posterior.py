r"""Inspecting posteriors: ArviZ data, NUTS against a closed-form posterior, the amortized
guide of a trained linear-Gaussian VAE, the inference gaps, and the latent space.

The known posterior is that of a linear-Gaussian decoder (probabilistic PCA):
:math:`z \sim \mathcal{N}(0, I)`, :math:`x \mid z \sim \mathcal{N}(Wz + b, s^2 I)`, for which

.. math::

    p(z \mid x) = \mathcal{N}(\mu, \Sigma), \qquad \Sigma = (I + W^\top W / s^2)^{-1},
    \qquad \mu = \Sigma W^\top (x - b) / s^2, \qquad
    p(x) = \mathcal{N}(b, W W^\top + s^2 I).

A pyrovae VAE with ``hidden=()`` and the gaussian likelihood of fixed scale ``s`` is
exactly this model: its decoder and encoder are single ``Linear`` layers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.distributions as td
from scipy import integrate
from scipy.stats import norm
from torch import nn

from pyrovae import VAE
from pyrovae.data import Dataset, load_items
from pyrovae.errors import ConfigError, DataError
from pyrovae.guides import LocalNormalGuide
from pyrovae.inference import (
    compare_posteriors,
    embed,
    encode_dataset,
    inference_gaps,
    latent_report,
    linear_probe,
    load_inference_data,
    log_weights,
    nuts_posterior,
    posterior_draws,
    posterior_summary,
    save_inference_data,
)
from pyrovae.inference.inspection.posterior import import_arviz
from pyrovae.inference.training.objectives import make_elbo

#: a deviation of more than NUM_SE Monte Carlo standard errors fails a test
NUM_SE = 5.0
SCALE = 0.5


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """NUTS and the small networks here run tiny sequential ops: one thread avoids stalls
    on a shared machine; the previous count is restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def linear_vae(weight: torch.Tensor, bias: torch.Tensor) -> VAE:
    """A VAE whose decoder is exactly ``x = W z + b`` with gaussian noise of scale SCALE."""
    vae = VAE(
        (weight.shape[0],),
        latent_dim=weight.shape[1],
        likelihood="gaussian",
        scale=SCALE,
        hidden=(),
    )
    with torch.no_grad():
        decoder_linear(vae).weight.copy_(weight)
        decoder_linear(vae).bias.copy_(bias)
    return vae


def decoder_linear(vae: VAE) -> nn.Linear:
    (linear,) = [m for m in vae.model.decoder.modules() if isinstance(m, nn.Linear)]
    return linear


def closed_form_posterior(
    weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(N, D)`` and covariance ``(D, D)`` of p(z | x), computed in float64."""
    w, b, x = weight.double(), bias.double(), x.double()
    precision = torch.eye(w.shape[1], dtype=torch.float64) + w.T @ w / SCALE**2
    cov = torch.linalg.inv(precision)
    mean = (cov @ w.T @ (x - b).T).T / SCALE**2
    return mean, cov


def sample_data(weight: torch.Tensor, bias: torch.Tensor, n: int) -> torch.Tensor:
    z = torch.randn(n, weight.shape[1])
    return z @ weight.T + bias + SCALE * torch.randn(n, weight.shape[0])


# --- InferenceData -----------------------------------------------------------------------


def test_inference_data_has_the_documented_groups_dims_and_shapes(tmp_path):
    vae = VAE((1, 8, 8), latent_dim=3, hidden=(16,))
    x = torch.rand(4, 1, 8, 8)
    idata = posterior_draws(vae, x, num_samples=50, items=[10, 3, 7, 0])
    assert set(idata.groups()) == {
        "posterior",
        "posterior_predictive",
        "prior",
        "prior_predictive",
        "observed_data",
        "constant_data",
    }
    pixels = ("channel", "height", "width")
    expected = {
        ("posterior", "z"): (("chain", "draw", "item", "latent_dim"), (1, 50, 4, 3)),
        ("prior", "z"): (("chain", "draw", "item", "latent_dim"), (1, 50, 4, 3)),
        ("posterior_predictive", "x"): (("chain", "draw", "item", *pixels), (1, 50, 4, 1, 8, 8)),
        ("posterior_predictive", "x_mean"): (
            ("chain", "draw", "item", *pixels),
            (1, 50, 4, 1, 8, 8),
        ),
        ("prior_predictive", "x"): (("chain", "draw", "item", *pixels), (1, 50, 4, 1, 8, 8)),
        ("observed_data", "x"): (("item", *pixels), (4, 1, 8, 8)),
        ("constant_data", "q_loc"): (("item", "latent_dim"), (4, 3)),
        ("constant_data", "q_scale"): (("item", "latent_dim"), (4, 3)),
    }
    for (group, name), (dims, shape) in expected.items():
        var = idata[group][name]
        assert var.dims == dims, (group, name)
        assert var.shape == shape, (group, name)
    assert idata.posterior["item"].values.tolist() == [10, 3, 7, 0]
    assert idata.posterior["latent_dim"].values.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(idata.observed_data["x"].values, x.numpy())
    loc, log_var = vae.encode(x)
    np.testing.assert_allclose(idata.constant_data["q_loc"].values, loc.numpy(), rtol=1e-6)
    np.testing.assert_allclose(
        idata.constant_data["q_scale"].values, (0.5 * log_var).exp().numpy(), rtol=1e-6
    )
    # Bernoulli draws are binary; the decoded means are probabilities
    assert set(np.unique(idata.posterior_predictive["x"].values)) <= {0.0, 1.0}
    # NetCDF round trip
    path = save_inference_data(idata, tmp_path / "posterior.nc")
    loaded = load_inference_data(path)
    assert set(loaded.groups()) == set(idata.groups())
    np.testing.assert_array_equal(loaded.posterior["z"].values, idata.posterior["z"].values)
    summary = posterior_summary(idata)
    assert list(summary.columns) == ["mean", "sd", "hdi_3%", "hdi_97%"] and len(summary) == 12


def test_draws_come_from_the_guide_and_decode_to_their_own_predictive_means():
    r"""Posterior draws match q's moments within Monte Carlo error, prior draws match N(0, I),
    and each draw's ``x_mean`` is :math:`E[x \mid z]` of *that* draw (recomputed here by
    hand with the decoder and a sigmoid)."""
    vae = VAE((1, 8, 8), latent_dim=2, hidden=(16,))
    x = torch.rand(3, 1, 8, 8)
    num = 4000
    idata = posterior_draws(vae, x, num_samples=num)
    z = torch.from_numpy(idata.posterior["z"].values[0])  # (S, N, D)
    loc, log_var = vae.encode(x)
    scale = (0.5 * log_var).exp()
    assert ((z.mean(0) - loc).abs() < NUM_SE * scale / math.sqrt(num)).all()
    # sample variance of a normal: standard error sigma^2 sqrt(2 / (S - 1))
    assert ((z.var(0) - scale**2).abs() < NUM_SE * scale**2 * math.sqrt(2 / (num - 1))).all()
    prior_z = torch.from_numpy(idata.prior["z"].values[0])
    assert (prior_z.mean(0).abs() < NUM_SE / math.sqrt(num)).all()
    with torch.no_grad():
        means = torch.sigmoid(vae.model.decoder(z))
    np.testing.assert_allclose(
        idata.posterior_predictive["x_mean"].values[0], means.numpy(), rtol=1e-5, atol=1e-6
    )


def test_bad_inputs_to_inspect_raise_data_error():
    vae = VAE((1, 8, 8), latent_dim=2, hidden=(16,))
    with pytest.raises(DataError, match="shape"):
        posterior_draws(vae, torch.rand(2, 5), num_samples=10)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        posterior_draws(vae, torch.full((2, 1, 8, 8), 3.0), num_samples=10)


# --- NUTS against the closed form --------------------------------------------------------


def test_nuts_recovers_the_closed_form_posterior_of_a_linear_gaussian_decoder():
    r"""NUTS draws of :math:`p(z \mid x)` have the closed-form mean and covariance.

    The decoder's columns are not orthogonal, so the posterior is correlated (a diagonal
    guide could not represent it; NUTS must). For each item and every mean and covariance
    entry, the statistic is the sample mean of :math:`z_i` or of
    :math:`(z_i - \mu_i)(z_j - \mu_j)` (with the exact :math:`\mu`), whose expectation is
    :math:`\mu_i` or :math:`\Sigma_{ij}`; it must lie within NUM_SE Monte Carlo standard
    errors, ArviZ's ESS-based ``mcse(method="mean")`` over all chains. Chains must mix:
    :math:`\hat R < 1.05` (rank-normalized split :math:`\hat R`) and no divergences.
    """
    az = import_arviz()
    weight = torch.tensor([[1.0, 0.5], [0.5, 0.6], [0.2, -0.3], [0.3, 0.5]])
    bias = torch.tensor([0.3, -0.2, 0.1, 0.5])
    vae = linear_vae(weight, bias)
    x = sample_data(weight, bias, 3)
    mean, cov = closed_form_posterior(weight, bias, x)
    assert cov[0, 1].abs() / cov.diagonal().prod().sqrt() > 0.6  # correlation -0.64
    idata = nuts_posterior(vae, x, num_samples=250, num_warmup=200, num_chains=2)
    assert int(idata.sample_stats["diverging"].sum()) == 0
    assert float(az.rhat(idata)["z"].max()) < 1.05
    z = idata.posterior["z"].values.astype(np.float64)  # (chain, draw, item, dim)
    centred = z - mean.numpy()
    stats = {f"mean_{i}": z[..., i] for i in range(2)}
    stats.update(
        {f"cov_{i}{j}": centred[..., i] * centred[..., j] for i in range(2) for j in range(i, 2)}
    )
    expected = {f"mean_{i}": mean[:, i].numpy() for i in range(2)}
    expected.update(
        {f"cov_{i}{j}": np.full(3, cov[i, j].item()) for i in range(2) for j in range(2)}
    )
    dataset = az.convert_to_dataset({k: v for k, v in stats.items()})
    estimates = dataset.mean(("chain", "draw"))
    mcse = az.mcse(dataset, method="mean")
    for name in stats:
        error = np.abs(estimates[name].values - expected[name])
        assert (error < NUM_SE * mcse[name].values).all(), (name, error, mcse[name].values)


def test_compare_posteriors_overlap_is_the_bhattacharyya_coefficient():
    r"""The table's columns against independent computations: moments by NumPy, and the
    overlap against :math:`\int \sqrt{q(z) p(z)}\,dz` integrated numerically (scipy) for
    the guide's Gaussian and the Gaussian fit of the reference draws."""
    az = import_arviz()
    vae = VAE((1, 8, 8), latent_dim=2, hidden=(16,))
    x = torch.rand(2, 1, 8, 8)
    q = posterior_draws(vae, x, num_samples=10, prior=False)
    rng = np.random.default_rng(0)
    draws = rng.normal([0.3, -1.0], [0.5, 2.0], size=(2, 300, 2, 2))  # chain, draw, item, dim
    reference = az.from_dict(
        posterior={"z": draws},
        coords={"item": [0, 1], "latent_dim": [0, 1]},
        dims={"z": ["item", "latent_dim"]},
    )
    table = compare_posteriors(q, reference)
    assert table.index.names == ["item", "latent_dim"] and len(table) == 4
    q_loc, q_scale = q.constant_data["q_loc"].values, q.constant_data["q_scale"].values
    for (item, d), row in table.iterrows():
        samples = draws[:, :, item, d].ravel()
        mp, sp = samples.mean(), samples.std(ddof=1)
        mq, sq = q_loc[item, d], q_scale[item, d]
        assert row.mean_p == pytest.approx(mp) and row.sd_p == pytest.approx(sp)
        assert row.mean_q == pytest.approx(mq) and row.sd_q == pytest.approx(sq)
        assert row.mean_diff == pytest.approx(mq - mp) and row.sd_diff == pytest.approx(sq - sp)

        def root_product(t, mq=mq, sq=sq, mp=mp, sp=sp):
            return math.sqrt(norm.pdf(t, mq, sq) * norm.pdf(t, mp, sp))

        bc, _ = integrate.quad(root_product, -30, 30, points=[mq, mp])
        assert row.overlap == pytest.approx(bc, abs=1e-6)
        assert row.mcse_mean_p > 0
    other = posterior_draws(vae, x, num_samples=10, items=[5, 6], prior=False)
    with pytest.raises(ConfigError, match="different inputs"):
        compare_posteriors(other, reference)


# --- the amortized guide of a trained linear-Gaussian VAE --------------------------------


def test_trained_linear_gaussian_vae_guide_matches_the_closed_form():
    r"""Train a linear-Gaussian VAE (decoder and encoder) by SVI; its guide must then be the
    ELBO-optimal diagonal Gaussian for its own decoder, in closed form:
    :math:`\mu(x)` the exact posterior mean and variances :math:`1 / \Lambda_{dd}` with
    :math:`\Lambda = I + W^\top W / s^2` (the mean-field optimum of a Gaussian posterior).

    Tolerance: the mean KL from the trained guide to that optimum over held-out points
    must be below 1e-3 nats; per dimension that allows mean errors of about 0.045
    posterior standard deviations (:math:`\mathrm{KL} = \delta^2/2`), invisible in any
    plot, while the untrained guide is more than 1 nat away (checked, so the test has
    teeth). The data's principal directions have distinct scales (2 and 1) so the
    decoder has no rotational freedom, and the learning rate decays to 0 (cosine), so
    the last iterate is not dominated by gradient noise.
    """
    q_mat, _ = torch.linalg.qr(torch.randn(4, 2))
    weight, bias = q_mat * torch.tensor([2.0, 1.0]), torch.randn(4)
    x_train, x_test = sample_data(weight, bias, 256), sample_data(weight, bias, 200)
    vae = VAE((4,), latent_dim=2, likelihood="gaussian", scale=SCALE, hidden=())

    def kl_to_optimum() -> float:
        linear = decoder_linear(vae)
        w, b = linear.weight.detach(), linear.bias.detach()
        mean, cov = closed_form_posterior(w, b, x_test)
        optimal_var = 1 / torch.linalg.inv(cov).diagonal()
        loc, log_var = vae.encode(x_test)
        q = td.Normal(loc.double(), (0.5 * log_var.double()).exp())
        return td.kl_divergence(q, td.Normal(mean, optimal_var.sqrt())).sum(-1).mean().item()

    assert kl_to_optimum() > 1.0
    num_steps = 1000
    loss_fn = make_elbo("TraceMeanField_ELBO", 8, vectorize_particles=True)(vae.model, vae.guide)
    optimizer = torch.optim.Adam(loss_fn.parameters(), lr=0.05)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, num_steps)
    for _ in range(num_steps):
        optimizer.zero_grad()
        (loss_fn(x_train) / len(x_train)).backward()
        optimizer.step()
        schedule.step()
    assert kl_to_optimum() < 1e-3


# --- the inference gaps ------------------------------------------------------------------


def test_gap_decomposition_adds_up_and_matches_closed_forms():
    r"""On probabilistic PCA with an imperfect amortized guide, every term is known.

    The decoder has orthogonal columns, so the exact posterior is a diagonal Gaussian:
    the best per-point Gaussian :math:`q^*` is exact, the approximation gap is 0 and the
    amortization gap is :math:`\mathrm{KL}(q_\phi \| p(z \mid x))` in closed form. The
    encoder is the exact posterior with means shifted by 0.5 posterior standard deviations
    and variances doubled, i.e. a KL of :math:`2 \cdot \frac12 (2 + 0.25 - 1 - \ln 2)`
    nats per point. Checks, per point, with NUM_SE Monte Carlo standard errors:

    - (the two gaps add up to the inference gap by definition; each is checked here)
    - log p(x) (IWAE with the optimized guide) matches the multivariate-normal marginal;
    - the amortized ELBO matches log p(x) - KL, its closed form;
    - the amortization gap matches the KL, less the optimized guide's own KL to the
      posterior (at most 0.01 nats: its 300 Adam steps from the encoder's start bring it
      to within float noise of the optimum, as the approximation-gap check confirms).
    """
    q_mat, _ = torch.linalg.qr(torch.randn(4, 2))
    weight, bias = q_mat * torch.tensor([2.0, 1.0]), torch.randn(4)
    vae = linear_vae(weight, bias)
    x = sample_data(weight, bias, 8)
    _, cov = closed_form_posterior(weight, bias, x)
    post_sd = cov.diagonal().sqrt()
    gain = (cov @ weight.double().T / SCALE**2).float()
    (encoder_linear,) = [m for m in vae.guide.encoder.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        encoder_linear.weight.copy_(torch.cat([gain, torch.zeros_like(gain)]))
        encoder_linear.bias.copy_(
            torch.cat([-gain @ bias + 0.5 * post_sd.float(), (2 * cov.diagonal()).log().float()])
        )
    kl = 2 * 0.5 * (2 + 0.25 - 1 - math.log(2))
    exact_log_px = td.MultivariateNormal(
        bias.double(), weight.double() @ weight.double().T + SCALE**2 * torch.eye(4)
    ).log_prob(x.double())

    gaps = inference_gaps(vae, x, num_samples=4000, num_steps=300, learning_rate=0.05)
    rounding = 1e-4 * gaps.log_likelihood.abs()
    # the parts add up by definition (differences of the same three numbers); what can
    # fail is each number against its closed form, below
    log_px_error = (gaps.log_likelihood.double() - exact_log_px).abs()
    assert (log_px_error < NUM_SE * gaps.log_likelihood_se + rounding).all(), log_px_error
    elbo_error = (gaps.elbo_amortized.double() - (exact_log_px - kl)).abs()
    assert (elbo_error < NUM_SE * gaps.elbo_amortized_se + rounding).all(), elbo_error
    assert (gaps.approximation_gap.abs() < 0.01 + NUM_SE * gaps.elbo_optimized_se).all()
    assert (gaps.amortization_gap < kl + NUM_SE * gaps.amortization_gap_se).all()
    assert (gaps.amortization_gap > kl - 0.01 - NUM_SE * gaps.amortization_gap_se).all()
    summary = gaps.summary()
    assert summary["amortization_gap"] == pytest.approx(gaps.amortization_gap.mean().item())
    assert summary["num_data"] == 8 and summary["num_samples"] == 4000


def test_optimized_guide_is_no_worse_than_the_amortized_one_on_a_trained_vae():
    r"""On a (briefly) trained digits VAE, :math:`\mathcal{L}[q^*] \ge \mathcal{L}[q_\phi]`
    for every point up to NUM_SE Monte Carlo errors of the difference, the amortization
    gap is on average positive (a briefly trained encoder is far from each point's
    optimum), and the approximation gap is never below its Monte Carlo error."""
    from pyrovae.data import load_dataset

    data = load_dataset("digits", limit=200)
    vae = VAE(data.shape, latent_dim=4, hidden=(64,))
    loss_fn = make_elbo("Trace_ELBO")(vae.model, vae.guide)
    optimizer = torch.optim.Adam(loss_fn.parameters(), lr=3e-3)
    for _ in range(300):
        optimizer.zero_grad()
        (loss_fn(data.train) / len(data.train)).backward()
        optimizer.step()
    vae.eval()
    x = data.test[:20]
    gaps = inference_gaps(vae, x, num_samples=500, num_steps=200, learning_rate=0.05)
    assert (gaps.amortization_gap > -NUM_SE * gaps.amortization_gap_se).all()
    assert gaps.amortization_gap.mean() > 0


def test_local_guide_refuses_other_data():
    guide = LocalNormalGuide(torch.zeros(3, 2), torch.zeros(3, 2))
    vae = VAE((4,), latent_dim=2, likelihood="gaussian", hidden=())
    assert log_weights(vae, torch.zeros(3, 4), 5, guide=guide).shape == (5, 3)
    with pytest.raises(DataError, match="holds parameters for 3 data points but got 2"):
        log_weights(vae, torch.zeros(2, 4), guide=guide)


# --- the latent space --------------------------------------------------------------------


def test_linear_probe_separable_and_random_labels():
    """Perfectly separable means give accuracy 1; labels independent of the means give
    chance level (10 classes, 1000 held-out points: 0.1 with sd 0.0095; below 0.2 is a
    10-sd margin)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 5)) * 10
    y_train, y_test = rng.integers(0, 10, 500), rng.integers(0, 10, 1000)
    train = centres[y_train] + rng.normal(size=(500, 5))
    test = centres[y_test] + rng.normal(size=(1000, 5))
    assert linear_probe(train, y_train, test, y_test) == 1.0
    shuffled = rng.permutation(y_test)
    assert linear_probe(train, y_train, test, shuffled) < 0.2
    with pytest.raises(DataError, match="two classes"):
        linear_probe(train, np.zeros(500), test, y_test)


def test_embed_and_latent_report():
    rng = np.random.default_rng(0)
    two_d = rng.normal(size=(30, 2))
    assert list(embed(two_d)) == ["latent"]
    np.testing.assert_array_equal(embed(two_d)["latent"], two_d)
    assert embed(rng.normal(size=(30, 1)))["latent"].shape == (30, 2)
    embeddings = embed(rng.normal(size=(40, 6)), ["pca", "tsne"])
    assert {k: v.shape for k, v in embeddings.items()} == {"pca": (40, 2), "tsne": (40, 2)}

    data = Dataset(
        name="toy",
        train=torch.rand(50, 1, 8, 8),
        test=torch.rand(30, 1, 8, 8),
        train_labels=torch.arange(50) % 3,
        test_labels=torch.arange(30) % 3,
    )
    vae = VAE(data.shape, latent_dim=3, hidden=(16,))
    codes = encode_dataset(vae, data)
    assert {k: v.shape for k, v in codes.items()} == {
        "train_loc": (50, 3),
        "train_log_var": (50, 3),
        "test_loc": (30, 3),
        "test_log_var": (30, 3),
        "train_labels": (50,),
        "test_labels": (30,),
    }
    loc, _ = vae.encode(data.test)
    np.testing.assert_allclose(codes["test_loc"], loc.numpy(), rtol=1e-6)
    report = latent_report(vae, data, codes)
    # active units recomputed by hand: variance over items of each posterior mean > 0.01
    activity = loc.var(0)
    assert report["active_units"] == int((activity > 0.01).sum())
    np.testing.assert_allclose(report["activity"], activity.numpy(), rtol=1e-4)
    assert len(report["kl_per_dim"]) == 3 and 0.0 <= report["probe_accuracy"] <= 1.0
    assert report["probe_train_size"] == 50
    assert latent_report(vae, data, codes, max_probe_train=20)["probe_train_size"] == 20
    unlabeled = Dataset("toy", data.train, data.test, None, None)
    assert latent_report(vae, unlabeled)["probe_accuracy"] is None


def test_load_items_keeps_file_order(tmp_path):
    x = np.linspace(0, 1, 5 * 4, dtype=np.float32).reshape(5, 4)
    np.save(tmp_path / "x.npy", x)
    np.testing.assert_array_equal(load_items(tmp_path / "x.npy").numpy(), x)
    np.savez(tmp_path / "xy.npz", x_train=x[:3], x_test=x[3:])
    np.testing.assert_array_equal(load_items(tmp_path / "xy.npz").numpy(), x)
    assert set(np.unique(load_items(tmp_path / "x.npy", binarize="threshold"))) <= {0.0, 1.0}
