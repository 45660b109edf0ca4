r"""Posterior draws as ArviZ ``InferenceData``: the amortized guide, the prior, their predictives.

For chosen inputs :math:`x_1, \dots, x_N` the guide is sampled,
:math:`z^{(s)}_n \sim q_\phi(z \mid x_n)`, and decoded into new data
:math:`\tilde x^{(s)}_n \sim p_\theta(x \mid z^{(s)}_n)` (the posterior predictive), with
``pyro.infer.Predictive``; the prior and prior predictive are drawn by running the
model with ``x=None``. Everything goes into one :class:`arviz.InferenceData`:

==========================  =======================================================
group                       variables (dims)
==========================  =======================================================
``posterior``               ``z`` (chain, draw, item, latent_dim)
``posterior_predictive``    ``x`` (chain, draw, item, *pixel dims*): draws of
                            :math:`p(x \mid z)`; ``x_mean``: :math:`E[x \mid z]`
``prior``                   ``z`` (chain, draw, item, latent_dim)
``prior_predictive``        ``x``, ``x_mean`` as above, with :math:`z \sim p(z)`
``observed_data``           ``x`` (item, *pixel dims*)
``constant_data``           ``q_loc``, ``q_scale`` (item, latent_dim): the guide's
                            exact means and standard deviations
==========================  =======================================================

``item`` indexes the model's ``"data"`` plate (its coordinate holds the inputs' indices,
e.g. into the held-out set) and ``latent_dim`` the event dimension of the latent site
``"z"``. A model with several latent sites (``vae.latent_sites``, e.g. ``z1`` and
``z2``) has one variable per site in ``posterior`` and ``prior``, each with its own dim
``<site>_dim`` (``z1_dim``, ``z2_dim``), and no ``constant_data`` (a site whose guide
depends on another site's draw has no Gaussian marginal). *Pixel dims* are ``channel,
height, width`` for images, ``feature`` for vectors, else ``x_dim_0, x_dim_1, ...``.
Draws of the guide are independent, so there is one chain; ArviZ's
``summary(kind="stats")`` and plots apply unchanged.

References
----------
- Kumar, Carroll, Hartikainen & Martin (2019), ArviZ a unified library for exploratory
  analysis of Bayesian models in Python. JOSS 4(33), 1143.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pyro.infer import Predictive

from pyrovae.errors import ConfigError, DataError
from pyrovae.inference.sites import latent_sites, require

if TYPE_CHECKING:
    import arviz
    import pandas

    from pyrovae.variants import VAE

__all__ = [
    "compare_posteriors",
    "coords_and_dims",
    "guide_moments",
    "import_arviz",
    "latent_dim_name",
    "load_inference_data",
    "pixel_dims",
    "posterior_draws",
    "posterior_summary",
    "save_inference_data",
]

logger = logging.getLogger(__name__)


def import_arviz() -> Any:
    """``import arviz``, without the once-a-day FutureWarning about its coming refactor and
    the INFO lines on which of its preview packages are missing."""
    preview = logging.getLogger("arviz.preview")
    level = preview.level
    preview.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r"\s*ArviZ is undergoing a major refactor", category=FutureWarning
            )
            import arviz
    finally:
        preview.setLevel(level)
    return arviz


def pixel_dims(event_shape: Sequence[int]) -> list[str]:
    """Names of the dimensions of one data point in ``InferenceData``."""
    if len(event_shape) == 3:
        return ["channel", "height", "width"]
    if len(event_shape) == 1:
        return ["feature"]
    return [f"x_dim_{i}" for i in range(len(event_shape))]


def latent_dim_name(site: str, sites: Sequence[str]) -> str:
    """The ArviZ dim of a latent site's coordinates: ``latent_dim`` for a model's only
    site, ``<site>_dim`` for one of several."""
    return "latent_dim" if len(sites) == 1 else f"{site}_dim"


def coords_and_dims(
    vae: VAE, x: torch.Tensor, items: Sequence[int] | None, sizes: dict[str, int]
) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """ArviZ ``coords`` and ``dims`` for inputs ``x`` and latent sites of the given sizes
    (``{site: dimension}``, in site order); ``items`` label the inputs (``0..N-1``)."""
    if items is None:
        items = range(len(x))
    items = np.asarray(list(items), dtype=np.int64)
    if items.shape != (len(x),):
        raise ConfigError(f"got {len(items)} item labels for {len(x)} inputs")
    coords: dict[str, np.ndarray] = {"item": items}
    pixels = pixel_dims(vae.event_shape)
    dims = {"x": ["item", *pixels], "x_mean": ["item", *pixels]}
    for site, size in sizes.items():
        name = latent_dim_name(site, list(sizes))
        coords[name] = np.arange(size)
        dims[site] = ["item", name]
    if len(sizes) == 1:
        dims["q_loc"] = dims["q_scale"] = dims[next(iter(sizes))]
    return coords, dims


def _chain(t: torch.Tensor) -> np.ndarray:
    """Draws ``(S, ...)`` -> one chain ``(1, S, ...)`` as NumPy."""
    return t.detach().cpu().numpy()[None]


@torch.no_grad()
def posterior_draws(
    vae: VAE,
    x: torch.Tensor,
    num_samples: int = 1000,
    *,
    items: Sequence[int] | None = None,
    prior: bool = True,
) -> arviz.InferenceData:
    r"""Draw :math:`z \sim q(z \mid x)` and decode, for each input; return ``InferenceData``.

    Parameters
    ----------
    vae : VAE
        A trained VAE.
    x : torch.Tensor
        Inputs of shape ``(N, *event_shape)``.
    num_samples : int
        Draws :math:`S` per input (for the posterior and the prior alike).
    items : sequence of int, optional
        Coordinates of the ``item`` dimension (e.g. indices into the held-out set);
        ``0..N-1`` by default.
    prior : bool
        Also draw the ``prior`` and ``prior_predictive`` groups.

    Returns
    -------
    arviz.InferenceData
        Groups and dims as in the module's table.
    """
    az = import_arviz()
    if num_samples < 1:
        raise ConfigError(f"the number of posterior draws must be >= 1, got {num_samples}")
    require(vae, "posterior", "posterior inspection")
    require(vae, "images", "posterior inspection (its predictive groups hold E[x | z] per pixel)")
    vae.require_unconditional("posterior inspection")
    vae.validate_data(x, "inputs to inspect")
    x = x.to(vae.device)
    latents = latent_sites(vae)
    sites = [*latents, "x", "_RETURN"]
    mean = vae.model.likelihood.mean
    post = vae.predictive(x, num_samples, return_sites=sites)
    coords, dims = coords_and_dims(vae, x, items, {s: post[s].shape[-1] for s in latents})
    guide = vae.component_name("guide")
    groups: dict[str, Any] = {
        "posterior": {s: _chain(post[s]) for s in latents},
        "posterior_predictive": {"x": _chain(post["x"]), "x_mean": _chain(mean(post["_RETURN"]))},
        "observed_data": {"x": x.cpu().numpy()},
    }
    if guide in ("normal", "lowrank") and len(latents) == 1:
        # encode() gives the exact marginals of these guides; for the IAF guide it gives the
        # Gaussian before the flow, so its moments come from the draws instead
        q_loc, q_log_var = vae.encode(x)
        groups["constant_data"] = {
            "q_loc": q_loc.cpu().numpy(),
            "q_scale": torch.exp(0.5 * q_log_var).cpu().numpy(),
        }
    if prior:
        predictive = Predictive(
            vae.model, num_samples=num_samples, return_sites=sites, parallel=True
        )
        draws = predictive(batch_size=len(x))
        groups["prior"] = {s: _chain(draws[s]) for s in latents}
        groups["prior_predictive"] = {
            "x": _chain(draws["x"]),
            "x_mean": _chain(mean(draws["_RETURN"])),
        }
    return az.from_dict(
        **groups,
        coords=coords,
        dims=dims,
        attrs={
            "inference_library": "pyro",
            "approximation": f"amortized q(z|x), guide {guide!r} (pyrovae)",
        },
    )


def save_inference_data(idata: arviz.InferenceData, path: str | os.PathLike) -> Path:
    """Write ``idata`` to NetCDF (``h5netcdf``); read it back with :func:`load_inference_data`."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give a .nc file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    idata.to_netcdf(str(path))
    return path


def load_inference_data(path: str | os.PathLike) -> arviz.InferenceData:
    """Read a NetCDF file written by :func:`save_inference_data` (or any ArviZ NetCDF)."""
    az = import_arviz()
    path = Path(path)
    if not path.is_file():
        raise DataError(f"there is no InferenceData file {path}")
    return az.from_netcdf(str(path))


def posterior_summary(
    idata: arviz.InferenceData,
    *,
    kind: str | None = None,
    var_names: Sequence[str] | None = None,
) -> pandas.DataFrame:
    """``arviz.summary`` of the posterior: mean, sd, 94% HDI, and for several chains the
    MCMC diagnostics (``mcse``, ``ess_bulk``, ``ess_tail``, ``r_hat``).

    ``var_names`` defaults to every posterior variable (one per latent site).

    ``kind`` defaults to ``"stats"`` for one chain (independent draws of the guide: no
    chains to compare) and ``"all"`` for more.
    """
    az = import_arviz()
    if kind is None:
        kind = "all" if idata.posterior.sizes["chain"] > 1 else "stats"
    # a chain that never moved (e.g. too short a warmup) has zero variance: NaN diagnostics
    with np.errstate(divide="ignore", invalid="ignore"):
        names = list(idata.posterior.data_vars) if var_names is None else list(var_names)
        return az.summary(idata, var_names=names, kind=kind)


def guide_moments(idata: arviz.InferenceData) -> tuple[np.ndarray, np.ndarray]:
    """Means and standard deviations of ``z`` per (item, latent_dim): the guide's exact
    moments when recorded (``constant_data``), else the draws' moments."""
    if "constant_data" in idata.groups() and "q_loc" in idata.constant_data:
        return idata.constant_data["q_loc"].values, idata.constant_data["q_scale"].values
    z = idata.posterior["z"].stack(sample=("chain", "draw")).transpose("item", "latent_dim", ...)
    return z.mean("sample").values, z.std("sample", ddof=1).values


def compare_posteriors(
    approximate: arviz.InferenceData, reference: arviz.InferenceData
) -> pandas.DataFrame:
    r"""Compare an approximate posterior (the guide) with a reference (NUTS), marginal by marginal.

    For every item and latent dimension, with :math:`q` the approximation and :math:`p`
    the reference: means and standard deviations, their differences
    ``mean_diff`` :math:`= \mu_q - \mu_p`, ``sd_diff`` :math:`= \sigma_q - \sigma_p`,
    ``z_diff`` :math:`= (\mu_q - \mu_p) / \sigma_p` (the mean difference in posterior
    standard deviations), the reference's Monte Carlo standard error of its mean
    (``mcse_mean_p``, from ArviZ's effective sample size), and the overlap of the two
    1-D marginals, measured by the Bhattacharyya coefficient of Gaussian fits:

    .. math::

        \mathrm{BC}(q, p) = \int \sqrt{q(z)\,p(z)}\,dz
        = \sqrt{\frac{2\sigma_q\sigma_p}{\sigma_q^2 + \sigma_p^2}}
          \exp\Big(-\frac{(\mu_q - \mu_p)^2}{4(\sigma_q^2 + \sigma_p^2)}\Big)

    1 for identical marginals, 0 for disjoint ones. The guide's marginals are Gaussian
    (its exact moments are used when ``approximate`` has the ``constant_data`` group of
    :func:`posterior_draws`); the reference's marginal is replaced by the Gaussian with
    its sample mean and standard deviation, so skewness or multimodality of the true
    posterior is not seen by this number (the figure of
    :func:`pyrovae.plots.posterior_comparison` shows the histograms).

    Returns
    -------
    pandas.DataFrame
        One row per ``(item, latent_dim)``.
    """
    import pandas as pd

    az = import_arviz()
    mean_q, sd_q = guide_moments(approximate)
    z = reference.posterior["z"]
    mean_p = z.mean(("chain", "draw")).transpose("item", "latent_dim").values
    sd_p = z.std(("chain", "draw"), ddof=1).transpose("item", "latent_dim").values
    items_q = approximate.posterior["item"].values.tolist()
    items_p = reference.posterior["item"].values.tolist()
    if mean_q.shape != mean_p.shape or items_q != items_p:
        raise ConfigError(
            f"the posteriors cover different inputs or latent dims: items {items_q} vs "
            f"{items_p}, (item, latent_dim) shapes {mean_q.shape} vs {mean_p.shape}"
        )
    if z.sizes["chain"] * z.sizes["draw"] >= 4 and z.sizes["draw"] >= 4:
        with np.errstate(divide="ignore", invalid="ignore"):
            mcse = az.mcse(reference, var_names=["z"], method="mean")["z"]
        mcse_p = mcse.transpose("item", "latent_dim").values
    else:
        mcse_p = np.full_like(mean_p, np.nan)
    var_sum = sd_q**2 + sd_p**2
    overlap = np.sqrt(2 * sd_q * sd_p / var_sum) * np.exp(-((mean_q - mean_p) ** 2) / (4 * var_sum))
    index = pd.MultiIndex.from_product(
        [reference.posterior["item"].values, reference.posterior["latent_dim"].values],
        names=["item", "latent_dim"],
    )
    columns = {
        "mean_q": mean_q,
        "mean_p": mean_p,
        "mean_diff": mean_q - mean_p,
        "z_diff": (mean_q - mean_p) / sd_p,
        "mcse_mean_p": mcse_p,
        "sd_q": sd_q,
        "sd_p": sd_p,
        "sd_diff": sd_q - sd_p,
        "overlap": overlap,
    }
    return pd.DataFrame({k: np.ravel(v) for k, v in columns.items()}, index=index)
