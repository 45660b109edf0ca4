"""Ground-truth factors of variation: the factor labels a data set's items carry, and a sampler
that draws items with chosen factors (what the disentanglement metrics need).

A factor is a discrete index ``0 .. size - 1`` (for dSprites: shape, scale, orientation, posX,
posY). A data set's items carry theirs as :class:`Factors` (``Dataset.factors``); a
:class:`FactorSampler` draws factor combinations from the full product space and renders the
items that have them, so a metric can hold one factor fixed while the others vary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from pyrovae.errors import DataError

__all__ = ["FactorSampler", "Factors", "GridSampler", "factor_indices"]


@dataclass(frozen=True, eq=False)
class Factors:
    """The factor indices of a data set's train and test items.

    Parameters
    ----------
    names : tuple of str
        One name per factor, e.g. ``("shape", "scale", "orientation", "posX", "posY")``.
    sizes : tuple of int
        How many values each factor takes; every index of factor ``j`` lies in
        ``[0, sizes[j])``.
    train, test : numpy.ndarray
        int64 arrays of shape ``(N_train, F)`` and ``(N_test, F)``: row ``i`` holds item
        ``i``'s factor indices.

    Raises
    ------
    DataError
        If the shapes, names and sizes disagree, or an index lies outside its factor's range.
    """

    names: tuple[str, ...]
    sizes: tuple[int, ...]
    train: np.ndarray
    test: np.ndarray

    def __post_init__(self) -> None:
        if len(self.names) != len(self.sizes):
            raise DataError(
                f"{len(self.names)} factor names {list(self.names)} for {len(self.sizes)} sizes"
            )
        for split in ("train", "test"):
            array = getattr(self, split)
            if array.ndim != 2 or array.shape[1] != len(self.sizes) or array.dtype != np.int64:
                raise DataError(
                    f"{split} factors must be an int64 array of shape (N, {len(self.sizes)}), "
                    f"got {array.dtype} of shape {array.shape}"
                )
            if len(array) and (array.min() < 0 or (array >= np.array(self.sizes)).any()):
                raise DataError(f"{split} factors lie outside [0, size) for sizes {self.sizes}")

    def take(self, split: str, index: np.ndarray | slice) -> np.ndarray:
        """The factors of ``split``'s items at ``index``."""
        return getattr(self, split)[index]


def factor_indices(values: np.ndarray, what: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """Factor values of shape ``(N, F)`` (any numbers: indices, or raw values such as scales)
    as int64 indices, each value replaced by its rank among its column's distinct values;
    returns ``(indices, sizes)``."""
    if values.ndim != 2 or values.dtype.kind not in "biuf":
        raise DataError(
            f"{what} must be a numeric array of shape (N, num_factors), got {values.dtype} "
            f"of shape {values.shape}"
        )
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise DataError(f"{what} hold NaN or inf; factor values must be finite")
    columns, sizes = [], []
    for column in values.T:
        distinct, index = np.unique(column, return_inverse=True)
        columns.append(index.astype(np.int64))
        sizes.append(len(distinct))
    indices = np.stack(columns, axis=1) if columns else np.zeros((len(values), 0), np.int64)
    return indices, tuple(sizes)


@runtime_checkable
class FactorSampler(Protocol):
    """A product space of discrete factors and the items they render to.

    What the intervention-based metrics read (:func:`~pyrovae.inference.evaluation.
    disentanglement.factor_vae_score`, :func:`~pyrovae.inference.evaluation.disentanglement.
    beta_vae_score`).
    """

    factor_names: tuple[str, ...]
    factor_sizes: tuple[int, ...]

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` factor combinations drawn uniformly, int64 of shape ``(n, F)``."""
        ...

    def render(self, factors: np.ndarray) -> torch.Tensor:
        """The items with these factors, float32 of shape ``(n, *event_shape)``."""
        ...

    def sample_with_fixed(
        self, n: int, factor_index: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, torch.Tensor]:
        """``n`` factor combinations that share factor ``factor_index``'s value (itself
        uniform) and vary the others uniformly, with their items: ``(factors, items)``."""
        ...


class GridSampler:
    """A :class:`FactorSampler` over the product of ``factor_sizes``: uniform draws, and
    draws with one factor held fixed; a subclass supplies :meth:`render`.

    Parameters
    ----------
    factor_names : sequence of str
        One name per factor.
    factor_sizes : sequence of int
        How many values each factor takes.
    """

    def __init__(self, factor_names: Sequence[str], factor_sizes: Sequence[int]) -> None:
        if len(factor_names) != len(factor_sizes) or min(factor_sizes, default=0) < 1:
            raise DataError(
                f"factor names {list(factor_names)} and sizes {list(factor_sizes)} must pair "
                "up, with every size at least 1"
            )
        self.factor_names = tuple(factor_names)
        self.factor_sizes = tuple(int(s) for s in factor_sizes)

    @property
    def num_factors(self) -> int:
        return len(self.factor_sizes)

    @property
    def num_items(self) -> int:
        """The size of the product space."""
        return int(np.prod(self.factor_sizes))

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.stack([rng.integers(0, s, size=n) for s in self.factor_sizes], axis=1).astype(
            np.int64
        )

    def sample_with_fixed(
        self, n: int, factor_index: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, torch.Tensor]:
        factors = self.sample_factors(n, rng)
        factors[:, factor_index] = factors[0, factor_index]
        return factors, self.render(factors)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, torch.Tensor]:
        """``n`` uniform factor combinations and their items: ``(factors, items)``."""
        factors = self.sample_factors(n, rng)
        return factors, self.render(factors)

    def product(self) -> np.ndarray:
        """Every factor combination, the last factor varying fastest: ``(num_items, F)``."""
        grids = np.meshgrid(*[np.arange(s) for s in self.factor_sizes], indexing="ij")
        return np.stack([g.reshape(-1) for g in grids], axis=1).astype(np.int64)

    def unravel(self, index: np.ndarray) -> np.ndarray:
        """The factor combinations at positions ``index`` of :meth:`product`."""
        return np.stack(np.unravel_index(index, self.factor_sizes), axis=1).astype(np.int64)

    def render(self, factors: np.ndarray) -> torch.Tensor:
        """The items of the factor combinations ``factors`` (``(n, F)`` indices)."""
        raise NotImplementedError  # abstract: a subclass draws its items
