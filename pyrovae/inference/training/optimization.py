r"""What the optimizers do besides Adam's update: learning-rate schedules and gradient
normalisation.

Learning-rate schedules are :mod:`torch.optim.lr_scheduler`'s, one per optimizer of the
step, stepped once after every epoch (so a run's epochs, not its steps, count); their
state is stored in the checkpoint, so a resumed run continues the schedule exactly.

``constant``
    The learning rate stays as given.
``step``
    :class:`~torch.optim.lr_scheduler.StepLR`: multiplied by ``lr_gamma`` every
    ``lr_step_size`` epochs.
``plateau``
    :class:`~torch.optim.lr_scheduler.ReduceLROnPlateau`: multiplied by ``lr_gamma`` once the
    monitored number (the variant's :attr:`~pyrovae.variants.VAE.monitor` on the validation
    split, or the training objective when the run has none) has not improved for
    ``lr_patience`` epochs.
``cosine``
    :class:`~torch.optim.lr_scheduler.CosineAnnealingLR`: from the learning rate down to
    ``lr_min`` along half a cosine over the run's ``num_epochs``.

**Gradient normalisation** (:func:`normalize_gradients`) divides each parameter's gradient
by its own L2 norm before the optimizer's update,
:math:`g \leftarrow g / (\lVert g \rVert_2 + 10^{-7})`: the "AdamNormGrad" of the VampPrior
reference code (Tomczak & Welling 2018), which keeps every tensor's step the same size
whatever the scale of its gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch.optim import lr_scheduler

from pyrovae.errors import ConfigError
from pyrovae.registry import Registry

__all__ = [
    "LR_SCHEDULES",
    "NORM_EPSILON",
    "is_plateau",
    "make_lr_schedulers",
    "normalize_gradients",
]

#: added to each gradient's norm before dividing by it (the reference code's value)
NORM_EPSILON = 1e-7

LR_SCHEDULES: Registry[Any] = Registry("learning-rate schedule")


@LR_SCHEDULES.register("constant")
def _constant(optimizer: torch.optim.Optimizer, num_epochs: int) -> None:
    """The learning rate stays as given."""
    return None


@LR_SCHEDULES.register("step")
def _step(
    optimizer: torch.optim.Optimizer,
    num_epochs: int,
    *,
    lr_step_size: int = 100,
    lr_gamma: float = 0.5,
) -> lr_scheduler.StepLR:
    """StepLR.

    Parameters
    ----------
    lr_step_size : int
        step learning-rate schedule: epochs between reductions.
    lr_gamma : float
        step and plateau learning-rate schedules: factor of each reduction.
    """
    _check_positive(lr_step_size=lr_step_size)
    _check_factor(lr_gamma)
    return lr_scheduler.StepLR(optimizer, step_size=lr_step_size, gamma=lr_gamma)


#: what makes a score better for the plateau schedule: any larger score (see below)
PLATEAU_SETTINGS = {"threshold": 0.0, "threshold_mode": "abs"}


@LR_SCHEDULES.register("plateau")
def _plateau(
    optimizer: torch.optim.Optimizer,
    num_epochs: int,
    *,
    lr_gamma: float = 0.5,
    lr_patience: int = 10,
) -> lr_scheduler.ReduceLROnPlateau:
    """ReduceLROnPlateau on the monitored number.

    Parameters
    ----------
    lr_gamma : float
        step and plateau learning-rate schedules: factor of each reduction.
    lr_patience : int
        plateau learning-rate schedule: epochs without improvement before a reduction.
    """
    _check_positive(lr_patience=lr_patience)
    _check_factor(lr_gamma)
    # the monitored numbers are ELBOs and accuracies (larger is better); the trainer flips
    # the sign of one that is better smaller. An improvement is any larger number, as for
    # early stopping and best.pt: torch's default relative threshold, best * (1 + 1e-4),
    # lies below a negative best (an ELBO), so that slightly worse scores counted as better
    return lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode="max",
        factor=lr_gamma,
        patience=lr_patience,
        **PLATEAU_SETTINGS,
    )


@LR_SCHEDULES.register("cosine")
def _cosine(
    optimizer: torch.optim.Optimizer, num_epochs: int, *, lr_min: float = 0.0
) -> lr_scheduler.CosineAnnealingLR:
    """CosineAnnealingLR over the run.

    Parameters
    ----------
    lr_min : float
        cosine learning-rate schedule: the learning rate at the run's last epoch.
    """
    if lr_min < 0:
        raise ConfigError(f"lr_min must be >= 0, got {lr_min}")
    return lr_scheduler.CosineAnnealingLR(optimizer, T_max=num_epochs, eta_min=lr_min)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ConfigError(f"{name} must be a positive number of epochs, got {value}")


def _check_factor(gamma: float) -> None:
    if not 0.0 < gamma < 1.0:
        raise ConfigError(f"lr_gamma must be between 0 and 1 (exclusive), got {gamma}")


def make_lr_schedulers(
    name: str,
    options: dict[str, Any] | None,
    optimizers: dict[str, torch.optim.Optimizer],
    num_epochs: int,
) -> dict[str, Any]:
    """One scheduler registered as ``name`` (with its ``options``) per optimizer, by the
    optimizer's name; empty for ``constant``."""
    schedulers = {
        key: LR_SCHEDULES.build(name, options, optimizer=optimizer, num_epochs=num_epochs)
        for key, optimizer in optimizers.items()
    }
    return {k: s for k, s in schedulers.items() if s is not None}


def is_plateau(scheduler: Any) -> bool:
    """Whether ``scheduler`` steps on a monitored number (``ReduceLROnPlateau``)."""
    return isinstance(scheduler, lr_scheduler.ReduceLROnPlateau)


def normalize_gradients(optimizer: torch.optim.Optimizer) -> torch.utils.hooks.RemovableHandle:
    r"""Divide each parameter's gradient by its L2 norm (plus :data:`NORM_EPSILON`) before
    each of ``optimizer``'s updates, in a step pre-hook; returns the hook's handle."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return optimizer.register_step_pre_hook(partial(_normalize, params))


def _normalize(params: Sequence[torch.Tensor], optimizer: Any, args: Any, kwargs: Any) -> None:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads)
    torch._foreach_div_(grads, torch._foreach_add(norms, NORM_EPSILON))
