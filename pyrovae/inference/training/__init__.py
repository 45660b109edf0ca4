"""Training: the trainer of steps, the default SVI step, objectives, KL schedules,
checkpoints, and data-parallel training under ``torchrun`` (:mod:`.distributed`)."""

from pyrovae.inference.training.checkpoint import load_checkpoint, save_checkpoint
from pyrovae.inference.training.objectives import (
    ELBOS,
    IWAE,
    TCVAEELBO,
    FreeBitsELBO,
    InfoVAEELBO,
    RenyiObjective,
    elbo_context,
    make_elbo,
)
from pyrovae.inference.training.schedules import SCHEDULES, Schedule, make_schedule
from pyrovae.inference.training.step import SVIStep, TrainingStep
from pyrovae.inference.training.trainer import Trainer

__all__ = [
    "ELBOS",
    "IWAE",
    "SCHEDULES",
    "TCVAEELBO",
    "FreeBitsELBO",
    "InfoVAEELBO",
    "RenyiObjective",
    "SVIStep",
    "Schedule",
    "Trainer",
    "TrainingStep",
    "elbo_context",
    "load_checkpoint",
    "make_elbo",
    "make_schedule",
    "save_checkpoint",
]
