"""Applications of a trained VAE: anomaly scores, operations in the latent space,
inpainting and denoising, and imputation of a table's missing cells and synthetic rows."""

from pyrovae.inference.applications.anomaly import (
    SCORES,
    anomaly_scores,
    detection_metrics,
    threshold,
)
from pyrovae.inference.applications.imputation import impute
from pyrovae.inference.applications.inpainting import (
    CORRUPTIONS,
    MASKS,
    corrupt,
    denoise,
    inpaint,
    make_mask,
)
from pyrovae.inference.applications.latent_ops import (
    INTERPOLATIONS,
    interpolate,
    latent_arithmetic,
    lerp,
    slerp,
    traverse,
)
from pyrovae.inference.applications.synthesis import sample_rows

__all__ = [
    "CORRUPTIONS",
    "INTERPOLATIONS",
    "MASKS",
    "SCORES",
    "anomaly_scores",
    "corrupt",
    "denoise",
    "detection_metrics",
    "impute",
    "inpaint",
    "interpolate",
    "latent_arithmetic",
    "lerp",
    "make_mask",
    "sample_rows",
    "slerp",
    "threshold",
    "traverse",
]
