"""The run configuration: plain data in sections, read from TOML and overridden by CLI flags.

A run is described by five sections, each a table of plain values::

    [data]          dataset, data, data_dir, download, binarize, test_fraction,
                    validation_fraction, limit, image_size, image_mode, mmap, num_workers,
                    pin_memory, max_length, min_count, max_vocab, vocabulary
    [model]         latent_dim, hidden, and the components variant, prior, likelihood,
                    encoder, decoder, guide
    [objective]     num_particles, vectorize_particles, beta, kl_site_weights, and the
                    components elbo, kl_schedule
    [optimization]  num_epochs, batch_size, learning_rate, clip_norm, normalize_gradients,
                    compile, patience, time_limit, and the component lr_schedule
    [run]           seed, device, num_threads, num_eval_samples, eval_batch_size,
                    diagnostic_items, tensorboard, tensorboard_every

A **component** is a table of its own, its registered ``name`` and its options
(``[model.prior]`` ``name = "mixture"``, ``num_components = 3``); the options are the
ones the component declares (:mod:`pyrovae.registry`), checked when the config is made.
Every key and every declared option is also a CLI flag of the same name
(``latent_dim`` -> ``--latent-dim``, ``num_components`` -> ``--num-components``;
``--model`` picks the variant); an option flag goes to every chosen component that
declares it, and a flag that no chosen component takes is an error. A component that
neither the file nor the flags name is the variant's own default where it has one
(``--model vaegan`` builds ``conv`` networks) and the configuration's otherwise. The resolved
configuration is written to the run folder as ``config.toml``.

This module is the run layer's: the library below it (model, guides, variants,
inference) takes plain arguments and never imports it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pyrovae.data import BINARIZE, DATASETS, IMAGE_MODES
from pyrovae.errors import ConfigError
from pyrovae.guides import ENCODERS, GUIDES
from pyrovae.inference.training import ELBOS, SCHEDULES, make_elbo, make_schedule
from pyrovae.inference.training.compiled import OBJECTIVES as COMPILED_OBJECTIVES
from pyrovae.inference.training.optimization import LR_SCHEDULES, make_lr_schedulers
from pyrovae.model import DECODERS, LIKELIHOODS, PRIORS
from pyrovae.registry import Option, Registry, closest, coerce
from pyrovae.registry import component as name_and_options
from pyrovae.variants import VARIANTS

__all__ = [
    "COMPONENTS",
    "DEVICES",
    "SECTIONS",
    "Config",
    "Key",
    "check_seed",
    "default_component",
    "default_help",
    "flag_declarations",
    "flag_options",
    "from_flat",
    "load_config",
    "read_config",
    "save_config",
]

DEVICES = ("auto", "cpu", "cuda")

#: the seeds numpy, torch and Pyro all take (``pyro.set_rng_seed`` seeds numpy's 32-bit RNG)
SEEDS = range(0, 2**32)


def check_seed(value: int, where: str = "seed") -> int:
    """``value`` if it is a valid seed (``SEEDS``), else a :class:`ConfigError` naming
    ``where`` (the config key or a command's ``--seed``) and the range."""
    if value not in SEEDS:
        raise ConfigError(
            f"{where} must be an integer from 0 to {SEEDS[-1]} (numpy, torch and Pyro take "
            f"32-bit seeds), got {value}"
        )
    return value


@dataclass(frozen=True)
class Key:
    """A fixed key of a section: its type, default, help, and limits."""

    type: type
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    nullable: bool = False
    minimum: float | None = None
    #: the value must be above ``minimum`` (not equal to it)
    strict: bool = False


def _key(kind: type, default: Any, help: str, **kw: Any) -> Key:
    return Key(kind, default, help, nullable=default is None or kw.pop("nullable", False), **kw)


#: section -> key -> Key: the fixed keys of the run configuration
SECTIONS: dict[str, dict[str, Key]] = {
    "data": {
        "dataset": _key(str, "digits", "built-in data set", choices=tuple(DATASETS)),
        "data": _key(
            str,
            None,
            "a .npy/.npz array file, a .csv/.parquet table, a folder of images (one subfolder "
            "per class), or a .txt file of sentences (one per line, --model sentence), to "
            "train on instead of --dataset",
        ),
        "data_dir": _key(str, None, "folder holding (or receiving) MNIST/Fashion-MNIST files"),
        "download": _key(bool, False, "let torchvision download MNIST/Fashion-MNIST (internet)"),
        "binarize": _key(
            str,
            "none",
            "binarize pixels: none, at 0.5, once (static) or per batch",
            choices=BINARIZE,
        ),
        "test_fraction": _key(
            float,
            0.2,
            "held-out fraction for data without an official split",
            minimum=0.0,
            strict=True,
        ),
        "validation_fraction": _key(
            float,
            None,
            "carve this fraction of the training data out as a validation split (seeded; "
            "stratified by label): the per-epoch evaluation, early stopping and the best "
            "parameters use it, and the test set only the final evaluation",
            minimum=0.0,
            strict=True,
        ),
        "limit": _key(int, None, "use only the first N train and test items", minimum=1),
        "image_size": _key(tuple, None, "resize a folder's images to H W (or one side)"),
        "image_mode": _key(
            str,
            "auto",
            "read a folder's images as grayscale, rgb, or auto (grayscale when all are)",
            choices=IMAGE_MODES,
        ),
        "mmap": _key(bool, False, "memory-map a .npy file: batches read their rows from disk"),
        "column_types": _key(
            str,
            None,
            "a table's column types where inference should not decide, e.g. "
            "age=count,sex=categorical (real, real-laplace, positive, binary, categorical, "
            "count, count-nb)",
        ),
        "label_column": _key(str, None, "a table's column of class labels (not modelled)"),
        "num_workers": _key(
            int,
            None,
            "draw batches through a torch DataLoader with N worker processes "
            "(default: slice preloaded tensors; a memory-mapped file uses 0)",
            minimum=0,
        ),
        "pin_memory": _key(bool, True, "pin the DataLoader's batches in memory (CUDA only)"),
        "max_length": _key(int, 30, "sentences: drop those of more than N tokens", minimum=1),
        "min_count": _key(
            int, 1, "sentences: keep the training words seen N times or more", minimum=1
        ),
        "max_vocab": _key(
            int, None, "sentences: keep the N most frequent training words", minimum=1
        ),
        "vocabulary": _key(
            str,
            None,
            "sentences: read this vocabulary JSON instead of building one (a sentence run "
            "writes its own as vocabulary.json and sets this to it)",
        ),
    },
    "model": {
        "latent_dim": _key(int, 8, "dimension of z", minimum=1),
        "hidden": _key(tuple, (256, 128), "hidden layer sizes (encoder order; decoder mirrors)"),
    },
    "objective": {
        "num_particles": _key(
            int, 1, "samples of z per data point in the ELBO estimate", minimum=1
        ),
        "vectorize_particles": _key(
            bool, None, "draw the particles in one vectorized pass (default: the ELBO's own)"
        ),
        "beta": _key(float, 1.0, "weight of the KL term (beta-VAE), via poutine.scale", minimum=0),
        "kl_site_weights": _key(
            dict, {}, "a factor on beta for named latent sites, e.g. z2=0.5 (several sites)"
        ),
    },
    "optimization": {
        "num_epochs": _key(int, 300, "passes over the training data", minimum=1),
        "batch_size": _key(int, 64, "minibatch size", minimum=1),
        "learning_rate": _key(float, 1e-3, "Adam learning rate", minimum=0.0, strict=True),
        "clip_norm": _key(
            float, None, "clip the gradient norm to this value", minimum=0.0, strict=True
        ),
        "normalize_gradients": _key(
            bool,
            False,
            "divide each parameter's gradient by its L2 norm before the optimizer's update "
            "(the VampPrior code's AdamNormGrad)",
        ),
        "patience": _key(
            int,
            None,
            "early stopping: stop after this many epochs without a better validation score "
            "(the variant's monitor; not counted while the KL weight warms up); needs "
            "validation_fraction",
            minimum=1,
        ),
        "compile": _key(
            bool,
            False,
            "trace and compile the SVI step (Trace_ELBO, TraceMeanField_ELBO) as one graph: "
            "faster steps after seconds of compiling",
        ),
        "time_limit": _key(
            float,
            None,
            "stop after the first epoch that ends past this many seconds of epochs (those of "
            "a resumed run's earlier sessions count); the KL schedule still spans num_epochs",
            minimum=0.0,
            strict=True,
        ),
    },
    "run": {
        "seed": _key(int, 0, "random seed (data split, initialisation, sampling)"),
        "device": _key(
            str, "auto", "where tensors live: auto picks cuda when available", choices=DEVICES
        ),
        "num_threads": _key(
            int,
            None,
            "torch CPU threads (default: chosen from the work's size, the network's "
            "parameters times the batch size; pyrovae.threads)",
            minimum=1,
        ),
        "num_eval_samples": _key(
            int, 500, "importance samples K for the IWAE log p(x) at the end", minimum=1
        ),
        "eval_batch_size": _key(int, 500, "data points per evaluation batch", minimum=1),
        "diagnostic_items": _key(
            int, 1000, "held-out points for the per-epoch collapse diagnostics (0: none)", minimum=0
        ),
        "tensorboard": _key(
            bool,
            False,
            "log to RUN/tensorboard: epoch scalars, KL per dimension, image grids (needs the "
            "tensorboard extra)",
        ),
        "tensorboard_every": _key(
            int, 10, "epochs between TensorBoard image grids (and the last epoch)", minimum=1
        ),
    },
}


@dataclass(frozen=True)
class Component:
    """A component key: its section, registry, default entry, flag and help."""

    section: str
    registry: Registry
    default: str
    flag: str
    help: str


#: section key -> Component: the choices of registered components
COMPONENTS: dict[str, Component] = {
    "variant": Component("model", VARIANTS, "vae", "model", "the VAE variant"),
    "prior": Component("model", PRIORS, "normal", "prior", "prior p(z)"),
    "likelihood": Component("model", LIKELIHOODS, "bernoulli", "likelihood", "likelihood p(x|z)"),
    "encoder": Component("model", ENCODERS, "mlp", "encoder", "encoder network of the guide"),
    "decoder": Component("model", DECODERS, "mlp", "decoder", "decoder network of the model"),
    "guide": Component("model", GUIDES, "normal", "guide", "guide q(z|x): its posterior family"),
    "elbo": Component(
        "objective", ELBOS, "Trace_ELBO", "elbo", "Pyro ELBO (objective) to optimise"
    ),
    "kl_schedule": Component(
        "objective", SCHEDULES, "constant", "kl_schedule", "KL weight over the steps"
    ),
    "lr_schedule": Component(
        "optimization",
        LR_SCHEDULES,
        "constant",
        "lr_schedule",
        "learning rate over the epochs (torch.optim.lr_scheduler)",
    ),
}

#: flag name -> section key of a component choice
_COMPONENT_FLAGS = {c.flag: key for key, c in COMPONENTS.items()}


def _fixed_flags() -> dict[str, tuple[str, Key]]:
    return {
        key: (section, spec) for section, keys in SECTIONS.items() for key, spec in keys.items()
    }


def flag_declarations() -> dict[str, list[tuple[str, Option]]]:
    """Every component option as a flag: option name -> each owner's declaration,
    ``[("prior 'flow'", Option), ("guide 'iaf'", Option)]`` (owners may differ in help
    text and default: ``gamma`` of the VAE-GAN and of FactorVAE)."""
    found: dict[str, list[tuple[str, Option]]] = {}
    for component in COMPONENTS.values():
        registry = component.registry
        for entry in registry:
            for name, option in registry.options(entry).items():
                found.setdefault(name, []).append((f"{registry.kind} {entry!r}", option))
    return found


def flag_options() -> dict[str, tuple[Option, list[str]]]:
    """Every component option as a flag: option name -> (declaration, its owners
    ``["prior 'mixture'", ...]``). An option name declared by several components (e.g.
    ``num_flows``) is one flag that sets all of them; the declaration is the first
    owner's (:func:`flag_declarations` has each owner's)."""
    return {
        name: (found[0][1], [owner for owner, _ in found])
        for name, found in flag_declarations().items()
    }


def _check_fixed(section: str, key: str, value: Any) -> Any:
    spec = SECTIONS[section][key]
    where = f"config key {section}.{key}"
    value = coerce(value, spec.type, where, spec.nullable, spec.choices)
    bounded = spec.minimum is not None and value is not None and spec.type in (int, float)
    if bounded and (value < spec.minimum or (spec.strict and value == spec.minimum)):
        op = ">" if spec.strict else ">="
        raise ConfigError(f"{key} must be {op} {spec.minimum:g}, got {value}")
    if key == "seed":
        check_seed(value)
    if key == "image_size" and value is not None and (len(value) not in (1, 2) or min(value) < 1):
        raise ConfigError(f"image_size must be one or two positive sizes (H W), got {list(value)}")
    if key == "hidden" and (not value or min(value) < 1):
        raise ConfigError(f"hidden must list positive layer sizes, got {list(value)}")
    if key == "test_fraction" and not value < 1:
        raise ConfigError(f"test_fraction must be in (0, 1), got {value}")
    if key == "kl_site_weights":
        value = {str(k): coerce(v, float, f"kl_site_weights[{k!r}]") for k, v in value.items()}
        if any(v < 0 for v in value.values()):
            raise ConfigError(f"kl_site_weights must be >= 0, got {value}")
    return value


def _check_component(key: str, value: Any) -> dict[str, Any]:
    component = COMPONENTS[key]
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, Mapping) or not isinstance(value.get("name"), str):
        raise ConfigError(
            f"config key {component.section}.{key} must be a {component.registry.kind} name or "
            f"a table with a 'name' and its options, got {value!r}"
        )
    options = {k: v for k, v in value.items() if k != "name"}
    name = value["name"]
    declared = component.registry.options(name)
    checked = component.registry.check_options(name, options)
    # the declared defaults are written out, so config.toml shows every option in force
    return {"name": name, **{k: checked.get(k, o.default) for k, o in declared.items()}}


def _variant_name(value: Any) -> str:
    """The variant a model section's ``variant`` value (a name or a table) names; the
    default variant when it names none."""
    name = value.get("name") if isinstance(value, Mapping) else value
    return name if isinstance(name, str) else COMPONENTS["variant"].default


def default_component(key: str, variant: str) -> str:
    """The component ``key`` of a run of ``variant`` that names none: the variant's own
    default (``VAE.component_defaults``, e.g. the VAE-GAN's ``conv`` networks), else the
    configuration's."""
    own = VARIANTS[variant].component_defaults if variant in VARIANTS else {}
    return own.get(key, COMPONENTS[key].default)


def default_help(key: str) -> str:
    """``key``'s default for ``--help``: ``mlp; conv for --model vaegan``."""
    special = [
        f"{VARIANTS[v].component_defaults[key]} for --model {v}"
        for v in VARIANTS
        if key in VARIANTS[v].component_defaults
    ]
    return "; ".join([COMPONENTS[key].default, *special])


def _defaults(variant: str | None = None) -> dict[str, dict[str, Any]]:
    """Every key's default, the components' those of ``variant`` (the default variant's
    when ``None``)."""
    variant = variant or COMPONENTS["variant"].default
    values: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for section, keys in SECTIONS.items():
        for key, spec in keys.items():
            values[section][key] = copy.deepcopy(spec.default)
    for key, component in COMPONENTS.items():
        name = variant if key == "variant" else default_component(key, variant)
        values[component.section][key] = {"name": name}
    return values


def _validate(values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Check a sectioned config, fill in the defaults; unknown names get a suggestion."""
    unknown = [s for s in values if s not in SECTIONS]
    if unknown:
        raise ConfigError(
            f"unknown config section {unknown[0]!r}{closest(unknown[0], SECTIONS)}; the "
            f"sections are: {', '.join(SECTIONS)}"
        )
    model = values.get("model")
    result = _defaults(_variant_name(model.get("variant") if isinstance(model, Mapping) else None))
    for section, table in values.items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"config section [{section}] must be a table, got {table!r}")
        valid = [*SECTIONS[section], *(k for k, c in COMPONENTS.items() if c.section == section)]
        for key, value in table.items():
            if key not in valid:
                raise ConfigError(
                    f"unknown config key {section}.{key}{closest(key, valid)}; the keys of "
                    f"[{section}] are: {', '.join(valid)}"
                )
            result[section][key] = value
    for section, keys in SECTIONS.items():
        for key in keys:
            result[section][key] = _check_fixed(section, key, result[section][key])
    for key, component in COMPONENTS.items():
        result[component.section][key] = _check_component(key, result[component.section][key])
    _check_combinations(result)
    return result


def _check_combinations(values: dict[str, dict[str, Any]]) -> None:
    """Combinations of sections and components that cannot work; the components check
    their own options, and building the objective and schedule here runs those checks
    before any data are loaded."""
    model, objective = values["model"], values["objective"]
    elbo, schedule = objective["elbo"]["name"], objective["kl_schedule"]["name"]
    make_elbo(
        elbo,
        objective["num_particles"],
        objective["vectorize_particles"],
        name_and_options(objective["elbo"])[1],
    )
    make_schedule(schedule, name_and_options(objective["kl_schedule"])[1], beta=objective["beta"])
    optimization = values["optimization"]
    lr_name, lr_options = name_and_options(optimization["lr_schedule"])
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    make_lr_schedulers(lr_name, lr_options, {"probe": probe}, optimization["num_epochs"])
    fraction = values["data"]["validation_fraction"]
    if fraction is not None and fraction >= 1.0:
        raise ConfigError(
            f"validation_fraction must be between 0 and 1 (exclusive), got {fraction}"
        )
    if optimization["patience"] is not None and fraction is None:
        raise ConfigError(
            "--patience stops on the validation score, and this run has no validation split; "
            "add --validation-fraction (e.g. 0.1)"
        )
    if elbo == "InfoVAE_ELBO" and values["optimization"]["batch_size"] < 2:
        raise ConfigError("InfoVAE_ELBO estimates an MMD within a minibatch: batch_size >= 2")
    if elbo == "FreeBits_ELBO" and model["prior"]["name"] not in ("normal", "learned-normal"):
        raise ConfigError(
            "free bits need the KL of each latent dimension, which a "
            f"{model['prior']['name']} prior does not have; use --prior normal or "
            "learned-normal, or another --elbo"
        )
    if values["optimization"]["compile"] and elbo not in COMPILED_OBJECTIVES:
        raise ConfigError(
            f"--compile traces {' and '.join(COMPILED_OBJECTIVES)}; use one of them, or "
            f"--elbo {elbo} without --compile"
        )
    if elbo.startswith("Jit") and schedule != "constant":
        raise ConfigError(
            f"{elbo} compiles the loss once per value of beta, so a changing KL weight "
            f"(--kl-schedule {schedule}) would recompile it every step; use --elbo "
            "Trace_ELBO with a schedule"
        )
    if elbo == "FreeBits_ELBO" and model["guide"]["name"] != "normal":
        raise ConfigError(
            f"free bits need the KL of each latent dimension, which the "
            f"{model['guide']['name']} guide (correlated dimensions) does not have; use "
            "--guide normal"
        )


def _apply_flags(
    values: dict[str, dict[str, Any]], flags: Mapping[str, Any], *, strict: bool
) -> dict[str, dict[str, Any]]:
    """Set flat flags (CLI flags, keyword arguments, a legacy flat config) in sectioned
    ``values``: fixed keys and component choices first, then component options, each to
    every chosen component that declares it. ``strict``: an option that no chosen
    component takes is an error (else dropped, as a legacy flat config lists every one)."""
    values = copy.deepcopy(values)
    fixed = _fixed_flags()
    options = {}
    for flag, value in flags.items():
        if flag in fixed:
            section = fixed[flag][0]
            values[section][flag] = value
        elif flag in _COMPONENT_FLAGS:
            key = _COMPONENT_FLAGS[flag]
            table = values[COMPONENTS[key].section].get(key, {})
            if isinstance(table, Mapping) and table.get("name") == value:
                continue  # the same component: its options stay
            values[COMPONENTS[key].section][key] = {"name": value}
        else:
            options[flag] = value
    known = flag_options()
    for flag, value in options.items():
        targets = []
        for key, component in COMPONENTS.items():
            table = values[component.section][key]
            name = table["name"] if isinstance(table, Mapping) else table
            if name in component.registry and flag in component.registry.options(name):
                targets.append((component.section, key))
        if not targets:
            if not strict and flag in known:
                continue  # a legacy flat config lists the options of every component
            if flag in known:
                raise ConfigError(
                    f"--{flag.replace('_', '-')} is an option of {', '.join(known[flag][1])}, "
                    "none of which this run uses; choose one of those or drop the flag"
                )
            valid = [*fixed, *_COMPONENT_FLAGS, *known]
            raise ConfigError(f"unknown config key {flag!r}{closest(flag, valid)}")
        for section, key in targets:
            table = values[section][key]
            values[section][key] = {**({"name": table} if isinstance(table, str) else table)}
            values[section][key][flag] = value
    return values


@dataclass(frozen=True)
class Config:
    """The run configuration: five sections of plain data (see the module docstring).

    Make one with :meth:`from_flags` (flat keys, as on the command line), :meth:`from_dict`
    (sections, as in ``config.toml``) or :func:`load_config`; every way validates it.

    Examples
    --------
    >>> config = Config.from_flags(prior="mixture", num_components=3, num_epochs=5)
    >>> config.model["prior"]
    {'name': 'mixture', 'num_components': 3}
    >>> config.optimization["num_epochs"]
    5
    >>> Config.from_flags(num_component=3)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    pyrovae.errors.ConfigError: unknown config key 'num_component' (did you mean ...
    """

    data: dict[str, Any]
    model: dict[str, Any]
    objective: dict[str, Any]
    optimization: dict[str, Any]
    run: dict[str, Any]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Config:
        """A config from sections (missing keys take their defaults)."""
        return cls(**_validate(values))

    @classmethod
    def from_flags(cls, **flags: Any) -> Config:
        """The default config with flat ``flags`` applied, as the CLI applies its flags."""
        return cls.from_dict(
            _apply_flags(_defaults(_variant_name(flags.get("model"))), flags, strict=True)
        )

    def replace(self, **flags: Any) -> Config:
        """A copy with flat ``flags`` applied (validated like any other config)."""
        return Config.from_dict(_apply_flags(self.to_dict(), flags, strict=True))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested values (tuples as lists), for TOML, JSON and checkpoints."""

        def plain(value: Any) -> Any:
            if isinstance(value, tuple | list):
                return [plain(v) for v in value]
            if isinstance(value, Mapping):
                return {k: plain(v) for k, v in value.items()}
            return value

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def options(self, section: str, key: str) -> dict[str, Any]:
        """The options of the component ``section.key`` (its table less its name)."""
        return name_and_options(getattr(self, section)[key])[1]


def from_flat(values: Mapping[str, Any]) -> Config:
    """A config from the flat keys of pyrovae 0.1 (``config.toml`` and checkpoints of
    format 1). Options of components the run did not choose are dropped (that format
    listed every option), as is ``vectorize_particles = false`` (it meant the ELBO's own
    default)."""
    values = dict(values)
    if values.get("vectorize_particles") is False:
        del values["vectorize_particles"]
    return Config.from_dict(_apply_flags(_defaults(), values, strict=False))


def is_flat(values: Mapping[str, Any]) -> bool:
    """Whether ``values`` are the flat keys of pyrovae 0.1 (no tables) rather than sections
    (a file that mixes both is read as sections, and its stray keys are errors)."""
    return bool(values) and not any(isinstance(v, Mapping) for v in values.values())


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The values of a TOML config file, as they are written (no defaults filled in)."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None


def load_config(path: str | os.PathLike, **flags: Any) -> Config:
    """Read a TOML config file (sections, or the flat keys of pyrovae 0.1); ``flags``
    (e.g. explicit CLI flags) take precedence."""
    values = read_config(path)
    if is_flat(values):
        config = from_flat(values)
    else:
        model = values.get("model", {})
        other = "model" in flags and isinstance(model, Mapping)
        if other and _variant_name(model.get("variant")) != flags["model"]:
            # another variant: the components the file does not name are its defaults
            values = {**values, "model": {**model, "variant": {"name": flags["model"]}}}
        config = Config.from_dict(values)
    return config.replace(**flags) if flags else config


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        pairs = (f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(pairs) + "}"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    return repr(value)


def save_config(config: Config, path: str | os.PathLike) -> None:
    """Write ``config`` as TOML, atomically: a table per section and per component
    (``None`` values are left out: they are the defaults)."""
    lines = ["# pyrovae run configuration"]
    for section, table in config.to_dict().items():
        plain = {k: v for k, v in table.items() if k not in COMPONENTS and v is not None}
        lines += ["", f"[{section}]", *(f"{k} = {_toml_value(v)}" for k, v in plain.items())]
        for key in (k for k in table if k in COMPONENTS):
            lines += ["", f"[{section}.{key}]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in table[key].items() if v is not None]
    from pyrovae.runfolder import write_text

    write_text(path, "\n".join(lines) + "\n")
