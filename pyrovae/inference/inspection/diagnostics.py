r"""Diagnostics of the latent code: KL per dimension, active units, mutual information.

They tell whether the posterior has collapsed onto the prior (a decoder that ignores
:math:`z`): a collapsed dimension has :math:`\mathrm{KL}_d \approx 0`, its posterior
mean does not vary with :math:`x` (an inactive unit), and it carries no information
about :math:`x`.

For a model with one latent site they read the Gaussian :math:`q(z \mid x) =
\mathcal{N}(\mu_\phi(x), \operatorname{diag}\sigma^2_\phi(x))` that
:meth:`pyrovae.VAE.encode` returns (the marginals of the low-rank guide, the base
Gaussian of the IAF guide) and the prior ``vae.model.prior()``.

**Several latent sites** (``vae.latent_sites``, e.g. ``("z1", "z2")`` of a hierarchical
VAE with :math:`q(z_2 \mid x)\,q(z_1 \mid x, z_2)` and :math:`p(z_2)\,p(z_1 \mid z_2)`)
are read from the guide's trace, the model replayed on its draws
(:func:`site_codes`): each site :math:`s` has its Gaussian
:math:`q(z_s \mid x, \mathrm{pa}_s)` and its prior :math:`p(z_s \mid \mathrm{pa}_s)`
at one draw of its parents, so that

.. math::

    \mathrm{KL}\big(q(z \mid x) \,\|\, p(z)\big)
    = \sum_s E_q\big[\mathrm{KL}\big(q(z_s \mid x, \mathrm{pa}_s) \,\|\,
      p(z_s \mid \mathrm{pa}_s)\big)\big]

is estimated site by site (exact for a site without latent parents). :func:`diagnose`
then reports the totals under the one-site keys and each site under ``<key>/<site>``.

References
----------
- Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders (active units).
- Hoffman & Johnson (2016), ELBO surgery: yet another way to carve up the variational
  evidence lower bound.
- He, Spokoyny, Neubig & Berg-Kirkpatrick (2019), Lagging Inference Networks and
  Posterior Collapse in Variational Autoencoders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyro.distributions as dist
import torch
from pyro import poutine
from torch.distributions import kl_divergence

from pyrovae.errors import ConfigError, DataError
from pyrovae.guides.encoders import diagonal_normal
from pyrovae.inference.evaluation import batches, chunk_size, eval_mode
from pyrovae.inference.evaluation.metrics import ACTIVE_THRESHOLD, is_active
from pyrovae.inference.sites import latent_sites, require, require_single_latent

if TYPE_CHECKING:
    from pyrovae.variants import VAE

__all__ = [
    "SiteCode",
    "active_units",
    "diagnose",
    "encode_all",
    "kl_per_dimension",
    "mutual_information",
    "site_codes",
    "total_kl",
]


@torch.no_grad()
def encode_all(
    vae: VAE, x: torch.Tensor, batch_size: int = 500, *, desc: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and log-variances of ``q(z | x)`` for every item, shape ``(N, D)``
    (a model with one latent site; :func:`site_codes` for several). With ``desc``, a
    progress bar of that label counts the items (:func:`batches`)."""
    require(vae, "posterior", "encoding q(z | x)")
    require_single_latent(vae, "encode_all")
    with eval_mode(vae):
        pairs = [vae.encode(xb) for xb, _ in batches(x, batch_size, desc=desc)]
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


@dataclass(frozen=True)
class SiteCode:
    r"""One latent site over ``N`` items, as :func:`site_codes` reads it.

    Attributes
    ----------
    loc, log_var : torch.Tensor
        Mean and log-variance of :math:`q(z_s \mid x, \mathrm{pa}_s)`, ``(N, D_s)``.
    kl_per_dim : torch.Tensor or None
        Mean over items of the KL per dimension to :math:`p(z_s \mid \mathrm{pa}_s)`,
        ``(D_s,)``; ``None`` when that prior does not factorise over dimensions.
    kl : float
        Mean over items of the site's KL (closed form, or a Monte Carlo estimate).
    prior : str
        The prior's distribution type, for messages.
    """

    loc: torch.Tensor
    log_var: torch.Tensor
    kl_per_dim: torch.Tensor | None
    kl: float
    prior: str


def _diagonal_gaussian(fn: dist.Distribution, site: str) -> dist.Normal:
    base = fn
    while isinstance(base, dist.Independent):
        base = base.base_dist
    if not isinstance(base, dist.Normal):
        raise ConfigError(
            f"the diagnostics of several latent sites read a diagonal Normal q at each site; "
            f"site {site!r} of the guide is a {type(fn).__name__}"
        )
    return base


def _factorised(prior: dist.Distribution) -> dist.Normal | None:
    base = prior
    while isinstance(base, dist.Independent):
        base = base.base_dist
    return base if isinstance(base, dist.Normal) else None


@torch.no_grad()
def site_codes(
    vae: VAE, x: torch.Tensor, batch_size: int = 500, num_samples: int = 16
) -> dict[str, SiteCode]:
    r"""Every latent site of ``vae``, read from the guide's trace on ``x`` with the model
    replayed on its draws: :math:`q(z_s \mid x, \mathrm{pa}_s)` and the KL to
    :math:`p(z_s \mid \mathrm{pa}_s)` at the drawn parents (see the module docstring).

    The KL is in closed form where ``torch.distributions`` has one, else the mean of
    ``num_samples`` draws of :math:`\log q(z_s) - \log p(z_s)` per item. Sites come in
    the order of ``vae.latent_sites``; each must be a diagonal Normal in the guide.
    """
    require(vae, "posterior", "the collapse diagnostics")
    names = latent_sites(vae)
    parts: dict[str, list[tuple]] = {name: [] for name in names}
    with eval_mode(vae):
        for xb, _ in batches(x, batch_size):
            guide_trace = poutine.trace(vae.guide).get_trace(xb)
            model = poutine.replay(vae.model, trace=guide_trace)
            model_trace = poutine.trace(model).get_trace(xb)
            for name in names:
                if name not in guide_trace.nodes or name not in model_trace.nodes:
                    raise ConfigError(
                        f"latent site {name!r} (of vae.latent_sites {names}) is not sampled "
                        "by both the guide and the model"
                    )
                q_fn = guide_trace.nodes[name]["fn"]
                p_fn = model_trace.nodes[name]["fn"]
                q = _diagonal_gaussian(q_fn, name)
                p_base = _factorised(p_fn)
                per_dim = None if p_base is None else kl_divergence(q, p_base)
                try:
                    kl = kl_divergence(q_fn, p_fn)
                except NotImplementedError:  # torch has no closed form for this pair
                    z = q_fn.sample((num_samples,))
                    kl = (q_fn.log_prob(z) - p_fn.log_prob(z)).mean(0)
                parts[name].append((q.loc, 2 * q.scale.log(), per_dim, kl, type(p_fn).__name__))
    codes = {}
    for name, rows in parts.items():
        per_dim = [r[2] for r in rows]
        codes[name] = SiteCode(
            loc=torch.cat([r[0] for r in rows]),
            log_var=torch.cat([r[1] for r in rows]),
            kl_per_dim=None if any(t is None for t in per_dim) else torch.cat(per_dim).mean(0),
            kl=torch.cat([r[3] for r in rows]).mean().item(),
            prior=rows[0][4],
        )
    return codes


def _one_site(vae: VAE, site: str | None) -> bool:
    """Whether ``vae`` has one latent site (read through ``vae.encode``); checks ``site``."""
    names = latent_sites(vae)
    if site is not None and site not in names:
        raise ConfigError(f"no latent site {site!r}; this model's are: {', '.join(names)}")
    if len(names) > 1 and site is None:
        raise ConfigError(
            f"this model has several latent sites ({', '.join(names)}): pass site=<name>"
        )
    return len(names) == 1


@torch.no_grad()
def kl_per_dimension(
    vae: VAE, x: torch.Tensor, batch_size: int = 500, *, site: str | None = None
) -> torch.Tensor:
    r"""Mean over items of :math:`\mathrm{KL}(q(z_d \mid x) \,\|\, p(z_d))`, shape ``(D,)``.

    .. math::

        \mathrm{KL}_d = \frac{1}{N} \sum_{n=1}^N
        \mathrm{KL}\big(\mathcal{N}(\mu_{nd}, \sigma^2_{nd}) \,\|\, p(z_d)\big)

    computed in closed form with ``torch.distributions.kl_divergence``. It is defined
    when the prior factorises over dimensions (``normal``, ``learned-normal``, or any
    diagonal Normal); then the total KL is the sum over ``d``. For a model with several
    latent sites, ``site`` names the one (its prior at the drawn parents, see
    :func:`site_codes`).

    Raises
    ------
    ConfigError
        If the prior does not factorise over dimensions (e.g. the mixture prior).
    """
    if _one_site(vae, site):
        return _kl_per_dimension(vae.model.prior(), *encode_all(vae, x, batch_size))
    code = site_codes(vae, x, batch_size)[site]
    if code.kl_per_dim is None:
        raise ConfigError(
            f"KL per dimension needs a prior that factorises over dimensions (a diagonal "
            f"Normal); site {site!r} has a {code.prior} prior: use total_kl() for it"
        )
    return code.kl_per_dim


def _kl_per_dimension(
    prior: dist.Distribution, loc: torch.Tensor, log_var: torch.Tensor
) -> torch.Tensor:
    base = _factorised(prior)
    if base is None:
        raise ConfigError(
            f"KL per dimension needs a prior that factorises over dimensions (a diagonal "
            f"Normal such as 'normal' or 'learned-normal'); this VAE's prior is "
            f"{type(prior).__name__}: use total_kl() for it"
        )
    q = dist.Normal(loc, torch.exp(0.5 * log_var))
    return kl_divergence(q, base).mean(0)


@torch.no_grad()
def total_kl(vae: VAE, x: torch.Tensor, num_samples: int = 16, batch_size: int = 500) -> float:
    r"""Mean over items of :math:`\mathrm{KL}(q(z \mid x) \,\|\, p(z))` in nats.

    In closed form where ``torch.distributions`` has one; otherwise (e.g. the mixture
    prior) the Monte Carlo estimate
    :math:`\frac{1}{S}\sum_s \log q(z_s \mid x) - \log p(z_s)` with ``num_samples``
    draws :math:`z_s \sim q(z \mid x)` per item. For several latent sites, the sum of the
    sites' KLs (see :func:`site_codes`).
    """
    if len(latent_sites(vae)) == 1:
        return _total_kl(vae.model.prior(), *encode_all(vae, x, batch_size), num_samples)
    return sum(code.kl for code in site_codes(vae, x, batch_size, num_samples).values())


def _total_kl(
    prior: dist.Distribution, loc: torch.Tensor, log_var: torch.Tensor, num_samples: int
) -> float:
    q = diagonal_normal(loc, log_var)
    try:
        return kl_divergence(q, prior).mean().item()
    except NotImplementedError:  # torch has no closed form for this pair
        z = q.rsample((num_samples,))
        return (q.log_prob(z) - prior.log_prob(z)).mean().item()


@torch.no_grad()
def active_units(
    vae: VAE,
    x: torch.Tensor,
    threshold: float = ACTIVE_THRESHOLD,
    batch_size: int = 500,
    *,
    site: str | None = None,
) -> tuple[int, torch.Tensor]:
    r"""Number of active latent units and each unit's activity, after Burda et al. (2016).

    .. math::

        A_d = \operatorname{Cov}_x\big(E_{q(z \mid x)}[z_d]\big) > \text{threshold}

    Returns ``(count, activity)`` where ``activity`` (shape ``(D,)``) is the variance
    over the items of the posterior mean of each dimension (unbiased, ``N - 1``). For a
    model with several latent sites, ``site`` names the one.
    """
    if len(x) < 2:
        raise DataError("active units need at least 2 items to measure a variance")
    if _one_site(vae, site):
        return _active_units(encode_all(vae, x, batch_size)[0], threshold)
    return _active_units(site_codes(vae, x, batch_size)[site].loc, threshold)


def _active_units(loc: torch.Tensor, threshold: float) -> tuple[int, torch.Tensor]:
    activity = loc.var(0)
    return int(is_active(activity, threshold).sum()), activity


@torch.no_grad()
def mutual_information(vae: VAE, x: torch.Tensor, batch_size: int = 500) -> float:
    r"""Minibatch estimate of the mutual information :math:`I_q(x; z)` in nats.

    Under :math:`q(x, z) = p_\text{data}(x)\,q(z \mid x)` (Hoffman & Johnson 2016),

    .. math::

        I_q(x; z) = E_x\big[E_{q(z \mid x)}[\log q(z \mid x)]\big] - E_{q(z)}[\log q(z)],
        \qquad q(z) \approx \frac{1}{N} \sum_{j=1}^N q(z \mid x_j)

    with one draw :math:`z_n \sim q(z \mid x_n)` per item and the aggregate posterior
    :math:`q(z)` replaced by the mixture over the ``N`` given items, as in He et al.
    (2019). The first term is the negative entropy of the Gaussians in closed form.
    The estimate is biased for small ``N`` and at most :math:`\log N`; compare values
    computed on the same number of items. Memory and time grow as :math:`N^2 D`.

    For several latent sites, :math:`z` is the joint code: the sites' Gaussians side by
    side, each at its drawn parents (:func:`site_codes`).
    """
    if len(latent_sites(vae)) == 1:
        return _mutual_information(*encode_all(vae, x, batch_size), batch_size)
    return _mutual_information(*_joint(site_codes(vae, x, batch_size)), batch_size)


def _joint(codes: dict[str, SiteCode]) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.cat([c.loc for c in codes.values()], -1),
        torch.cat([c.log_var for c in codes.values()], -1),
    )


def _mutual_information(loc: torch.Tensor, log_var: torch.Tensor, batch_size: int) -> float:
    n, d = loc.shape
    if n < 2:
        raise DataError("the mutual information estimate needs at least 2 items")
    neg_entropy = (-0.5 * d * math.log(2 * math.pi) - 0.5 * (1 + log_var).sum(-1)).mean()
    q = dist.Normal(loc, torch.exp(0.5 * log_var))
    z = q.sample()
    # log q(z_i | x_j) for every pair, reduced over j a block of rows at a time; a block
    # holds rows x N x D values, at most 2^24 (64 MB of float32) whatever N and D are
    rows = chunk_size(batch_size, n * d)
    log_qz = torch.cat(
        [
            torch.logsumexp(q.log_prob(z[start : start + rows, None, :]).sum(-1), dim=1)
            for start in range(0, n, rows)
        ]
    ) - math.log(n)
    return (neg_entropy - log_qz.mean()).item()


@torch.no_grad()
def diagnose(
    vae: VAE, x: torch.Tensor, threshold: float = ACTIVE_THRESHOLD, batch_size: int = 500
) -> dict[str, object]:
    """All diagnostics on ``x`` as a JSON-ready dict.

    Keys: ``kl`` (total, nats per item), ``kl_per_dim`` (list, or ``None`` when the
    prior does not factorise), ``active_units``, ``mutual_information``. ``x`` is
    encoded once for all of them (the trainer calls this every epoch).

    With several latent sites (``vae.latent_sites``), these keys hold the totals: ``kl``
    and ``active_units`` summed over the sites, ``kl_per_dim`` the sites' lists one
    after another in site order (``None`` if any site's prior does not factorise), and
    ``mutual_information`` that of the joint code; and each site ``s`` adds
    ``kl/s``, ``kl_per_dim/s`` and ``active_units/s`` (e.g. ``kl/z1``, ``kl/z2``).
    """
    if len(x) < 2:
        raise DataError("the diagnostics need at least 2 items")
    if len(latent_sites(vae)) > 1:
        return _diagnose_sites(site_codes(vae, x, batch_size), threshold, batch_size)
    loc, log_var = encode_all(vae, x, batch_size)
    prior = vae.model.prior()
    try:
        per_dim: list[float] | None = _kl_per_dimension(prior, loc, log_var).tolist()
    except ConfigError:
        per_dim = None
    count, _ = _active_units(loc, threshold)
    return {
        "kl": _total_kl(prior, loc, log_var, num_samples=16),
        "kl_per_dim": per_dim,
        "active_units": count,
        "mutual_information": _mutual_information(loc, log_var, batch_size),
    }


def _diagnose_sites(
    codes: dict[str, SiteCode], threshold: float, batch_size: int
) -> dict[str, object]:
    per_site: dict[str, object] = {}
    for name, code in codes.items():
        per_site[f"kl/{name}"] = code.kl
        per_site[f"kl_per_dim/{name}"] = (
            None if code.kl_per_dim is None else code.kl_per_dim.tolist()
        )
        per_site[f"active_units/{name}"] = _active_units(code.loc, threshold)[0]
    per_dim = [per_site[f"kl_per_dim/{name}"] for name in codes]
    return {
        "kl": sum(code.kl for code in codes.values()),
        "kl_per_dim": None if None in per_dim else [v for dims in per_dim for v in dims],
        "active_units": sum(per_site[f"active_units/{name}"] for name in codes),
        "mutual_information": _mutual_information(*_joint(codes), batch_size),
        **per_site,
    }
