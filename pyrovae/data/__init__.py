"""Data sets as preloaded tensors (or memory-mapped files): where they come from, how they are
binarized, how they are batched.

Modules, one concern each:

:mod:`~pyrovae.data.dataset`
    :class:`Dataset`, a train/test pair of tensors with optional labels, and its one batching
    path (:meth:`Dataset.batches`, :meth:`Dataset.cycle`), whose randomness comes from one
    seeded :class:`torch.Generator` per pass; with a :class:`Loader` the batches of that same
    order are fetched by a :class:`torch.utils.data.DataLoader`.
:mod:`~pyrovae.data.validation`
    :func:`validate_data` and :func:`~pyrovae.data.validation.validate_labels`.
:mod:`~pyrovae.data.binarization`
    The modes of :data:`BINARIZE` (``none``, ``threshold``, ``static``, ``dynamic``).
:mod:`~pyrovae.data.sources`
    The named data sets of :data:`DATASETS` (digits, MNIST, Fashion-MNIST, dSprites) and
    :func:`load_dataset`.
:mod:`~pyrovae.data.factors`
    Ground-truth factors of variation: :class:`Factors` (what ``Dataset.factors`` holds) and
    the :class:`FactorSampler` the disentanglement metrics draw from: a :class:`GridSampler`
    over a product space, or a :class:`DataFactorSampler` over labelled items.
:mod:`~pyrovae.data.dsprites`
    Procedural dSprites: :class:`DSprites` renders shapes from their factors.
:mod:`~pyrovae.data.idx`
    :func:`read_idx`, the IDX file format of MNIST and Fashion-MNIST.
:mod:`~pyrovae.data.files`
    The user's own ``.npy`` / ``.npz`` files (``.npy`` memory-mapped with ``mmap=True``), and
    :func:`load_items` and :func:`load_labeled_items` (every item in file order).
:mod:`~pyrovae.data.images`
    The user's own folder of images, one subfolder per class (:func:`load_image_folder`).
:mod:`~pyrovae.data.text`
    Sentences from a text file as padded token ids, and their :class:`Vocabulary`
    (:func:`load_text`).
:mod:`~pyrovae.data.wrapped`
    Any :class:`torch.utils.data.Dataset`, preloaded (:func:`from_torch_dataset`).
:mod:`~pyrovae.data.tables`
    A CSV or Parquet table with mixed column types and missing cells (:func:`load_table`): a
    :class:`TableDataset` whose :class:`TableEncoding` infers the column types and maps
    category labels to codes and back.
"""

from pyrovae.data.binarization import BINARIZE
from pyrovae.data.dataset import Dataset, Loader, MappedItems, Shard
from pyrovae.data.dsprites import DSprites
from pyrovae.data.factors import DataFactorSampler, Factors, FactorSampler, GridSampler
from pyrovae.data.files import load_items, load_labeled_items
from pyrovae.data.idx import read_idx
from pyrovae.data.images import IMAGE_MODES, load_image_folder
from pyrovae.data.sources import (
    DATASETS,
    DEBIAN_FASHION_MNIST,
    DEFAULT_DATA_DIR,
    DatasetLoader,
    load_dataset,
)
from pyrovae.data.tables import (
    TableDataset,
    TableEncoding,
    load_table,
    read_table,
    read_table_run,
    write_table_run,
)
from pyrovae.data.text import Vocabulary, load_text, tokenize
from pyrovae.data.validation import validate_data
from pyrovae.data.wrapped import from_torch_dataset

__all__ = [
    "BINARIZE",
    "DATASETS",
    "DEBIAN_FASHION_MNIST",
    "DEFAULT_DATA_DIR",
    "IMAGE_MODES",
    "DSprites",
    "DataFactorSampler",
    "Dataset",
    "DatasetLoader",
    "FactorSampler",
    "Factors",
    "GridSampler",
    "Loader",
    "MappedItems",
    "Shard",
    "TableDataset",
    "TableEncoding",
    "Vocabulary",
    "from_torch_dataset",
    "load_dataset",
    "load_image_folder",
    "load_items",
    "load_labeled_items",
    "load_table",
    "load_text",
    "read_idx",
    "read_table",
    "read_table_run",
    "tokenize",
    "validate_data",
    "write_table_run",
]
