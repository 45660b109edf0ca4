r"""The SVI step compiled whole (``--compile``): Pyro's ``Trace_ELBO`` (or
``TraceMeanField_ELBO``) and its gradient as one graph of tensor operations.

An eager step runs the model and the guide under Pyro's handler stack: every
``pyro.sample`` passes through a dozen Python messengers, and the trace and the ELBO are
assembled in Python, per step. The tensor operations those steps perform are the same
every time the minibatch has the same structure (its shapes, the data plate's scale
:math:`N / B`, which latent sites have KL weight 0). So, once per structure:

1. **Trace.** :func:`torch.fx.experimental.proxy_tensor.make_fx` runs the eager estimator
   once (the model and guide run by Pyro's own ``ELBO._get_traces``, then the ELBO summed
   from the two traces, as below) with the parameters as inputs
   (:func:`torch.func.functional_call`) and records the ATen operations it performs, and
   only those: the handler stack, the trace bookkeeping and the Python of the networks
   leave nothing behind. :func:`torch.func.grad_and_value` around it records the backward
   pass in the same graph. The random draws of the guide (``rsample``) are recorded as
   random operations, so every call draws new noise from torch's generator. The KL
   weights enter as tensors, so a KL schedule reuses the graph.
2. **Compile.** :func:`torch.compile` (Inductor) turns the graph into fused kernels
   around the matrix products; on a GPU, ``mode="reduce-overhead"`` replays it as a CUDA
   graph (static shapes).
3. **Step.** Each step calls the compiled graph for the loss and every parameter's
   gradient, sets ``.grad`` and takes the optimizer's step: no autograd graph is built.

Under ``torchrun`` the gradients must pass through DistributedDataParallel's hooks, so
the step calls the compiled *loss* graph (without its backward) through DDP and
differentiates it with autograd (:meth:`CompiledELBO.forward`).

The estimator is the objective's own, computed from the traces Pyro builds:

.. math::

    \text{Trace\_ELBO:}\quad -\mathcal{L} = \sum_{\text{guide sites}} \log q
        - \sum_{\text{model sites}} \log p, \qquad
    \text{TraceMeanField\_ELBO:}\quad -\mathcal{L} = \sum_{\text{latent}}
        \mathrm{KL}(q \,\|\, p) - \sum_{\text{observed}} \log p,

each site's log-density scaled by its plates and KL weight exactly as in the eager
trace, and averaged over ``num_particles`` (vectorized particles are one plate). The
value and gradient equal Pyro's eager ones up to float rounding (tested); the guide must
be reparameterized (no score-function terms), as our guides are. A model whose Python
branches on tensor values cannot be traced, and ``--compile`` refuses it with the reason.

Compiling takes seconds per structure (training drops an epoch's last, shorter minibatch,
so a run has one; a KL weight reaching 0 makes a second), so it pays on runs of many
steps, not on the seconds-long default run.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import pyro
import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import Trace_ELBO
from pyro.infer.elbo import ELBOModule
from pyro.infer.util import is_identically_zero
from torch import nn
from torch.distributions import kl_divergence
from torch.fx.experimental.proxy_tensor import make_fx

from pyrovae.errors import ConfigError

__all__ = ["BACKENDS", "OBJECTIVES", "CompiledELBO", "negative_elbo"]

logger = logging.getLogger(__name__)

#: how the traced graphs run: Inductor's fused kernels, or the recorded graph as it is
#: (no code generation: for debugging and for exact comparisons with the eager step)
BACKENDS = ("inductor", "eager")

#: the objectives --compile traces
OBJECTIVES = ("Trace_ELBO", "TraceMeanField_ELBO")


def _samples(trace: Any) -> dict[str, dict[str, Any]]:
    """The sample sites of a trace (Pyro's ``_get_traces`` pruned the plates' subsamples)."""
    return {name: site for name, site in trace.nodes.items() if site["type"] == "sample"}


def negative_elbo(elbo: pyro.infer.ELBO, model_trace: Any, guide_trace: Any) -> torch.Tensor:
    """Minus the ELBO estimate of one particle from its traces (log-densities computed), as
    ``elbo`` (``Trace_ELBO`` or ``TraceMeanField_ELBO``) estimates it."""
    model_sites, guide_sites = _samples(model_trace), _samples(guide_trace)
    for name, site in guide_sites.items():
        if not is_identically_zero(site["score_parts"].score_function):
            raise ConfigError(
                f"--compile needs a reparameterized guide; site {name!r} is not "
                f"({type(site['fn']).__name__} has no rsample)"
            )
    loss = 0.0
    if type(elbo) is Trace_ELBO:
        for site in guide_sites.values():
            loss = loss + site["log_prob_sum"]
        for site in model_sites.values():
            loss = loss - site["log_prob_sum"]
        return loss
    for name, site in model_sites.items():  # TraceMeanField_ELBO
        if site["is_observed"]:
            loss = loss - site["log_prob_sum"]
            continue
        q = guide_sites[name]
        try:  # the closed form where torch knows one, as Pyro's estimator does
            kl = kl_divergence(q["fn"], site["fn"])
        except NotImplementedError:
            loss = loss + q["log_prob_sum"] - site["log_prob_sum"]
            continue
        loss = loss + scale_and_mask(kl, q["scale"], q["mask"]).sum()
    for name, q in guide_sites.items():  # auxiliary guide sites
        if name not in model_sites:
            loss = loss + q["log_prob_sum"]
    return loss


class _Estimator(nn.Module):
    """The eager estimator that is traced: ``-ELBO`` of ``model`` and ``guide`` averaged
    over the objective's particles (``forward(kwargs)``)."""

    def __init__(self, loss: ELBOModule) -> None:
        super().__init__()
        self.model, self.guide, self.elbo = loss.model, loss.guide, loss.elbo

    def forward(self, kwargs: dict[str, Any]) -> torch.Tensor:
        total = 0.0
        for model_trace, guide_trace in self.elbo._get_traces(self.model, self.guide, (), kwargs):
            total = total + negative_elbo(self.elbo, model_trace, guide_trace)
        return total / self.elbo.num_particles


def _as_tensor_weights(
    beta: float | Mapping[str, float], device: torch.device
) -> tuple[Any, tuple]:
    """The KL weights as graph inputs (0-d tensors on ``device``) and their part of the
    structure: a weight of 0 masks its site (a different graph), any other is an input."""

    def one(b: float) -> Any:
        return 0.0 if b == 0 else torch.tensor(float(b), device=device)

    if isinstance(beta, Mapping):
        return {s: one(b) for s, b in beta.items()}, tuple((s, b == 0) for s, b in beta.items())
    return one(beta), (beta == 0,)


class CompiledELBO(nn.Module):
    """A ``Trace_ELBO`` or ``TraceMeanField_ELBO`` loss module, traced and compiled whole.

    Parameters
    ----------
    loss : pyro.infer.elbo.ELBOModule
        ``elbo(model, guide)``; its parameters are this module's.
    backend : {"inductor", "eager"}
        How the traced graphs run (see :data:`BACKENDS`).
    mode : str, optional
        ``torch.compile``'s mode; default ``"reduce-overhead"`` (CUDA graphs) on CUDA
        and Inductor's default on the CPU.
    """

    def __init__(self, loss: nn.Module, *, backend: str = "inductor", mode: str | None = None):
        super().__init__()
        name = type(getattr(loss, "elbo", None)).__name__
        if not isinstance(loss, ELBOModule) or name not in OBJECTIVES:
            raise ConfigError(
                f"--compile traces {' and '.join(OBJECTIVES)}; this step's loss is "
                f"{name if isinstance(loss, ELBOModule) else type(loss).__name__}"
            )
        if backend not in BACKENDS:
            raise ConfigError(f"compile backend must be one of {BACKENDS}, got {backend!r}")
        self.estimator = _Estimator(loss)
        self.backend, self.mode = backend, mode
        self._graphs: dict[tuple, dict[str, Callable]] = {}

    # -- the structure of a call and its graphs --

    def _inputs(
        self, batch: Mapping[str, Any], num_data: int, beta: float | Mapping[str, float]
    ) -> tuple[tuple, dict[str, Any], Callable[[dict[str, Any]], dict[str, Any]]]:
        """The call's structure (the cache key), its tensor inputs, and how to rebuild the
        estimator's keyword arguments from them."""
        device = next(self.estimator.parameters(), torch.empty(0)).device
        weights, zero = _as_tensor_weights(beta, device)
        tensors: dict[str, Any] = {n: v for n, v in batch.items() if torch.is_tensor(v)}
        constants = {n: v for n, v in batch.items() if not torch.is_tensor(v)}
        tensors["beta"] = weights
        key = (
            tuple((n, v.shape, v.dtype, v.device) for n, v in batch.items() if torch.is_tensor(v)),
            tuple(sorted((n, repr(v)) for n, v in constants.items())),
            num_data,
            zero,
            # what the graph also fixed: each submodule's train/eval mode (dropout), and the
            # parameters' names, shapes, dtypes, devices and whether each is trained
            tuple(m.training for m in self.estimator.modules()),
            tuple(
                (n, p.shape, p.dtype, p.device, p.requires_grad)
                for n, p in self.estimator.named_parameters()
            ),
        )

        def kwargs(inputs: dict[str, Any]) -> dict[str, Any]:
            return {**constants, **inputs, "num_data": num_data}

        return key, tensors, kwargs

    def _compile(self, graph: nn.Module) -> Callable:
        if self.backend == "eager":
            return graph
        mode = self.mode
        if mode is None and any(p.is_cuda for p in self.parameters()):
            mode = "reduce-overhead"
        return torch.compile(graph, dynamic=False, mode=mode)

    def _graph(self, which: str, key: tuple, tensors: dict[str, Any], kwargs: Callable) -> Callable:
        graphs = self._graphs.setdefault(key, {})
        if which in graphs:
            return graphs[which]
        estimator = self.estimator

        def loss(params: dict, buffers: dict, inputs: dict) -> torch.Tensor:
            return torch.func.functional_call(estimator, (params, buffers), (kwargs(inputs),))

        def step(params: dict, buffers: dict, inputs: dict) -> tuple[torch.Tensor, dict]:
            grads, value = torch.func.grad_and_value(loss)(params, buffers, inputs)
            return value, grads

        params, buffers = self._state()
        begin = time.perf_counter()
        # tracing runs the estimator once: keep the random streams where they were, so a
        # resumed run draws what the uninterrupted one drew
        with _forked_rng(params), pyro.validation_enabled(False):
            try:
                graph = make_fx({"loss": loss, "step": step}[which])(params, buffers, tensors)
            except ConfigError:
                raise
            except Exception as e:  # data-dependent Python, an operation make_fx cannot record
                raise _refusal("cannot trace this model and guide as one graph", e) from e
        graph.graph.eliminate_dead_code()
        graph.recompile()
        graphs[which] = self._compile(graph)
        logger.debug("traced the %s graph in %.2f s", which, time.perf_counter() - begin)
        return graphs[which]

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return dict(self.estimator.named_parameters()), dict(self.estimator.named_buffers())

    # -- the two ways to call it --

    def forward(
        self, *, num_data: int, beta: float | Mapping[str, float] = 1.0, **batch: Any
    ) -> torch.Tensor:
        """The loss (``-ELBO`` of the minibatch, scaled to ``num_data`` items), from the
        compiled loss graph; differentiable with autograd (the route under DDP)."""
        key, tensors, kwargs = self._inputs(batch, num_data, beta)
        params, buffers = self._state()
        return self._graph("loss", key, tensors, kwargs)(params, buffers, tensors)

    def loss_and_grads(
        self, *, num_data: int, beta: float | Mapping[str, float] = 1.0, **batch: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss and the gradient of every parameter (by name), from one compiled
        graph, without autograd."""
        key, tensors, kwargs = self._inputs(batch, num_data, beta)
        params, buffers = self._state()
        graph = self._graph("step", key, tensors, kwargs)
        with torch.no_grad():
            return graph(params, buffers, tensors)

    def step(
        self, *, num_data: int, beta: float | Mapping[str, float] = 1.0, **batch: Any
    ) -> torch.Tensor:
        """:meth:`loss_and_grads`, with the gradients stored in the parameters' ``.grad``
        (as ``loss.backward()`` would leave them after ``zero_grad``); returns the loss."""
        value, grads = self.loss_and_grads(num_data=num_data, beta=beta, **batch)
        for name, param in self.estimator.named_parameters():
            if param.requires_grad:
                param.grad = grads[name]
        return value

    def warm_up(self, *, num_data: int, beta: float | Mapping[str, float] = 1.0, **batch: Any):
        """Trace and compile the step's graph for this structure now (the random streams
        and the parameters stay as they were), so a model that cannot be compiled is
        refused before training starts."""
        params, _ = self._state()
        begin = time.perf_counter()
        with _forked_rng(params):
            try:
                self.loss_and_grads(num_data=num_data, beta=beta, **batch)
            except ConfigError:
                raise
            except Exception as e:  # the compiler itself (e.g. no C++ compiler)
                raise _refusal("failed to compile the training step", e) from e
        logger.info("compiled the training step in %.1f s", time.perf_counter() - begin)


def _refusal(what: str, error: Exception) -> ConfigError:
    """The one-line refusal of ``--compile``, with the first line of the cause."""
    cause = str(error).strip().splitlines()[0] if str(error).strip() else "no message"
    return ConfigError(
        f"--compile {what} ({type(error).__name__}: {cause}); train without --compile"
    )


def _forked_rng(params: Mapping[str, torch.Tensor]) -> contextlib.AbstractContextManager:
    """Restore torch's random state (the CPU's and the parameters' CUDA device's) on exit."""
    devices = sorted({p.device.index or 0 for p in params.values() if p.is_cuda})
    return torch.random.fork_rng(devices=devices)
