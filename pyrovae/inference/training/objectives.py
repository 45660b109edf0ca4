r"""Training objectives: Pyro's ELBO estimators, looked up by their Pyro names.

All of them estimate

.. math::

    \mathcal{L}(x) = E_{q(z \mid x)}[\log p(x \mid z)] - \beta\,\mathrm{KL}(q(z \mid x)\,\|\,p(z))

``Trace_ELBO`` uses the Monte Carlo estimate of the KL term, ``TraceMeanField_ELBO``
its closed form where ``torch.distributions.kl_divergence`` knows one (falling back
to Monte Carlo otherwise, e.g. for the mixture prior), and ``JitTrace_ELBO`` is
``Trace_ELBO`` compiled with the PyTorch JIT.

Objectives that change the bound, each a Pyro ``ELBO`` (``objective(model, guide)``
is an ``ELBOModule``) registered next to them:

``IWAE``, ``RenyiELBO``
    the importance-weighted bound with ``num_particles`` = K vectorized samples
    (Burda et al. 2016) and its Rényi generalisation (Li & Turner 2016).
``FreeBits_ELBO``
    the ELBO with the closed-form KL of each latent dimension charged at least
    ``free_bits`` nats (Kingma et al. 2016).
``InfoVAE_ELBO``
    the ELBO plus an MMD penalty between the aggregate posterior and the prior
    (Zhao et al. 2017).
``TCVAE_ELBO``
    the beta-TCVAE objective (Chen et al. 2018): the KL term split into index-code
    mutual information, total correlation and dimension-wise KL, each weighted.

Training on them reports the true ELBO (``last_elbo``); evaluation always scores the
true ELBO and the IWAE log-likelihood.

References
----------
- Kingma & Welling (2014), Auto-Encoding Variational Bayes.
- Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders.
- Kingma et al. (2016), Improved Variational Inference with Inverse Autoregressive Flow.
- Zhao, Song & Ermon (2017), InfoVAE: Information Maximizing Variational Autoencoders.
- Chen, Li, Grosse & Duvenaud (2018), Isolating Sources of Disentanglement in Variational
  Autoencoders.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import ELBO, JitTrace_ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.util import warn_if_nan
from torch.distributions import kl_divergence

from pyrovae.errors import ConfigError
from pyrovae.registry import Registry

__all__ = [
    "ELBOS",
    "IWAE",
    "KERNELS",
    "TCVAEELBO",
    "TC_ESTIMATORS",
    "FreeBitsELBO",
    "InfoVAEELBO",
    "RenyiObjective",
    "TraceObjective",
    "elbo_context",
    "log_aggregate_posterior",
    "make_elbo",
    "mmd",
]

ELBOS: Registry[type[ELBO]] = Registry("ELBO")
ELBOS.register("Trace_ELBO")(Trace_ELBO)
ELBOS.register("TraceMeanField_ELBO")(TraceMeanField_ELBO)
ELBOS.register("JitTrace_ELBO")(JitTrace_ELBO)


def make_elbo(
    name: str,
    num_particles: int = 1,
    vectorize_particles: bool | None = None,
    options: Mapping[str, Any] | None = None,
    **flat: Any,
) -> ELBO:
    """The ELBO registered as ``name`` with its checked ``options`` (``free_bits`` of
    ``FreeBits_ELBO``, ``renyi_alpha`` of ``RenyiELBO``, ...; given as a mapping or as
    keywords). Our models have one plate, hence ``max_plate_nesting=1``;
    ``vectorize_particles=None`` keeps the objective's own default (the IWAE and Rényi
    bounds always vectorize, and refuse ``False``).
    """
    options = {**(options or {}), **flat}
    context: dict[str, Any] = {"num_particles": num_particles, "max_plate_nesting": 1}
    if vectorize_particles is not None:
        context["vectorize_particles"] = vectorize_particles
    if name.startswith("Jit"):
        context["ignore_jit_warnings"] = True
    return ELBOS.build(name, options, **context)


@contextlib.contextmanager
def elbo_context(name: str) -> Iterator[None]:
    """The settings an ELBO needs while it trains and evaluates.

    Pyro's JIT (``pyro.ops.jit``) finds parameters through the global param store,
    so JIT ELBOs run with ``module_local_params=False`` and a cleared store; every
    other ELBO uses pyrovae's default of module-local parameters. The JIT's trace
    fixes the minibatch size, which is why training drops a last, smaller batch.
    """
    if not name.startswith("Jit"):
        yield
        return
    with pyro.settings.context(module_local_params=False), warnings.catch_warnings():
        # torch deprecates torch.jit.trace in favour of torch.compile; Pyro still uses it
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
        warnings.filterwarnings("ignore", message=".*torch.jit.trace.*")
        pyro.clear_param_store()
        try:
            yield
        finally:
            pyro.clear_param_store()


# --- objectives beyond Pyro's own ELBOs ---------------------------------------------


def _plate_scale(site: dict[str, Any]) -> float:
    """The minibatch scale ``N / B`` that the site's subsampled plates apply."""
    scale = 1.0
    for frame in site["cond_indep_stack"]:
        if frame.full_size is not None and frame.size:
            scale *= frame.full_size / frame.size
    return scale


def _data_size(site: dict[str, Any]) -> int:
    """How many data points the site's data plate stands for (``N``)."""
    size = 1
    for frame in site["cond_indep_stack"]:
        if frame.name != "num_particles_vectorized":
            size *= frame.full_size if frame.full_size is not None else frame.size
    return size


def _sample_sites(trace: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(name, site) for name, site in trace.nodes.items() if site["type"] == "sample"]


def _check_reparameterized(guide_trace: Any, objective: str) -> None:
    for name, site in _sample_sites(guide_trace):
        if not getattr(site["fn"], "has_rsample", False):
            raise ConfigError(
                f"{objective} needs a reparameterized guide; site {name!r} draws from "
                f"{type(site['fn']).__name__}, which has no rsample"
            )


def _true_elbo(model_trace: Any, guide_trace: Any) -> torch.Tensor:
    """The unweighted ELBO of the traces (no KL weight), scaled to the data set (detached)."""
    total: Any = 0.0
    for sign, trace in ((1.0, model_trace), (-1.0, guide_trace)):
        for _, site in _sample_sites(trace):
            log_prob = site["unscaled_log_prob"] * _plate_scale(site)
            total = total + sign * log_prob.detach().sum()
    return total


def _log_prob_without(latent: set[str], model_trace: Any, guide_trace: Any) -> Any:
    """The model's minus the guide's scaled log-densities, the sites ``latent`` left out."""
    total: Any = 0.0
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for name, site in _sample_sites(trace):
            if name not in latent:
                total = total + sign * site["log_prob_sum"]
    return total


def _factorized_normal(fn: dist.Distribution) -> dist.Normal | None:
    while isinstance(fn, dist.Independent):
        fn = fn.base_dist
    return fn if isinstance(fn, dist.Normal) else None


class TraceObjective(Trace_ELBO):
    """Base class of objectives computed from a model and a guide trace, one particle at a time.

    Subclasses implement :meth:`particle_loss`; :meth:`differentiable_loss` averages
    it over ``num_particles`` (drawn one by one or in one vectorized trace), so
    ``objective(model, guide)`` is an :class:`~pyro.infer.elbo.ELBOModule` like any
    Pyro ELBO. Every call also stores ``last_elbo``, the true ELBO of the same draws
    (without the KL weight or any penalty, scaled to the data set, detached), which
    the trainer reports as ``train_elbo``, and ``last_stats``, what a subclass reports
    besides (name -> detached mean per point; the trainer logs ``train_<name>``).
    """

    name = "objective"

    def particle_loss(self, model_trace: Any, guide_trace: Any) -> torch.Tensor:
        """The loss of one trace pair (summed over a vectorized particle dimension)."""
        raise NotImplementedError  # abstract

    def differentiable_loss(
        self, model: Any, guide: Any, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        loss = 0.0
        elbo = 0.0
        self.last_stats: dict[str, torch.Tensor] = {}
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            _check_reparameterized(guide_trace, self.name)
            loss = loss + self.particle_loss(model_trace, guide_trace) / self.num_particles
            elbo = elbo + _true_elbo(model_trace, guide_trace) / self.num_particles
        self.last_elbo = elbo
        warn_if_nan(loss, "loss")
        return loss

    @torch.no_grad()
    def loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return float(loss.detach())


@ELBOS.register("FreeBits_ELBO")
class FreeBitsELBO(TraceObjective):
    r"""The ELBO with a KL floor of :math:`\lambda` nats per latent dimension (free bits).

    For a minibatch :math:`B` of :math:`N` points, with the closed-form
    :math:`\mathrm{KL}_{nd} = \mathrm{KL}(q(z_d \mid x_n) \,\|\, p(z_d))` of a
    diagonal Gaussian guide and a prior that factorises over dimensions,

    .. math::

        \mathcal{L}_\lambda = \frac{N}{|B|} \sum_{n \in B} E_q[\log p(x_n \mid z_n)]
            - \beta N \sum_{d=1}^D \max\Big(\lambda,
              \frac{1}{|B|} \sum_{n \in B} \mathrm{KL}_{nd}\Big)

    i.e. the KL of each dimension, averaged over the minibatch, is charged at least
    :math:`\lambda`: below the floor its gradient is zero, so the optimizer gains
    nothing by pushing that dimension's posterior further onto the prior. This is the
    per-dimension, minibatch-averaged variant of the free bits of Kingma et al. (2016)
    (they group dimensions; a group of one is used here). The reconstruction term is
    a Monte Carlo estimate with ``num_particles`` draws.

    Training maximises :math:`\mathcal{L}_\lambda \le` ELBO only where every dimension
    is above the floor; the reported ``train_elbo`` and every evaluation use the true
    ELBO.

    With several latent sites (a hierarchical VAE) each site's dimensions get the floor;
    a conditional prior (:math:`p(z_1 \mid z_2)`) is taken at the guide's draw of its
    parents.

    Parameters
    ----------
    free_bits : float
        FreeBits_ELBO: KL floor lambda in nats per latent dimension (>= 0; 0 is the ELBO
        with a closed-form KL).

    References
    ----------
    - Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling (2016), Improved
      Variational Inference with Inverse Autoregressive Flow.
    """

    name = "FreeBits_ELBO"

    def __init__(
        self,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        *,
        free_bits: float = 0.25,
    ) -> None:
        if free_bits < 0:
            raise ConfigError(f"free_bits must be >= 0 nats per dimension, got {free_bits}")
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
        )
        self.free_bits = float(free_bits)

    def kl_per_dimension(
        self, model_trace: Any, guide_trace: Any, site: str
    ) -> tuple[torch.Tensor, Any]:
        """``(KL of every point and dimension, shape (..., D), site scale)`` in closed form."""
        guide_site = guide_trace.nodes[site]
        q = _factorized_normal(guide_site["fn"])
        p = _factorized_normal(model_trace.nodes[site]["fn"])
        if q is None or p is None:
            raise ConfigError(
                "free bits need a diagonal Gaussian guide (--guide normal) and a prior that "
                "factorises over dimensions (--prior normal or learned-normal); got guide "
                f"{type(guide_site['fn']).__name__} and prior "
                f"{type(model_trace.nodes[site]['fn']).__name__} at site {site!r}"
            )
        # a KL weight of 0 masks the site (see pyrovae.model.base.kl_weight)
        scale = 0.0 if guide_site["mask"] is False else guide_site["scale"]
        return kl_divergence(q, p), scale

    def particle_loss(self, model_trace: Any, guide_trace: Any) -> torch.Tensor:
        latent = {name for name, _ in _sample_sites(guide_trace)}
        elbo = _log_prob_without(latent, model_trace, guide_trace)
        for name in latent:
            kl, scale = self.kl_per_dimension(model_trace, guide_trace, name)
            kl = kl.reshape(-1, kl.shape[-1])  # (points [x particles], D)
            charged = torch.clamp(kl.mean(0), min=self.free_bits).sum() * len(kl)
            elbo = elbo - scale * charged
        return -elbo


def _rbf_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.exp(-torch.cdist(a, b).pow(2) / (2.0 * a.shape[-1]))


def _imq_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    c = 2.0 * a.shape[-1]
    return c / (c + torch.cdist(a, b).pow(2))


#: kernels k(a, b) for the MMD, on batches of shape (n, D) and (m, D)
KERNELS: Registry = Registry("MMD kernel")
KERNELS.register("rbf")(_rbf_kernel)
KERNELS.register("imq")(_imq_kernel)


def mmd(a: torch.Tensor, b: torch.Tensor, kernel: str = "rbf") -> torch.Tensor:
    r"""Unbiased estimate of the squared maximum mean discrepancy between two samples.

    .. math::

        \widehat{\mathrm{MMD}}^2 = \frac{1}{n(n-1)} \sum_{i \ne j} k(a_i, a_j)
          + \frac{1}{m(m-1)} \sum_{i \ne j} k(b_i, b_j)
          - \frac{2}{nm} \sum_{i, j} k(a_i, b_j)

    ``rbf``: :math:`k(a, b) = \exp(-\|a - b\|^2 / 2D)`; ``imq`` (inverse multiquadric):
    :math:`k(a, b) = C / (C + \|a - b\|^2)` with :math:`C = 2D`, for :math:`D`-dimensional
    points (Gretton et al. 2012; Tolstikhin et al. 2018 for the IMQ kernel).
    """
    k = KERNELS[kernel]
    n, m = len(a), len(b)
    if n < 2 or m < 2:
        raise ConfigError("the MMD needs at least 2 points in each sample (a batch size >= 2)")
    kaa, kbb = k(a, a), k(b, b)
    return (
        (kaa.sum() - kaa.diagonal().sum()) / (n * (n - 1))
        + (kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1))
        - 2.0 * k(a, b).mean()
    )


@ELBOS.register("InfoVAE_ELBO")
class InfoVAEELBO(TraceObjective):
    r"""The InfoVAE objective (Zhao et al. 2017) with the MMD divergence (MMD-VAE).

    .. math::

        \mathcal{L}_\text{InfoVAE} = E_{p_D(x)}\Big[E_{q(z \mid x)}[\log p(x \mid z)]
            - (1 - \alpha)\,\beta\,\mathrm{KL}(q(z \mid x) \,\|\, p(z))\Big]
            - (\alpha + \lambda - 1)\,\mathrm{MMD}^2(q(z), p(z))

    scaled to the data set (times :math:`N`). The aggregate posterior :math:`q(z)` is
    represented by the minibatch's draws :math:`z_n \sim q(z \mid x_n)` and the prior
    by as many fresh draws from :math:`p(z)`; the KL term is Pyro's Monte Carlo
    estimate, as in ``Trace_ELBO``. :math:`\alpha = 0, \lambda = 1` is the ELBO;
    :math:`\alpha = 1` drops the per-point KL and keeps only the MMD (the MMD-VAE).
    The MMD estimate is :func:`mmd` (unbiased, RBF or IMQ kernel).

    A model with several latent sites is refused: the MMD compares the aggregate
    posterior of one code with its prior.

    Parameters
    ----------
    mmd_alpha : float
        InfoVAE_ELBO: alpha (the KL term is weighted 1 - alpha).
    mmd_lambda : float
        InfoVAE_ELBO: lambda (the MMD weight is alpha + lambda - 1; alpha + lambda >= 1,
        so the divergence is penalised, not rewarded).
    mmd_kernel : str
        InfoVAE_ELBO: kernel of the MMD (rbf or imq).

    References
    ----------
    - Zhao, Song & Ermon (2017), InfoVAE: Information Maximizing Variational
      Autoencoders.
    - Gretton, Borgwardt, Rasch, Schölkopf & Smola (2012), A Kernel Two-Sample Test.
    """

    name = "InfoVAE_ELBO"

    option_choices: ClassVar[dict[str, tuple[str, ...]]] = {"mmd_kernel": tuple(KERNELS)}

    def __init__(
        self,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        *,
        mmd_alpha: float = 0.0,
        mmd_lambda: float = 1000.0,
        mmd_kernel: str = "rbf",
    ) -> None:
        if mmd_alpha + mmd_lambda < 1:
            raise ConfigError(
                f"InfoVAE needs mmd_alpha + mmd_lambda >= 1 (else the MMD is rewarded), got "
                f"{mmd_alpha} + {mmd_lambda}"
            )
        KERNELS[mmd_kernel]  # unknown names fail here, with the choices
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
        )
        self.alpha = float(mmd_alpha)
        self.lambda_ = float(mmd_lambda)
        self.kernel = mmd_kernel

    def particle_loss(self, model_trace: Any, guide_trace: Any) -> torch.Tensor:
        latent = [name for name, _ in _sample_sites(guide_trace)]
        if len(latent) != 1:
            raise ConfigError(
                f"InfoVAE_ELBO compares one code with its prior; this model has the latent "
                f"sites {', '.join(latent)}: use another --elbo"
            )
        elbo = 0.0
        for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
            for name, site in _sample_sites(trace):
                weight = 1.0 - self.alpha if name in latent else 1.0
                elbo = elbo + sign * weight * site["log_prob_sum"]
        site = model_trace.nodes[latent[0]]
        dim = site["fn"].event_shape.numel()
        zq = site["value"].reshape(-1, dim)
        zp = site["fn"].sample().reshape(-1, dim).detach()
        particles = self.num_particles if self.vectorize_particles else 1
        penalty = (self.alpha + self.lambda_ - 1.0) * _data_size(site) * particles
        return -(elbo - penalty * mmd(zq, zp, self.kernel))


#: ``tc_estimator``: name -> log importance weights ``(B, B)`` of q(z_i | x_j) in the
#: minibatch estimate q(z_i) ~ sum_j w_ij q(z_i | x_j), for a minibatch of B of N points
TC_ESTIMATORS: Registry = Registry("TC estimator")


@TC_ESTIMATORS.register("mws")
def _minibatch_weighted(batch: int, num_data: int) -> torch.Tensor:
    """Minibatch-weighted sampling (Chen et al. 2018, eq. S5): every w_ij = 1 / (N B)."""
    return torch.full((batch, batch), -math.log(num_data * batch), dtype=torch.float64)


@TC_ESTIMATORS.register("mss")
def _minibatch_stratified(batch: int, num_data: int) -> torch.Tensor:
    """Minibatch stratified sampling: w_ii = 1 / N for the point's own x_i, and
    w_ij = (N - 1) / (N (B - 1)) for the B - 1 others, which stand for the other N - 1."""
    others = math.log((num_data - 1) / (num_data * (batch - 1)))
    weights = torch.full((batch, batch), others, dtype=torch.float64)
    return weights.fill_diagonal_(-math.log(num_data))


def log_aggregate_posterior(
    z: torch.Tensor,
    loc: torch.Tensor,
    scale: torch.Tensor,
    num_data: int,
    estimator: str = "mws",
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Minibatch estimates of :math:`\log q(z_i)` and :math:`\sum_d \log q(z_{id})` for each draw.

    :math:`q(z) = \frac{1}{N} \sum_n q(z \mid x_n)` is the aggregate posterior of a diagonal
    Gaussian guide over the :math:`N` training points; a minibatch of :math:`B` of them
    estimates it at each of its draws :math:`z_i \sim q(z \mid x_i)` as

    .. math::

        \log q(z_i) \approx \log \sum_{j=1}^B w_{ij}\, q(z_i \mid x_j), \qquad
        \log q(z_{id}) \approx \log \sum_{j=1}^B w_{ij}\, q(z_{id} \mid x_j)

    with the weights of :data:`TC_ESTIMATORS`. ``mws`` (all :math:`1 / NB`, as in Chen et
    al.'s paper and code) is low by between :math:`\log B` (posteriors that do not overlap)
    and :math:`\log N` (posteriors that overlap, e.g. of an inactive dimension) per density:
    once in the joint, :math:`D` times in the marginals. ``mss`` (:math:`1/N` for the own
    point and :math:`(N-1)/(N(B-1))` for the others) is an unbiased estimate of
    :math:`q(z_i)` when the others are a uniform draw from the rest of the data; its log is
    still biased low, most where sharp posteriors have no neighbours in the minibatch.

    Parameters
    ----------
    z, loc, scale : torch.Tensor
        The draws and the guide's means and standard deviations, shape ``(..., B, D)``.
    num_data : int
        N, the number of training points.
    estimator : str
        ``mws`` or ``mss``.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        The joint and the sum of the marginal log-densities, each of shape ``(..., B)``.
    """
    # log q(z_id | x_j) for every draw i, point j and dimension d: shape (..., B_i, B_j, D)
    log_q = dist.Normal(loc.unsqueeze(-3), scale.unsqueeze(-3)).log_prob(z.unsqueeze(-2))
    log_w = TC_ESTIMATORS[estimator](z.shape[-2], num_data).to(log_q)
    joint = torch.logsumexp(log_q.sum(-1) + log_w, dim=-1)
    marginals = torch.logsumexp(log_q + log_w.unsqueeze(-1), dim=-2).sum(-1)
    return joint, marginals


@ELBOS.register("TCVAE_ELBO")
class TCVAEELBO(TraceObjective):
    r"""The beta-TCVAE objective (Chen et al. 2018): the KL term split in three, each weighted.

    With the aggregate posterior :math:`q(z)` and its marginals :math:`q(z_d)`, the KL term
    averaged over the data is

    .. math::

        E_{p(x)}[\mathrm{KL}(q(z \mid x) \,\|\, p(z))] =
        \underbrace{E[\log q(z \mid x) - \log q(z)]}_{\text{index-code MI}}
        + \underbrace{E[\log q(z) - \textstyle\sum_d \log q(z_d)]}_{\text{total correlation}}
        + \underbrace{E[\textstyle\sum_d \log q(z_d) - \log p(z)]}_{\text{dimension-wise KL}}

    and the objective is

    .. math::

        \mathcal{L} = N \, E_{B}\Big[\log p(x_i \mid z_i) - \beta_t \big(\alpha\,\mathrm{MI}_i
            + \beta\,\mathrm{TC}_i + \gamma\,\mathrm{KL}^{\mathrm{dim}}_i\big)\Big]

    per draw :math:`z_i \sim q(z \mid x_i)`, with :math:`\log q(z_i)` and
    :math:`\sum_d \log q(z_{id})` estimated from the minibatch by
    :func:`log_aggregate_posterior` (``tc_estimator``), :math:`\beta_t` the KL schedule's
    weight. The three terms sum to :math:`\log q(z_i \mid x_i) - \log p(z_i)` whatever the
    estimator, so :math:`\alpha = \beta = \gamma = 1` is ``Trace_ELBO``; Chen et al.
    raise only the TC weight :math:`\beta`. Each step also reports the minibatch's mean
    ``mi``, ``tc`` and ``dim_kl`` per point (``train_mi``, ``train_tc``,
    ``train_dim_kl`` in ``metrics.jsonl``). Their sum is exact, their split is not: with
    ``mws`` the TC carries an offset between :math:`(D-1)\log B` and :math:`(D-1)\log N`
    and the dimension-wise KL can come out negative (see :func:`log_aggregate_posterior`);
    the offsets are constants per step, so the gradients are those of the paper's
    estimator. Read the logged split as a training signal, not as nats of each term.

    It needs one latent site with a diagonal Gaussian guide (``--guide normal``; any prior)
    and minibatches of at least 2 points.

    Parameters
    ----------
    tc_weight : float
        TCVAE_ELBO: beta, the weight of the total correlation (>= 0; 1 is the ELBO).
    mi_weight : float
        TCVAE_ELBO: alpha, the weight of the index-code mutual information (>= 0).
    dim_kl_weight : float
        TCVAE_ELBO: gamma, the weight of the dimension-wise KL (>= 0).
    tc_estimator : str
        TCVAE_ELBO: minibatch estimate of q(z): mws (minibatch-weighted sampling, the
        paper's) or mss (minibatch stratified sampling).

    References
    ----------
    - Chen, Li, Grosse & Duvenaud (2018), Isolating Sources of Disentanglement in
      Variational Autoencoders.
    """

    name = "TCVAE_ELBO"

    option_choices: ClassVar[dict[str, tuple[str, ...]]] = {"tc_estimator": tuple(TC_ESTIMATORS)}

    def __init__(
        self,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        *,
        tc_weight: float = 6.0,
        mi_weight: float = 1.0,
        dim_kl_weight: float = 1.0,
        tc_estimator: str = "mws",
    ) -> None:
        weights = {"tc_weight": tc_weight, "mi_weight": mi_weight, "dim_kl_weight": dim_kl_weight}
        for key, value in weights.items():
            if value < 0:
                raise ConfigError(f"{key} must be >= 0, got {value}")
        TC_ESTIMATORS[tc_estimator]  # unknown names fail here, with the choices
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
        )
        self.weights = {"mi": mi_weight, "tc": tc_weight, "dim_kl": dim_kl_weight}
        self.estimator = tc_estimator

    def decompose(self, model_trace: Any, guide_trace: Any) -> dict[str, torch.Tensor]:
        """The index-code MI, total correlation and dimension-wise KL of every draw,
        shape ``([particles,] B)`` (in nats, unscaled)."""
        latent = [name for name, _ in _sample_sites(guide_trace)]
        if len(latent) != 1:
            raise ConfigError(
                f"TCVAE_ELBO splits the KL of one code; this model has the latent sites "
                f"{', '.join(latent)}: use another --elbo"
            )
        guide_site, prior_site = guide_trace.nodes[latent[0]], model_trace.nodes[latent[0]]
        q = _factorized_normal(guide_site["fn"])
        if q is None:
            raise ConfigError(
                "TCVAE_ELBO needs the marginals of q(z|x), a diagonal Gaussian guide "
                f"(--guide normal); got {type(guide_site['fn']).__name__}"
            )
        z = guide_site["value"]
        if z.shape[-2] < 2:
            raise ConfigError("TCVAE_ELBO estimates q(z) from the minibatch: use --batch-size >= 2")
        loc, scale, _ = torch.broadcast_tensors(q.loc, q.scale, z)
        joint, marginals = log_aggregate_posterior(
            z, loc, scale, _data_size(prior_site), self.estimator
        )
        return {
            "mi": guide_site["unscaled_log_prob"] - joint,
            "tc": joint - marginals,
            "dim_kl": marginals - prior_site["unscaled_log_prob"],
        }

    def particle_loss(self, model_trace: Any, guide_trace: Any) -> torch.Tensor:
        terms = self.decompose(model_trace, guide_trace)
        latent = {name for name, _ in _sample_sites(guide_trace)}
        elbo = _log_prob_without(latent, model_trace, guide_trace)
        guide_site = guide_trace.nodes[next(iter(latent))]
        # a KL weight of 0 masks the site (see pyrovae.model.base.kl_weight)
        scale = 0.0 if guide_site["mask"] is False else guide_site["scale"]
        penalty = sum(self.weights[key] * term.sum() for key, term in terms.items())
        share = 1.0 if self.vectorize_particles else 1.0 / self.num_particles
        for key, term in terms.items():
            self.last_stats[key] = self.last_stats.get(key, 0.0) + share * term.detach().mean()
        return -(elbo - scale * penalty)


@ELBOS.register("RenyiELBO")
class RenyiObjective(TraceObjective):
    r"""The Rényi bound of order :math:`\alpha` (Li & Turner 2016); :math:`\alpha = 0` is IWAE.

    For each data point, with :math:`K` draws :math:`z_k \sim q(z \mid x)` (one
    vectorized pass) and :math:`\log w_k = \log p(x \mid z_k) + \beta(\log p(z_k) -
    \log q(z_k \mid x))`,

    .. math::

        \mathcal{L}_\alpha(x) = \frac{1}{1 - \alpha}
            \log \frac{1}{K} \sum_{k=1}^K w_k^{1 - \alpha},
        \qquad
        \mathcal{L}_0(x) = \log \frac{1}{K} \sum_{k=1}^K w_k \quad \text{(IWAE)}

    summed over the minibatch and scaled by :math:`N / |B|`. Gradients flow through the
    reparameterized draws (the IWAE gradient of Burda et al.: each particle's gradient
    weighted by its normalized importance weight).

    Pyro's own ``RenyiELBO`` takes the log-mean-exp of weights that already carry the
    minibatch scale :math:`N / |B|` (so with subsampling it is not the IWAE bound of
    each point) and has no ``differentiable_loss`` for ``ELBOModule``; this class
    applies the scale after the log-mean-exp and is a drop-in ``ELBO``.

    Parameters
    ----------
    renyi_alpha : float
        RenyiELBO: order alpha of the bound (0 is IWAE; 1, the ELBO, is refused).

    References
    ----------
    - Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders.
    - Li & Turner (2016), Rényi Divergence Variational Inference.
    """

    name = "RenyiELBO"

    def __init__(
        self,
        num_particles: int = 5,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = True,
        *,
        renyi_alpha: float = 0.0,
    ) -> None:
        if renyi_alpha == 1:
            raise ConfigError("renyi_alpha = 1 is the ELBO; use --elbo Trace_ELBO")
        if num_particles < 2:
            raise ConfigError(
                f"{self.name} with one particle is the ELBO; set --num-particles K >= 2 "
                "(e.g. 5 or 50)"
            )
        if not vectorize_particles:
            raise ConfigError(
                f"{self.name} draws its K particles in one vectorized pass; drop "
                "vectorize_particles = false"
            )
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=True,
        )
        self.alpha = float(renyi_alpha)

    def log_weights(self, model_trace: Any, guide_trace: Any) -> tuple[torch.Tensor, float]:
        """Per-point log weights ``(K, B)`` (KL weight included, minibatch scale removed)
        and the minibatch scale ``N / B``."""
        log_w = 0.0
        data_scale = 1.0
        for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
            for _, site in _sample_sites(trace):
                scale = _plate_scale(site)
                data_scale = max(data_scale, scale)
                log_w = log_w + sign * site["log_prob"] / scale
        return torch.as_tensor(log_w).reshape(self.num_particles, -1), data_scale

    def particle_loss(self, model_trace: Any, guide_trace: Any) -> torch.Tensor:
        log_w, data_scale = self.log_weights(model_trace, guide_trace)
        a = 1.0 - self.alpha
        bound = (torch.logsumexp(a * log_w, dim=0) - math.log(self.num_particles)) / a
        # the base class divides by num_particles: this one trace holds all of them
        return -data_scale * bound.sum() * self.num_particles


@ELBOS.register("IWAE")
class IWAE(RenyiObjective):
    r"""The importance-weighted bound of Burda et al. (2016) with ``num_particles`` = K samples:
    :class:`RenyiObjective` with :math:`\alpha = 0`,

    .. math::

        \mathcal{L}_K(x) = E\Big[\log \frac{1}{K} \sum_{k=1}^K
            \frac{p(x, z_k)}{q(z_k \mid x)}\Big] \ge \mathrm{ELBO}(x)

    References
    ----------
    - Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders.
    """

    name = "IWAE"

    def __init__(
        self,
        num_particles: int = 5,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = True,
    ) -> None:
        super().__init__(num_particles, max_plate_nesting, vectorize_particles)
