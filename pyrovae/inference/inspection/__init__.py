"""Inspection of a trained VAE: collapse diagnostics of the latent code, posterior draws as
ArviZ data, NUTS on the exact posterior, the inference gaps and the latent space."""

from pyrovae.inference.inspection.diagnostics import (
    SiteCode,
    active_units,
    diagnose,
    encode_all,
    kl_per_dimension,
    mutual_information,
    site_codes,
    total_kl,
)
from pyrovae.inference.inspection.gaps import InferenceGaps, inference_gaps, optimize_local_guide
from pyrovae.inference.inspection.latent import (
    EMBEDDINGS,
    embed,
    encode_dataset,
    latent_report,
    linear_probe,
    save_codes,
)
from pyrovae.inference.inspection.mcmc import frozen, max_r_hat, nuts_posterior
from pyrovae.inference.inspection.posterior import (
    compare_posteriors,
    coords_and_dims,
    guide_moments,
    import_arviz,
    latent_dim_name,
    load_inference_data,
    pixel_dims,
    posterior_draws,
    posterior_summary,
    save_inference_data,
)

__all__ = [
    "EMBEDDINGS",
    "InferenceGaps",
    "SiteCode",
    "active_units",
    "compare_posteriors",
    "coords_and_dims",
    "diagnose",
    "embed",
    "encode_all",
    "encode_dataset",
    "frozen",
    "guide_moments",
    "import_arviz",
    "inference_gaps",
    "kl_per_dimension",
    "latent_dim_name",
    "latent_report",
    "linear_probe",
    "load_inference_data",
    "max_r_hat",
    "mutual_information",
    "nuts_posterior",
    "optimize_local_guide",
    "pixel_dims",
    "posterior_draws",
    "posterior_summary",
    "save_codes",
    "save_inference_data",
    "site_codes",
    "total_kl",
]
