"""Any :class:`torch.utils.data.Dataset` as a pyrovae :class:`~pyrovae.data.Dataset`.

The items (tensors, or ``(x, y)`` pairs with an integer class ``y``, as torchvision's data sets
give them after ``ToTensor``) are read once, through a :class:`~torch.utils.data.DataLoader`
with workers, and preloaded; a data set without a test split is split as a single array is.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from pyrovae.data.dataset import Dataset, Loader, split_indices
from pyrovae.errors import DataError

__all__ = ["from_torch_dataset"]


def _read(
    items: TorchDataset, what: str, num_workers: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    batches = iter(DataLoader(items, batch_size=256, num_workers=num_workers))
    while True:
        try:
            batch = next(batches, None)
        except TypeError as exc:  # default_collate on items it cannot stack
            raise DataError(
                f"{what} items are not tensors ({exc}); add a transform such as "
                "torchvision.transforms.ToTensor()"
            ) from None
        if batch is None:
            break
        if isinstance(batch, list | tuple) and len(batch) in (1, 2):
            xs.append(batch[0])
            if len(batch) == 2:
                ys.append(torch.as_tensor(batch[1]))
        elif isinstance(batch, torch.Tensor):
            xs.append(batch)
        else:
            raise DataError(
                f"{what} items are not tensors or pairs (x, y); add a transform such as "
                "torchvision.transforms.ToTensor()"
            )
    if not xs:
        raise DataError(f"{what} has no items")
    x = torch.cat(xs)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return x, torch.cat(ys).long() if ys else None


def from_torch_dataset(
    train: TorchDataset,
    test: TorchDataset | None = None,
    *,
    name: str = "custom",
    test_fraction: float = 0.2,
    seed: int = 0,
    num_workers: int = 0,
    loader: Loader | None = None,
) -> Dataset:
    """A :class:`~pyrovae.data.Dataset` of the items of torch data sets, preloaded.

    Parameters
    ----------
    train, test : torch.utils.data.Dataset
        Items ``x`` or pairs ``(x, y)``; without ``test``, ``train`` is split by
        ``test_fraction`` and ``seed``. ``uint8`` items are divided by 255.
    name : str
        The data set's name.
    num_workers : int
        Workers that read the items once.
    loader : Loader, optional
        How training batches are then drawn (see :class:`~pyrovae.data.Dataset`).

    Raises
    ------
    DataError
        For items that are not tensors or pairs, or data the :class:`Dataset` refuses.
    """
    x, y = _read(train, f"{name} train", num_workers)
    if test is None:
        train_index, test_index = split_indices(len(x), test_fraction, seed, None, name)
        x_train, x_test = x[train_index], x[test_index]
        y_train = None if y is None else y[train_index]
        y_test = None if y is None else y[test_index]
    else:
        x_train, y_train = x, y
        x_test, y_test = _read(test, f"{name} test", num_workers)
    return Dataset(name, x_train, x_test, y_train, y_test, loader=loader)
