"""Evaluation: the importance weights of the guide (one function, read by every bound and
score), and the held-out ELBO, IWAE log-likelihood and reconstruction error from them; and
sample quality (Fréchet distance, precision and recall, sharpness) in the feature space of a
classifier trained on the data's labels."""

from pyrovae.inference.evaluation.features import (
    ClassifierSettings,
    FeatureClassifier,
    TrainedClassifier,
    default_cache_dir,
    feature_classifier,
    train_classifier,
)
from pyrovae.inference.evaluation.metrics import (
    evaluate,
    heldout_elbo,
    iwae_log_likelihood,
    reconstruction_error,
)
from pyrovae.inference.evaluation.quality import (
    frechet_distance,
    manifold_scores,
    precision_recall,
    score,
    sharpness,
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
    "ClassifierSettings",
    "FeatureClassifier",
    "ImportanceWeights",
    "TrainedClassifier",
    "batches",
    "chunk_size",
    "default_cache_dir",
    "eval_mode",
    "evaluate",
    "feature_classifier",
    "frechet_distance",
    "heldout_elbo",
    "importance_weights",
    "iwae_log_likelihood",
    "log_mean_exp",
    "log_weights",
    "manifold_scores",
    "precision_recall",
    "reconstruction_error",
    "score",
    "sharpness",
    "train_classifier",
]
