"""Non-finite numbers caught at the step where they appear.

A diverging run shows it first as a NaN or an infinity in a step's loss or in one of its
gradients. The trainer checks both at every step, in one place for every variant's step:

* the gradients, in a pre-hook on each of the step's optimizers
  (:meth:`torch.optim.Optimizer.register_step_pre_hook`), so a non-finite gradient stops
  the run *before* its optimizer changes any parameter; one reduction over the gradients
  (a sum per tensor, then their sum, which is finite only if every element is) and one
  read of a single boolean;
* the loss the step returns, right after the step.

Either raises :class:`NonFinite`, naming what was not finite; the trainer adds the step,
the epoch and the checkpoint kept. Pyro's own warnings about the same numbers ("Encountered
NaN: loss", once per step and per site) are silenced while the trainer checks
(:func:`quiet_nan_warnings`): the trainer's one message replaces them.
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from typing import Any

import torch

__all__ = [
    "NonFinite",
    "check_loss",
    "clip_gradients",
    "parameter_names",
    "quiet_nan_warnings",
    "watch_gradients",
]

#: Pyro's warnings about non-finite values (``pyro.util.warn_if_nan``, ``warn_if_inf``)
PYRO_NAN_WARNING = re.compile(r"Encountered (NaN|[+-]inf)")


class NonFinite(ArithmeticError):
    """A step's loss or gradient that is NaN or infinite.

    ``what`` names it; ``step`` and ``epoch`` (from 1) say where, once the trainer knows;
    ``after`` is true when the number came after the step (its held-out evaluation).
    """

    def __init__(
        self, what: str, *, step: int | None = None, epoch: int | None = None, after: bool = False
    ) -> None:
        super().__init__(what)
        self.what = what
        self.step = step
        self.epoch = epoch
        self.after = after


def check_loss(loss: torch.Tensor) -> None:
    """Raise :class:`NonFinite` unless the step's (scalar) loss is finite."""
    value = loss.item()  # one number: as cheap a read as a check on the device
    if not math.isfinite(value):
        raise NonFinite(f"the loss is {value}")


def watch_gradients(
    optimizer: torch.optim.Optimizer, names: dict[int, str]
) -> torch.utils.hooks.RemovableHandle:
    """Check the gradients of ``optimizer``'s parameters before each of its updates.

    ``names`` maps ``id(parameter)`` to the parameter's name (``vae.named_parameters()``),
    for the message. Returns the hook's handle."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return optimizer.register_step_pre_hook(partial(_check_gradients, params, names))


def _check_gradients(
    params: Sequence[torch.Tensor], names: dict[int, str], optimizer: Any, args: Any, kwargs: Any
) -> None:
    grads = [p.grad for p in params if p.grad is not None]
    # summed in at least float32: half-precision sums of healthy gradients overflow early
    sums = [g.sum(dtype=torch.promote_types(g.dtype, torch.float32)) for g in grads]
    if not grads or torch.isfinite(torch.stack(sums).sum()):
        return
    # the rare failure: find the first parameter whose gradient is not finite (a sum can
    # overflow where every element is finite: then the gradient is too large to step with)
    for p in params:
        if p.grad is not None and not torch.isfinite(p.grad).all():
            name = names.get(id(p), "a parameter")
            kind = "NaN" if torch.isnan(p.grad).any() else "infinite"
            raise NonFinite(f"the gradient of {name} is {kind}")
    raise NonFinite("the gradients' sum overflows (every gradient is finite but huge)")


def clip_gradients(params: Sequence[torch.Tensor], max_norm: float) -> None:
    """Clip the gradients of ``params`` to total norm ``max_norm``, unless the norm is not
    finite: then they are left as they are, so that the optimizer's check names the
    parameter whose gradient is NaN or infinite (clipping by a NaN norm would make every
    gradient NaN)."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads)
    if torch.isfinite(total):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)


@contextlib.contextmanager
def quiet_nan_warnings() -> Iterator[None]:
    """Silence Pyro's "Encountered NaN"/"inf" warnings inside the block (the trainer
    reports a non-finite number once, with its step); other warnings are untouched."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PYRO_NAN_WARNING.pattern)
        yield


def parameter_names(named: Iterable[tuple[str, torch.Tensor]]) -> dict[int, str]:
    """``id(parameter) -> name`` of ``module.named_parameters()``."""
    return {id(p): name for name, p in named}
