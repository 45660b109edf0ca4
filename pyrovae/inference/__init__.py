"""Inference: the SVI loop, objectives, evaluation and checkpoints."""

from pyrovae.inference.checkpoint import load_checkpoint, save_checkpoint
from pyrovae.inference.evaluation import (
    evaluate,
    heldout_elbo,
    iwae_log_likelihood,
    log_weights,
    reconstruction_error,
)
from pyrovae.inference.objectives import ELBOS, make_elbo
from pyrovae.inference.svi import SVITrainer, train

__all__ = [
    "ELBOS",
    "SVITrainer",
    "evaluate",
    "heldout_elbo",
    "iwae_log_likelihood",
    "load_checkpoint",
    "log_weights",
    "make_elbo",
    "reconstruction_error",
    "save_checkpoint",
    "train",
]
