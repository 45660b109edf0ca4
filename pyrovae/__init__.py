"""pyrovae: variational autoencoders written as probabilistic programs in Pyro.

The names below are imported on first use (:pep:`562`), so ``import pyrovae`` is quick
and the CLI can catch Ctrl-C while torch is still importing (:mod:`pyrovae.__main__`).

Importing pyrovae's models (``pyrovae.VAE``, :mod:`pyrovae.model`, anything that builds
one) sets ``pyro.settings.set(module_local_params=True)``: the parameters of Pyro modules
live in the modules (``state_dict()``), not in Pyro's global param store.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyrovae.config import Config, load_config
    from pyrovae.data import Dataset, load_dataset
    from pyrovae.errors import (
        CheckpointError,
        ConfigError,
        DataError,
        NumericsError,
        PyroVAEError,
    )
    from pyrovae.inference import (
        evaluate,
        inference_gaps,
        iwae_log_likelihood,
        nuts_posterior,
        posterior_draws,
        score,
    )
    from pyrovae.run import fit, load_run, score_run, train
    from pyrovae.variants import VAE, VARIANTS, ConditionalVAE, SemiSupervisedVAE

__version__ = "0.1.0"

#: public name -> the module that defines it
_HOMES = {
    **dict.fromkeys(["Config", "load_config"], "pyrovae.config"),
    **dict.fromkeys(["Dataset", "load_dataset"], "pyrovae.data"),
    **dict.fromkeys(
        ["CheckpointError", "ConfigError", "DataError", "NumericsError", "PyroVAEError"],
        "pyrovae.errors",
    ),
    **dict.fromkeys(
        [
            "evaluate",
            "inference_gaps",
            "iwae_log_likelihood",
            "nuts_posterior",
            "posterior_draws",
            "score",
        ],
        "pyrovae.inference",
    ),
    **dict.fromkeys(["fit", "load_run", "score_run", "train"], "pyrovae.run"),
    **dict.fromkeys(["VAE", "VARIANTS", "ConditionalVAE", "SemiSupervisedVAE"], "pyrovae.variants"),
}

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


def __getattr__(name: str) -> Any:
    if name not in _HOMES:  # a submodule (``pyrovae.run``), as an eager import made them
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
        raise AttributeError(f"module 'pyrovae' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
