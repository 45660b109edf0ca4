"""Data sets as preloaded tensors: where they come from, how they are binarized, how they are
batched.

Modules, one concern each:

:mod:`~pyrovae.data.dataset`
    :class:`Dataset`, a train/test pair of tensors with optional labels, and its one batching
    path (:meth:`Dataset.batches`, :meth:`Dataset.cycle`), whose randomness comes from one
    seeded :class:`torch.Generator` per pass.
:mod:`~pyrovae.data.validation`
    :func:`validate_data` and :func:`~pyrovae.data.validation.validate_labels`.
:mod:`~pyrovae.data.binarization`
    The modes of :data:`BINARIZE` (``none``, ``threshold``, ``static``, ``dynamic``).
:mod:`~pyrovae.data.sources`
    The named data sets of :data:`DATASETS` (digits, MNIST, Fashion-MNIST) and
    :func:`load_dataset`.
:mod:`~pyrovae.data.idx`
    :func:`read_idx`, the IDX file format of MNIST and Fashion-MNIST.
:mod:`~pyrovae.data.files`
    The user's own ``.npy`` / ``.npz`` files, and :func:`load_items`.
"""

from pyrovae.data.binarization import BINARIZE
from pyrovae.data.dataset import Dataset, Shard
from pyrovae.data.files import load_items
from pyrovae.data.idx import read_idx
from pyrovae.data.sources import (
    DATASETS,
    DEBIAN_FASHION_MNIST,
    DEFAULT_DATA_DIR,
    DatasetLoader,
    load_dataset,
)
from pyrovae.data.validation import validate_data

__all__ = [
    "BINARIZE",
    "DATASETS",
    "DEBIAN_FASHION_MNIST",
    "DEFAULT_DATA_DIR",
    "Dataset",
    "DatasetLoader",
    "Shard",
    "load_dataset",
    "load_items",
    "read_idx",
    "validate_data",
]
