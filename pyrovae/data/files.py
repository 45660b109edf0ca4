"""The user's own data: ``.npy`` and ``.npz`` files.

A ``.npy`` file holds one array of shape ``(N, *event_shape)``; a ``.npz`` archive holds either
``x`` (and optionally labels ``y``), or ``x_train`` and ``x_test`` (and optionally ``y_train`` and
``y_test``). Either layout may add ground-truth factors of variation: ``factors`` (with ``x``) or
``factors_train`` and ``factors_test``, of shape ``(N, num_factors)``, and optionally
``factor_names`` (one string per factor); each factor's values (indices, or raw numbers such as
scales) become indices ``0 .. size - 1`` in sorted order, and the data set carries them as
:class:`~pyrovae.data.factors.Factors` for the disentanglement metrics.

:func:`load_file` reads one as a :class:`~pyrovae.data.Dataset` (what
:func:`~pyrovae.data.load_dataset` does with ``path=...``); :func:`load_items` reads every item in
file order, for scoring a file item by item.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from pyrovae.data.binarization import binarize_items, check_binarize
from pyrovae.data.dataset import Dataset, MappedItems, split_indices
from pyrovae.data.factors import Factors, factor_indices
from pyrovae.data.validation import validate_data
from pyrovae.errors import DataError

__all__ = ["load_file", "load_items", "load_labeled_items", "load_mapped"]

# An explicit split wins over a single array to be split.
_NPZ_LAYOUTS = (
    ("x_train", "x_test", "y_train", "y_test", "factors_train", "factors_test"),
    ("x", "y", "factors"),
)
_FACTOR_NAMES = "factor_names"


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """A .npy file's array (as key ``x``), or the arrays a .npz file holds under known keys."""
    if not path.exists():
        raise DataError(f"data file {path} does not exist; check the path")
    if path.suffix not in (".npy", ".npz") or not path.is_file():
        raise DataError(
            f"cannot read {path}: expected a .npy or .npz file; save the data with numpy.save "
            "(one array) or numpy.savez (x, or x_train and x_test, with optional labels), or "
            "a table as .csv or .parquet"
        )
    unreadable = f"cannot read {path}: the file is corrupt or not a NumPy file"
    try:
        # Our own handle: np.load(path) leaks its file when the zip directory is corrupt.
        with open(path, "rb") as file:
            loaded = np.load(file, allow_pickle=False)
            if isinstance(loaded, np.lib.npyio.NpzFile):
                with loaded:
                    return _pick_arrays(path, loaded)
            return {"x": loaded}
    except DataError:
        raise
    except ValueError as exc:
        if "Object arrays" in str(exc):
            raise DataError(
                f"{path} holds Python objects (dtype=object), not numbers; "
                "save a numeric array instead (e.g. x.astype('float32'))"
            ) from None
        raise DataError(f"{unreadable} ({exc}); save it again with numpy.save/savez") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{unreadable} ({exc}); save it again with numpy.save/savez") from None


def _pick_arrays(path: Path, loaded: np.lib.npyio.NpzFile) -> dict[str, np.ndarray]:
    keys = set(loaded.files)
    for layout in _NPZ_LAYOUTS:
        required = [k for k in layout if k.startswith("x")]
        if keys.issuperset(required):
            return {k: loaded[k] for k in (*layout, _FACTOR_NAMES) if k in keys}
    raise DataError(
        f"{path} has keys {sorted(keys)}, but 'x' (optional 'y') or 'x_train' and 'x_test' "
        "(optional 'y_train' and 'y_test') are expected; save it with those names"
    )


def _items_tensor(array: np.ndarray, what: str) -> torch.Tensor:
    """float32 items from a numeric array: uint8 / 255, others cast; a 1-D one is refused."""
    if array.dtype.kind not in "biuf":
        raise DataError(
            f"{what} has dtype {array.dtype}, which is not numeric; "
            "convert it to numbers first (e.g. x.astype('float32'))"
        )
    if array.ndim == 0:
        raise DataError(f"{what} is a single number; it needs one row per item")
    if array.ndim == 1:
        raise DataError(one_dimensional(what, array.shape))
    with np.errstate(over="ignore"):
        x = torch.from_numpy(array.astype(np.float32))
    if array.dtype == np.uint8:
        x /= 255.0
    if array.dtype.kind == "f" and bool(np.isfinite(array).all()) and not bool(x.isfinite().all()):
        raise DataError(
            f"{what} has values too large for float32 (largest magnitude "
            f"{float(np.abs(array).max()):.4g}); rescale the data first"
        )
    validate_data(x, what=what)
    return x


def one_dimensional(what: str, shape: tuple[int, ...]) -> str:
    """The message refusing a 1-D array of items: are its values items or features?"""
    (n,) = shape
    return (
        f"{what} is 1-D (shape {shape}): are its {n} values {n} items of one value each, or "
        f"one item of {n} features? Reshape it to ({n}, 1) for the first (x.reshape(-1, 1)) "
        f"or to (1, {n}) for the second (x.reshape(1, -1)), and save it again"
    )


def _labels_tensor(array: np.ndarray, num_items: int, what: str) -> torch.Tensor:
    """int64 class indices from a 1-D array of non-negative whole numbers."""
    if array.ndim != 1:
        raise DataError(f"{what} has shape {array.shape}; labels must be 1-D, one per item")
    if len(array) != num_items:
        raise DataError(
            f"{what} has {len(array)} labels for {num_items} items; give exactly one label per item"
        )
    whole = array.dtype.kind in "biu" or (
        array.dtype.kind == "f" and bool((np.isfinite(array) & (array == np.round(array))).all())
    )
    if not whole:
        raise DataError(f"{what} are not whole numbers; labels must be class indices 0, 1, 2, ...")
    if len(array) and array.min() < 0:
        raise DataError(f"{what} has negative values; labels must be class indices 0, 1, 2, ...")
    return torch.from_numpy(array.astype(np.int64))


def _factors(
    arrays: dict[str, np.ndarray], name: str, parts: dict[str, tuple[str, np.ndarray]]
) -> Factors | None:
    """The file's factors, split as its items are: ``parts`` maps each split to the key of
    its factor array and the positions of its rows in that array."""
    keys = {key for key, _ in parts.values()}
    present = keys & arrays.keys()
    if not present:
        if _FACTOR_NAMES in arrays:
            raise DataError(f"{name} has factor_names but no {' and '.join(sorted(keys))}")
        return None
    if present != keys:
        raise DataError(f"{name} has {sorted(present)} but not {sorted(keys - present)}")
    # index the values of both splits together, so a value means the same index in each
    values = {key: arrays[key] for key in sorted(keys)}
    for key, array in values.items():
        if array.ndim == 1:
            values[key] = array.reshape(-1, 1)  # one factor
    widths = {v.shape[1:] for v in values.values()}
    if len(widths) > 1:
        raise DataError(f"{name}: factors_train and factors_test have different widths")
    stacked, sizes = factor_indices(np.concatenate(list(values.values())), f"{name} factors")
    indexed, start = {}, 0
    for key, array in values.items():
        indexed[key] = stacked[start : start + len(array)]
        start += len(array)
    num_factors = stacked.shape[1]
    names = tuple(f"factor{j}" for j in range(num_factors))
    if _FACTOR_NAMES in arrays:
        given = arrays[_FACTOR_NAMES]
        if given.ndim != 1 or len(given) != num_factors:
            raise DataError(
                f"{name} factor_names has shape {given.shape}; give one name per factor "
                f"({num_factors})"
            )
        names = tuple(str(n) for n in given)
    split_factors = {split: indexed[key][rows] for split, (key, rows) in parts.items()}
    return Factors(names, sizes, split_factors["train"], split_factors["test"])


def load_mapped(path: Path, *, test_fraction: float, seed: int, limit: int | None) -> Dataset:
    """A ``.npy`` file memory-mapped (``np.load(mmap_mode="r")``): a :class:`Dataset` of
    :class:`~pyrovae.data.dataset.MappedItems` whose batches read only their own rows, split
    and limited as :func:`load_file` splits a single array."""
    if path.suffix != ".npy" or not path.is_file():
        raise DataError(
            f"cannot memory-map {path}: only a .npy file can be (a .npz archive is compressed "
            "or zipped); save the array with numpy.save, or drop --mmap"
        )
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(
            f"cannot read {path}: the file is corrupt or not a NumPy file ({exc}); "
            "save it again with numpy.save"
        ) from None
    if array.ndim == 0 or array.dtype.kind not in "biuf":
        raise DataError(
            f"{path.name} holds {array.dtype} of shape {array.shape}; a memory-mapped file "
            "needs a numeric array with one row per item"
        )
    if array.ndim == 1:
        raise DataError(one_dimensional(path.name, array.shape))
    train_index, test_index = split_indices(len(array), test_fraction, seed, None, path.name)
    return Dataset(
        name=path.stem,
        train=MappedItems(array, train_index[:limit]),
        test=MappedItems(array, test_index[:limit]),
        train_labels=None,
        test_labels=None,
    )


def load_file(path: Path, *, test_fraction: float, seed: int, limit: int | None) -> Dataset:
    """The user's .npy / .npz data, unbinarized; a single array is split by ``test_fraction``
    and ``seed``, and ``limit`` keeps its first train and test items (see
    :func:`~pyrovae.data.load_dataset` for the accepted layouts)."""
    arrays = _read_arrays(path)
    name = path.stem
    if "x" in arrays:
        x = _items_tensor(arrays["x"], what=f"{path.name} x")
        y = None if "y" not in arrays else _labels_tensor(arrays["y"], len(x), f"{path.name} y")
        train_index, test_index = split_indices(len(x), test_fraction, seed, None, what=path.name)
        train_index, test_index = train_index[:limit], test_index[:limit]
        if "factors" in arrays and len(arrays["factors"]) != len(x):
            raise DataError(
                f"{path.name} has {len(arrays['factors'])} rows of factors for {len(x)} items; "
                "give one row per item"
            )
        parts = {"train": ("factors", train_index), "test": ("factors", test_index)}
        return Dataset(
            name=name,
            train=x[train_index],
            test=x[test_index],
            train_labels=None if y is None else y[train_index],
            test_labels=None if y is None else y[test_index],
            factors=_factors(arrays, path.name, parts),
        )
    train = _items_tensor(arrays["x_train"], what=f"{path.name} x_train")
    test = _items_tensor(arrays["x_test"], what=f"{path.name} x_test")
    if train.shape[1:] != test.shape[1:]:
        raise DataError(
            f"{path.name}: x_train items have shape {tuple(train.shape[1:])} but x_test items "
            f"have shape {tuple(test.shape[1:])}; both splits need the same item shape"
        )
    labels: dict[str, torch.Tensor | None] = {}
    for split, items in (("train", train), ("test", test)):
        key = f"y_{split}"
        labels[split] = (
            _labels_tensor(arrays[key], len(items), what=f"{path.name} {key}")
            if key in arrays
            else None
        )
    for split, items in (("train", train), ("test", test)):
        key = f"factors_{split}"
        if key in arrays and len(arrays[key]) != len(items):
            raise DataError(
                f"{path.name} has {len(arrays[key])} rows of {key} for {len(items)} items; "
                "give one row per item"
            )
    parts = {
        "train": ("factors_train", np.arange(len(train))),
        "test": ("factors_test", np.arange(len(test))),
    }
    return Dataset(
        name=name,
        train=train,
        test=test,
        train_labels=labels["train"],
        test_labels=labels["test"],
        factors=_factors(arrays, path.name, parts),
    )


def load_items(
    path: str | os.PathLike[str], *, binarize: str = "none", seed: int = 0
) -> torch.Tensor:
    """Every item of a user's ``.npy`` / ``.npz`` file, in file order, as float32.

    ``x`` (or ``x_train`` followed by ``x_test``), read as
    :func:`~pyrovae.data.load_dataset` reads it, then binarized as a test set (``"static"``
    and ``"dynamic"``: one Bernoulli draw seeded with ``seed``), so row ``i`` of the file is
    item ``i``; :func:`load_labeled_items` also gives their labels.
    """
    return load_labeled_items(path, binarize=binarize, seed=seed)[0]


def load_labeled_items(
    path: str | os.PathLike[str], *, binarize: str = "none", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(x, y)``: every item of a user's ``.npy`` / ``.npz`` file as :func:`load_items`
    gives them, in file order, and their labels (``y``, or ``y_train`` followed by
    ``y_test``) or ``None`` when the file has none for some of its items."""
    check_binarize(binarize)
    path = Path(path)
    arrays = _read_arrays(path)
    splits = [""] if "x" in arrays else ["_train", "_test"]
    parts = [_items_tensor(arrays[f"x{s}"], what=f"{path.name} x{s}") for s in splits]
    if len({p.shape[1:] for p in parts}) > 1:
        raise DataError(
            f"{path.name}: x_train and x_test items have different shapes "
            f"{[tuple(p.shape[1:]) for p in parts]}; both splits need the same item shape"
        )
    labels = None
    if all(f"y{s}" in arrays for s in splits):
        labels = torch.cat(
            [
                _labels_tensor(arrays[f"y{s}"], len(part), what=f"{path.name} y{s}")
                for s, part in zip(splits, parts)
            ]
        )
    return binarize_items(torch.cat(parts), binarize, seed, what=path.name), labels
