r"""Steps whose parameter groups each descend their own objective (adversarial variants).

A variant with a discriminator (the VAE-GAN, FactorVAE) trains several groups of
parameters on different objectives. A shared ``backward()`` would leave in each
parameter's ``.grad`` the sum of every objective's gradient; here each group's gradient is
``torch.autograd.grad`` of its own objective with respect to that group alone, all at the
same parameters (one forward pass), and only then do the optimizers step
(:class:`GroupStep`). So

.. math::

    g_k = \nabla_{\theta_k} \mathcal{L}_k(\theta_1, \dots, \theta_K), \qquad k = 1, \dots, K

and no group receives another objective's gradient, nor sees another group updated
between its forward and backward passes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

from pyrovae.errors import ConfigError
from pyrovae.inference.training.numerics import clip_gradients

__all__ = [
    "CANNOT",
    "GroupStep",
    "TraceRecorder",
    "bce",
    "check_partition",
    "unique_parameters",
]

#: what a variant trained by a :class:`GroupStep` cannot do, and why (its ``cannot`` table)
CANNOT = {
    "distributed": (
        "its step takes torch.autograd.grad of one objective per parameter group, and "
        "DistributedDataParallel averages gradients only in a backward() pass; train it in "
        "one process (without torchrun)"
    ),
    "compile": (
        "its step has one objective and one optimizer per parameter group, and --compile "
        "compiles the one-loss SVI step"
    ),
}


def unique_parameters(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """``params`` without repeats (a module shared by two components), in first-seen order."""
    seen: dict[int, nn.Parameter] = {}
    for p in params:
        seen.setdefault(id(p), p)
    return list(seen.values())


def check_partition(
    module: nn.Module, groups: Mapping[str, list[nn.Parameter]], owner: str
) -> None:
    """Raise :class:`ConfigError` unless ``groups`` hold every parameter of ``module``
    exactly once (``owner`` names the variant in the message)."""
    ids = [id(p) for params in groups.values() for p in params]
    every = {id(p) for p in module.parameters()}
    if len(ids) != len(set(ids)) or set(ids) != every:
        raise ConfigError(
            f"{owner}'s parameter groups ({', '.join(groups)}) must hold every parameter "
            "exactly once; a component has parameters outside them"
        )


def bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Mean binary cross-entropy of a discriminator's logits against one label."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


class TraceRecorder(nn.Module):
    """A Pyro model or guide whose runs' traces are kept (``traces``), so that a step reads
    the draws its ELBO made instead of drawing again."""

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.program = program
        self.traces: list[poutine.Trace] = []

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        tracer = poutine.trace(self.program)
        result = tracer(*args, **kwargs)
        self.traces.append(tracer.trace)
        return result


class GroupStep:
    """The update of several parameter groups, each by its own optimizer on its own
    objective.

    Parameters
    ----------
    groups : dict of str to list of nn.Parameter
        The groups by name, disjoint.
    optimizers : dict of str to torch.optim.Optimizer
        One per group, by the group's name (the trainer checkpoints them by these names).
    clip_norm : float, optional
        Clip each group's gradient norm to this value.
    """

    def __init__(
        self,
        groups: dict[str, list[nn.Parameter]],
        optimizers: dict[str, torch.optim.Optimizer],
        clip_norm: float | None = None,
    ) -> None:
        if set(groups) != set(optimizers):
            raise ValueError(f"one optimizer per group: {sorted(groups)} vs {sorted(optimizers)}")
        self.groups = groups
        self.optimizers = optimizers
        self.clip_norm = clip_norm

    def gradients(self, losses: Any) -> dict[str, list[torch.Tensor]]:
        """Each group's gradient of its own objective alone (``torch.autograd.grad``), all
        at the parameters the losses were computed at; zeros where it does not depend on a
        parameter. ``losses.objectives`` maps each group's name to its objective."""
        objectives = losses.objectives
        names = list(self.groups)
        grads = {}
        for i, name in enumerate(names):
            params = self.groups[name]
            found = torch.autograd.grad(
                objectives[name], params, retain_graph=i < len(names) - 1, allow_unused=True
            )
            grads[name] = [torch.zeros_like(p) if g is None else g for p, g in zip(params, found)]
        return grads

    def apply(
        self, grads: Mapping[str, list[torch.Tensor]], skips: Mapping[str, bool] | None = None
    ) -> None:
        """Write each group's gradient to its parameters' ``.grad`` (clipped with
        ``clip_norm``) and step its optimizer, unless ``skips`` names the group."""
        skips = skips or {}
        for name, params in self.groups.items():
            for p, g in zip(params, grads[name]):
                p.grad = g
            if self.clip_norm is not None:
                clip_gradients(params, self.clip_norm)
            if not skips.get(name, False):
                self.optimizers[name].step()
