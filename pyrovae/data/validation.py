"""What makes a tensor usable data: items and labels, checked with messages that say the fix."""

from __future__ import annotations

import numpy as np
import torch

from pyrovae.errors import DataError

__all__ = ["validate_data", "validate_labels"]


def validate_data(
    x: torch.Tensor, event_shape: tuple[int, ...] | None = None, what: str = "data"
) -> None:
    """Raise :class:`~pyrovae.errors.DataError` unless ``x`` is a usable batch of items.

    Parameters
    ----------
    x : torch.Tensor
        Items stacked along the first dimension, shape ``(N, *event_shape)``.
    event_shape : tuple of int, optional
        The shape each item must have; not checked when ``None``.
    what : str
        How to name ``x`` in the message, e.g. ``"fashion-mnist test data"``.

    Raises
    ------
    DataError
        If ``x`` is not a real floating-point or integer tensor, has no items, has items of
        the wrong shape, or holds NaN or infinite values (the message says how many and where
        the first one is).
    """
    if not isinstance(x, torch.Tensor):
        raise DataError(
            f"{what} is a {type(x).__name__}, not a torch.Tensor; convert it with torch.as_tensor"
        )
    if x.dtype == torch.bool or x.is_complex():
        raise DataError(
            f"{what} has dtype {x.dtype}, but real numbers are needed; convert it with x.float()"
        )
    if x.ndim == 0 or x.shape[0] < 1:
        raise DataError(
            f"{what} has no items (shape {tuple(x.shape)}); "
            "it needs at least one item along the first dimension"
        )
    if x.shape[1:].numel() == 0:
        raise DataError(f"{what} has empty items (shape {tuple(x.shape[1:])}); nothing to model")
    if event_shape is not None and tuple(x.shape[1:]) != tuple(event_shape):
        raise DataError(
            f"{what} has items of shape {tuple(x.shape[1:])}, but {tuple(event_shape)} was "
            "expected; reshape the data or use a model built for this shape"
        )
    # A finite sum proves every value finite (NaN and inf propagate); the sum is ~30x faster
    # than an elementwise isfinite on a whole training set, which only the error path pays.
    if x.is_floating_point() and not bool(torch.isfinite(x.sum())):
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            num_nan = int(torch.isnan(x).sum())
            num_inf = int(torch.isinf(x).sum())
            flat = int((~finite).flatten().nonzero()[0])
            first = tuple(int(i) for i in np.unravel_index(flat, tuple(x.shape)))
            raise DataError(
                f"{what} contains {num_nan} NaN and {num_inf} infinite values; the first is at "
                f"index {first} (item {first[0]}); remove or impute those items first"
            )


def validate_labels(y: torch.Tensor, num_items: int, what: str = "labels") -> None:
    """Raise :class:`~pyrovae.errors.DataError` unless ``y`` is a 1-D integer tensor with one
    class index per item."""
    if not isinstance(y, torch.Tensor) or y.ndim != 1:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise DataError(f"{what} must be a 1-D tensor of class indices, got {shape}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise DataError(
            f"{what} has dtype {y.dtype}; labels must be integer class indices (torch.int64)"
        )
    if len(y) != num_items:
        raise DataError(
            f"{what} has {len(y)} labels for {num_items} items; give exactly one label per item"
        )
