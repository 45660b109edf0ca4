"""The run configuration: one frozen dataclass, read from TOML and overridden by CLI flags.

Every field is a CLI flag of the same name (``latent_dim`` -> ``--latent-dim``) and a
key of the TOML config file; the resolved configuration is written to the run folder
as ``config.toml`` so a run can be repeated with ``--config RUN/config.toml``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from pyrovae.data import BINARIZE, DATASETS
from pyrovae.errors import ConfigError
from pyrovae.guides import GUIDES
from pyrovae.guides.encoders import ENCODERS
from pyrovae.inference.objectives import ELBOS, KERNELS
from pyrovae.inference.schedules import SCHEDULES
from pyrovae.model.decoders import DECODERS
from pyrovae.model.likelihoods import LEARN_SCALE, LIKELIHOODS
from pyrovae.model.priors import PRIORS
from pyrovae.models import MODELS

__all__ = ["DEVICES", "Config", "load_config", "save_config"]

DEVICES = ("auto", "cpu", "cuda")


def _field(default: Any, help: str, choices: Any = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class Config:
    """Everything that defines a run. Defaults train a small VAE on the bundled digits."""

    # data
    dataset: str = _field("digits", "built-in data set", DATASETS)
    data: str | None = _field(None, "a .npy/.npz array file to train on instead of --dataset")
    data_dir: str | None = _field(None, "folder holding (or receiving) MNIST/Fashion-MNIST files")
    download: bool = _field(False, "let torchvision download MNIST/Fashion-MNIST (needs internet)")
    binarize: str = _field(
        "none", "binarize pixels: none, at 0.5, once (static) or per batch", BINARIZE
    )
    test_fraction: float = _field(0.2, "held-out fraction for data without an official split")
    limit: int | None = _field(None, "use only the first N train and test items")
    # model
    model: str = _field(
        "vae", "vae, cvae (conditional on labels y) or m2 (semi-supervised)", MODELS
    )
    num_classes: int | None = _field(
        None, "labels of cvae/m2 (default: one more than the largest label in the data)"
    )
    labels_per_class: int = _field(
        10, "m2: labelled training items per class (the rest are used without labels)"
    )
    alpha: float | None = _field(
        None, "m2: weight of the classification loss (default: 0.1 * training items)"
    )
    latent_dim: int = _field(8, "dimension of z")
    prior: str = _field("normal", "prior p(z)", PRIORS)
    num_components: int = _field(10, "components of the mixture prior")
    likelihood: str = _field("bernoulli", "likelihood p(x|z)", LIKELIHOODS)
    scale: float = _field(0.1, "gaussian/laplace scale (fixed, or initial value if learned)")
    learn_scale: str = _field(
        "fixed", "gaussian/laplace scale: fixed, one global, per pixel", LEARN_SCALE
    )
    encoder: str = _field("mlp", "encoder network of the guide q(z|x)", ENCODERS)
    decoder: str = _field("mlp", "decoder network of the model p(x|z)", DECODERS)
    hidden: tuple[int, ...] = _field(
        (256, 128), "hidden layer sizes (encoder order; decoder mirrors)"
    )
    guide: str = _field("normal", "guide q(z|x): diagonal, low-rank Gaussian, or IAF", GUIDES)
    guide_rank: int = _field(2, "rank of the low-rank guide's covariance factor")
    num_flows: int = _field(2, "inverse autoregressive flow steps of the iaf guide")
    # objective
    elbo: str = _field("Trace_ELBO", "Pyro ELBO to optimise", ELBOS)
    num_particles: int = _field(1, "samples of z per data point in the ELBO estimate")
    vectorize_particles: bool = _field(False, "draw the particles in one vectorized pass")
    beta: float = _field(1.0, "weight of the KL term (beta-VAE), via poutine.scale")
    kl_schedule: str = _field(
        "constant", "KL weight over the steps: beta, warm-up to beta, or cycles", SCHEDULES
    )
    warmup_epochs: int = _field(10, "linear schedule: epochs of warm-up from 0 to beta")
    warmup_steps: int | None = _field(None, "linear schedule: warm-up in steps (overrides epochs)")
    num_cycles: int = _field(4, "cyclical schedule: cycles over the run")
    cycle_ratio: float = _field(0.5, "cyclical schedule: fraction of a cycle spent increasing")
    free_bits: float = _field(0.25, "FreeBits_ELBO: KL floor lambda in nats per latent dimension")
    mmd_alpha: float = _field(0.0, "InfoVAE_ELBO: alpha (the KL term is weighted 1 - alpha)")
    mmd_lambda: float = _field(1000.0, "InfoVAE_ELBO: lambda (MMD weight is alpha + lambda - 1)")
    mmd_kernel: str = _field("rbf", "InfoVAE_ELBO: kernel of the MMD", KERNELS)
    renyi_alpha: float = _field(0.0, "RenyiELBO: order alpha of the bound (0 is IWAE)")
    # optimisation
    num_epochs: int = _field(300, "passes over the training data")
    batch_size: int = _field(64, "minibatch size")
    learning_rate: float = _field(1e-3, "Adam learning rate")
    clip_norm: float | None = _field(None, "clip the gradient norm to this value")
    seed: int = _field(0, "random seed (data split, initialisation, sampling)")
    device: str = _field("auto", "where tensors live: auto picks cuda when available", DEVICES)
    num_threads: int | None = _field(None, "torch CPU threads (default: torch's own choice)")
    # evaluation
    num_eval_samples: int = _field(500, "importance samples K for the IWAE log p(x) at the end")
    eval_batch_size: int = _field(500, "data points per evaluation batch")
    diagnostic_items: int = _field(
        1000, "held-out points for the per-epoch collapse diagnostics (0: none)"
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices is not None and value not in choices:
                raise ConfigError(
                    f"unknown {f.name.replace('_', ' ')} {value!r}; choose one of: "
                    f"{', '.join(choices)}"
                )
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be a finite number, got {value}")
        positive = (
            "latent_dim",
            "guide_rank",
            "num_flows",
            "num_cycles",
            "num_components",
            "num_particles",
            "num_epochs",
            "batch_size",
            "num_eval_samples",
            "eval_batch_size",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.hidden or min(self.hidden) < 1:
            raise ConfigError(f"hidden must list positive layer sizes, got {self.hidden}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.learning_rate <= 0 or self.beta < 0 or self.scale <= 0:
            raise ConfigError("learning_rate and scale must be > 0 and beta >= 0")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ConfigError(f"clip_norm must be > 0, got {self.clip_norm}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"num_threads must be >= 1, got {self.num_threads}")
        if self.labels_per_class < 1:
            raise ConfigError(f"labels_per_class must be >= 1, got {self.labels_per_class}")
        if self.alpha is not None and self.alpha < 0:
            raise ConfigError(f"alpha must be >= 0, got {self.alpha}")
        if self.num_classes is not None and self.num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1, got {self.limit}")
        if self.diagnostic_items < 0:
            raise ConfigError(f"diagnostic_items must be >= 0, got {self.diagnostic_items}")
        self._check_objective()

    def _check_objective(self) -> None:
        """Combinations of objective, schedule, prior and guide that cannot work."""
        if self.warmup_epochs < 0 or (self.warmup_steps is not None and self.warmup_steps < 0):
            raise ConfigError("warmup_epochs and warmup_steps must be >= 0")
        if not 0.0 < self.cycle_ratio <= 1.0:
            raise ConfigError(f"cycle_ratio must be in (0, 1], got {self.cycle_ratio}")
        if self.free_bits < 0:
            raise ConfigError(f"free_bits must be >= 0 nats per dimension, got {self.free_bits}")
        if self.elbo in ("IWAE", "RenyiELBO") and self.num_particles < 2:
            raise ConfigError(
                f"{self.elbo} with one particle is the ELBO; set --num-particles K >= 2 "
                "(e.g. 5 or 50)"
            )
        if self.elbo == "RenyiELBO" and self.renyi_alpha == 1:
            raise ConfigError("renyi_alpha = 1 is the ELBO; use --elbo Trace_ELBO")
        if self.elbo == "InfoVAE_ELBO" and self.mmd_alpha + self.mmd_lambda < 1:
            raise ConfigError(
                "InfoVAE needs mmd_alpha + mmd_lambda >= 1 (the MMD weight is their sum - 1)"
            )
        if self.elbo == "InfoVAE_ELBO" and self.batch_size < 2:
            raise ConfigError("InfoVAE_ELBO estimates an MMD within a minibatch: batch_size >= 2")
        if self.elbo == "FreeBits_ELBO" and self.prior == "mixture":
            raise ConfigError(
                "free bits need the KL of each latent dimension, which a mixture prior does not "
                "have; use --prior normal or learned-normal, or another --elbo"
            )
        if self.elbo.startswith("Jit") and self.kl_schedule != "constant":
            raise ConfigError(
                f"{self.elbo} compiles the loss once per value of beta, so a changing KL weight "
                f"(--kl-schedule {self.kl_schedule}) would recompile it every step; use --elbo "
                "Trace_ELBO with a schedule"
            )
        if self.elbo == "FreeBits_ELBO" and self.guide != "normal":
            raise ConfigError(
                f"free bits need the KL of each latent dimension, which the {self.guide} guide "
                "(correlated dimensions) does not have; use --guide normal"
            )

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied (validated like any other config)."""
        return from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Plain values (tuples as lists), suitable for TOML, JSON and checkpoints."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


def field_type(f: dataclasses.Field) -> type:
    """The base type of a field: ``int | None`` -> ``int``, ``tuple[int, ...]`` -> ``tuple``."""
    hint = typing.get_type_hints(Config)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = args[0]
    return typing.get_origin(hint) or hint


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    kind = field_type(f)
    if value is None:
        return None
    if (
        kind is tuple
        and isinstance(value, list | tuple)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return tuple(value)
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind in (int, str, bool) and type(value) is kind:
        return value
    raise ConfigError(
        f"config key {f.name!r} needs a {'list of int' if kind is tuple else kind.__name__}, "
        f"got {value!r}"
    )


def from_dict(values: dict[str, Any]) -> Config:
    """Build a :class:`Config`, rejecting unknown keys with a suggestion."""
    fields = {f.name: f for f in dataclasses.fields(Config)}
    unknown = [k for k in values if k not in fields]
    if unknown:
        hints = [difflib.get_close_matches(k, fields, n=1) for k in unknown]
        detail = ", ".join(
            f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in zip(unknown, hints)
        )
        raise ConfigError(f"unknown config key {detail}; valid keys: {', '.join(fields)}")
    return Config(**{k: _coerce(fields[k], v) for k, v in values.items()})


def load_config(path: str | os.PathLike, **overrides: Any) -> Config:
    """Read a TOML config file; ``overrides`` (e.g. explicit CLI flags) take precedence."""
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    return from_dict({**values, **overrides})


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def save_config(config: Config, path: str | os.PathLike) -> None:
    """Write ``config`` as TOML (``None`` values are left out: they are the defaults)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in config.to_dict().items() if v is not None]
    Path(path).write_text("# pyrovae run configuration\n" + "\n".join(lines) + "\n")
