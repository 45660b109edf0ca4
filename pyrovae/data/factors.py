"""Ground-truth factors of variation: the factor labels a data set's items carry, and a sampler
that draws items with chosen factors (what the disentanglement metrics need).

A factor is a discrete index ``0 .. size - 1`` (for dSprites: shape, scale, orientation, posX,
posY). A data set's items carry theirs as :class:`Factors` (``Dataset.factors``); a
:class:`FactorSampler` draws factor combinations and the items that have them, so a metric can
hold one factor fixed while the others vary. Two kinds:

- :class:`GridSampler` (e.g. :class:`~pyrovae.data.dsprites.DSprites`) draws from the full
  product space and renders any combination: the exact distribution the metrics assume;
- :class:`DataFactorSampler` draws from a set of items and their factor labels (a user's
  ``.npz`` with ``factors``), by lookup. Where the items cover the whole product space once
  each, its draws have the same distribution as a grid's; where they do not (an incomplete
  or unbalanced grid), the factors are drawn from the data's joint distribution, and a draw
  that holds factor ``k`` fixed takes the other factors from the data's conditional given
  ``v_k`` rather than from the product of the marginals, so the intervention metrics (the
  FactorVAE and beta-VAE scores) are then approximations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import torch

from pyrovae.errors import DataError

if TYPE_CHECKING:
    from pyrovae.data.dataset import Dataset

__all__ = ["DataFactorSampler", "FactorSampler", "Factors", "GridSampler", "factor_indices"]


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

    What the intervention-based metrics read
    (:func:`~pyrovae.inference.evaluation.disentanglement.factor_vae_score`,
    :func:`~pyrovae.inference.evaluation.disentanglement.beta_vae_score`).
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

    def fix_factor(
        self,
        factors: np.ndarray,
        factor_index: np.ndarray,
        values: np.ndarray,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Factor rows like ``factors`` (``(n, F)``, drawn by :meth:`sample_factors`) whose
        factor ``factor_index[i]`` takes the value ``values[i]``, the others drawn as the
        sampler draws them given that value; what the intervention metrics render."""
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

    def fix_factor(
        self,
        factors: np.ndarray,
        factor_index: np.ndarray,
        values: np.ndarray,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """``factors`` with factor ``factor_index[i]`` of row ``i`` set to ``values[i]``: the
        other factors stay as drawn, uniform and independent (the product space)."""
        factors = np.array(factors, dtype=np.int64)
        factors[np.arange(len(factors)), factor_index] = values
        return factors

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


def _row_keys(factors: np.ndarray) -> np.ndarray:
    """Each int64 factor row as one opaque key that sorts and compares (a byte string)."""
    rows = np.ascontiguousarray(factors, dtype=np.int64)
    return rows.view(np.dtype((np.void, 8 * rows.shape[1]))).ravel()


class DataFactorSampler:
    """A :class:`FactorSampler` over a set of items and their factor labels, by lookup.

    :meth:`sample_factors` draws items uniformly (with replacement), so the factors follow the
    data's own distribution; :meth:`fix_factor` and :meth:`sample_with_fixed` draw, for each
    row, an item whose factor ``k`` has the fixed value, uniformly among those items;
    :meth:`render` returns an item with the given factors (uniformly among several that share
    them). No item is ever rendered: every draw is one of ``items``.

    When the items hold every combination of the factors once (a complete grid), these are
    the draws of a :class:`GridSampler` over the same sizes. Otherwise the factors other than
    the fixed one follow the data's conditional distribution given the fixed value, not the
    product of uniform marginals: the intervention metrics (FactorVAE, beta-VAE) are then
    approximations, and correlated factors in the data make them harder to tell apart.

    Parameters
    ----------
    items : torch.Tensor
        ``(N, *event_shape)`` items.
    factors : numpy.ndarray
        ``(N, F)`` int64 factor indices, row ``i`` those of item ``i``.
    factor_names, factor_sizes : sequence, optional
        Default: ``factor0, factor1, ...`` and one more than each column's largest index.
    seed : int
        Seeds the choice among items that share all their factors (:meth:`render`).

    Raises
    ------
    DataError
        If the shapes disagree, there are no items, or an index lies outside its size.
        :meth:`fix_factor` raises it too when a fixed value has no item.

    Examples
    --------
    >>> import numpy as np, torch
    >>> factors = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [1, 1]])
    >>> sampler = DataFactorSampler(torch.arange(5.0)[:, None], factors)
    >>> rows, items = sampler.sample_with_fixed(6, 0, np.random.default_rng(0))
    >>> len(set(rows[:, 0].tolist()))
    1
    """

    def __init__(
        self,
        items: torch.Tensor,
        factors: np.ndarray,
        factor_names: Sequence[str] | None = None,
        factor_sizes: Sequence[int] | None = None,
        *,
        seed: int = 0,
    ) -> None:
        factors = np.asarray(factors)
        if factors.ndim != 2 or factors.dtype.kind not in "iu" or len(factors) != len(items):
            raise DataError(
                f"factors must be an integer array of shape ({len(items)}, num_factors), one "
                f"row per item, got {factors.dtype} of shape {factors.shape}"
            )
        if not len(factors) or factors.shape[1] < 1:
            raise DataError(f"a factor sampler needs items and factors, got shape {factors.shape}")
        factors = factors.astype(np.int64)
        width = factors.shape[1]
        sizes = factor_sizes if factor_sizes is not None else factors.max(axis=0) + 1
        names = factor_names if factor_names is not None else [f"factor{j}" for j in range(width)]
        self.factor_names = tuple(names)
        self.factor_sizes = tuple(int(s) for s in sizes)
        if len(self.factor_names) != width or len(self.factor_sizes) != width:
            raise DataError(
                f"{width} factors, but {len(self.factor_names)} names and "
                f"{len(self.factor_sizes)} sizes"
            )
        if factors.min() < 0 or (factors >= np.array(self.factor_sizes)).any():
            raise DataError(f"factors lie outside [0, size) for sizes {self.factor_sizes}")
        self.items = items
        self.factors = factors
        self._generator = np.random.default_rng(seed)
        # the items grouped by their whole factor row, for render()
        keys = _row_keys(factors)
        self._order = np.argsort(keys, kind="stable")
        self._keys, self._starts, self._counts = np.unique(
            keys[self._order], return_index=True, return_counts=True
        )
        # the items grouped by each factor's value, for fix_factor()
        self._by_value = []
        for column, size in zip(factors.T, self.factor_sizes):
            order = np.argsort(column, kind="stable")
            counts = np.bincount(column, minlength=size)
            self._by_value.append((order, np.cumsum(counts) - counts, counts))

    @classmethod
    def from_dataset(cls, data: Dataset, *, seed: int = 0) -> DataFactorSampler:
        """The train and test items of ``data`` with their factors (``data.factors``).

        Raises
        ------
        DataError
            If ``data`` has no factors.
        """
        if data.factors is None:
            raise DataError(
                f"the data set {data.name} has no factor labels; the disentanglement metrics "
                "need them (--dataset dsprites, dsprites-small, or an .npz with factors)"
            )
        f = data.factors
        items = torch.cat([data.train, data.test])
        return cls(items, np.concatenate([f.train, f.test]), f.names, f.sizes, seed=seed)

    @property
    def num_items(self) -> int:
        return len(self.factors)

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """The factors of ``n`` items drawn uniformly with replacement."""
        return self.factors[rng.integers(0, self.num_items, size=n)]

    def fix_factor(
        self,
        factors: np.ndarray,
        factor_index: np.ndarray,
        values: np.ndarray,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """For each row ``i``, the factors of an item drawn uniformly among those whose factor
        ``factor_index[i]`` is ``values[i]`` (the data's conditional; ``factors`` gives only
        the number of rows)."""
        factor_index = np.broadcast_to(np.asarray(factor_index, dtype=np.int64), (len(factors),))
        values = np.broadcast_to(np.asarray(values, dtype=np.int64), (len(factors),))
        chosen = np.empty(len(factors), dtype=np.int64)
        for k in np.unique(factor_index):
            rows = np.flatnonzero(factor_index == k)
            order, starts, counts = self._by_value[k]
            wanted = values[rows]
            if wanted.min() < 0 or wanted.max() >= len(counts):
                raise DataError(
                    f"factor {self.factor_names[k]} takes values 0..{len(counts) - 1}, got "
                    f"{int(wanted.min())}..{int(wanted.max())}"
                )
            empty = np.unique(wanted[counts[wanted] == 0])
            if len(empty):
                raise DataError(
                    f"no item has factor {self.factor_names[k]} = {empty.tolist()}; a draw "
                    "that holds it fixed there has nothing to draw from (the data cover "
                    f"{int((counts > 0).sum())} of its {len(counts)} values)"
                )
            offset = (rng.random(len(rows)) * counts[wanted]).astype(np.int64)
            chosen[rows] = order[starts[wanted] + offset]
        return self.factors[chosen]

    def sample_with_fixed(
        self, n: int, factor_index: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, torch.Tensor]:
        """``n`` items sharing factor ``factor_index``'s value, itself that of an item drawn
        uniformly: ``(factors, items)``."""
        value = self.sample_factors(1, rng)[0, factor_index]
        factors = self.fix_factor(np.zeros((n, 1)), np.full(n, factor_index), value, rng)
        return factors, self.render(factors)

    def render(self, factors: np.ndarray) -> torch.Tensor:
        """An item for each factor row, drawn uniformly among the items that have it.

        Raises
        ------
        DataError
            If no item has one of the rows.
        """
        keys = _row_keys(np.asarray(factors).reshape(-1, self.factors.shape[1]))
        where = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        missing = self._keys[where] != keys
        if missing.any():
            row = np.asarray(factors).reshape(len(keys), -1)[np.argmax(missing)].tolist()
            raise DataError(f"no item has the factors {row} ({', '.join(self.factor_names)})")
        offset = (self._generator.random(len(keys)) * self._counts[where]).astype(np.int64)
        index = self._order[self._starts[where] + offset]
        return self.items[torch.from_numpy(index).to(self.items.device)]
