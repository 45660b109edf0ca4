"""pyrovae: variational autoencoders written as probabilistic programs in Pyro.

Importing pyrovae sets ``pyro.settings.set(module_local_params=True)``: the
parameters of Pyro modules live in the modules (``state_dict()``), not in Pyro's
global param store.
"""

import pyro

pyro.settings.set(module_local_params=True)

from pyrovae.config import Config, load_config  # noqa: E402
from pyrovae.data import Dataset, load_dataset  # noqa: E402
from pyrovae.errors import (  # noqa: E402
    CheckpointError,
    ConfigError,
    DataError,
    NumericsError,
    PyroVAEError,
)
from pyrovae.inference import (  # noqa: E402
    evaluate,
    inference_gaps,
    iwae_log_likelihood,
    nuts_posterior,
    posterior_draws,
    score,
)
from pyrovae.run import fit, load_run, score_run, train  # noqa: E402
from pyrovae.variants import VAE, VARIANTS, ConditionalVAE, SemiSupervisedVAE  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "VAE",
    "VARIANTS",
    "CheckpointError",
    "ConditionalVAE",
    "Config",
    "ConfigError",
    "DataError",
    "Dataset",
    "NumericsError",
    "PyroVAEError",
    "SemiSupervisedVAE",
    "evaluate",
    "fit",
    "inference_gaps",
    "iwae_log_likelihood",
    "load_config",
    "load_dataset",
    "load_run",
    "nuts_posterior",
    "posterior_draws",
    "score",
    "score_run",
    "train",
]
