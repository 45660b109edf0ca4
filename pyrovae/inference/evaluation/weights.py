r"""Importance weights of a VAE's guide, computed once for every reader.

For a data point :math:`x` and :math:`z_k \sim q(z \mid x)`, :math:`k = 1, \dots, K`,

.. math::

    \log w_k = \log p(x, z_k) - \log q(z_k \mid x)
    = \underbrace{\log p(x \mid z_k)}_{\text{likelihood}}
    + \underbrace{\log p(z_k) - \log q(z_k \mid x)}_{\text{minus a one-draw KL estimate}}

from Pyro traces: the guide traced, the model replayed on its draws. The held-out ELBO
and the IWAE bound (:mod:`pyrovae.inference.evaluation.metrics`), the anomaly scores and
inpainting (:mod:`pyrovae.inference.applications`) and the inference gaps
(:mod:`pyrovae.inference.inspection.gaps`) all read :func:`importance_weights`.

This module also holds the one evaluation-mode context (:func:`eval_mode`), the one
memory rule (:func:`chunk_size`: at most ``CHUNK_ELEMENTS`` values of the data's size
in one pass) and the one batching path (:func:`batches`).

References
----------
- Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample

from pyrovae.inference.sites import require
from pyrovae.progress import progress_bar

__all__ = [
    "CHUNK_ELEMENTS",
    "ImportanceWeights",
    "batches",
    "chunk_size",
    "eval_mode",
    "importance_weights",
    "log_mean_exp",
    "log_weights",
    "seeded",
]

#: the most values of the data's size one pass holds (items x particles x pixels; 64 MB
#: of float32, a few hundred MB with the networks' activations)
CHUNK_ELEMENTS = 2**24


def chunk_size(total: int, elements_per_unit: int) -> int:
    """How many units (particles, items, rows) of ``elements_per_unit`` values one pass
    takes: as many as fit in :data:`CHUNK_ELEMENTS`, at least 1, at most ``total``."""
    return max(1, min(total, CHUNK_ELEMENTS // max(1, elements_per_unit)))


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Put ``module`` in eval mode for a while (dropout and batch norm in inference
    behaviour), then back in the mode it was in."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Draw from torch's random streams of the CPU and of ``device`` reset to ``seed`` for
    a while, then put them back as they were: the block's draws are the same every time,
    and the caller's streams go on as if nothing had been drawn. Other GPUs' streams are
    not touched (``torch.manual_seed`` would reseed them all, and ``fork_rng`` put back
    only those it was told)."""
    device = torch.device(device)
    devices = []
    if device.type == "cuda":
        devices = [torch.cuda.current_device() if device.index is None else device.index]
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        for index in devices:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


def log_mean_exp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    r""":math:`\log \frac{1}{K} \sum_k w_k` of log weights along ``dim`` (K of them): the
    importance-weighted bound :math:`\mathcal{L}_K`."""
    return torch.logsumexp(log_w, dim=dim) - math.log(log_w.shape[dim])


def batches(
    x: torch.Tensor,
    batch_size: int,
    y: torch.Tensor | None = None,
    *,
    desc: str | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """``(x, y)`` slices of ``batch_size`` items (``y`` slices are ``None`` without labels).

    With ``desc``, a progress bar labelled ``desc`` counts the items
    (:func:`pyrovae.progress.progress_bar`: shown only inside a
    :func:`pyrovae.progress.enabled` block, on a terminal).
    """
    bar = progress_bar(total=len(x), desc=desc, unit="item") if desc is not None else None
    try:
        for start in range(0, len(x), batch_size):
            end = start + batch_size
            yield x[start:end], None if y is None else y[start:end]
            if bar is not None:
                bar.update(min(end, len(x)) - start)
    finally:
        if bar is not None:
            bar.close()


@dataclass(frozen=True)
class ImportanceWeights:
    r"""The terms of the log weights, each of shape ``(K, N)`` (particles, items).

    Attributes
    ----------
    log_joint : torch.Tensor
        :math:`\log p(x_{obs}, z_k)`: every site of the model that the guide drew or that
        is observed.
    log_likelihood : torch.Tensor
        :math:`\log p(x_{obs} \mid z_k)`: the observed sites of the model.
    log_prior : torch.Tensor
        :math:`\log p(z_k)`: the model's latent sites (every one, for several).
    log_guide : torch.Tensor
        :math:`\log q(z_k \mid x)`.
    mean : torch.Tensor or None
        :math:`E[x \mid z_k]`, ``(K, N, *event_shape)``, when asked for.
    """

    log_joint: torch.Tensor
    log_likelihood: torch.Tensor
    log_prior: torch.Tensor
    log_guide: torch.Tensor
    mean: torch.Tensor | None = None

    @property
    def log_weight(self) -> torch.Tensor:
        r""":math:`\log w_k = \log p(x_{obs}, z_k) - \log q(z_k \mid x)`."""
        return self.log_joint - self.log_guide

    @property
    def log_ratio(self) -> torch.Tensor:
        r""":math:`\log p(z_k) - \log q(z_k \mid x)`, minus a one-draw estimate of the KL."""
        return self.log_prior - self.log_guide


def _log_density(site: dict) -> torch.Tensor:
    # the true density: no minibatch or KL-weight scale, but the observation mask applied
    # (obs_mask masks x_observed's "mask", which only "log_prob" carries)
    return scale_and_mask(site["unscaled_log_prob"], 1.0, site["mask"])


def _one_pass(
    vae,
    x: torch.Tensor,
    size: int,
    labels: dict[str, torch.Tensor],
    guide: Callable,
    mask: torch.Tensor | None,
    want_mean: bool,
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Terms of ``size`` particles: in a vectorized plate, or as ``size`` copies of the
    batch when a mask puts the pixel site outside the data plate (no plate can hold it)."""
    batch, event = len(x), x.shape[1:]
    if mask is None:
        with pyro.plate("particles", size, dim=-2):
            guide_trace = poutine.trace(guide).get_trace(x, **labels)
            model = poutine.replay(vae.model, trace=guide_trace)
            model_trace = poutine.trace(model).get_trace(x, **labels)
    else:
        ones = [1] * len(event)
        copies = x.repeat(size, *ones)  # (size * B, *event), particle-major
        labels = {k: v.repeat(size, *[1] * (v.dim() - 1)) for k, v in labels.items()}
        guide_trace = poutine.trace(guide).get_trace(copies, **labels)
        model = poutine.replay(vae.model, trace=guide_trace)
        model_trace = poutine.trace(model).get_trace(
            copies, mask=mask.repeat(size, *ones), **labels
        )

    def per_item(log_prob: torch.Tensor) -> torch.Tensor:
        if mask is None:
            return log_prob.expand(size, batch)
        # the pixel site carries a log-density per pixel: sum them per item
        return log_prob.reshape(size, batch, -1).sum(-1)

    terms = {"joint": 0.0, "likelihood": 0.0, "prior": 0.0, "guide": 0.0}
    for trace, is_model in ((model_trace, True), (guide_trace, False)):
        trace.compute_log_prob()
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if site["infer"].get("_deterministic"):
                continue  # a record of a value (obs_mask's merged "x"), no density
            if is_model and not site["is_observed"] and name not in guide_trace:
                # drawn from the model itself (x_unobserved, the missing pixels): part of
                # the proposal, so its density cancels from the weight
                continue
            log_p = per_item(_log_density(site))
            if not is_model:
                terms["guide"] = terms["guide"] + log_p
                continue
            terms["joint"] = terms["joint"] + log_p
            kind = "likelihood" if site["is_observed"] else "prior"
            terms[kind] = terms[kind] + log_p
    zero = torch.zeros(size, batch, device=x.device)
    values = [torch.as_tensor(terms[k]).expand_as(zero) for k in terms]
    mean = None
    if want_mean:
        mean = vae.model.likelihood.mean(model_trace.nodes["_RETURN"]["value"])
        mean = mean.reshape(size, batch, *event)
    return values, mean


@torch.no_grad()
def importance_weights(
    vae,
    x: torch.Tensor,
    num_samples: int = 1,
    y: torch.Tensor | None = None,
    *,
    guide: Callable | None = None,
    mask: torch.Tensor | None = None,
    seed: int | None = None,
    mean: bool = False,
) -> ImportanceWeights:
    r"""The log importance weights of ``num_samples`` draws per item and their terms.

    Computed for the true joint density (no KL weight :math:`\beta`, no minibatch
    scale), ``num_samples`` particles in a vectorized plate, in chunks of
    :func:`chunk_size` particles so ``K = 5000`` fits in memory.

    Parameters
    ----------
    vae : VAE
        A VAE (``vae.model`` and ``vae.guide`` share a signature).
    x : torch.Tensor
        Items ``(N, *event_shape)``.
    num_samples : int
        :math:`K`, draws of the guide per item.
    y : torch.Tensor, optional
        Labels (one per item), passed to the model and guide of a VAE that takes them
        (conditional and semi-supervised variants).
    guide : callable, optional
        The proposal :math:`q` instead of the VAE's amortized guide (any guide with the
        model's signature, e.g. a :class:`~pyrovae.guides.LocalNormalGuide`).
    mask : torch.Tensor, optional
        Boolean, the shape of ``x``, ``True`` where a pixel is observed: the model then
        conditions on the observed pixels alone (its ``mask=`` argument, Pyro's
        ``obs_mask``), :math:`\log p(x_{obs} \mid z_k)`. The missing pixels
        (``x_unobserved``) are drawn from :math:`p(x_{miss} \mid z_k)`, so the proposal
        is :math:`q(z \mid x)\,p(x_{miss} \mid z)` and their density cancels. The ``K``
        draws are then ``K`` copies of the batch, as the pixel site lies outside the
        data plate.
    seed : int, optional
        Draw with the random stream reset to ``seed`` (and put back afterwards): two
        guides given one seed reparameterize the same standard-normal noise (common
        random numbers).
    mean : bool
        Also return :math:`E[x \mid z_k]`.

    Returns
    -------
    ImportanceWeights
        ``log_weight`` and its terms, each ``(K, N)``.
    """
    require(vae, "likelihood", "the ELBO and the IWAE log p(x)")
    if seed is not None:
        with seeded(seed, x.device):
            return importance_weights(vae, x, num_samples, y, guide=guide, mask=mask, mean=mean)
    labels = {} if y is None else {"y": y}
    guide = vae.guide if guide is None else guide
    chunk = chunk_size(num_samples, x.numel())
    parts, means = [], []
    for start in range(0, num_samples, chunk):
        values, chunk_mean = _one_pass(
            vae, x, min(chunk, num_samples - start), labels, guide, mask, mean
        )
        parts.append(values)
        means.append(chunk_mean)
    joint, likelihood, prior, guide_term = (torch.cat(t) for t in zip(*parts))
    return ImportanceWeights(
        log_joint=joint,
        log_likelihood=likelihood,
        log_prior=prior,
        log_guide=guide_term,
        mean=torch.cat(means) if mean else None,
    )


def log_weights(
    vae,
    x: torch.Tensor,
    num_samples: int = 1,
    y: torch.Tensor | None = None,
    *,
    guide: Callable | None = None,
) -> torch.Tensor:
    r""":math:`\log p(x, z_k) - \log q(z_k \mid x)`, shape ``(K, len(x))``: the
    ``log_weight`` of :func:`importance_weights`."""
    return importance_weights(vae, x, num_samples, y, guide=guide).log_weight
