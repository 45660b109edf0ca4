r"""A model with two latent sites: the collapse diagnostics and the ArviZ export read every
site; the tools that need one code per item refuse it with one message.

The toy is a two-layer hierarchy,
:math:`p(z_2)\,p(z_1 \mid z_2)\,p(x \mid z_1)` with the guide
:math:`q(z_2 \mid x)\,q(z_1 \mid x, z_2)`, written like :class:`~pyrovae.model.VAEModel`
and :class:`~pyrovae.guides.AmortizedNormalGuide` (same signature, ``data_plate``,
``kl_weight``) and wrapped in the few attributes the inference code reads.
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive
from pyro.nn import PyroModule
from torch import nn
from torch.distributions import kl_divergence

from pyrovae.errors import ConfigError
from pyrovae.guides.encoders import diagonal_normal
from pyrovae.inference import (
    diagnose,
    encode_all,
    encode_dataset,
    heldout_elbo,
    importance_weights,
    inference_gaps,
    kl_per_dimension,
    latent_report,
    latent_sites,
    nuts_posterior,
    posterior_draws,
    posterior_summary,
    require_single_latent,
    total_kl,
)
from pyrovae.inference.applications import (
    denoise,
    inpaint,
    interpolate,
    latent_arithmetic,
    traverse,
)
from pyrovae.model import make_likelihood
from pyrovae.model.base import data_plate, kl_weight

EVENT, PIXELS, D1, D2 = (1, 3, 3), 9, 2, 3


class TwoSiteModel(PyroModule):
    """:math:`z_2 \\sim N(0, I)`, :math:`z_1 \\mid z_2 \\sim N(A z_2 + a, s^2 I)`,
    :math:`x \\mid z_1 \\sim \\mathrm{Bernoulli}(\\mathrm{logits} = B z_1 + b)`."""

    def __init__(self) -> None:
        super().__init__()
        self.link = nn.Linear(D2, D1)
        self.log_scale = nn.Parameter(torch.tensor(-0.4))
        self.decoder = nn.Linear(D1, PIXELS)
        self.likelihood = make_likelihood("bernoulli", EVENT)

    def forward(self, x=None, *, num_data=None, batch_size=None, beta=1.0):
        size = len(x) if x is not None else (batch_size or 1)
        zeros = torch.zeros(D2)
        with data_plate(size, num_data, zeros.device):
            with kl_weight(beta):
                z2 = pyro.sample("z2", dist.Normal(zeros, 1.0).to_event(1))
                scale = self.log_scale.exp().expand(D1)
                z1 = pyro.sample("z1", dist.Normal(self.link(z2), scale).to_event(1))
            params = self.decoder(z1).reshape(*z1.shape[:-1], *EVENT)
            pyro.sample("x", self.likelihood(params).to_event(len(EVENT)), obs=x)
        return params


class TwoSiteGuide(PyroModule):
    """:math:`q(z_2 \\mid x)\\,q(z_1 \\mid x, z_2)`, diagonal Gaussians."""

    def __init__(self) -> None:
        super().__init__()
        self.top = nn.Linear(PIXELS, 2 * D2)
        self.bottom = nn.Linear(PIXELS + D2, 2 * D1)

    def forward(self, x=None, *, num_data=None, batch_size=None, beta=1.0):
        if x is None:
            return None
        h = x.flatten(1)
        with data_plate(len(x), num_data, x.device), kl_weight(beta):
            z2 = pyro.sample("z2", diagonal_normal(*self.top(h).chunk(2, -1)))
            inputs = torch.cat([h.expand(*z2.shape[:-1], -1), z2], -1)
            pyro.sample("z1", diagonal_normal(*self.bottom(inputs).chunk(2, -1)))


class TwoSiteVAE(nn.Module):
    """What the inference code reads of a VAE, for the two-site toy."""

    latent_sites = ("z1", "z2")
    needs_labels = False
    requires_y = False
    event_shape = EVENT
    latent_dim = D1 + D2

    def __init__(self) -> None:
        super().__init__()
        self.spec = {"guide": {"name": "two-site"}}
        self.model = TwoSiteModel()
        self.guide = TwoSiteGuide()

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def component_name(self, role: str) -> str:
        return self.spec[role]["name"]

    def require_unconditional(self, what: str) -> None:
        pass

    def validate_data(self, x: torch.Tensor, what: str = "data") -> None:
        pass

    def predictive(self, x, num_samples=1, return_sites=("z1", "z2", "x")):
        predictive = Predictive(
            poutine.uncondition(self.model),
            guide=self.guide,
            num_samples=num_samples,
            return_sites=list(return_sites),
            parallel=True,
        )
        return predictive(x)


@pytest.fixture
def toy() -> TwoSiteVAE:
    return TwoSiteVAE().eval()


@pytest.fixture
def x() -> torch.Tensor:
    return (torch.rand(40, *EVENT) > 0.5).float()


def kl_by_hand(toy: TwoSiteVAE, x: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """Per-dimension KLs (means over items) with torch.distributions, at the guide's draw
    of ``z2`` under ``seed``: the top site against N(0, I), the bottom one against
    p(z1 | z2) at that draw."""
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        z2 = poutine.trace(toy.guide).get_trace(x).nodes["z2"]["value"]
        h = x.flatten(1)
        loc2, log_var2 = toy.guide.top(h).chunk(2, -1)
        loc1, log_var1 = toy.guide.bottom(torch.cat([h, z2], -1)).chunk(2, -1)
        q2 = torch.distributions.Normal(loc2, torch.exp(0.5 * log_var2))
        q1 = torch.distributions.Normal(loc1, torch.exp(0.5 * log_var1))
        p2 = torch.distributions.Normal(torch.zeros(D2), torch.ones(D2))
        p1 = torch.distributions.Normal(toy.model.link(z2), toy.model.log_scale.exp())
        return {"z1": kl_divergence(q1, p1).mean(0), "z2": kl_divergence(q2, p2).mean(0)}


def test_latent_sites_default_to_z():
    assert latent_sites(object()) == ("z",)
    assert latent_sites(TwoSiteVAE()) == ("z1", "z2")
    require_single_latent(object(), "anything")  # one site by default: no error


def test_diagnostics_report_each_site_and_the_totals(toy, x):
    """``kl_per_dim/<site>`` matches torch.distributions' closed form at the same draw; the
    totals are the sites' sums and concatenation."""
    pyro.set_rng_seed(4)
    row = diagnose(toy, x, batch_size=len(x))
    expected = kl_by_hand(toy, x, seed=4)
    for site in ("z1", "z2"):
        np.testing.assert_allclose(row[f"kl_per_dim/{site}"], expected[site].numpy(), rtol=1e-5)
        assert row[f"kl/{site}"] == pytest.approx(expected[site].sum().item(), rel=1e-5)
        assert 0 <= row[f"active_units/{site}"] <= len(expected[site])
    assert row["kl"] == pytest.approx(row["kl/z1"] + row["kl/z2"])
    assert row["kl_per_dim"] == row["kl_per_dim/z1"] + row["kl_per_dim/z2"]
    assert row["active_units"] == row["active_units/z1"] + row["active_units/z2"]
    assert np.isfinite(row["mutual_information"])
    # the public functions, site by site, agree with diagnose at the same draw
    pyro.set_rng_seed(4)
    torch.testing.assert_close(kl_per_dimension(toy, x, site="z1"), expected["z1"])
    pyro.set_rng_seed(4)
    assert total_kl(toy, x) == pytest.approx(row["kl"], rel=1e-5)
    with pytest.raises(ConfigError, match=r"several latent sites \(z1, z2\): pass site="):
        kl_per_dimension(toy, x)
    with pytest.raises(ConfigError, match="no latent site 'z'"):
        kl_per_dimension(toy, x, site="z")


def test_arviz_export_has_one_variable_per_site(toy, x):
    idata = posterior_draws(toy, x[:4], num_samples=6, items=[10, 11, 12, 13])
    for group in ("posterior", "prior"):
        data = getattr(idata, group)
        assert set(data.data_vars) == {"z1", "z2"}
        assert data["z1"].dims == ("chain", "draw", "item", "z1_dim")
        assert data["z2"].dims == ("chain", "draw", "item", "z2_dim")
        assert data["z1"].shape == (1, 6, 4, D1) and data["z2"].shape == (1, 6, 4, D2)
    assert idata.posterior["item"].values.tolist() == [10, 11, 12, 13]
    assert "constant_data" not in idata.groups()
    assert idata.posterior_predictive["x"].shape == (1, 6, 4, *EVENT)
    summary = posterior_summary(idata)
    assert len(summary) == 4 * (D1 + D2)


def test_the_weights_sum_every_site(toy, x):
    w = importance_weights(toy, x[:5], 7)
    assert w.log_weight.shape == (7, 5)
    torch.testing.assert_close(w.log_weight, w.log_likelihood + w.log_prior - w.log_guide)
    assert np.isfinite(heldout_elbo(toy, x))


SINGLE_SITE_TOOLS = {
    "encode_all": lambda toy, x: encode_all(toy, x),
    "nuts_posterior": lambda toy, x: nuts_posterior(toy, x[:2]),
    "inference_gaps": lambda toy, x: inference_gaps(toy, x[:2]),
    "latent_report": lambda toy, x: latent_report(toy, None),
    "encode_dataset": lambda toy, x: encode_dataset(toy, None),
    "interpolate": lambda toy, x: interpolate(toy, x[0], x[1]),
    "traverse": lambda toy, x: traverse(toy, x[0]),
    "latent_arithmetic": lambda toy, x: latent_arithmetic(toy, x[0], x[1], x[2]),
    "inpaint": lambda toy, x: inpaint(toy, x, torch.ones_like(x, dtype=torch.bool)),
    "denoise": lambda toy, x: denoise(toy, x),
}


@pytest.mark.parametrize("tool", SINGLE_SITE_TOOLS)
def test_single_site_tools_refuse_several_sites_with_one_message(toy, x, tool):
    message = r"works on a model with one latent site; this model has 2 \(z1, z2\)"
    with pytest.raises(ConfigError, match=message):
        SINGLE_SITE_TOOLS[tool](toy, x)
