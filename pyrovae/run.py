"""Run folders: ``fit(config, workdir)`` trains and writes everything a run produces;
``load_run(workdir)`` rebuilds the trained VAE from its checkpoint.

A run folder holds::

    config.toml         the resolved configuration (repeat with --config)
    checkpoint.pt       model, guide, optimizer, RNG states, metrics (resume with --resume)
    metrics.jsonl       one line per epoch: objective, train and held-out ELBO (nats per data
                        point), KL weight, collapse diagnostics
    evaluation.json     held-out ELBO, IWAE log p(x) with K samples, reconstruction error
    elbo.png, reconstructions.png, samples.png
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pyrovae import plots
from pyrovae.config import Config, from_dict, save_config
from pyrovae.data import Dataset, load_dataset
from pyrovae.errors import CheckpointError, ConfigError, DataError
from pyrovae.inference.checkpoint import load_checkpoint
from pyrovae.inference.evaluation import evaluate
from pyrovae.inference.svi import check_resumable, refuse_overwrite, train
from pyrovae.models import MODELS, build_vae
from pyrovae.vae import VAE

__all__ = [
    "FitResult",
    "fit",
    "load_data",
    "load_run",
    "resolve_classes",
    "resolve_device",
    "save_figure",
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


def load_data(config: Config, device: torch.device) -> Dataset:
    """The run's data set, preloaded on ``device`` when it fits (else batches move per step)."""
    data = load_dataset(
        config.dataset,
        path=config.data,
        data_dir=config.data_dir,
        binarize=config.binarize,
        test_fraction=config.test_fraction,
        seed=config.seed,
        download=config.download,
        limit=config.limit,
    )
    if device.type == "cuda":
        size = (data.train.numel() + data.test.numel()) * data.train.element_size()
        if size > 0.5 * torch.cuda.mem_get_info(device)[0]:
            logger.warning("data (%.1f GB) kept on the CPU: it does not fit the GPU", size / 1e9)
            return data
    return data.to(device)


def resolve_classes(config: Config, data: Dataset) -> Config:
    """Fill in ``num_classes`` from the data's labels for a model that needs labels."""
    if not MODELS[config.model].needs_labels:
        return config
    if data.train_labels is None:
        raise DataError(
            f"--model {config.model} trains on labels, but {data.name} has none; use a labelled "
            "data set (digits, mnist, fashion-mnist, or an .npz file with y / y_train and y_test)"
        )
    found = data.num_classes
    if config.num_classes is None:
        return config.replace(num_classes=found)
    if found > config.num_classes:
        raise DataError(
            f"{data.name} has labels up to {found - 1}, but num_classes is {config.num_classes}; "
            f"raise --num-classes to at least {found} or drop it"
        )
    return config


def save_figure(fig: Any, path: str | os.PathLike) -> None:
    fig.savefig(path, dpi=120)


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

    Seeds everything with ``config.seed``, loads the data, builds the VAE, trains it
    (resuming from ``workdir`` when ``resume``), then evaluates on the held-out data
    with ``config.num_eval_samples`` importance samples and saves figures.
    """
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"--workdir {workdir} is a file; give a folder for the run")
    if not resume:
        refuse_overwrite(workdir)
    # absolute data paths, so evaluate and --resume find the same files from anywhere
    paths = {k: str(Path(v).resolve()) for k in ("data", "data_dir") if (v := getattr(config, k))}
    config = config.replace(**paths)
    device = resolve_device(config.device)
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    data = load_data(config, device)
    config = resolve_classes(config, data)
    vae = build_vae(config, data.shape).to(device)
    if resume:  # check before writing anything: a refused resume must leave the run as it was
        check_resumable(workdir, {**config.to_dict(), **vae.spec})
    workdir.mkdir(parents=True, exist_ok=True)
    save_config(config, workdir / "config.toml")
    history = train(vae, data, config, workdir, resume=resume, progress=progress)
    labels = {"y": data.test_labels} if vae.requires_y else {}
    evaluation = evaluate(vae, data.test, config.num_eval_samples, config.eval_batch_size, **labels)
    evaluation.update(vae.metrics(data.test, data.test_labels))
    (workdir / "evaluation.json").write_text(json.dumps(evaluation, indent=2) + "\n")
    logger.info(
        "held-out: ELBO %.3f, log p(x) >= %.3f (IWAE, K=%d) nats per data point",
        evaluation["elbo"],
        evaluation["log_likelihood"],
        config.num_eval_samples,
    )
    write_figures(vae, data, history, workdir)
    return FitResult(vae, data, history, evaluation, workdir)


def write_figures(vae: VAE, data: Dataset, history: list[dict[str, Any]], workdir: Path) -> None:
    """ELBO curves, reconstructions of held-out inputs and prior samples, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    save_figure(plots.elbo_curves(history), workdir / "elbo.png")
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


def load_run(
    workdir: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[VAE, Config, dict[str, Any]]:
    """Rebuild the trained VAE of a run folder; returns ``(vae, config, checkpoint)``."""
    path = Path(workdir)
    checkpoint = load_checkpoint(path / "checkpoint.pt" if path.is_dir() else path, "cpu")
    custom = {
        k: v
        for k, v in checkpoint.get("config", {}).items()
        if isinstance(v, str) and v.startswith("custom ")
    }
    if custom:
        raise CheckpointError(
            f"the run in {workdir} was trained with user objects ({custom}) that a checkpoint "
            "cannot rebuild; build the same VAE in Python and call "
            "vae.load_state_dict(load_checkpoint(path)['vae'])"
        )
    try:
        config = from_dict(checkpoint["config"])
        vae = build_vae(config, checkpoint["event_shape"])
        vae.load_state_dict(checkpoint["vae"])
    except (KeyError, RuntimeError, ConfigError) as e:
        raise CheckpointError(
            f"checkpoint in {workdir} does not match this pyrovae's VAE ({type(e).__name__}: "
            f"{str(e).splitlines()[0]}); it comes from another architecture or version"
        ) from None
    device = resolve_device(device) if isinstance(device, str) else device
    vae.eval()
    return vae.to(device), config, checkpoint
