r"""Data sets as preloaded tensors, and their binarization.

Every data set is loaded once into two float32 tensors (``train`` and ``test``) of shape
``(N, *event_shape)``; :meth:`Dataset.batches` slices them. There is no ``DataLoader`` and no
per-item pipeline: slicing a preloaded tensor costs about 0.03 s per Fashion-MNIST epoch, where
torchvision's per-image pipeline costs about 3 s.

Sources (the names in :data:`DATASETS`, plus the user's own files):

``"digits"``
    scikit-learn's bundled 8x8 digits (1797 images, offline), scaled into [0, 1] and split with a
    stratified :func:`sklearn.model_selection.train_test_split`.
``"mnist"``, ``"fashion-mnist"``
    The official 60000/10000 split of 28x28 images, scaled into [0, 1]. Read from IDX files
    (gzip'd or not) in ``data_dir`` or ``data_dir/<MNIST|FashionMNIST>/raw``, then, for
    Fashion-MNIST, from Debian's ``dataset-fashion-mnist`` package
    (:data:`DEBIAN_FASHION_MNIST`), and finally downloaded with torchvision when asked to.
``path=...``
    A ``.npy`` array or a ``.npz`` archive (see :func:`load_dataset`).

Binarization (:data:`BINARIZE`) turns grey levels :math:`p \in [0, 1]` into binary pixels so a
Bernoulli likelihood is a normalized density:

``"none"``
    Keep the values.
``"threshold"``
    :math:`x = [p > 0.5]`, a deterministic rounding.
``"static"``
    One fixed sample :math:`x \sim \mathrm{Bernoulli}(p)` of both splits, drawn with a generator
    seeded by ``seed`` (Larochelle and Murray's static binarization).
``"dynamic"``
    The training set is resampled every time a batch is drawn (Burda et al.), which acts as a
    regularizer; the test set is sampled once, with the same seeded generator as ``"static"``, so
    held-out numbers are comparable across runs and across the two stochastic modes.

References
----------
.. [1] Y. LeCun, L. Bottou, Y. Bengio and P. Haffner, "Gradient-based learning applied to document
   recognition", Proceedings of the IEEE, 1998.
.. [2] H. Xiao, K. Rasul and R. Vollgraf, "Fashion-MNIST: a novel image dataset for benchmarking
   machine learning algorithms", arXiv:1708.07747, 2017.
.. [3] R. Salakhutdinov and I. Murray, "On the quantitative analysis of deep belief networks",
   ICML 2008.
.. [4] H. Larochelle and I. Murray, "The neural autoregressive distribution estimator",
   AISTATS 2011.
.. [5] Y. Burda, R. Grosse and R. Salakhutdinov, "Importance weighted autoencoders",
   arXiv:1509.00519, 2015.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import os
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from pyrovae.errors import ConfigError, DataError
from pyrovae.registry import Registry

__all__ = [
    "BINARIZE",
    "DATASETS",
    "DEBIAN_FASHION_MNIST",
    "DEFAULT_DATA_DIR",
    "Dataset",
    "DatasetLoader",
    "load_dataset",
    "load_items",
    "read_idx",
    "validate_data",
]

logger = logging.getLogger(__name__)

#: Where Debian's ``dataset-fashion-mnist`` package installs the gzip'd IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

#: Where ``download=True`` puts MNIST and Fashion-MNIST when no ``data_dir`` is given.
DEFAULT_DATA_DIR = Path("data")

SPLITS = ("train", "test")


# --------------------------------------------------------------------------------------------
# Binarization: one (train, test) pair of transforms per mode, looked up by name.
# --------------------------------------------------------------------------------------------


def _keep(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return x


def _threshold(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return (x > 0.5).to(x.dtype)


def _sample(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One Bernoulli sample with means ``x``, drawn with ``generator`` on whatever device it has."""
    if generator is None:
        return torch.bernoulli(x)
    if generator.device == x.device:
        return torch.bernoulli(x, generator=generator)
    uniform = torch.rand(x.shape, generator=generator, device=generator.device).to(x.device)
    return (uniform < x).to(x.dtype)


_Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

# mode -> (train transform, test transform). "dynamic" keeps the grey-level training set here
# because Dataset.batches resamples it per batch.
_BINARIZERS: dict[str, tuple[_Transform, _Transform]] = {
    "none": (_keep, _keep),
    "threshold": (_threshold, _threshold),
    "static": (_sample, _sample),
    "dynamic": (_keep, _sample),
}

#: The binarization modes, in the order the CLI lists them.
BINARIZE: tuple[str, ...] = tuple(_BINARIZERS)


def _check_binarize(binarize: str) -> None:
    if binarize not in _BINARIZERS:
        raise ConfigError(
            f"unknown binarization {binarize!r}; choose one of: {', '.join(BINARIZE)}"
        )


def _check_unit_interval(x: torch.Tensor, mode: str, what: str) -> None:
    low, high = (float(v) for v in torch.aminmax(x))
    if low < 0.0 or high > 1.0:
        raise DataError(
            f"{what} has values in [{low:.4g}, {high:.4g}], but {mode} binarization needs "
            "values in [0, 1]; scale the data first (e.g. divide by its maximum)"
        )


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


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


def _check_labels(y: torch.Tensor, num_items: int, what: str) -> None:
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


# --------------------------------------------------------------------------------------------
# The data set
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test pair of preloaded tensors with optional labels.

    Parameters
    ----------
    name : str
        The data set's name (a :data:`DATASETS` key, or a user file's stem).
    train, test : torch.Tensor
        Floating-point items of shape ``(N_train, *event_shape)`` and ``(N_test, *event_shape)``.
    train_labels, test_labels : torch.Tensor or None
        Integer class indices of shape ``(N_train,)`` and ``(N_test,)``, or ``None``.
    binarize : str
        One of :data:`BINARIZE`. ``"dynamic"`` means :meth:`batches` draws a fresh Bernoulli
        sample of every training batch; the other modes were applied at load time.

    Raises
    ------
    DataError
        If the tensors are not floating point, hold NaN or inf, disagree in event shape, or
        have labels of the wrong length or dtype.
    ConfigError
        If ``binarize`` is not one of :data:`BINARIZE`.
    """

    name: str
    train: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor | None
    test_labels: torch.Tensor | None
    binarize: str = "none"

    def __post_init__(self) -> None:
        _check_binarize(self.binarize)
        for split, x, y in (
            ("train", self.train, self.train_labels),
            ("test", self.test, self.test_labels),
        ):
            what = f"{self.name} {split} data"
            event_shape = None if split == "train" else self.shape
            validate_data(x, event_shape=event_shape, what=what)
            if not x.is_floating_point():
                raise DataError(
                    f"{what} has dtype {x.dtype}, but floating point is needed; "
                    "convert it with x.float() (and scale 8-bit images by 1/255)"
                )
            if y is not None:
                _check_labels(y, len(x), what=f"{self.name} {split} labels")
        if self.binarize == "dynamic":
            _check_unit_interval(self.train, "dynamic", what=f"{self.name} train data")

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one item (the event shape), e.g. ``(1, 28, 28)``."""
        return tuple(self.train.shape[1:])

    @property
    def num_classes(self) -> int | None:
        """One more than the largest label, or ``None`` for an unlabelled data set."""
        labels = [y for y in (self.train_labels, self.test_labels) if y is not None]
        if not labels:
            return None
        return max(int(y.max()) for y in labels) + 1

    def to(self, device: torch.device | str) -> Dataset:
        """A copy with every tensor on ``device``."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return dataclasses.replace(
            self,
            train=self.train.to(device),
            test=self.test.to(device),
            train_labels=move(self.train_labels),
            test_labels=move(self.test_labels),
        )

    def num_batches(self, split: str, batch_size: int, drop_last: bool = False) -> int:
        """How many batches :meth:`batches` yields for these arguments."""
        num_items = len(self._items(split))
        _check_batch_size(batch_size)
        return num_items // batch_size if drop_last else -(-num_items // batch_size)

    def batches(
        self,
        split: str = "train",
        batch_size: int = 128,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[torch.Tensor]:
        """Iterate over one epoch of ``split`` in batches of ``batch_size`` items.

        Parameters
        ----------
        split : {"train", "test"}
            Which tensor to slice.
        batch_size : int
            Items per batch; the last batch is smaller unless ``drop_last``.
        shuffle : bool
            Visit the items in a random order (``torch.randperm``), each exactly once.
        generator : torch.Generator, optional
            The random source for the order and for dynamic binarization; the global torch
            RNG when ``None``.
        drop_last : bool
            Skip the final batch when it has fewer than ``batch_size`` items.

        Yields
        ------
        torch.Tensor
            Batches of shape ``(B, *event_shape)`` on the data's device. With
            ``binarize="dynamic"`` each training batch is a fresh Bernoulli sample.

        Raises
        ------
        ConfigError
            If ``split`` is unknown or ``batch_size`` is not positive.
        """
        pairs = self._batches(split, batch_size, shuffle, generator, drop_last, labels=False)
        return (x for x, _ in pairs)

    def labeled_batches(
        self,
        split: str = "train",
        batch_size: int = 128,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Like :meth:`batches`, but yield ``(x, y)`` pairs with the items' labels.

        Raises
        ------
        DataError
            If ``split`` has no labels.
        """
        pairs = self._batches(split, batch_size, shuffle, generator, drop_last, labels=True)
        return ((x, y) for x, y in pairs if y is not None)

    # -- helpers ------------------------------------------------------------------------------

    def _items(self, split: str) -> torch.Tensor:
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
        return self.train if split == "train" else self.test

    def _batches(
        self,
        split: str,
        batch_size: int,
        shuffle: bool,
        generator: torch.Generator | None,
        drop_last: bool,
        labels: bool,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        # Validate eagerly, so a bad argument fails at the call rather than at the first batch.
        x = self._items(split)
        _check_batch_size(batch_size)
        y = self.train_labels if split == "train" else self.test_labels
        if labels and y is None:
            raise DataError(
                f"{self.name} has no {split} labels; use a labelled data set "
                "(or an .npz file with 'y' / 'y_train' and 'y_test')"
            )
        order = None
        if shuffle:
            device = x.device if generator is None else generator.device
            order = torch.randperm(len(x), generator=generator, device=device).to(x.device)
        resample = self.binarize == "dynamic" and split == "train"
        return _slices(x, y if labels else None, batch_size, order, drop_last, resample, generator)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"batch_size must be a positive number of items, got {batch_size}")


def _slices(
    x: torch.Tensor,
    y: torch.Tensor | None,
    batch_size: int,
    order: torch.Tensor | None,
    drop_last: bool,
    resample: bool,
    generator: torch.Generator | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    stop = len(x) - len(x) % batch_size if drop_last else len(x)
    for start in range(0, stop, batch_size):
        index: slice | torch.Tensor = slice(start, start + batch_size)
        if order is not None:
            index = order[index]
        xb = x[index]
        if resample:
            xb = _sample(xb, generator)
        yield xb, (None if y is None else y[index])


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


class DatasetLoader(Protocol):
    """What a :data:`DATASETS` entry is: a function returning an unbinarized :class:`Dataset`.

    A loader returns at most ``limit`` train and test items when ``limit`` is given.
    """

    def __call__(
        self,
        *,
        data_dir: Path | None,
        download: bool,
        test_fraction: float,
        seed: int,
        limit: int | None,
    ) -> Dataset: ...


#: Named data sets: ``DATASETS[name](data_dir=..., download=..., ...)`` returns a Dataset.
DATASETS: Registry[DatasetLoader] = Registry("dataset")


def load_dataset(
    name: str = "digits",
    *,
    path: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    binarize: str = "none",
    test_fraction: float = 0.2,
    seed: int = 0,
    download: bool = False,
    limit: int | None = None,
) -> Dataset:
    """Load a named data set, or the user's own ``.npy`` / ``.npz`` file, and binarize it.

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS` (``"digits"``, ``"mnist"``, ``"fashion-mnist"``); ignored when
        ``path`` is given.
    path : path-like, optional
        The user's own data. A ``.npy`` file holds one array of shape ``(N, *event_shape)``; a
        ``.npz`` archive holds either ``x`` (and optionally labels ``y``), or ``x_train`` and
        ``x_test`` (and optionally ``y_train`` and ``y_test``). A single array is split by
        ``test_fraction`` and ``seed``. ``uint8`` arrays are taken to be 8-bit images and
        divided by 255; other numeric arrays are cast to float32 unchanged. A 1-D array of
        shape ``(N,)`` becomes ``(N, 1)``; every other shape is kept. The data set's name is
        the file's stem.
    data_dir : path-like, optional
        Where to look for (or download) MNIST and Fashion-MNIST IDX files.
    binarize : str
        One of :data:`BINARIZE` (see the module docstring).
    test_fraction : float
        The share of items held out when a source has no official test split.
    seed : int
        Seeds the train/test split and the ``"static"`` / ``"dynamic"`` Bernoulli samples.
    download : bool
        Download MNIST / Fashion-MNIST with torchvision when no local copy is found.
    limit : int, optional
        Keep only the first ``limit`` train and the first ``limit`` test items (quick runs).

    Returns
    -------
    Dataset
        float32 tensors on the CPU.

    Raises
    ------
    ConfigError
        For an unknown ``name`` or ``binarize``, or an out-of-range ``test_fraction``/``limit``.
    DataError
        For data that is missing, corrupt, malformed, or outside [0, 1] when binarizing.
    """
    _check_binarize(binarize)
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be a positive number of items, got {limit}")

    if path is not None:
        dataset = _load_file(Path(path), test_fraction=test_fraction, seed=seed, limit=limit)
    else:
        loader = DATASETS[name]
        dataset = loader(
            data_dir=None if data_dir is None else Path(data_dir),
            download=download,
            test_fraction=test_fraction,
            seed=seed,
            limit=limit,
        )
    dataset = _binarized(_limited(dataset, limit), binarize, seed)
    logger.info(
        "loaded %s: %d train and %d test items of shape %s (binarize=%s)",
        dataset.name,
        len(dataset.train),
        len(dataset.test),
        dataset.shape,
        binarize,
    )
    return dataset


def _limited(dataset: Dataset, limit: int | None) -> Dataset:
    if limit is None:
        return dataset

    def head(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[:limit]

    return dataclasses.replace(
        dataset,
        train=dataset.train[:limit],
        test=dataset.test[:limit],
        train_labels=head(dataset.train_labels),
        test_labels=head(dataset.test_labels),
    )


def _binarized(dataset: Dataset, mode: str, seed: int) -> Dataset:
    if mode != "none":
        for split, x in (("train", dataset.train), ("test", dataset.test)):
            _check_unit_interval(x, mode, what=f"{dataset.name} {split} data")
    train_transform, test_transform = _BINARIZERS[mode]
    # Test first, so "static" and "dynamic" hold out the very same binary test set.
    generator = torch.Generator().manual_seed(seed)
    test = test_transform(dataset.test, generator)
    train = train_transform(dataset.train, generator)
    return dataclasses.replace(dataset, train=train, test=test, binarize=mode)


def _split_indices(
    num_items: int,
    test_fraction: float,
    seed: int,
    stratify: np.ndarray | None,
    what: str,
) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    try:
        train_index, test_index = train_test_split(
            np.arange(num_items), test_size=test_fraction, random_state=seed, stratify=stratify
        )
    except ValueError as exc:
        raise DataError(
            f"cannot split {what} ({num_items} items) with test_fraction={test_fraction}: {exc}; "
            "use more items or another test_fraction, or give a separate test set"
        ) from None
    return np.asarray(train_index), np.asarray(test_index)


# -- scikit-learn digits ---------------------------------------------------------------------


@DATASETS.register("digits")
def _load_digits(
    *,
    data_dir: Path | None,
    download: bool,
    test_fraction: float,
    seed: int,
    limit: int | None,
) -> Dataset:
    """scikit-learn's 8x8 digits, scaled from 0..16 into [0, 1], stratified split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    train_index, test_index = _split_indices(
        len(labels), test_fraction, seed, stratify=bunch.target, what="digits"
    )
    train_index, test_index = train_index[:limit], test_index[:limit]
    return Dataset(
        name="digits",
        train=images[train_index],
        test=images[test_index],
        train_labels=labels[train_index],
        test_labels=labels[test_index],
    )


# -- MNIST and Fashion-MNIST from IDX files --------------------------------------------------

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_IDX_STEMS = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


def read_idx(path: str | os.PathLike[str], *, limit: int | None = None) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), gzip'd when its name ends in ``.gz``.

    The format is a magic number ``0x0000TTDD`` (type code ``TT``, ``DD`` dimensions), ``DD``
    big-endian uint32 sizes, then the values in big-endian C order.

    Parameters
    ----------
    path : path-like
        The file.
    limit : int, optional
        Read only the first ``limit`` items (along the first dimension); the rest of a gzip'd
        file is then never decompressed.

    Returns
    -------
    numpy.ndarray
        A writable array in native byte order, e.g. uint8 of shape ``(N, 28, 28)``.

    Raises
    ------
    DataError
        If the magic number is wrong or the file is shorter or longer than its header says.
    """
    path = Path(path)
    fix = "delete it and get a fresh copy"
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            magic = f.read(4)
            if (
                len(magic) < 4
                or magic[:2] != b"\0\0"
                or magic[2] not in _IDX_DTYPES
                or not magic[3]
            ):
                raise DataError(
                    f"corrupt IDX file {path}: bad magic number 0x{magic.hex() or 'empty'} "
                    "(expected two zero bytes, a type code such as 0x08 and the number of "
                    f"dimensions); {fix}"
                )
            ndim = magic[3]
            dims_bytes = f.read(4 * ndim)
            if len(dims_bytes) < 4 * ndim:
                raise DataError(f"corrupt IDX file {path}: truncated header; {fix}")
            dims = struct.unpack(f">{ndim}I", dims_bytes)
            dtype = _IDX_DTYPES[magic[2]]
            count = dims[0] if limit is None else min(dims[0], limit)
            expected = count * prod(dims[1:]) * dtype.itemsize
            payload = f.read(expected)
            if len(payload) < expected:
                raise DataError(
                    f"corrupt IDX file {path}: its header promises {dims[0]} items of shape "
                    f"{tuple(dims[1:])}, but the data ends early; {fix}"
                )
            if limit is None and f.read(1):
                raise DataError(
                    f"corrupt IDX file {path}: more data than its header's shape {tuple(dims)}; "
                    f"{fix}"
                )
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"corrupt IDX file {path}: cannot read it ({exc}); {fix}") from None
    array = np.frombuffer(payload, dtype=dtype).reshape(count, *dims[1:])
    return array.astype(dtype.newbyteorder("="))


def _find_idx_files(directory: Path) -> dict[tuple[str, str], Path] | None:
    """The four IDX files in ``directory`` (uncompressed preferred), or None if any is missing."""
    found = {}
    for key, stem in _IDX_STEMS.items():
        candidates = [directory / stem, directory / f"{stem}.gz"]
        existing = [c for c in candidates if c.is_file()]
        if not existing:
            return None
        found[key] = existing[0]
    return found


def _dataset_from_idx(name: str, files: dict[tuple[str, str], Path], limit: int | None) -> Dataset:
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for split in SPLITS:
        images = read_idx(files[split, "images"], limit=limit)
        labels = read_idx(files[split, "labels"], limit=limit)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"corrupt IDX files for {name} {split}: images of shape {images.shape} do not "
                f"match labels of shape {labels.shape} (expected (N, H, W) and (N,)); "
                "delete them and get a fresh copy"
            )
        scale = 255.0 if images.dtype == np.uint8 else 1.0
        x = torch.from_numpy(images).to(torch.float32).unsqueeze(1) / scale
        tensors[split] = x, torch.from_numpy(labels).to(torch.int64)
    logger.info("reading %s from %s", name, files["train", "images"].parent)
    return Dataset(
        name=name,
        train=tensors["train"][0],
        test=tensors["test"][0],
        train_labels=tensors["train"][1],
        test_labels=tensors["test"][1],
    )


def _load_idx_dataset(
    name: str,
    torchvision_name: str,
    system_dirs: list[Path],
    install_hint: str | None,
    *,
    data_dir: Path | None,
    download: bool,
    limit: int | None,
) -> Dataset:
    """Look in ``data_dir``, its torchvision layout, then ``system_dirs``; else download."""
    searched: list[Path] = []
    if data_dir is not None:
        searched += [data_dir, data_dir / torchvision_name / "raw"]
    searched += system_dirs
    for directory in searched:
        files = _find_idx_files(directory)
        if files is not None:
            return _dataset_from_idx(name, files, limit)

    if not download:
        hints = [f"'{install_hint}'"] if install_hint else []
        hints += ["--data-dir DIR (a folder holding the IDX files)", "--download"]
        where = (
            f"looked for {_IDX_STEMS['train', 'images']}[.gz] and its three companions in "
            + ", ".join(str(d) for d in searched)
            if searched
            else "no data_dir was given and there is no system copy"
        )
        raise DataError(f"{name} not found: {where}; use {', '.join(hints[:-1])} or {hints[-1]}")

    import torchvision

    root = DEFAULT_DATA_DIR if data_dir is None else data_dir
    logger.info("downloading %s into %s", name, root)
    try:
        # The train=True constructor downloads all four files into root/<name>/raw.
        getattr(torchvision.datasets, torchvision_name)(root=str(root), train=True, download=True)
    except (OSError, RuntimeError) as exc:
        raise DataError(
            f"could not download {name} into {root} ({exc}); check the network connection, "
            "or fetch the IDX files another way and pass --data-dir DIR"
        ) from None
    files = _find_idx_files(root / torchvision_name / "raw")
    if files is None:
        raise DataError(
            f"downloaded {name}, but its IDX files are missing from {root / torchvision_name}"
            "/raw; delete that folder and download again"
        )
    return _dataset_from_idx(name, files, limit)


@DATASETS.register("mnist")
def _load_mnist(
    *,
    data_dir: Path | None,
    download: bool,
    test_fraction: float,
    seed: int,
    limit: int | None,
) -> Dataset:
    """MNIST handwritten digits, 1x28x28 in [0, 1], the official 60000/10000 split."""
    return _load_idx_dataset(
        "mnist", "MNIST", [], None, data_dir=data_dir, download=download, limit=limit
    )


@DATASETS.register("fashion-mnist")
def _load_fashion_mnist(
    *,
    data_dir: Path | None,
    download: bool,
    test_fraction: float,
    seed: int,
    limit: int | None,
) -> Dataset:
    """Fashion-MNIST, 1x28x28 in [0, 1], the official 60000/10000 split."""
    return _load_idx_dataset(
        "fashion-mnist",
        "FashionMNIST",
        [DEBIAN_FASHION_MNIST],  # looked up at call time, so tests can monkeypatch it
        "apt-get install dataset-fashion-mnist",
        data_dir=data_dir,
        download=download,
        limit=limit,
    )


# -- the user's own .npy / .npz files --------------------------------------------------------

# An explicit split wins over a single array to be split.
_NPZ_LAYOUTS = (("x_train", "x_test", "y_train", "y_test"), ("x", "y"))


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """A .npy file's array (as key ``x``), or the arrays a .npz file holds under known keys."""
    if not path.exists():
        raise DataError(f"data file {path} does not exist; check the path")
    if path.suffix not in (".npy", ".npz") or not path.is_file():
        raise DataError(
            f"cannot read {path}: expected a .npy or .npz file; save the data with numpy.save "
            "(one array) or numpy.savez (x, or x_train and x_test, with optional labels)"
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
            return {k: loaded[k] for k in layout if k in keys}
    raise DataError(
        f"{path} has keys {sorted(keys)}, but 'x' (optional 'y') or 'x_train' and 'x_test' "
        "(optional 'y_train' and 'y_test') are expected; save it with those names"
    )


def _items_tensor(array: np.ndarray, what: str) -> torch.Tensor:
    """float32 items from a numeric array: uint8 / 255, others cast; (N,) becomes (N, 1)."""
    if array.dtype.kind not in "biuf":
        raise DataError(
            f"{what} has dtype {array.dtype}, which is not numeric; "
            "convert it to numbers first (e.g. x.astype('float32'))"
        )
    if array.ndim == 0:
        raise DataError(f"{what} is a single number; it needs one row per item")
    if array.ndim == 1:
        array = array[:, None]
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


def _load_file(path: Path, *, test_fraction: float, seed: int, limit: int | None) -> Dataset:
    """The user's .npy / .npz data; see :func:`load_dataset` for the accepted layouts."""
    arrays = _read_arrays(path)
    name = path.stem
    if "x" in arrays:
        x = _items_tensor(arrays["x"], what=f"{path.name} x")
        y = None if "y" not in arrays else _labels_tensor(arrays["y"], len(x), f"{path.name} y")
        train_index, test_index = _split_indices(len(x), test_fraction, seed, None, what=path.name)
        train_index, test_index = train_index[:limit], test_index[:limit]
        return Dataset(
            name=name,
            train=x[train_index],
            test=x[test_index],
            train_labels=None if y is None else y[train_index],
            test_labels=None if y is None else y[test_index],
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
    return Dataset(
        name=name,
        train=train,
        test=test,
        train_labels=labels["train"],
        test_labels=labels["test"],
    )


def load_items(
    path: str | os.PathLike[str], *, binarize: str = "none", seed: int = 0
) -> torch.Tensor:
    """Every item of a user's ``.npy`` / ``.npz`` file, in file order, as float32.

    ``x`` (or ``x_train`` followed by ``x_test``), read as :func:`load_dataset` reads it,
    then binarized as a test set (``"static"`` and ``"dynamic"``: one Bernoulli draw
    seeded with ``seed``), so row ``i`` of the file is item ``i``.
    """
    _check_binarize(binarize)
    path = Path(path)
    arrays = _read_arrays(path)
    keys = ["x"] if "x" in arrays else ["x_train", "x_test"]
    parts = [_items_tensor(arrays[k], what=f"{path.name} {k}") for k in keys]
    if len({p.shape[1:] for p in parts}) > 1:
        raise DataError(
            f"{path.name}: x_train and x_test items have different shapes "
            f"{[tuple(p.shape[1:]) for p in parts]}; both splits need the same item shape"
        )
    x = torch.cat(parts)
    if binarize != "none":
        _check_unit_interval(x, binarize, what=path.name)
    _, test_transform = _BINARIZERS[binarize]
    return test_transform(x, torch.Generator().manual_seed(seed))
