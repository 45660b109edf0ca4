"""Evaluation: the importance weights of the guide (one function, read by every bound and
score), and the held-out ELBO, IWAE log-likelihood and reconstruction error from them."""

from pyrovae.inference.evaluation.metrics import (
    evaluate,
    heldout_elbo,
    iwae_log_likelihood,
    reconstruction_error,
)
from pyrovae.inference.evaluation.weights import (
    CHUNK_ELEMENTS,
    ImportanceWeights,
    batches,
    chunk_size,
    eval_mode,
    importance_weights,
    log_mean_exp,
    log_weights,
)

__all__ = [
    "CHUNK_ELEMENTS",
    "ImportanceWeights",
    "batches",
    "chunk_size",
    "eval_mode",
    "evaluate",
    "heldout_elbo",
    "importance_weights",
    "iwae_log_likelihood",
    "log_mean_exp",
    "log_weights",
    "reconstruction_error",
]
