"""Checkpoints: one dict of plain state, written atomically, loadable with ``weights_only=True``.

A checkpoint holds the format version, the resolved config, the data shape, the
epoch, the VAE's state, every optimizer's state by name, the random number generator
states and the metrics so far: everything the trainer needs to resume exactly.

Format 1 (pyrovae 0.1: a flat config and one ``optimizer``) is read too: its one
optimizer becomes ``optimizers["svi"]``; the run layer converts its flat config
(:func:`pyrovae.config.from_flat`).

A data-parallel run's checkpoint (written by rank 0) also holds ``world_size`` and
``rank_rng``, the random states of every rank in rank order; ``rng`` is rank 0's.
"""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import torch

from pyrovae.errors import CheckpointError
from pyrovae.runfolder import atomic_write

__all__ = [
    "CHECKPOINT_KEYS",
    "FORMAT_VERSION",
    "get_rng_state",
    "load_checkpoint",
    "save_checkpoint",
    "set_rng_state",
]

FORMAT_VERSION = 2

#: what a checkpoint written by the trainer holds (next to ``format_version``)
CHECKPOINT_KEYS = ("config", "event_shape", "epoch", "vae", "optimizers", "rng", "history")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file, then ``os.replace``.

    An interruption at any moment leaves either the old or the new checkpoint, never
    a partial one; a failed write (a full disk) keeps the old one and raises
    :class:`~pyrovae.runfolder.RunFolderError` (:func:`pyrovae.runfolder.atomic_write`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save({"format_version": FORMAT_VERSION, **state}, f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}; give a run folder made by 'pyrovae train' "
            "(it holds checkpoint.pt)"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a pyrovae checkpoint ({type(e).__name__}); "
            "delete it and train again, or point to another run"
        ) from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{path} is not a pyrovae checkpoint")
    if state["format_version"] == 1 and "optimizer" in state:  # one optimizer, pyrovae 0.1
        state["optimizers"] = {"svi": state.pop("optimizer")}
        state["format_version"] = FORMAT_VERSION
    if state["format_version"] not in (1, FORMAT_VERSION):
        raise CheckpointError(
            f"checkpoint {path} has format version {state['format_version']}, this pyrovae "
            f"reads version {FORMAT_VERSION}; use the pyrovae release that wrote it"
        )
    return state


def get_rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """The states of every random number generator training uses.

    ``device`` (a CUDA device): record that device's generator alone, as ``cuda_device``,
    rather than every device's (a data-parallel rank draws on its own device only).
    """
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device is not None and device.type == "cuda":
        state["cuda_device"] = torch.cuda.get_rng_state(device)
    elif torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states saved by :func:`get_rng_state` (``cuda_device``: on the current
    CUDA device)."""
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if "cuda_device" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_device"].cpu())


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value
