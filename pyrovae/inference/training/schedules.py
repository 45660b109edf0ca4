r"""KL-weight schedules: :math:`\beta_t` as a function of the SVI step :math:`t`.

The trainer asks the schedule for :math:`\beta_t` before every step ``t = 0, 1, ...``
(counted over the whole run, so a resumed run continues the schedule exactly) and
passes it to the variant's training step, which applies it with
``poutine.scale`` on the latent site in the model and the guide:

.. math::

    \mathcal{L}_t(x) = E_{q(z \mid x)}[\log p(x \mid z)]
        - \beta_t\,\mathrm{KL}(q(z \mid x) \,\|\, p(z))

``constant``
    :math:`\beta_t = \beta` (the beta-VAE of Higgins et al. 2017; :math:`\beta = 1`
    is the ELBO).
``linear``
    KL annealing (Bowman et al. 2016): :math:`\beta_t = \beta \min(1, t / T_w)` over
    :math:`T_w` warm-up steps, so the first step has :math:`\beta_0 = 0` and every
    step from :math:`T_w` on has :math:`\beta`.
``cyclical``
    Cyclical annealing (Fu et al. 2019): the run's :math:`T` steps form :math:`M`
    cycles of length :math:`P = T / M`; within a cycle, at position
    :math:`\tau = (t \bmod P) / P \in [0, 1)`,
    :math:`\beta_t = \beta \min(1, \tau / R)`: the weight rises linearly from 0 during
    the first fraction :math:`R` of the cycle and stays at :math:`\beta` for the rest.
    :math:`T` is the run's ``num_epochs`` times its steps per epoch, so resuming with the
    same ``--num-epochs`` continues the cycles exactly, while extending a run
    (``--resume --num-epochs`` larger) recomputes :math:`P` from the new :math:`T`: the
    steps already taken keep their weights, and later steps follow the longer cycles.

References
----------
- Bowman, Vilnis, Vinyals, Dai, Jozefowicz & Bengio (2016), Generating Sentences from
  a Continuous Space.
- Fu, Li, Liu, Gao, Celikyilmaz & Carin (2019), Cyclical Annealing Schedule: A Simple
  Approach to Mitigating KL Vanishing.
- Higgins et al. (2017), beta-VAE: Learning Basic Visual Concepts with a Constrained
  Variational Framework.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyrovae.errors import ConfigError
from pyrovae.registry import Registry

__all__ = [
    "SCHEDULES",
    "ConstantSchedule",
    "CyclicalSchedule",
    "LinearSchedule",
    "Schedule",
    "make_schedule",
]

SCHEDULES: Registry[type[Schedule]] = Registry("KL schedule")


class Schedule:
    """Base class: ``schedule(step) -> beta`` for the 0-based SVI step ``step``."""

    def __init__(self, beta: float = 1.0) -> None:
        if beta < 0:
            raise ConfigError(f"beta must be >= 0, got {beta}")
        self.beta = float(beta)

    def __call__(self, step: int) -> float:
        raise NotImplementedError  # abstract

    def settled_step(self) -> int:
        """The first step from which :math:`\\beta_t = \\beta` at every later step: when
        the warm-up is over (early stopping's counter runs only from there)."""
        return 0

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({options})"


@SCHEDULES.register("constant")
class ConstantSchedule(Schedule):
    r""":math:`\beta_t = \beta` at every step."""

    def __call__(self, step: int) -> float:
        return self.beta


@SCHEDULES.register("linear")
class LinearSchedule(Schedule):
    r""":math:`\beta_t = \beta \min(1, t / T_w)`; ``warmup_steps = 0`` is constant.

    Parameters
    ----------
    warmup_epochs : int
        linear schedule: epochs of warm-up from 0 to beta.
    warmup_steps : int, optional
        linear schedule: warm-up in steps (overrides warmup_epochs).
    """

    def __init__(
        self,
        beta: float = 1.0,
        steps_per_epoch: int = 1,
        *,
        warmup_epochs: int = 10,
        warmup_steps: int | None = None,
    ) -> None:
        super().__init__(beta)
        if warmup_steps is None:
            if warmup_epochs < 0:
                raise ConfigError(f"the warm-up must be >= 0 epochs, got {warmup_epochs}")
            warmup_steps = warmup_epochs * steps_per_epoch
        if warmup_steps < 0:
            raise ConfigError(f"the warm-up must be >= 0 steps, got {warmup_steps}")
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step: int) -> float:
        if step >= self.warmup_steps:
            return self.beta
        return self.beta * step / self.warmup_steps

    def settled_step(self) -> int:
        return self.warmup_steps


@SCHEDULES.register("cyclical")
class CyclicalSchedule(Schedule):
    r""":math:`\beta_t = \beta \min(1, \tau / R)` with :math:`\tau = (t \bmod P) / P`,
    :math:`P = T / M`.

    Parameters
    ----------
    num_cycles : int
        cyclical schedule: cycles M over the run.
    cycle_ratio : float
        cyclical schedule: fraction R of a cycle spent increasing.
    """

    def __init__(
        self,
        beta: float = 1.0,
        total_steps: int = 1,
        *,
        num_cycles: int = 4,
        cycle_ratio: float = 0.5,
    ) -> None:
        super().__init__(beta)
        if total_steps < 1 or num_cycles < 1:
            raise ConfigError(
                f"cyclical annealing needs total_steps >= 1 and num_cycles >= 1, got "
                f"{total_steps} and {num_cycles}"
            )
        if not 0.0 < cycle_ratio <= 1.0:
            raise ConfigError(f"cycle_ratio must be in (0, 1], got {cycle_ratio}")
        self.total_steps = int(total_steps)
        self.num_cycles = int(num_cycles)
        self.cycle_ratio = float(cycle_ratio)

    def __call__(self, step: int) -> float:
        period = self.total_steps / self.num_cycles
        tau = (step % period) / period
        return self.beta * min(1.0, tau / self.cycle_ratio)

    def settled_step(self) -> int:
        # where the last cycle's rise ends (found by walking back: a closed form's rounding
        # can miss a step by one); beta stays from there to the end of the run
        step = self.total_steps
        while step > 0 and self(step - 1) == self.beta:
            step -= 1
        return step


def make_schedule(
    name: str,
    options: Mapping[str, Any] | None = None,
    *,
    beta: float = 1.0,
    steps_per_epoch: int = 1,
    num_epochs: int = 1,
) -> Schedule:
    """The schedule registered as ``name`` with its ``options``, for a run of ``num_epochs``
    epochs of ``steps_per_epoch`` SVI steps.

    ``linear`` warms up over ``warmup_steps`` steps if set, else over ``warmup_epochs``
    epochs; ``cyclical`` spreads ``num_cycles`` cycles over the run.
    """
    return SCHEDULES.build(
        name,
        options,
        beta=beta,
        steps_per_epoch=steps_per_epoch,
        total_steps=num_epochs * steps_per_epoch,
    )
