r"""Training steps: what a variant supplies to the trainer.

A step owns the parameter groups, the optimizers (by name) and the losses of one update
on a minibatch; the trainer (:mod:`pyrovae.inference.training.trainer`) owns the epochs,
the KL schedule, logging, checkpoints and resume. The default, :class:`SVIStep`, is
stochastic variational inference: the loss :math:`-\mathrm{ELBO}` of an
:class:`pyro.infer.elbo.ELBOModule` (``elbo(model, guide)``), one backward pass and one
``torch.optim.Adam`` step. A variant with a discriminator or a codebook returns a step
with several optimizers, each stepped right after the backward pass of its own loss.

Data-parallel training (:mod:`pyrovae.inference.training.distributed`) needs a step with a
``distribute()`` method, which the trainer calls once before the first update: from then
on the step's gradients are averaged over the ranks. :class:`SVIStep` calls its loss module
through DistributedDataParallel; a step without the method (the VAE-GAN's, whose gradients
come from ``torch.autograd.grad``) cannot train data-parallel, and its variant says so in
its ``cannot`` table.

``--compile`` calls a step's ``compile()`` once, before its :meth:`~SVIStep.check`: from
then on :class:`SVIStep` takes its loss and gradients from one compiled graph
(:mod:`pyrovae.inference.training.compiled`) and steps a fused Adam. A step without the
method cannot be compiled, and ``--compile`` refuses its variant.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import pyro
import torch
from pyro.infer import ELBO
from pyro.infer.elbo import ELBOModule
from torch import nn

from pyrovae.inference.training.compiled import CompiledELBO
from pyrovae.inference.training.numerics import clip_gradients

__all__ = ["SVIStep", "TrainingStep", "elbo_stats"]


@runtime_checkable
class TrainingStep(Protocol):
    """One update on a minibatch.

    Attributes
    ----------
    optimizers : dict of str to torch.optim.Optimizer
        Every optimizer the step uses, by name; the trainer saves and restores each one's
        state in the checkpoint. The parameters they update must be the variant's own
        (submodules of the VAE: a discriminator, a codebook), so that ``vae.state_dict()``
        holds them and a resumed run restores them.
    """

    optimizers: dict[str, torch.optim.Optimizer]

    def check(
        self, batch: Mapping[str, Any], *, num_data: int, beta: float | Mapping[str, float]
    ) -> None:
        """Evaluate the step's losses on ``batch`` once, without updating anything (the
        trainer turns on Pyro's validation), so shape, support and objective errors
        surface before training and before the run folder is written."""
        ...

    def __call__(
        self, batch: Mapping[str, Any], *, num_data: int, beta: float | Mapping[str, float]
    ) -> dict[str, torch.Tensor]:
        """Update on ``batch`` (keyword arguments of the variant's model and guide) and
        return detached scalars to log: ``"loss"``, what was minimised, scaled to the
        ``num_data`` items of the training set (the trainer reports ``-loss / num_data``
        as ``train_objective``); ``"elbo"``, the true ELBO of the step's draws where known;
        any other name is averaged over the epoch's steps as ``train_<name>``."""
        ...


class SVIStep:
    """SVI on a differentiable loss module: backward, optional clipping, one Adam step.

    Parameters
    ----------
    loss : nn.Module
        ``elbo(model, guide)`` (an ``ELBOModule``) or a variant's own loss module called
        with the batch, ``num_data`` and ``beta``; its ``parameters()`` are optimised.
    learning_rate : float
        Adam's learning rate.
    clip_norm : float, optional
        Clip the gradient norm to this value.
    """

    def __init__(
        self, loss: nn.Module, *, learning_rate: float = 1e-3, clip_norm: float | None = None
    ) -> None:
        self.loss = loss
        # what a step calls: the loss module, or its DistributedDataParallel wrapper
        self.module: nn.Module = loss
        self.compiled: CompiledELBO | None = None
        self.parameters = list(loss.parameters())
        self.learning_rate = learning_rate
        self.optimizers = {"svi": torch.optim.Adam(self.parameters, lr=learning_rate)}
        self.clip_norm = clip_norm
        # Pyro's ELBOs at beta = 1 compute -ELBO itself; our objectives report it
        self.is_elbo = isinstance(loss, ELBOModule)
        # Pyro's JIT compiles once per value of the keyword arguments, which it hashes
        # (a tensor by its id): the minibatch goes in positionally, or every step recompiles
        self.positional = self.is_elbo and type(loss.elbo).__name__.startswith("Jit")

    def compile(self, backend: str = "inductor") -> None:
        """Take the loss and its gradients from one compiled graph from now on
        (:class:`~pyrovae.inference.training.compiled.CompiledELBO`; ``Trace_ELBO`` and
        ``TraceMeanField_ELBO`` only) and step a fused Adam (one kernel for all
        parameters; the same update). Call it before the first step."""
        self.compiled = CompiledELBO(self.loss, backend=backend)
        fused = all(p.device.type in ("cpu", "cuda") for p in self.parameters)
        self.optimizers["svi"] = torch.optim.Adam(
            self.parameters, lr=self.learning_rate, fused=fused or None
        )

    def check(
        self, batch: Mapping[str, Any], *, num_data: int, beta: float | Mapping[str, float] = 1.0
    ) -> None:
        # with autograd on: some Pyro ELBOs refuse a loss that cannot be differentiated
        args, kwargs = self._arguments(batch)
        self.loss(*args, **kwargs, num_data=num_data, beta=beta)
        if self.compiled is not None:  # trace and compile now: refuse before training
            self.compiled.warm_up(**batch, num_data=num_data, beta=beta)

    def distribute(self) -> None:
        """Call the loss module through DistributedDataParallel from now on
        (:func:`~pyrovae.inference.training.distributed.wrap`): its ``forward`` is the loss,
        so the ``backward()`` of every step averages the gradients over the ranks before the
        clipping and the Adam step, which then agree on every rank. Call it once the
        parameters exist (after :meth:`check`)."""
        from pyrovae.inference.training.distributed import wrap

        if self.module is self.loss:
            self.module = wrap(self.compiled or self.loss)

    def __call__(
        self, batch: Mapping[str, Any], *, num_data: int, beta: float | Mapping[str, float] = 1.0
    ) -> dict[str, torch.Tensor]:
        optimizer = self.optimizers["svi"]
        if self.compiled is not None and self.module is self.loss:
            # one graph for the loss and the gradients (outside DDP, which needs autograd)
            loss = self.compiled.step(**batch, num_data=num_data, beta=beta)
        else:
            # per-step validation costs ~0.3 ms; the trainer validated model, guide and data
            with pyro.validation_enabled(False):
                args, kwargs = self._arguments(batch)
                loss = self.module(*args, **kwargs, num_data=num_data, beta=beta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if self.clip_norm is not None:
            clip_gradients(self.parameters, self.clip_norm)
        optimizer.step()
        stats = {"loss": loss.detach()}
        objective = getattr(self.loss, "elbo", None) if self.is_elbo else None
        stats.update(elbo_stats(objective, loss, beta))
        return stats

    def _arguments(self, batch: Mapping[str, Any]) -> tuple[tuple, dict[str, Any]]:
        """The minibatch as the loss module's positional and keyword arguments."""
        if self.positional and set(batch) == {"x"}:
            return (batch["x"],), {}
        return (), dict(batch)


def elbo_stats(
    objective: ELBO | None, loss: torch.Tensor, beta: float | Mapping[str, float]
) -> dict[str, torch.Tensor]:
    """What a step logs of the evaluation of ``objective`` (``None`` for a variant's own
    loss module) that gave ``loss``: ``"elbo"``, the true ELBO of its draws, where it is
    known (our objectives store it as ``last_elbo``; a Pyro ELBO at :math:`\\beta = 1` has
    ``loss`` :math:`= -\\mathrm{ELBO}`), and the terms our objectives report
    (``last_stats``: beta-TCVAE's ``mi``, ``tc``, ``dim_kl``); detached."""
    last_elbo = getattr(objective, "last_elbo", None)
    if last_elbo is not None:  # our objectives report the true ELBO of their draws
        return {"elbo": last_elbo, **getattr(objective, "last_stats", {})}
    if objective is not None and _is_one(beta):  # a Pyro ELBO at beta = 1: the loss is -ELBO
        return {"elbo": -loss.detach()}
    return {}


def _is_one(beta: float | Mapping[str, float]) -> bool:
    """Whether every latent site has KL weight 1 (the loss is then -ELBO)."""
    return all(b == 1.0 for b in beta.values()) if isinstance(beta, Mapping) else beta == 1.0
