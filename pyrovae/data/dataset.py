"""The data set: a train/test pair of items, and the one way to batch them.

By default a data set is loaded once into two float32 tensors (``train`` and ``test``) of shape
``(N, *event_shape)``, and :meth:`Dataset.batches` slices them: slicing a preloaded tensor costs
about 0.03 s per Fashion-MNIST epoch, where torchvision's per-image pipeline costs about 3 s.
Data larger than memory are :class:`MappedItems` (rows of a memory-mapped ``.npy`` file, read
when a batch asks for them), and a data set with a :class:`Loader` draws its batches through a
:class:`torch.utils.data.DataLoader` (worker processes, pinned memory). Both paths visit the
same items in the same order: the order (and its data-parallel share) is computed once, and
only how the rows of a batch are fetched differs.

Randomness. A pass over the data (its order, and its Bernoulli draws under
``binarize="dynamic"``) comes from one :class:`torch.Generator`: the one the caller gives, or
else a fresh one seeded by a single draw from the global torch RNG (:meth:`Dataset.new_generator`).
So the same seed gives the same batches however many random numbers the model draws between
them, and a trainer that checkpoints the global RNG state resumes a run exactly.

Data-parallel training. A pass of one process among several (:class:`Shard`) takes its share
of an order that every process draws alike, from the shard's own seed; the generator then
draws only that process's dynamic binarization.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from pyrovae.data.binarization import bernoulli, check_binarize, check_unit_interval
from pyrovae.data.factors import Factors
from pyrovae.data.validation import validate_data, validate_labels
from pyrovae.errors import ConfigError, DataError

if TYPE_CHECKING:
    from pyrovae.data.text import Vocabulary

__all__ = ["SPLITS", "Batch", "Dataset", "Loader", "MappedItems", "Shard", "split_indices"]

#: The two tensors of a :class:`Dataset`.
SPLITS = ("train", "test")

#: What :meth:`Dataset.batches` yields: items ``x``, or ``(x, y)`` with ``labels=True``.
Batch = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Shard:
    """One process's share of a pass over the training items in data-parallel training.

    Every rank draws the same order of the items, a permutation seeded by ``seed`` (the
    identity without shuffling), cuts it to a multiple of ``world_size`` items, and takes
    every ``world_size``-th item of it from the ``rank``-th on. So the ranks' batches ``k``
    of ``B`` items are together batch ``k`` of a one-process pass over the same order with
    ``world_size * B`` items, and every rank has as many items, hence as many batches.

    Parameters
    ----------
    rank, world_size : int
        This process's rank and the number of processes.
    seed : int
        Seeds the order shared by all ranks (not the training's random stream, which
        differs between ranks).
    """

    rank: int
    world_size: int
    seed: int

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(
                f"rank must lie in [0, world_size), got rank {self.rank} of {self.world_size}"
            )

    def positions(self, num_items: int, shuffle: bool, device: torch.device) -> torch.Tensor:
        """This rank's positions among ``num_items`` items, in the order it visits them: those
        of :class:`torch.utils.data.DistributedSampler` with ``seed`` and ``drop_last=True``."""
        from torch.utils.data import DistributedSampler

        sampler = DistributedSampler(
            range(num_items),  # type: ignore[arg-type]  # only its length is read
            num_replicas=self.world_size,
            rank=self.rank,
            shuffle=shuffle,
            seed=self.seed,
            drop_last=True,
        )
        return torch.tensor(list(sampler), dtype=torch.int64, device=device)


@dataclass(frozen=True)
class Loader:
    """Draw batches through a :class:`torch.utils.data.DataLoader` instead of slicing tensors.

    Parameters
    ----------
    num_workers : int
        Worker processes that fetch the items of a batch (0: the training process itself).
    pin_memory : bool
        Return batches in page-locked memory, so the copy to a CUDA device can overlap the
        step; ignored without CUDA.
    """

    num_workers: int = 0
    pin_memory: bool = True

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers}")


class MappedItems:
    """Items read on demand from a memory-mapped array: the rows ``rows`` of ``array``.

    Indexing it (an int, a slice, or integer positions) reads only those rows, as float32
    (``uint8`` divided by 255; a 1-D array gains a feature axis), so a training pass never
    holds more than a batch in memory. It answers the few tensor questions a
    :class:`Dataset` asks (``len``, ``shape``, ``device``, ``dtype``) and stays on the CPU.

    Parameters
    ----------
    array : numpy.ndarray
        Typically ``np.load(path, mmap_mode="r")``, of shape ``(N, *event_shape)``.
    rows : numpy.ndarray, optional
        The positions of this split's items in ``array`` (all rows when ``None``).
    """

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, array: np.ndarray, rows: np.ndarray | None = None) -> None:
        self.array = array
        self.rows = np.arange(len(array)) if rows is None else np.asarray(rows, dtype=np.int64)
        self.scale = 255.0 if array.dtype == np.uint8 else 1.0
        event = tuple(array.shape[1:]) or (1,)
        self.shape = torch.Size((len(self.rows), *event))

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return self.shape.numel()

    def element_size(self) -> int:
        return 4

    def is_floating_point(self) -> bool:
        return True

    def __getitem__(self, index: int | slice | torch.Tensor | np.ndarray) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        rows = self.rows[index]
        single = np.ndim(rows) == 0
        rows = np.atleast_1d(rows)
        # numpy reads a memmap fastest in file order; put the batch back in its own order
        order = np.argsort(rows, kind="stable")
        values = np.empty((len(rows), *self.array.shape[1:]), dtype=self.array.dtype)
        values[order] = self.array[rows[order]]
        x = torch.from_numpy(values.astype(np.float32, copy=False)).reshape(-1, *self.shape[1:])
        if self.scale != 1.0:
            x /= self.scale
        return x[0] if single else x

    def to(self, device: torch.device | str) -> torch.Tensor:
        """Every item, read into one tensor on ``device`` (for a held-out split that fits)."""
        return self[:].to(device)

    def head(self, count: int | None) -> MappedItems:
        """The first ``count`` items (all when ``None``)."""
        return MappedItems(self.array, self.rows[:count])

    def validate(self, what: str, chunk: int = 4096) -> None:
        """:func:`validate_data` chunk by chunk, so the check reads but never holds the file."""
        if self.array.dtype.kind not in "biuf":
            raise DataError(f"{what} has dtype {self.array.dtype}, which is not numeric")
        if len(self) == 0:
            raise DataError(f"{what} has no items (shape {tuple(self.shape)})")
        for start in range(0, len(self), chunk):
            validate_data(self[start : start + chunk], what=f"{what} items {start}+")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test pair of preloaded tensors with optional labels.

    Parameters
    ----------
    name : str
        The data set's name (a :data:`~pyrovae.data.DATASETS` key, or a user file's stem).
    train, test : torch.Tensor
        Floating-point items of shape ``(N_train, *event_shape)`` and ``(N_test, *event_shape)``.
    train_labels, test_labels : torch.Tensor or None
        Integer class indices of shape ``(N_train,)`` and ``(N_test,)``, or ``None``.
    binarize : str
        One of :data:`~pyrovae.data.BINARIZE`. ``"dynamic"`` means :meth:`batches` draws a fresh
        Bernoulli sample of every training batch; the other modes were applied at load time.
    loader : Loader, optional
        Fetch batches through a :class:`torch.utils.data.DataLoader` with these settings; by
        default (``None``) batches are slices of the preloaded tensors. Either way a pass
        visits the same items in the same order.
    factors : Factors, optional
        The ground-truth factors of every train and test item (procedural dSprites, or an
        ``.npz`` file with ``factors``), for the disentanglement metrics; ``None`` by default.
    vocabulary : Vocabulary, optional
        For sentences (:mod:`pyrovae.data.text`): the items are then ``int64`` token ids of
        this vocabulary, one padded sentence per row, instead of floating-point values.

    Raises
    ------
    DataError
        If the tensors are not floating point (token ids of the ``vocabulary``), hold NaN or
        inf, disagree in event shape, or have labels or factors of the wrong length or dtype.
    ConfigError
        If ``binarize`` is not one of :data:`~pyrovae.data.BINARIZE`.
    """

    name: str
    train: torch.Tensor | MappedItems
    test: torch.Tensor | MappedItems
    train_labels: torch.Tensor | None
    test_labels: torch.Tensor | None
    binarize: str = "none"
    loader: Loader | None = None
    factors: Factors | None = None
    vocabulary: Vocabulary | None = None

    def __post_init__(self) -> None:
        check_binarize(self.binarize)
        if self.factors is not None:
            for split, x, rows in (
                ("train", self.train, self.factors.train),
                ("test", self.test, self.factors.test),
            ):
                if len(rows) != len(x):
                    raise DataError(
                        f"{self.name} has {len(x)} {split} items but {len(rows)} rows of "
                        f"{split} factors"
                    )
        for split, x, y in (
            ("train", self.train, self.train_labels),
            ("test", self.test, self.test_labels),
        ):
            what = f"{self.name} {split} data"
            if isinstance(x, MappedItems):
                x.validate(what)
                if y is not None:
                    validate_labels(y, len(x), what=f"{self.name} {split} labels")
                continue
            event_shape = None if split == "train" else self.shape
            validate_data(x, event_shape=event_shape, what=what)
            if self.vocabulary is not None:
                from pyrovae.data.text import validate_tokens

                validate_tokens(x, len(self.vocabulary), what)
            elif not x.is_floating_point():
                raise DataError(
                    f"{what} has dtype {x.dtype}, but floating point is needed; "
                    "convert it with x.float() (and scale 8-bit images by 1/255)"
                )
            if y is not None:
                validate_labels(y, len(x), what=f"{self.name} {split} labels")
        if self.binarize == "dynamic" and isinstance(self.train, torch.Tensor):
            check_unit_interval(self.train, "dynamic", what=f"{self.name} train data")

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

    @property
    def mapped(self) -> bool:
        """Whether the items are read from a memory-mapped file rather than preloaded."""
        return isinstance(self.train, MappedItems)

    def to(self, device: torch.device | str) -> Dataset:
        """A copy with every tensor on ``device`` (memory-mapped items and their labels stay
        on the CPU: their batches move, as a :class:`Loader`'s do)."""
        if self.mapped:
            return self

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return dataclasses.replace(
            self,
            train=self.train.to(device),
            test=self.test.to(device),
            train_labels=move(self.train_labels),
            test_labels=move(self.test_labels),
        )

    def split_validation(self, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
        """Carve a validation split out of the training items: ``(data, validation)``.

        ``data`` keeps the other training items and the test set; ``validation`` holds the
        carved items as its ``test`` split (what a per-epoch evaluation reads) and the same
        training items as ``data``. The split is a seeded random one, stratified by the
        labels when there are labels. Under ``binarize="dynamic"`` the validation items are
        binarized once, as the test set is (one Bernoulli draw seeded by ``seed + 1``).

        Raises
        ------
        ConfigError
            If ``fraction`` is not between 0 and 1 (exclusive).
        DataError
            If the training items cannot be split so (too few for the classes).
        """
        if not 0.0 < fraction < 1.0:
            raise ConfigError(
                f"validation_fraction must be between 0 and 1 (exclusive), got {fraction}"
            )
        labels = self.train_labels
        stratify = None if labels is None else labels.cpu().numpy()
        keep, carve = split_indices(
            len(self.train),
            fraction,
            seed,
            stratify,
            what=f"the {self.name} training data",
            option="validation_fraction",
        )
        # the positions in their original order: a split must not reorder the training set
        keep, carve = np.sort(keep), np.sort(carve)

        def take(x: torch.Tensor | MappedItems, index: np.ndarray) -> torch.Tensor | MappedItems:
            if isinstance(x, MappedItems):
                return MappedItems(x.array, x.rows[index])
            return x[torch.as_tensor(index, device=x.device)]

        def take_labels(index: np.ndarray) -> torch.Tensor | None:
            return None if labels is None else labels[torch.as_tensor(index, device=labels.device)]

        held = take(self.train, carve)
        if self.binarize == "dynamic" and isinstance(held, torch.Tensor):
            generator = torch.Generator(device=held.device).manual_seed(seed + 1)
            held = bernoulli(held, generator)
        factors = self.factors
        data = dataclasses.replace(
            self,
            train=take(self.train, keep),
            train_labels=take_labels(keep),
            factors=None
            if factors is None
            else dataclasses.replace(factors, train=factors.train[keep]),
        )
        validation = dataclasses.replace(
            data,
            test=held,
            test_labels=take_labels(carve),
            factors=None
            if factors is None
            else dataclasses.replace(factors, train=factors.train[keep], test=factors.train[carve]),
        )
        return data, validation

    def num_batches(self, split: str, batch_size: int, drop_last: bool = False) -> int:
        """How many batches :meth:`batches` yields for these arguments."""
        num_items = len(self._items(split))
        _check_batch_size(batch_size)
        return num_items // batch_size if drop_last else -(-num_items // batch_size)

    def new_generator(self) -> torch.Generator:
        """A generator on the data's device, seeded with one draw from the global torch RNG.

        It is the random source of a pass when the caller gives none: seeding torch (or
        restoring its RNG state from a checkpoint) fixes every pass that follows.
        """
        seed = int(torch.randint(2**62, ()))
        return torch.Generator(device=self.train.device).manual_seed(seed)

    def batches(
        self,
        split: str = "train",
        batch_size: int = 128,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        labels: bool = False,
        indices: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        shard: Shard | None = None,
    ) -> Iterator[Batch]:
        """Iterate over one pass of ``split`` in batches of ``batch_size`` items.

        Parameters
        ----------
        split : {"train", "test"}
            Which tensor to slice.
        batch_size : int
            Items per batch; the last batch is smaller unless ``drop_last``.
        shuffle : bool
            Visit the items in a random order (``torch.randperm``), each exactly once.
        drop_last : bool
            Skip the final batch when it has fewer than ``batch_size`` items.
        labels : bool
            Yield ``(x, y)`` pairs with the items' class indices.
        indices : torch.Tensor, optional
            Visit only these items of ``split`` (1-D integer positions), in this order unless
            ``shuffle``.
        generator : torch.Generator, optional
            The random source for the order and for dynamic binarization; the global torch
            RNG when ``None`` (so seeding torch, or restoring its state from a checkpoint,
            fixes every pass). With a ``shard``, the binarization alone.
        shard : Shard, optional
            Visit only this process's share of the pass (data-parallel training): the order
            of the items (of ``indices``, when given) comes from ``shard.seed``, the same on
            every rank, and the rank takes its part of it (see :class:`Shard`).

        Yields
        ------
        torch.Tensor or tuple of torch.Tensor
            Batches ``x`` of shape ``(B, *event_shape)`` on the data's device, or ``(x, y)``.
            With ``binarize="dynamic"`` each training batch is a fresh Bernoulli sample.
            With a :attr:`loader` the same batches, fetched by a DataLoader.

        Raises
        ------
        ConfigError
            If ``split`` is unknown, ``batch_size`` is not positive, or ``indices`` are not
            positions of ``split``'s items.
        DataError
            If ``labels`` is asked for and ``split`` has none.
        """
        # Validate eagerly, so a bad argument fails at the call rather than at the first batch.
        x, y = self._tensors(split, labels)
        _check_batch_size(batch_size)
        subset = _subset(indices, len(x), split, x.device)
        resample = self._resamples(split)
        order = subset
        num_items = len(x) if subset is None else len(subset)
        if shard is not None:
            order = shard.positions(num_items, shuffle, x.device)
        elif shuffle:
            order = _permutation(num_items, generator, x.device)
        if subset is not None and order is not subset:
            order = subset[order]
        if self.loader is not None:
            return _loaded(x, y, batch_size, order, drop_last, resample, generator, self.loader)
        return _slices(x, y, batch_size, order, drop_last, resample, generator)

    def cycle(
        self,
        split: str = "train",
        batch_size: int = 128,
        *,
        shuffle: bool = True,
        labels: bool = False,
        indices: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[Batch]:
        """Endless batches of ``min(batch_size, N)`` items that go through ``split`` (or its
        ``indices``) in passes, reshuffled each pass: every item comes once before any repeats.

        A batch that straddles two passes ends the one and starts the next, so all batches
        have the same size. The parameters mean what they mean for :meth:`batches`; with
        ``shuffle=False`` the passes repeat the items in order.

        Raises
        ------
        ConfigError
            As :meth:`batches`, and for an empty ``indices``.
        DataError
            If ``labels`` is asked for and ``split`` has none.
        """
        x, y = self._tensors(split, labels)
        _check_batch_size(batch_size)
        subset = _subset(indices, len(x), split, x.device)
        if subset is not None and len(subset) == 0:
            raise ConfigError("cannot cycle through an empty set of indices")
        resample = self._resamples(split)
        if subset is None:
            subset = torch.arange(len(x), device=x.device)
        return _cycle(x, y, batch_size, subset, shuffle, generator, resample)

    # -- helpers ------------------------------------------------------------------------------

    def _items(self, split: str) -> torch.Tensor:
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
        return self.train if split == "train" else self.test

    def _tensors(self, split: str, labels: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The items of ``split`` and, when ``labels``, their labels (which must exist)."""
        x = self._items(split)
        if not labels:
            return x, None
        y = self.train_labels if split == "train" else self.test_labels
        if y is None:
            raise DataError(
                f"{self.name} has no {split} labels; use a labelled data set "
                "(or an .npz file with 'y' / 'y_train' and 'y_test')"
            )
        return x, y

    def _resamples(self, split: str) -> bool:
        return self.binarize == "dynamic" and split == "train"


def split_indices(
    num_items: int,
    test_fraction: float,
    seed: int,
    stratify: np.ndarray | None,
    what: str,
    option: str = "test_fraction",
) -> tuple[np.ndarray, np.ndarray]:
    """Train and test positions of ``num_items`` items: a seeded random split, stratified by
    the labels ``stratify`` when given; :class:`~pyrovae.errors.DataError` when impossible
    (naming ``option``, the setting that asked for the split)."""
    from sklearn.model_selection import train_test_split

    try:
        train_index, test_index = train_test_split(
            np.arange(num_items), test_size=test_fraction, random_state=seed, stratify=stratify
        )
    except ValueError as exc:
        raise DataError(
            f"cannot split {what} ({num_items} items) with {option}={test_fraction}: {exc}; "
            f"use more items or another {option}"
            + (", or give a separate test set" if option == "test_fraction" else "")
        ) from None
    return np.asarray(train_index), np.asarray(test_index)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"batch_size must be a positive number of items, got {batch_size}")


def _subset(
    indices: torch.Tensor | None, num_items: int, split: str, device: torch.device
) -> torch.Tensor | None:
    """``indices`` as int64 positions on ``device``, checked against ``num_items``."""
    if indices is None:
        return None
    index = torch.as_tensor(indices)
    integer = not (index.is_floating_point() or index.is_complex() or index.dtype == torch.bool)
    if index.ndim != 1 or not integer:
        raise ConfigError(
            f"indices must be a 1-D tensor of integer item positions, got dtype {index.dtype} "
            f"and shape {tuple(index.shape)}"
        )
    if len(index) and (int(index.min()) < 0 or int(index.max()) >= num_items):
        raise ConfigError(
            f"indices must lie in [0, {num_items}) for the {split} split, got values from "
            f"{int(index.min())} to {int(index.max())}"
        )
    return index.to(device=device, dtype=torch.int64)


def _permutation(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    where = device if generator is None else generator.device
    return torch.randperm(n, generator=generator, device=where).to(device)


def _slices(
    x: torch.Tensor,
    y: torch.Tensor | None,
    batch_size: int,
    order: torch.Tensor | None,
    drop_last: bool,
    resample: bool,
    generator: torch.Generator | None,
) -> Iterator[Batch]:
    """Consecutive batches of ``x[order]`` (of ``x`` when ``order`` is None: views, no copy),
    each a fresh Bernoulli sample when ``resample`` (drawn with ``generator``)."""
    num_items = len(x) if order is None else len(order)
    stop = num_items - num_items % batch_size if drop_last else num_items
    for start in range(0, stop, batch_size):
        index: slice | torch.Tensor = slice(start, start + batch_size)
        if order is not None:
            index = order[index]
        yield _batch(x, y, index, resample, generator)


class _Items(torch.utils.data.Dataset):
    """Item ``i`` of ``x`` (with its label): what a :class:`~torch.utils.data.DataLoader` reads."""

    def __init__(self, x: torch.Tensor | MappedItems, y: torch.Tensor | None) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> Batch:
        return self.x[index] if self.y is None else (self.x[index], self.y[index])


def _loaded(
    x: torch.Tensor | MappedItems,
    y: torch.Tensor | None,
    batch_size: int,
    order: torch.Tensor | None,
    drop_last: bool,
    resample: bool,
    generator: torch.Generator | None,
    loader: Loader,
) -> Iterator[Batch]:
    """:func:`_slices`'s batches, fetched item by item by a DataLoader's workers."""
    from torch.utils.data import DataLoader

    sampler = range(len(x)) if order is None else order.tolist()
    batches = DataLoader(
        _Items(x, y),
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory and torch.cuda.is_available(),
    )
    for batch in batches:
        xb, yb = (batch, None) if y is None else batch
        xb = bernoulli(xb, generator) if resample else xb
        yield xb if yb is None else (xb, yb)


def _cycle(
    x: torch.Tensor,
    y: torch.Tensor | None,
    batch_size: int,
    subset: torch.Tensor,
    shuffle: bool,
    generator: torch.Generator | None,
    resample: bool,
) -> Iterator[Batch]:
    size = min(batch_size, len(subset))
    queue = subset[:0]
    while True:
        if len(queue) < size:
            order = subset
            if shuffle:
                order = subset[_permutation(len(subset), generator, x.device)]
            queue = torch.cat([queue, order])
        index, queue = queue[:size], queue[size:]
        yield _batch(x, y, index, resample, generator)


def _batch(
    x: torch.Tensor,
    y: torch.Tensor | None,
    index: slice | torch.Tensor,
    resample: bool,
    generator: torch.Generator | None,
) -> Batch:
    xb = bernoulli(x[index], generator) if resample else x[index]
    return xb if y is None else (xb, y[index])
