"""Where data sets come from: the named sources of :data:`DATASETS`, and :func:`load_dataset`.

``"digits"``
    scikit-learn's bundled 8x8 digits (1797 images, offline), scaled into [0, 1] and split with a
    stratified :func:`sklearn.model_selection.train_test_split`.
``"mnist"``, ``"fashion-mnist"``
    The official 60000/10000 split of 28x28 images, scaled into [0, 1]. Read from IDX files
    (gzip'd or not) in ``data_dir`` or ``data_dir/<MNIST|FashionMNIST>/raw``, then, for
    Fashion-MNIST, from Debian's ``dataset-fashion-mnist`` package
    (:data:`DEBIAN_FASHION_MNIST`), and finally downloaded with torchvision when asked to.
``"dsprites"``, ``"dsprites-small"``
    Procedural dSprites (:mod:`pyrovae.data.dsprites`), rendered in code with every item's
    factors (``dataset.factors``) and the shape as its label: ``"dsprites"`` draws
    :data:`~pyrovae.data.dsprites.DSPRITES_SUBSET` of the 737 280 64x64 combinations (seeded by
    ``seed``), ``"dsprites-small"`` holds all 46 080 32x32 ones; both split by ``test_fraction``.
``path=...``
    A ``.npy`` array or a ``.npz`` archive (see :mod:`pyrovae.data.files`), memory-mapped with
    ``mmap=True``; a CSV or Parquet table (see :mod:`pyrovae.data.tables`); or a folder of
    images, one subfolder per class (see :mod:`pyrovae.data.images`).

References
----------
.. [1] Y. LeCun, L. Bottou, Y. Bengio and P. Haffner, "Gradient-based learning applied to document
   recognition", Proceedings of the IEEE, 1998.
.. [2] H. Xiao, K. Rasul and R. Vollgraf, "Fashion-MNIST: a novel image dataset for benchmarking
   machine learning algorithms", arXiv:1708.07747, 2017.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from pyrovae.data.binarization import binarize_splits, check_binarize
from pyrovae.data.dataset import SPLITS, Dataset, Loader, MappedItems, split_indices
from pyrovae.data.dsprites import DSPRITES_SUBSET, DSprites, load_dsprites
from pyrovae.data.files import load_file, load_mapped
from pyrovae.data.idx import IDX_STEMS, find_idx_files, read_idx
from pyrovae.data.images import load_image_folder
from pyrovae.data.tables import TableEncoding, is_table, load_table
from pyrovae.data.text import TEXT_SUFFIXES, load_text
from pyrovae.errors import ConfigError, DataError
from pyrovae.registry import Registry

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST",
    "DEFAULT_DATA_DIR",
    "DatasetLoader",
    "load_dataset",
]

logger = logging.getLogger(__name__)

#: Where Debian's ``dataset-fashion-mnist`` package installs the gzip'd IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

#: Where ``download=True`` puts MNIST and Fashion-MNIST when no ``data_dir`` is given.
DEFAULT_DATA_DIR = Path("data")


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
    image_size: tuple[int, ...] | None = None,
    image_mode: str = "auto",
    mmap: bool = False,
    loader: Loader | None = None,
    column_types: str | None = None,
    label_column: str | None = None,
    table_encoding: TableEncoding | None = None,
    max_length: int = 30,
    min_count: int = 1,
    max_vocab: int | None = None,
    vocabulary: str | os.PathLike[str] | None = None,
) -> Dataset:
    """Load a named data set, or the user's own file or image folder, and binarize it.

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
        divided by 255; other numeric arrays are cast to float32 unchanged. A 1-D array is
        refused (items or features? the message gives both reshapes); every other shape is
        kept. The data set's name is
        the file's stem. A folder is a folder of images, one subfolder per class
        (:func:`~pyrovae.data.images.load_image_folder`), named after the folder. A ``.txt``
        file holds sentences, one per line (:func:`~pyrovae.data.text.load_text`).
    data_dir : path-like, optional
        Where to look for (or download) MNIST and Fashion-MNIST IDX files; it must be an
        existing folder unless ``download`` (which creates it).
    binarize : str
        One of :data:`~pyrovae.data.BINARIZE` (see :mod:`pyrovae.data.binarization`).
    test_fraction : float
        The share of items held out when a source has no official test split.
    seed : int
        Seeds the train/test split and the ``"static"`` / ``"dynamic"`` Bernoulli samples.
    download : bool
        Download MNIST / Fashion-MNIST with torchvision when no local copy is found.
    limit : int, optional
        Keep only the first ``limit`` train and the first ``limit`` test items (quick runs).
    image_size : tuple of int, optional
        ``(H, W)`` (or one side) to resize the images of a folder to.
    image_mode : {"auto", "grayscale", "rgb"}
        How a folder's images are read: one channel, three, or one when all are grayscale.
    mmap : bool
        Memory-map a ``.npy`` file (``np.load(mmap_mode="r")``) instead of reading it: batches
        read their rows from the file, for arrays larger than memory; only with
        ``binarize="none"`` (the other modes rewrite the whole array).
    loader : Loader, optional
        Draw batches through a :class:`torch.utils.data.DataLoader` (workers, pinned memory)
        instead of slicing tensors; same items, same order.
    column_types : str, optional
        A table (``.csv``, ``.parquet``; :mod:`pyrovae.data.tables`): overrides of its
        inferred column types, ``"age=count,sex=categorical"``.
    label_column : str, optional
        A table's column read as class labels rather than modelled.
    table_encoding : TableEncoding, optional
        A table's encoding to apply (a trained run's) instead of one fitted to the file.
    max_length, min_count, max_vocab, vocabulary
        For a ``.txt`` file of sentences: the longest sentence kept (in tokens), and how
        the vocabulary is built or which one is read (:func:`~pyrovae.data.text.load_text`).

    Returns
    -------
    Dataset
        float32 tensors on the CPU (or memory-mapped items with ``mmap``).

    Raises
    ------
    ConfigError
        For an unknown ``name`` or ``binarize``, or an out-of-range ``test_fraction``/``limit``.
    DataError
        For data that is missing, corrupt, malformed, or outside [0, 1] when binarizing.
    """
    check_binarize(binarize)
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be a positive number of items, got {limit}")

    split = {"test_fraction": test_fraction, "seed": seed, "limit": limit}
    if mmap and binarize != "none":
        raise ConfigError(
            f"binarize={binarize!r} rewrites the whole array, which a memory-mapped file is not "
            "read into; binarize the file beforehand, or drop --mmap"
        )
    if data_dir is not None and not download and not Path(data_dir).is_dir():
        what = "is a file, not a folder" if Path(data_dir).exists() else "does not exist"
        raise DataError(
            f"--data-dir {data_dir} {what}; give the folder that holds the IDX files, or add "
            "--download to download them into it"
        )
    if (column_types or label_column) and not is_table(path):
        raise ConfigError(
            "--column-types and --label-column apply to a table given as --data FILE.csv "
            "(or .parquet)"
        )
    if mmap and (path is None or Path(path).is_dir()):
        raise ConfigError("mmap applies to a .npy file given as --data FILE.npy")
    if path is not None and Path(path).is_dir():
        dataset = load_image_folder(
            Path(path), image_size=image_size, image_mode=image_mode, **split
        )
    elif is_table(path):
        dataset = load_table(
            Path(path),
            column_types=column_types,
            label_column=label_column,
            encoding=table_encoding,
            **split,
        )
    elif path is not None and Path(path).suffix in TEXT_SUFFIXES:
        if binarize != "none" or mmap:
            raise ConfigError("sentences are token ids: drop --binarize and --mmap")
        text = {"min_count": min_count, "max_vocab": max_vocab, "vocabulary": vocabulary}
        dataset = load_text(Path(path), max_length=max_length, **text, **split)
    elif path is not None and mmap:
        dataset = load_mapped(Path(path), **split)
    elif path is not None:
        dataset = load_file(Path(path), **split)
    else:
        source = DATASETS[name]
        dataset = source(
            data_dir=None if data_dir is None else Path(data_dir),
            download=download,
            test_fraction=test_fraction,
            seed=seed,
            limit=limit,
        )
    dataset = _limited(dataset, limit)
    if not dataset.mapped and dataset.vocabulary is None:
        train, test = binarize_splits(dataset.train, dataset.test, binarize, seed, dataset.name)
        dataset = dataclasses.replace(dataset, train=train, test=test)
    dataset = dataclasses.replace(dataset, binarize=binarize, loader=loader)
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
    if limit is None or isinstance(dataset.train, MappedItems):
        return dataset  # a mapped file's split is limited where its rows are chosen

    def head(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[:limit]

    return dataclasses.replace(
        dataset,
        train=dataset.train[:limit],
        test=dataset.test[:limit],
        train_labels=head(dataset.train_labels),
        test_labels=head(dataset.test_labels),
        factors=None
        if dataset.factors is None
        else dataclasses.replace(
            dataset.factors, train=dataset.factors.train[:limit], test=dataset.factors.test[:limit]
        ),
    )


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
    train_index, test_index = split_indices(
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
        files = find_idx_files(directory)
        if files is not None:
            return _dataset_from_idx(name, files, limit)

    if not download:
        hints = [f"'{install_hint}'"] if install_hint else []
        hints += ["--data-dir DIR (a folder holding the IDX files)", "--download"]
        where = (
            f"looked for {IDX_STEMS['train', 'images']}[.gz] and its three companions in "
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
    files = find_idx_files(root / torchvision_name / "raw")
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


# -- procedural dSprites ---------------------------------------------------------------------


@DATASETS.register("dsprites")
def _load_dsprites(
    *,
    data_dir: Path | None,
    download: bool,
    test_fraction: float,
    seed: int,
    limit: int | None,
) -> Dataset:
    """Procedural dSprites, 1x64x64 in [0, 1]: a seeded subset of the original factor grid."""
    return load_dsprites(
        DSprites.full(),
        "dsprites",
        num_items=DSPRITES_SUBSET,
        test_fraction=test_fraction,
        seed=seed,
        limit=limit,
    )


@DATASETS.register("dsprites-small")
def _load_dsprites_small(
    *,
    data_dir: Path | None,
    download: bool,
    test_fraction: float,
    seed: int,
    limit: int | None,
) -> Dataset:
    """Procedural dSprites, 1x32x32 in [0, 1]: all 46 080 items of the small grid."""
    return load_dsprites(
        DSprites.small(),
        "dsprites-small",
        num_items=None,
        test_fraction=test_fraction,
        seed=seed,
        limit=limit,
    )
