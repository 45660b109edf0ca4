"""Figures. Every function returns a :class:`matplotlib.figure.Figure` and never shows it;
the CLI saves them as PNG."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from matplotlib.figure import Figure
from torchvision.utils import make_grid

__all__ = ["elbo_curves", "image_grid", "reconstructions"]


def _as_images(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` images in [0, 1], C in {1, 3}.

    ``(N, H, W)`` items are greyscale images, other channel counts are shown channel by
    channel, and any other shape as one-row strips of its flattened values.
    """
    x = x.detach().float().cpu()
    if x.dim() == 3:
        x = x[:, None]
    elif x.dim() == 4 and x.shape[1] not in (1, 3):
        x = x.reshape(-1, 1, *x.shape[2:])
    elif x.dim() != 4:
        x = x.reshape(len(x), 1, 1, -1)
    return x.clamp(0, 1)


def image_grid(
    images: torch.Tensor, *, nrow: int = 8, title: str | None = None, scale: float = 0.6
) -> Figure:
    """A grid of images (``torchvision.utils.make_grid``) as a figure."""
    images = _as_images(images)
    grid = make_grid(images, nrow=nrow, padding=1, pad_value=1.0)
    height, width = grid.shape[1:]
    fig = Figure(figsize=(max(2.0, width * scale / 10), max(2.0, height * scale / 10)))
    ax = fig.add_subplot()
    ax.imshow(
        grid.permute(1, 2, 0).squeeze(-1).numpy(),
        cmap="gray",
        vmin=0,
        vmax=1,
        interpolation="nearest",
    )
    ax.axis("off")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def reconstructions(inputs: torch.Tensor, recons: torch.Tensor, *, nrow: int = 8) -> Figure:
    """Inputs (odd rows) directly above their reconstructions (even rows)."""
    inputs, recons = _as_images(inputs), _as_images(recons)
    rows = [
        t for i in range(0, len(inputs), nrow) for t in (inputs[i : i + nrow], recons[i : i + nrow])
    ]
    return image_grid(torch.cat(rows), nrow=nrow, title="inputs (odd rows) and reconstructions")


def elbo_curves(history: Sequence[dict[str, Any]]) -> Figure:
    """Train and held-out ELBO (nats per data point) against the epoch."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    epochs = [row["epoch"] for row in history]
    train = [math.nan if row.get("train_elbo") is None else row["train_elbo"] for row in history]
    ax.plot(epochs, train, label="train (running average)")
    ax.plot(epochs, [row["test_elbo"] for row in history], label="held-out")
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per data point)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
