"""Evaluation: the importance weights of the guide (one function, read by every bound and
score), and the held-out ELBO, IWAE log-likelihood and reconstruction error from them (per
column type for a table); and
sample quality (Fréchet distance, precision and recall, sharpness) in the feature space of a
classifier trained on the data's labels; and disentanglement (MIG, the FactorVAE and beta-VAE
scores, DCI, SAP) against ground-truth factors."""

from pyrovae.inference.evaluation.disentanglement import (
    DCI_CLASSIFIERS,
    METRICS,
    DCIScores,
    DisentanglementReport,
    InterventionScore,
    beta_vae_score,
    dci,
    encode_factor_space,
    evaluate_disentanglement,
    factor_traversals,
    factor_vae_score,
    mig,
    mutual_information,
    sample_codes,
    sap,
    sap_matrix,
)
from pyrovae.inference.evaluation.features import (
    ClassifierSettings,
    FeatureClassifier,
    TrainedClassifier,
    default_cache_dir,
    feature_classifier,
    train_classifier,
)
from pyrovae.inference.evaluation.metrics import (
    bits_per_dim,
    bits_per_dim_entries,
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
from pyrovae.inference.evaluation.tables import (
    columns_likelihood,
    reconstruction_nll,
    table_reconstruction_errors,
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
    seeded,
)

__all__ = [
    "CHUNK_ELEMENTS",
    "DCI_CLASSIFIERS",
    "METRICS",
    "ClassifierSettings",
    "DCIScores",
    "DisentanglementReport",
    "FeatureClassifier",
    "ImportanceWeights",
    "InterventionScore",
    "TrainedClassifier",
    "batches",
    "beta_vae_score",
    "bits_per_dim",
    "bits_per_dim_entries",
    "chunk_size",
    "columns_likelihood",
    "dci",
    "default_cache_dir",
    "encode_factor_space",
    "eval_mode",
    "evaluate",
    "evaluate_disentanglement",
    "factor_traversals",
    "factor_vae_score",
    "feature_classifier",
    "frechet_distance",
    "heldout_elbo",
    "importance_weights",
    "iwae_log_likelihood",
    "log_mean_exp",
    "log_weights",
    "manifold_scores",
    "mig",
    "mutual_information",
    "precision_recall",
    "reconstruction_error",
    "reconstruction_nll",
    "sample_codes",
    "sap",
    "sap_matrix",
    "score",
    "seeded",
    "sharpness",
    "table_reconstruction_errors",
    "train_classifier",
]
