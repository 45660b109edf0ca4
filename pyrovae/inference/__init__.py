"""Inference: the SVI loop, objectives, evaluation, diagnostics and checkpoints."""

from pyrovae.inference.checkpoint import load_checkpoint, save_checkpoint
from pyrovae.inference.diagnostics import (
    active_units,
    diagnose,
    encode_all,
    kl_per_dimension,
    mutual_information,
    total_kl,
)
from pyrovae.inference.evaluation import (
    evaluate,
    heldout_elbo,
    iwae_log_likelihood,
    log_weights,
    reconstruction_error,
)
from pyrovae.inference.objectives import (
    ELBOS,
    IWAE,
    FreeBitsELBO,
    InfoVAEELBO,
    RenyiObjective,
    make_elbo,
)
from pyrovae.inference.schedules import SCHEDULES, make_schedule
from pyrovae.inference.svi import SVITrainer, train

__all__ = [
    "ELBOS",
    "IWAE",
    "SCHEDULES",
    "FreeBitsELBO",
    "InfoVAEELBO",
    "RenyiObjective",
    "SVITrainer",
    "active_units",
    "diagnose",
    "encode_all",
    "evaluate",
    "heldout_elbo",
    "iwae_log_likelihood",
    "kl_per_dimension",
    "load_checkpoint",
    "log_weights",
    "make_elbo",
    "make_schedule",
    "mutual_information",
    "reconstruction_error",
    "save_checkpoint",
    "total_kl",
    "train",
]
