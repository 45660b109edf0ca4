"""Inference, by purpose: training (the trainer of steps, objectives, schedules,
checkpoints), evaluation, inspection (diagnostics, ArviZ draws, NUTS, inference gaps, the
latent space) and applications."""

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
from pyrovae.inference.gaps import InferenceGaps, inference_gaps, optimize_local_guide
from pyrovae.inference.latent import (
    EMBEDDINGS,
    embed,
    encode_dataset,
    latent_report,
    linear_probe,
    save_codes,
)
from pyrovae.inference.mcmc import nuts_posterior
from pyrovae.inference.posterior import (
    compare_posteriors,
    load_inference_data,
    posterior_draws,
    posterior_summary,
    save_inference_data,
)
from pyrovae.inference.training import (
    ELBOS,
    IWAE,
    SCHEDULES,
    FreeBitsELBO,
    InfoVAEELBO,
    RenyiObjective,
    SVIStep,
    Trainer,
    TrainingStep,
    load_checkpoint,
    make_elbo,
    make_schedule,
    save_checkpoint,
)

__all__ = [
    "ELBOS",
    "EMBEDDINGS",
    "IWAE",
    "SCHEDULES",
    "FreeBitsELBO",
    "InferenceGaps",
    "InfoVAEELBO",
    "RenyiObjective",
    "SVIStep",
    "Trainer",
    "TrainingStep",
    "active_units",
    "compare_posteriors",
    "diagnose",
    "embed",
    "encode_all",
    "encode_dataset",
    "evaluate",
    "heldout_elbo",
    "inference_gaps",
    "iwae_log_likelihood",
    "kl_per_dimension",
    "latent_report",
    "linear_probe",
    "load_checkpoint",
    "load_inference_data",
    "log_weights",
    "make_elbo",
    "make_schedule",
    "mutual_information",
    "nuts_posterior",
    "optimize_local_guide",
    "posterior_draws",
    "posterior_summary",
    "reconstruction_error",
    "save_checkpoint",
    "save_codes",
    "save_inference_data",
    "total_kl",
]
