"""Run folders: ``fit(config, workdir)`` trains and writes everything a run produces;
``load_run(workdir)`` rebuilds the trained VAE from its checkpoint.

A run folder holds::

    config.toml         the resolved configuration (repeat with --config)
    checkpoint.pt       model, guide, optimizer, RNG states, metrics (resume with --resume)
    metrics.jsonl       one line per epoch: objective, train and held-out ELBO (nats per data
                        point), KL weight, collapse diagnostics
    evaluation.json     held-out ELBO, IWAE log p(x) with K samples, reconstruction error
                        (per column type for a table)
    elbo.png, reconstructions.png, samples.png (a table: elbo.png and samples.csv)
    table.json, table.npz  a table run's encoding and encoded rows (it reads no CSV again)
    tensorboard/        event files, with ``tensorboard = true`` (``--tensorboard``)
    scores.json         sample quality (written by ``score_run``, ``pyrovae score``)
    evaluation-k*.json, samples-n*.png/.npy    written by ``pyrovae evaluate``, ``sample``
    .lock               while a command writes into the folder (:mod:`pyrovae.runfolder`)

Under ``torchrun`` every process runs :func:`fit` as one rank of a data-parallel run
(:mod:`pyrovae.inference.training.distributed`): rank 0 alone writes the run folder, which
every rank reads to ``--resume``, so on several machines it must be on a file system they
share.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pyrovae import plots, runfolder
from pyrovae.config import COMPONENTS, Config, from_flat, is_flat, save_config
from pyrovae.data import DataFactorSampler, Dataset, FactorSampler, Loader, load_dataset
from pyrovae.data.tables import (
    TableDataset,
    TableEncoding,
    is_table,
    read_table_run,
    write_table_run,
)
from pyrovae.errors import CheckpointError, ConfigError, DataError, PyroVAEError
from pyrovae.inference import score
from pyrovae.inference.sites import require
from pyrovae.inference.training import (
    Trainer,
    TrainingStep,
    distributed,
    elbo_context,
    make_elbo,
    make_schedule,
)
from pyrovae.inference.training.checkpoint import load_checkpoint, save_checkpoint
from pyrovae.inference.training.optimization import make_lr_schedulers
from pyrovae.inference.training.trainer import refuse_overwrite
from pyrovae.memory import check_networks_fit
from pyrovae.progress import enabled as progress_enabled
from pyrovae.registry import component as name_and_options
from pyrovae.runfolder import atomic_write, write_json
from pyrovae.tensorboard import TensorBoardLogger, require_tensorboard
from pyrovae.threads import set_threads
from pyrovae.variants import VAE, VARIANTS, build_variant

__all__ = [
    "FitResult",
    "evaluate_run",
    "factor_sampler",
    "fit",
    "load_data",
    "load_run",
    "make_step",
    "make_tensorboard",
    "make_trainer",
    "resolve_classes",
    "resolve_device",
    "resolve_vocabulary",
    "save_figure",
    "score_run",
    "split_validation",
    "table_likelihood",
    "train",
    "use_best",
    "write_table_samples",
]

logger = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; a missing CUDA is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda was asked for but no CUDA device is available; use --device cpu or auto"
        )
    return torch.device(device)


def load_data(
    config: Config, device: torch.device, run: str | os.PathLike | None = None
) -> Dataset:
    """The run's data set, preloaded on ``device`` when it fits.

    With ``run`` (the run folder, or a checkpoint file in it), a table run's rows are the
    ones it trained on, from its ``table.npz``, and its encoding is its ``table.json``
    (:func:`~pyrovae.data.tables.read_table_run`): the training file is not read. A run
    written before those files existed reads its training file again.

    With ``num_workers`` (or ``mmap``, which implies 0 workers), and on a GPU that the data
    do not fit (more than half of its free memory), the training batches come from a
    :class:`torch.utils.data.DataLoader` in pinned memory; under torchrun each rank's share is
    :class:`torch.utils.data.DistributedSampler`'s (:class:`~pyrovae.data.Shard`). A
    ``.npy`` file whose float32 items would take more than half of the machine's memory
    is memory-mapped without being asked (:func:`_outgrows_memory`).
    """
    d = config.data
    mmap = d["mmap"] or _outgrows_memory(d["data"], d["binarize"])
    workers = d["num_workers"]
    if workers is None and mmap:
        workers = 0
    loader = None if workers is None else Loader(workers, pin_memory=d["pin_memory"])
    stored = None
    if run is not None and is_table(d["data"]):
        folder = Path(run) if Path(run).is_dir() else Path(run).parent
        stored = read_table_run(folder, Path(d["data"]).stem)
    if stored is not None and stored[1] is not None:
        data = dataclasses.replace(stored[1], loader=loader)
    else:
        data = _load_dataset(config, mmap, loader, None if stored is None else stored[0])
    if loader is not None:
        return data  # on the CPU, where the workers read it; batches move per step
    if device.type == "cuda":
        size = (data.train.numel() + data.test.numel()) * data.train.element_size()
        if size > 0.5 * torch.cuda.mem_get_info(device)[0]:
            logger.warning(
                "data (%.1f GB) kept on the CPU: they do not fit the GPU; batches come from a "
                "DataLoader in pinned memory (--num-workers N adds workers)",
                size / 1e9,
            )
            return dataclasses.replace(data, loader=Loader(0, pin_memory=d["pin_memory"]))
    return data.to(device)


def _load_dataset(
    config: Config, mmap: bool, loader: Loader | None, table: TableEncoding | None
) -> Dataset:
    """:func:`~pyrovae.data.load_dataset` of the run's data section (``table``: a table
    run's stored encoding, applied to its training file instead of one fitted again)."""
    d = config.data
    return load_dataset(
        d["dataset"],
        path=d["data"],
        data_dir=d["data_dir"],
        binarize=d["binarize"],
        test_fraction=d["test_fraction"],
        seed=config.run["seed"],
        download=d["download"],
        limit=d["limit"],
        image_size=d["image_size"],
        image_mode=d["image_mode"],
        mmap=mmap,
        loader=loader,
        column_types=d["column_types"],
        label_column=d["label_column"],
        table_encoding=table,
        max_length=d["max_length"],
        min_count=d["min_count"],
        max_vocab=d["max_vocab"],
        vocabulary=d["vocabulary"],
    )


def factor_sampler(config: Config, device: torch.device) -> FactorSampler:
    """What the disentanglement metrics of a run draw from: the exact renderer of a
    procedural dSprites run (:data:`pyrovae.data.dsprites.SAMPLERS`: ``DSprites.full()`` or
    ``.small()``, whatever ``limit`` the run trained with), else the run's train and test
    items with their factors, by lookup (:meth:`DataFactorSampler.from_dataset`).

    Raises
    ------
    DataError
        If the run's data have no factor labels.
    """
    from pyrovae.data.dsprites import SAMPLERS

    if config.data["data"] is None and config.data["dataset"] in SAMPLERS:
        return SAMPLERS[config.data["dataset"]]()
    return DataFactorSampler.from_dataset(load_data(config, device), seed=config.run["seed"])


def memory_bytes() -> int:
    """The machine's physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _outgrows_memory(path: str | None, binarize: str) -> bool:
    """Whether ``path`` is a ``.npy`` file whose items, as float32, would take more than half
    of :func:`memory_bytes` (then it is memory-mapped; logged). Only with ``binarize="none"``,
    which is all a memory-mapped file takes."""
    import numpy as np

    if path is None or not path.endswith(".npy") or binarize != "none":
        return False
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return False  # the ordinary reader reports what is wrong with the file
    size = array.size * 4
    if size <= 0.5 * memory_bytes():
        return False
    logger.warning(
        "%s holds %.1f GB of float32 items, more than half of this machine's memory: "
        "memory-mapping it (--mmap)",
        path,
        size / 1e9,
    )
    return True


def resolve_classes(config: Config, data: Dataset) -> Config:
    """Fill in ``num_classes`` from the data's labels for a model that needs labels."""
    variant = config.model["variant"]
    if not VARIANTS[variant["name"]].needs_labels:
        return config
    if data.train_labels is None:
        raise DataError(
            f"--model {variant['name']} trains on labels, but {data.name} has none; use a "
            "labelled data set (digits, mnist, fashion-mnist, or an .npz file with y / y_train "
            "and y_test)"
        )
    found = data.num_classes
    labelled = sum(len(y) for y in (data.train_labels, data.test_labels) if y is not None)
    if found > labelled:  # e.g. a label of 10**9: classes are 0..K-1, not any integers
        raise DataError(
            f"{data.name} has labels up to {found - 1}, which would make {found} classes, more "
            f"than its {labelled} labelled items; labels must be class indices 0..K-1 "
            "(renumber them, e.g. with np.unique(y, return_inverse=True))"
        )
    if variant.get("num_classes") is None:
        return config.replace(num_classes=found)
    if found > variant["num_classes"]:
        raise DataError(
            f"{data.name} has labels up to {found - 1}, but num_classes is "
            f"{variant['num_classes']}; raise --num-classes to at least {found} or drop it"
        )
    return config


def table_likelihood(config: Config, data: Dataset) -> Config:
    """A table is modelled by the ``columns`` likelihood with the table's column types
    (:class:`~pyrovae.data.tables.TableDataset`); other data leave ``config`` as it is.
    The default likelihood (``bernoulli``) gives way to it; any other is refused."""
    table = getattr(data, "table", None)
    if table is None:
        return config
    variant = config.model["variant"]["name"]
    if variant != "vae":  # the other variants' guides do not read a table's input layer
        raise ConfigError(
            f"a table trains with --model vae; --model {variant} is for "
            f"{'sentences' if VARIANTS[variant].reads_text else 'images'}"
        )
    name = config.model["likelihood"]["name"]
    if name not in ("columns", COMPONENTS["likelihood"].default):
        raise ConfigError(
            f"a table is modelled column by column (--likelihood columns); drop --likelihood "
            f"{name}, or declare column types with --column-types (e.g. x=real-laplace)"
        )
    if config.model["prior"]["name"] == "vamp":
        raise ConfigError(
            "the vamp prior draws pseudo-inputs in the data's space, which a table's rows "
            "(category codes, counts, missing cells) do not have; choose another --prior (normal, "
            "learned-normal, mixture or flow)"
        )
    return config.replace(likelihood="columns", columns=table.column_types)


def resolve_vocabulary(config: Config, data: Dataset, workdir: Path) -> Config:
    """Fill in ``vocab_size`` from the data's vocabulary for a model of sentences, and keep
    the vocabulary in the run folder: a fresh run writes ``workdir/vocabulary.json`` and
    names it in the data section, so that evaluating, sampling and resuming read the same
    token ids. Sentences for another model, or another model's data for a model of
    sentences, are refused."""
    name = config.model["variant"]["name"]
    reads_text = VARIANTS[name].reads_text
    if data.vocabulary is None:
        if reads_text:
            raise DataError(
                f"--model {name} trains on sentences: give a .txt file with one sentence per "
                "line (--data sentences.txt)"
            )
        return config
    if not reads_text:
        raise DataError(f"{data.name} holds sentences; train a model of text (--model sentence)")
    size = len(data.vocabulary)
    given = config.model["variant"].get("vocab_size")
    if given is not None and given != size:
        raise ConfigError(
            f"vocab_size is {given} but the vocabulary has {size} tokens; drop --vocab-size "
            "(it is set from the data)"
        )
    if config.data["vocabulary"] is None:
        path = (workdir / "vocabulary.json").resolve()
        if distributed.is_main_process():
            data.vocabulary.save(path)
        config = config.replace(vocabulary=str(path))
    return config.replace(vocab_size=size)


def save_figure(fig: Any, path: str | os.PathLike) -> None:
    """Save ``fig`` (its format from the file name) atomically
    (:func:`~pyrovae.runfolder.atomic_write`)."""
    path = Path(path)
    atomic_write(path, lambda f: fig.savefig(f, format=path.suffix[1:] or None, dpi=120))


def model_section(vae: VAE) -> dict[str, Any]:
    """The model section that describes ``vae`` (its ``spec``), with every option in
    force; a user's own prior or likelihood object stays as ``"custom <type>"``."""
    if vae.is_custom:
        return dict(vae.spec)
    return Config.from_dict({"model": vae.spec}).model


def make_step(vae: VAE, config: Config) -> TrainingStep:
    """``vae``'s training step on the objective ``config`` describes."""
    objective, optimization = config.objective, config.optimization
    elbo = make_elbo(
        objective["elbo"]["name"],
        objective["num_particles"],
        objective["vectorize_particles"],
        config.options("objective", "elbo"),
    )
    step = vae.training_step(
        elbo, learning_rate=optimization["learning_rate"], clip_norm=optimization["clip_norm"]
    )
    if optimization["compile"]:
        require(vae, "compile", "--compile")
        if not hasattr(step, "compile"):
            raise ConfigError(
                f"--model {vae.name} cannot be used for --compile: its training step "
                f"({type(step).__name__}) has no compiled route"
            )
        step.compile()
    return step


def make_trainer(vae: VAE, data: Dataset, config: Config) -> Trainer:
    """The trainer of ``vae`` that ``config`` describes: its objective, step and KL schedule."""
    objective, optimization = config.objective, config.optimization
    step = make_step(vae, config)
    batch_size = optimization["batch_size"]
    schedule = make_schedule(
        objective["kl_schedule"]["name"],
        config.options("objective", "kl_schedule"),
        beta=objective["beta"],
        steps_per_epoch=vae.steps_per_epoch(data, batch_size, distributed.world_size()),
        num_epochs=optimization["num_epochs"],
    )
    lr_name, lr_options = name_and_options(optimization["lr_schedule"])
    return Trainer(
        vae,
        step,
        schedule,
        num_epochs=optimization["num_epochs"],
        batch_size=batch_size,
        kl_site_weights=objective["kl_site_weights"],
        eval_batch_size=config.run["eval_batch_size"],
        diagnostic_items=config.run["diagnostic_items"],
        seed=config.run["seed"],
        time_limit=optimization["time_limit"],
        patience=optimization["patience"],
        lr_schedulers=make_lr_schedulers(
            lr_name, lr_options, step.optimizers, optimization["num_epochs"]
        ),
        normalize_gradients=optimization["normalize_gradients"],
    )


def make_tensorboard(
    vae: VAE, data: Dataset, config: Config, workdir: str | os.PathLike | None
) -> TensorBoardLogger | None:
    """The TensorBoard callback of a run with ``tensorboard = true`` (``None`` without):
    it writes ``workdir/tensorboard/``, with image grids every ``tensorboard_every`` epochs
    of the first 16 held-out items' reconstructions and of prior samples."""
    run = config.run
    if not run["tensorboard"]:
        return None
    if workdir is None:
        raise ConfigError("--tensorboard writes RUN/tensorboard: train with a run folder")
    return TensorBoardLogger(
        Path(workdir) / "tensorboard",
        data.test[:16],
        data.test_labels[:16] if vae.requires_y else None,
        image_every=run["tensorboard_every"],
        seed=run["seed"],
    )


def train(
    vae: VAE,
    data: Dataset,
    config: Config,
    workdir: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    progress: bool | None = None,
    write_config: bool = False,
    validation: Dataset | None = None,
    run_files: Callable[[Path], None] | None = None,
) -> list[dict[str, Any]]:
    """Train ``vae`` on ``data`` as ``config`` describes (objective, schedule, optimizer,
    epochs); with ``workdir``, checkpoint after every epoch (and ``resume`` from there).
    Returns the per-epoch rows of :meth:`pyrovae.inference.training.Trainer.fit`.

    Everything is checked (the resume, the data, one evaluation of the step's losses, the
    tensorboard package for ``tensorboard = true``) before anything is written. With
    ``write_config``, ``workdir/config.toml`` is written once the run has started under
    ``config``: right after this session's first checkpoint (or, when no epoch is left to
    train, by :func:`fit` once it succeeds), so a refused or failed session leaves the
    configuration of the last checkpoint there. In a data-parallel run rank 0 alone writes;
    every rank trains and fits what the variant fits after its epochs, and rank 0's is
    saved. ``validation`` is the run's validation split, which the per-epoch evaluation,
    ``best.pt`` and early stopping read; without it, ``validation_fraction`` carves one
    out of ``data`` (:func:`split_validation`). ``run_files(workdir)``
    writes what else the run folder holds (a table's encoding and rows), with
    ``config.toml``.
    """
    if validation is None:
        data, validation = split_validation(data, config)
    saved = {**config.to_dict(), "model": model_section(vae)}
    board = make_tensorboard(vae, data, config, workdir)
    callbacks: list = [board] if board is not None else []
    if write_config and workdir is not None and distributed.is_main_process():
        callbacks.insert(0, _ConfigWriter(config, Path(workdir), run_files))
    with elbo_context(config.objective["elbo"]["name"]), board or contextlib.nullcontext():
        trainer = make_trainer(vae, data, config)
        if resume and workdir is not None:
            check_resumable(Path(workdir), saved, vae.event_shape)
        trainer.check(data, vae.training_size(data))
        history = trainer.fit(
            data,
            workdir,
            resume=resume,
            progress=progress,
            config=saved,
            check=False,
            callbacks=callbacks,
            validation=validation,
        )
    if vae.finish_training(data) and workdir is not None:
        _save_fitted(vae, data, Path(workdir))
    return history


def _save_fitted(vae: VAE, data: Dataset, workdir: Path) -> None:
    """Save what ``vae`` fitted after its epochs (a prior over codes) into the checkpoint,
    and fit and save it for ``best.pt``'s parameters too, when the run has them (a prior
    fitted to the last epoch's codes does not fit the best epoch's); ``vae`` keeps the
    last epoch's. The optimizers' and random states stay those of the last epoch, so
    ``--resume`` continues the epochs exactly and fits again. Every rank fits, rank 0
    writes, and the ranks go on together once it has."""

    def replace_parameters(path: Path) -> None:
        if distributed.is_main_process():
            state = load_checkpoint(path)
            state.pop("format_version", None)
            save_checkpoint({**state, "vae": vae.state_dict()}, path)

    replace_parameters(workdir / "checkpoint.pt")
    path = workdir / "best.pt"
    if path.exists():
        last = {k: v.clone() for k, v in vae.state_dict().items()}
        vae.load_state_dict(load_checkpoint(path, vae.device)["vae"])
        vae.finish_training(data)
        replace_parameters(path)
        vae.load_state_dict(last)
    distributed.barrier()


class _ConfigWriter:
    """An epoch callback that writes ``config.toml`` (and ``run_files(workdir)``) after
    the session's first checkpoint."""

    def __init__(
        self, config: Config, workdir: Path, run_files: Callable[[Path], None] | None = None
    ) -> None:
        self.config, self.workdir, self.run_files = config, workdir, run_files

    def __call__(self, trainer: Trainer | None = None, row: dict[str, Any] | None = None) -> None:
        if self.config is not None:
            save_config(self.config, self.workdir / "config.toml")
            if self.run_files is not None:
                self.run_files(self.workdir)
            self.config = None  # once


def saved_config(state: dict[str, Any]) -> Config:
    """The config a checkpoint was trained with (sections, or pyrovae 0.1's flat keys).

    A checkpoint's config lists every option in force, so an option it lacks came later:
    the variant's :attr:`~pyrovae.variants.VAE.legacy_options` give the values such a run
    was trained with (an hvae run from before ``decoder_reads_z2`` decoded z1 alone).
    """
    values = state.get("config", {})
    if is_flat(values):
        return from_flat(values)
    variant = values.get("model", {}).get("variant")
    if isinstance(variant, dict) and variant.get("name") in VARIANTS:
        variant = {**VARIANTS[variant["name"]].legacy_options, **variant}
        values = {**values, "model": {**values["model"], "variant": variant}}
    return Config.from_dict(values)


#: ``(section, key)`` of the settings that decide a run's training, validation and test
#: items: a resume must keep them
SPLIT_KEYS = (
    ("run", "seed"),
    ("data", "test_fraction"),
    ("data", "validation_fraction"),
    ("data", "limit"),
)


def check_resumable(
    workdir: Path, current: dict[str, Any], event_shape: Sequence[int] | None = None
) -> None:
    """Check that a run with config ``current`` (plain sections) on items of
    ``event_shape`` can resume ``workdir``: its model section and its items' shape, which
    decide every shape in the checkpoint, must be the same, and so must the settings that
    decide which items it trains, validates and is tested on (:data:`SPLIT_KEYS`): a
    validation item must not have been a training item, nor scores of two validation
    splits be compared by early stopping and ``best.pt``."""
    path = workdir / "checkpoint.pt"
    if not path.exists():
        raise PyroVAEError(f"there is no run to resume in {workdir}; drop --resume to start one")
    state = load_checkpoint(path)
    try:
        config = saved_config(state)
    except ConfigError as e:
        raise CheckpointError(
            f"checkpoint {path} holds a config this pyrovae cannot read: {e}"
        ) from None
    saved, model = config.model, current["model"]
    changed = sorted(k for k in {*saved, *model} if saved.get(k) != model.get(k))
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {model.get(k)!r}" for k in changed)
        raise CheckpointError(
            f"checkpoint {path} was trained with another architecture ({detail}); "
            "resume with the run's own config or start a new --workdir"
        )
    # a checkpoint of pyrovae 0.1 may hold no config: nothing to compare then
    sections = config.to_dict() if state.get("config") else current
    split = [
        (key, sections[section].get(key), current[section].get(key))
        for section, key in SPLIT_KEYS
        if sections[section].get(key) != current[section].get(key)
    ]
    if split:
        detail = ", ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in split)
        raise CheckpointError(
            f"checkpoint {path} was trained on another split of the data ({detail}); resume "
            "with the run's own settings or start a new --workdir"
        )
    _check_schedule_continues(path, sections["optimization"], current["optimization"])
    trained = state.get("event_shape")
    if event_shape is not None and trained is not None and list(trained) != list(event_shape):
        raise CheckpointError(
            f"checkpoint {path} was trained on items of shape {tuple(trained)}, the data now "
            f"have items of shape {tuple(event_shape)}; resume with the run's own data or "
            "start a new --workdir"
        )


def _check_schedule_continues(path: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """A resume continues the run's learning-rate schedule: it may not change it (a
    schedule begun at a resumed epoch would count its epochs from there, and one schedule's
    state would be loaded into another), and where a schedule sets the rate, not the
    learning rate or a cosine schedule's length either, which would be ignored."""
    schedule = saved["lr_schedule"]
    keys = ["lr_schedule"]
    if schedule["name"] != "constant":
        keys.append("learning_rate")
    if schedule["name"] == "cosine":  # it anneals over num_epochs
        keys.append("num_epochs")
    changed = [k for k in keys if saved[k] != current[k]]
    if changed:
        detail = ", ".join(f"{k}: {saved[k]!r} -> {current[k]!r}" for k in changed)
        raise CheckpointError(
            f"checkpoint {path} was trained with the {schedule['name']} learning-rate "
            f"schedule, which a resume continues ({detail}); resume with the run's own "
            f"{', '.join('--' + k.replace('_', '-') for k in keys)}, or start a new --workdir"
        )


@dataclass
class FitResult:
    """What :func:`fit` returns."""

    vae: VAE
    data: Dataset
    history: list[dict[str, Any]]
    evaluation: dict[str, float]
    workdir: Path


def fit(
    config: Config,
    workdir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool | None = None,
) -> FitResult:
    """Train the VAE ``config`` describes and write the run folder ``workdir``.

    Seeds everything with the run's seed, loads the data, builds the variant, sets torch's
    CPU threads (``num_threads``, or chosen from the network and batch size:
    :mod:`pyrovae.threads`), trains it (resuming from ``workdir`` when ``resume``), then
    evaluates on the held-out data with ``num_eval_samples`` importance samples and saves
    figures. With ``validation_fraction`` the validation split is carved out of the
    training items first (:func:`split_validation`), and after training the best epoch's
    parameters (``best.pt``) are loaded (:func:`use_best`): the returned VAE, the
    evaluation and the figures are the best epoch's.

    The folder is locked for the call (:func:`pyrovae.runfolder.lock`: a second writer is
    refused); a fresh run's folder is made only then, and removed again if the run is
    refused or fails before its first checkpoint. ``config.toml`` changes only once the
    run has started under the new configuration (see :func:`train`).

    ``progress`` shows the training's bar (``None``: on a terminal) and, unless it is
    ``False``, the final evaluation's bar on a terminal (:mod:`pyrovae.progress`).

    Under ``torchrun`` this is one rank of a data-parallel run: the process group lives
    for the call (:func:`~pyrovae.inference.training.distributed.process_group`; a variant
    that cannot train so is refused before it starts, on every rank alike), each rank
    trains on its share of the data and evaluates its share of the held-out items, rank 0
    writes the run folder, and every rank returns the same history and evaluation once
    the folder is complete.
    """
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"--workdir {workdir} is a file; give a folder for the run")
    if not resume:
        refuse_overwrite(workdir)
    if resume and not (workdir / "checkpoint.pt").exists():
        raise PyroVAEError(f"there is no run to resume in {workdir}; drop --resume to start one")
    if config.run["tensorboard"]:
        require_tensorboard()  # before loading the data; nothing is written yet
    if distributed.launched():
        # before the process group starts: every rank refuses alike, none waits for another
        variant = VARIANTS[config.model["variant"]["name"]]
        require(variant, "distributed", "data-parallel training (torchrun)")
    own = workdir / "vocabulary.json"
    if resume and config.data["vocabulary"] is not None and own.is_file():
        # a sentence run resumes on the vocabulary it wrote, wherever its folder has moved
        config = config.replace(vocabulary=str(own))
    # absolute data paths, so evaluate and --resume find the same files from anywhere
    paths = {
        k: str(Path(v).resolve())
        for k in ("data", "data_dir", "vocabulary")
        if (v := config.data[k])
    }
    config = config.replace(**paths)
    # one writer at a time: rank 0 locks the folder (other ranks never write); a fresh run's
    # folder is made here and removed again if the run fails before its first checkpoint
    held = distributed.launched_rank() == 0
    with (
        runfolder.lock(workdir, create=True) if held else contextlib.nullcontext(),
        distributed.process_group(resolve_device(config.run["device"])) as device,
    ):
        return _fit(config, workdir, device, resume=resume, progress=progress)


def _fit(
    config: Config,
    workdir: Path,
    device: torch.device,
    *,
    resume: bool,
    progress: bool | None,
) -> FitResult:
    """:func:`fit` once the device (and under ``torchrun`` the process group) is set."""
    run = config.run
    main = distributed.is_main_process()
    torch.manual_seed(run["seed"])  # every rank builds the same initial VAE
    # a download: rank 0 first, then the others read its files
    first = distributed.main_process_first() if config.data["download"] else None
    with first or contextlib.nullcontext():
        # a table run resumes on the rows (and encoding) it trained on
        data = load_data(config, device, workdir if resume else None)
    config = table_likelihood(resolve_classes(config, data), data)
    config = resolve_vocabulary(config, data, workdir)
    run_files = None
    if isinstance(data, TableDataset):
        run_files = functools.partial(write_table_run, data=data)
    data, validation = split_validation(data, config)
    check_networks_fit(lambda: build_variant(config.model, data.shape, seed=run["seed"]), device)
    vae = build_variant(config.model, data.shape, seed=run["seed"]).to(device)
    set_threads(run["num_threads"], vae, config.optimization["batch_size"])
    # a refused run leaves the folder as it was: train writes only after its checks
    history = train(
        vae,
        data,
        config,
        workdir,
        resume=resume,
        progress=progress,
        write_config=True,
        validation=validation,
        run_files=run_files,
    )
    best = use_best(vae, workdir)
    with progress_enabled(progress is not False and main):
        evaluation = evaluate_run(vae, data, config)
    if best is not None:
        evaluation["parameters"] = best
    if main:
        write_json(evaluation, workdir / "evaluation.json")
        if "log_likelihood" in evaluation:
            logger.info(
                "held-out: ELBO %.3f, log p(x) >= %.3f (IWAE, K=%d) nats per data point",
                evaluation["elbo"],
                evaluation["log_likelihood"],
                run["num_eval_samples"],
            )
        if "bits_per_dim" in evaluation:
            logger.info("held-out: %.4f bits/dim (IWAE)", evaluation["bits_per_dim"])
        write_figures(vae, data, history, workdir, None if best is None else best["epoch"])
        # written after the session's first checkpoint already (train); again here for a
        # session that had no epoch left to train, once it has succeeded
        save_config(config, workdir / "config.toml")
        if run_files is not None:
            run_files(workdir)
    distributed.barrier()  # every rank returns once the run folder is complete
    return FitResult(vae, data, history, evaluation, workdir)


def split_validation(data: Dataset, config: Config) -> tuple[Dataset, Dataset | None]:
    """``(data, validation)``: the run's validation split carved out of the training items
    (:meth:`Dataset.split_validation <pyrovae.data.Dataset.split_validation>`, seeded by the
    run's seed) when ``validation_fraction`` is set, else ``(data, None)``."""
    fraction = config.data["validation_fraction"]
    if fraction is None:
        return data, None
    data, validation = data.split_validation(fraction, config.run["seed"])
    logger.info(
        "validation split: %d of the training items (validation_fraction %g); %d train on",
        len(validation.test),
        fraction,
        len(data.train),
    )
    return data, validation


def use_best(vae: VAE, workdir: Path) -> dict[str, Any] | None:
    """Load ``workdir/best.pt``'s parameters into ``vae`` when the run has one (it has a
    validation split); returns what :func:`fit` notes in ``evaluation.json`` (the epoch and
    its validation score), or ``None``."""
    path = Path(workdir) / "best.pt"
    if not path.exists():
        return None
    best = load_checkpoint(path, vae.device)
    vae.load_state_dict(best["vae"])
    return {"checkpoint": "best.pt", "epoch": best["epoch"], best["monitor"]: best["score"]}


def evaluate_run(vae: VAE, data: Dataset, config: Config) -> dict[str, Any]:
    """The run's final held-out summary (``evaluation.json``): the variant's
    :meth:`~pyrovae.variants.VAE.evaluate_heldout` with ``num_eval_samples`` importance
    samples and its :meth:`~pyrovae.variants.VAE.evaluation_metrics`.

    In a data-parallel run each rank evaluates its contiguous share of the held-out items
    and the per-item means are combined exactly, ``num_data`` added up
    (:func:`~pyrovae.inference.training.distributed.split_means`).
    """
    run = config.run

    def heldout(part: slice) -> dict[str, Any]:
        x = data.test[part]
        y = None if data.test_labels is None else data.test_labels[part]
        evaluation = vae.evaluate_heldout(
            x,
            num_samples=run["num_eval_samples"],
            batch_size=run["eval_batch_size"],
            y=y if vae.requires_y else None,
        )
        evaluation.update(vae.evaluation_metrics(x, y))
        return evaluation

    return distributed.split_means(heldout, len(data.test))


def write_figures(
    vae: VAE,
    data: Dataset,
    history: list[dict[str, Any]],
    workdir: Path,
    best: int | None = None,
) -> None:
    """ELBO curves (the epoch ``best`` of ``best.pt`` starred), reconstructions of held-out
    inputs and prior samples, as PNG; for a
    table, whose rows are no images, the ELBO curves and ``samples.csv``: rows drawn from
    the model in the table's own columns and labels (:func:`write_table_samples`); the
    curves alone for another variant without images (``"images"`` in ``vae.cannot``:
    sentences)."""
    import matplotlib

    matplotlib.use("Agg")
    save_figure(plots.elbo_curves(history, best), workdir / "elbo.png")
    if isinstance(data, TableDataset):
        write_table_samples(vae, data.table, 64, workdir / "samples.csv")
        return
    if "images" in vae.cannot:  # a model of other items (sentences) has no image grids
        return
    x = data.test[:32]
    labels = {"y": data.test_labels[:32]} if vae.requires_y else {}
    save_figure(
        plots.reconstructions(x, vae.reconstruct(x, **labels)), workdir / "reconstructions.png"
    )
    # conditional variants draw the classes in turn: each column of the grid is one class
    title = "samples from the prior" + (", one class per column" if vae.needs_labels else "")
    nrow = getattr(vae, "num_classes", 8)
    save_figure(
        plots.image_grid(vae.sample(8 * nrow), nrow=nrow, title=title), workdir / "samples.png"
    )


def write_table_samples(
    vae: VAE, table: TableEncoding, num_rows: int, path: str | os.PathLike
) -> None:
    """Write ``num_rows`` rows drawn from a table run's model
    (:func:`~pyrovae.inference.applications.sample_rows`) as CSV, atomically, in the
    table's columns and labels (:meth:`~pyrovae.data.tables.TableEncoding.decode`)."""
    from pyrovae.inference.applications import sample_rows

    rows = table.decode(sample_rows(vae, num_rows))
    atomic_write(path, lambda f: f.write(rows.to_csv(index=False).encode()))


#: which parameters of a run folder :func:`load_run` reads
CHECKPOINTS = ("best", "last")


def load_run(
    workdir: str | os.PathLike, device: str | torch.device = "cpu", checkpoint: str = "best"
) -> tuple[VAE, Config, dict[str, Any]]:
    """Rebuild the trained VAE of a run folder; returns ``(vae, config, checkpoint)``.

    ``checkpoint="best"`` reads ``best.pt``, the parameters of the best epoch on the
    validation split, when the run has one (it was trained with ``validation_fraction``),
    and ``checkpoint.pt`` otherwise; ``"last"`` reads ``checkpoint.pt``, the last epoch's.
    ``workdir`` may also be a checkpoint file. Reads the checkpoints of this pyrovae and of
    pyrovae 0.1 (a flat config, one optimizer)."""
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
    path = Path(workdir)
    if path.is_dir():
        best = path / "best.pt"
        path = best if checkpoint == "best" and best.exists() else path / "checkpoint.pt"
    checkpoint = load_checkpoint(path, "cpu")
    values = checkpoint.get("config", {})
    model = values.get("model", {}) if not is_flat(values) else values
    custom = {k: v for k, v in model.items() if isinstance(v, str) and v.startswith("custom ")}
    if custom:
        raise CheckpointError(
            f"the run in {workdir} was trained with user objects ({custom}) that a checkpoint "
            "cannot rebuild; build the same VAE in Python and call "
            "vae.load_state_dict(load_checkpoint(path)['vae'])"
        )
    try:
        config = saved_config(checkpoint)
        vae = build_variant(config.model, checkpoint["event_shape"], seed=config.run["seed"])
        vae.load_state_dict(checkpoint["vae"])
    except (KeyError, RuntimeError, ConfigError) as e:
        raise CheckpointError(
            f"checkpoint in {workdir} does not match this pyrovae's VAE ({type(e).__name__}: "
            f"{str(e).splitlines()[0]}); it comes from another architecture or version"
        ) from None
    own = path.parent / "vocabulary.json"
    if config.data["vocabulary"] is not None and own.is_file():
        # a sentence run reads the vocabulary it wrote, wherever its folder has moved
        config = config.replace(vocabulary=str(own.resolve()))
    device = resolve_device(device) if isinstance(device, str) else device
    vae.eval()
    return vae.to(device), config, checkpoint


def score_run(
    workdir: str | os.PathLike,
    *,
    num_samples: int | None = None,
    batch_size: int = 500,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    num_threads: int | None = None,
    checkpoint: str = "best",
) -> dict[str, Any]:
    """Sample-quality scores of a run on its held-out data: :func:`pyrovae.inference.score`
    of the run's VAE and data set (the other arguments mean what they mean there), with
    ``num_threads`` torch threads (``None``: chosen as :func:`fit` chooses them, from the
    run's network and batch size; :mod:`pyrovae.threads`), with the parameters
    ``checkpoint`` names (:func:`load_run`).

    When ``workdir`` is a run folder (not a checkpoint file), the scores are also written
    to ``workdir/scores.json``, atomically and only once all of them are computed: a
    refused or interrupted call leaves the folder as it was. The folder is locked
    meanwhile (:func:`pyrovae.runfolder.lock`).
    """
    folder = Path(workdir).is_dir()
    with runfolder.lock(workdir) if folder else contextlib.nullcontext():
        vae, config, _ = load_run(workdir, device, checkpoint)
        require(vae, "images", "sample-quality scores")
        set_threads(num_threads, vae, config.optimization["batch_size"])
        data = load_data(config, vae.device, workdir)
        scores = score(
            vae,
            data,
            num_samples=num_samples,
            batch_size=batch_size,
            seed=seed,
            cache_dir=cache_dir,
        )
        if folder:
            write_json(scores, Path(workdir) / "scores.json")
    return scores
