"""Latent diagnostics against hand computations: KL per dimension, active units, I(x; z)."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch
from scipy.stats import norm
from torch import nn

from pyrovae import VAE
from pyrovae.errors import ConfigError, DataError
from pyrovae.inference.inspection.diagnostics import (
    active_units,
    diagnose,
    encode_all,
    kl_per_dimension,
    mutual_information,
    total_kl,
)


class FixedEncoder(nn.Module):
    """q(z | x): loc = x[:, :D] * gain, log-variance fixed; lets tests choose the posterior."""

    def __init__(self, latent_dim: int, gain: torch.Tensor, log_var: float) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.register_buffer("gain", gain)
        self.log_var = log_var

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc = x.flatten(1)[:, : self.latent_dim] * self.gain
        return loc, torch.full_like(loc, self.log_var)


def _vae(prior: str = "normal", latent_dim: int = 3) -> VAE:
    return VAE((1, 4, 4), latent_dim=latent_dim, prior=prior, hidden=(8,))


def test_kl_per_dimension_matches_gaussian_formula():
    vae = _vae()
    x = torch.rand(50, 1, 4, 4)
    loc, log_var = encode_all(vae, x)
    # KL(N(m, s^2) || N(0, 1)) = (m^2 + s^2 - 1 - log s^2) / 2, by hand
    expected = (0.5 * (loc**2 + log_var.exp() - 1 - log_var)).mean(0)
    torch.testing.assert_close(kl_per_dimension(vae, x), expected)
    assert total_kl(vae, x) == pytest.approx(expected.sum().item(), rel=1e-5)


def test_kl_per_dimension_against_a_learned_prior():
    vae = _vae("learned-normal")
    with torch.no_grad():
        vae.model.prior.loc.copy_(torch.tensor([0.5, -1.0, 2.0]))
        vae.model.prior.log_scale.copy_(torch.tensor([0.0, 0.3, -0.2]))
    x = torch.rand(40, 1, 4, 4)
    loc, log_var = encode_all(vae, x)
    m, s = vae.model.prior.loc, vae.model.prior.log_scale.exp()
    v = log_var.exp()
    # KL(N(a, v) || N(m, s^2)) = log(s / sqrt(v)) + (v + (a - m)^2) / (2 s^2) - 1/2
    expected = (torch.log(s) - 0.5 * log_var + (v + (loc - m) ** 2) / (2 * s**2) - 0.5).mean(0)
    torch.testing.assert_close(kl_per_dimension(vae, x), expected, rtol=1e-5, atol=1e-6)


def test_mixture_prior_has_no_per_dimension_kl_but_a_monte_carlo_total():
    vae = _vae("mixture")
    x = torch.rand(30, 1, 4, 4)
    with pytest.raises(ConfigError, match="factorises"):
        kl_per_dimension(vae, x)
    assert diagnose(vae, x)["kl_per_dim"] is None
    # independent estimate with many draws; the 16-draw estimate averages 30 x 16 terms
    loc, log_var = encode_all(vae, x)
    q = torch.distributions.Independent(
        torch.distributions.Normal(loc, torch.exp(0.5 * log_var)), 1
    )
    z = q.sample((4000,))
    terms = q.log_prob(z) - vae.model.prior().log_prob(z)
    reference = terms.mean().item()
    se = (terms.std() / math.sqrt(30 * 16)).item()
    assert abs(total_kl(vae, x, num_samples=16) - reference) < 4 * se


def test_active_units_count_dimensions_whose_mean_varies():
    vae = _vae()
    vae.guide.encoder = FixedEncoder(3, torch.tensor([1.0, 0.01, 0.0]), log_var=-1.0)
    x = torch.rand(200, 1, 4, 4)
    count, activity = active_units(vae, x)
    reference = np.var(x.flatten(1)[:, :3].numpy() * np.array([1.0, 0.01, 0.0]), axis=0, ddof=1)
    np.testing.assert_allclose(activity.numpy(), reference, rtol=1e-5, atol=1e-12)
    # U(0, 1) has variance 1/12 > 0.01; 0.01^2 / 12 and 0 are below the threshold
    assert count == 1
    with pytest.raises(DataError):
        active_units(vae, x[:1])


def test_mutual_information_matches_a_scipy_computation():
    vae = _vae(latent_dim=2)
    vae.guide.encoder = FixedEncoder(2, torch.tensor([3.0, 1.0]), log_var=-0.5)
    x = torch.rand(25, 1, 4, 4)
    pyro.set_rng_seed(3)
    estimate = mutual_information(vae, x, batch_size=7)  # rows in blocks of 7
    pyro.set_rng_seed(3)
    loc, log_var = (t.numpy().astype(np.float64) for t in encode_all(vae, x))
    sd = np.exp(0.5 * log_var)
    z = torch.distributions.Normal(*(torch.as_tensor(a).float() for a in (loc, sd))).sample()
    z = z.numpy().astype(np.float64)
    # log q(z_i | x_j) for all pairs, then the mixture over j
    pair = norm.logpdf(z[:, None, :], loc[None], sd[None]).sum(-1)
    log_qz = np.logaddexp.reduce(pair, axis=1) - np.log(len(x))
    neg_entropy = norm.logpdf(z, loc, sd).sum(-1)  # one-sample check of the closed form below
    closed = (-0.5 * 2 * np.log(2 * np.pi) - 0.5 * (1 + log_var).sum(-1)).mean()
    assert abs(neg_entropy.mean() - closed) < 4 * neg_entropy.std() / np.sqrt(len(x))
    assert estimate == pytest.approx(closed - log_qz.mean(), rel=1e-4)


def test_mutual_information_limits():
    n = 64
    x = torch.rand(n, 1, 4, 4)
    # the one-draw term mean_n log q(z_n | x_n) - E log q has sd sqrt(D / 2) / sqrt(N)
    # for D Gaussian dimensions (log q is -chi2_D / 2 + const); allow 4 of them
    tolerance = 4 * math.sqrt(2 / 2) / math.sqrt(n)
    # posteriors far apart and narrow: each z is explained by its own x only -> log N
    vae = _vae(latent_dim=2)
    vae.guide.encoder = FixedEncoder(2, torch.tensor([1e3, 1e3]), log_var=-10.0)
    assert mutual_information(vae, x) == pytest.approx(math.log(n), abs=tolerance)
    # posterior independent of x: I = 0 in expectation
    vae.guide.encoder = FixedEncoder(2, torch.tensor([0.0, 0.0]), log_var=0.0)
    assert abs(mutual_information(vae, x)) < tolerance


def test_diagnose_reports_everything():
    vae = _vae()
    out = diagnose(vae, torch.rand(20, 1, 4, 4))
    assert set(out) == {"kl", "kl_per_dim", "active_units", "mutual_information"}
    assert len(out["kl_per_dim"]) == 3
    assert out["kl"] == pytest.approx(sum(out["kl_per_dim"]), rel=1e-5)
    assert 0 <= out["active_units"] <= 3
