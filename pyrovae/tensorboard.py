"""TensorBoard logging of a run (``--tensorboard``): a trainer callback that writes each
epoch to ``RUN/tensorboard/``.

Every epoch adds the numeric entries of its row (``metrics.jsonl``) as scalars, the KL per
latent dimension as a histogram, and every ``image_every`` epochs (and at the last one)
image grids of held-out items over their reconstructions and of samples from the prior.
The global step is the epoch, so a resumed run continues the same curves in the same
folder. View them with ``tensorboard --logdir RUN/tensorboard``.

It needs the ``tensorboard`` package (``pip install -e '.[tensorboard]'``); it is imported
only here, by :func:`require_tensorboard`.
"""

from __future__ import annotations

import os
from numbers import Real
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pyrovae.errors import ConfigError
from pyrovae.inference.evaluation.weights import eval_mode, seeded
from pyrovae.inference.training.distributed import is_main_process

if TYPE_CHECKING:
    from pyrovae.inference.training import Trainer
    from pyrovae.variants import VAE

__all__ = ["TensorBoardLogger", "require_tensorboard", "tag"]

_INSTALL = "pip install -e '.[tensorboard]' (or pip install tensorboard)"


def require_tensorboard() -> type:
    """``torch.utils.tensorboard.SummaryWriter``, or a :class:`ConfigError` saying how to
    install the ``tensorboard`` package it needs."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            f"--tensorboard needs the tensorboard package, which is not installed: {_INSTALL}"
        ) from None
    return SummaryWriter


def tag(key: str) -> str:
    """The TensorBoard tag of a metrics key: ``train_objective`` -> ``train/objective``,
    ``test_elbo`` -> ``test/elbo``, ``validation_elbo`` -> ``validation/elbo``; the others
    as they are (``kl``, ``kl/z1``, ``beta``)."""
    for prefix in ("train", "test", "validation"):
        if key.startswith(prefix + "_"):
            return f"{prefix}/{key[len(prefix) + 1 :]}"
    return key


class TensorBoardLogger:
    """An epoch callback of :meth:`Trainer.fit <pyrovae.inference.training.Trainer.fit>`
    that writes the run to TensorBoard (rank 0 only).

    Parameters
    ----------
    log_dir : path
        The event files' folder (created at the first epoch; a resumed run adds to it).
    items : torch.Tensor
        Held-out items whose reconstructions are drawn, ``(n, *event_shape)``.
    labels : torch.Tensor, optional
        Their labels, for a variant whose guide reads them.
    image_every : int
        Epochs between image grids; the run's last epoch always has one.
    num_samples : int
        Prior samples in the grid of samples (a conditional variant draws the classes in
        turn, one class per column).
    seed : int
        Seeds the samples' draws, the same at every epoch (the training's random state is
        left as it was, so a run logs and resumes exactly as one without TensorBoard).

    Raises
    ------
    ConfigError
        If the ``tensorboard`` package is missing (nothing is written then).
    """

    def __init__(
        self,
        log_dir: str | os.PathLike,
        items: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        image_every: int = 10,
        num_samples: int = 64,
        seed: int = 0,
    ) -> None:
        if image_every < 1 or num_samples < 1:
            raise ConfigError(
                f"image_every and num_samples must be >= 1, got {image_every} and {num_samples}"
            )
        self._writer_class = require_tensorboard()
        self.log_dir = Path(log_dir)
        self.items, self.labels = items, labels
        self.image_every, self.num_samples, self.seed = image_every, num_samples, seed
        self._writer: Any = None

    def __call__(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """Write epoch ``row["epoch"]``: its scalars, KL histogram and (due) image grids."""
        if not is_main_process():
            return
        epoch = row["epoch"]
        if self._writer is None:
            # a resumed run starts after its last checkpointed epoch: events of later
            # epochs written before the run stopped are hidden from then on
            self._writer = self._writer_class(log_dir=str(self.log_dir), purge_step=epoch)
        writer = self._writer
        for key, value in row.items():
            if key == "epoch":
                continue
            if isinstance(value, Real) and not isinstance(value, bool):
                writer.add_scalar(tag(key), float(value), epoch)
            elif key.startswith("kl_per_dim") and isinstance(value, list) and value:
                values = np.asarray(value, dtype=np.float64)
                if np.isfinite(values).all():
                    writer.add_histogram(tag(key), values, epoch)
        if epoch % self.image_every == 0 or epoch == trainer.num_epochs:
            for name, grid in self.image_grids(trainer.vae).items():
                writer.add_image(f"images/{name}", grid, epoch)
        writer.flush()

    @torch.no_grad()
    def image_grids(self, vae: VAE) -> dict[str, torch.Tensor]:
        """``reconstructions`` (rows of up to 8 items, each above their reconstructions) and
        ``samples`` from the prior, each a ``(3, H, W)`` grid in [0, 1]."""
        from torchvision.utils import make_grid

        from pyrovae.plots import as_images

        device = vae.device
        with eval_mode(vae), seeded(self.seed, device):
            x = self.items.to(device)
            labels = {} if self.labels is None else {"y": self.labels.to(device)}
            reconstructions = vae.reconstruct(x, **labels)
            samples = vae.sample(self.num_samples)
        # full rows of up to 8 items, each row above the row of their reconstructions
        columns = min(8, len(x))
        keep = len(x) - len(x) % columns
        x, reconstructions = x[:keep], reconstructions[:keep]
        rows = [
            t[start : start + columns]
            for start in range(0, len(x), columns)
            for t in (x, reconstructions)
        ]
        pairs = torch.cat([as_images(r) for r in rows])
        # a conditional variant's samples: one class per column, as in samples.png
        nrow = getattr(vae, "num_classes", 8)
        return {
            "reconstructions": make_grid(pairs, nrow=columns, padding=1, pad_value=1.0),
            "samples": make_grid(as_images(samples), nrow=nrow, padding=1, pad_value=1.0),
        }

    def close(self) -> None:
        """Flush and close the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
