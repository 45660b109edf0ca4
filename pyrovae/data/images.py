"""The user's own images: a folder of PNG/JPEG files, one subfolder per class.

The folder is read as :class:`torchvision.datasets.ImageFolder` reads it: every subfolder is a
class (labels ``0, 1, ...`` in the sorted order of the subfolder names) and holds that class's
images. Each image is converted to grayscale (``"L"``) or colour (``"RGB"``), resized to
``image_size`` when given, and scaled into [0, 1] by :class:`torchvision.transforms.ToTensor`;
the items are then split into train and test by a seeded, label-stratified draw and preloaded
as a :class:`~pyrovae.data.Dataset`, like every other source.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyrovae.data.dataset import Dataset, split_indices
from pyrovae.errors import ConfigError, DataError

__all__ = ["IMAGE_MODES", "load_image_folder"]

#: How pixels are read: ``"auto"`` is grayscale when every image is, colour otherwise.
IMAGE_MODES = ("auto", "grayscale", "rgb")

#: PIL modes that are already grayscale (one channel, perhaps with alpha).
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F", "P;L"})


def _open(path: str) -> Any:
    """The image at ``path``, fully read (so a truncated file fails here, naming the file)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as file:
            image = Image.open(file)
            image.load()
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise DataError(
            f"cannot read image {path} ({exc}); delete or re-save it as PNG or JPEG"
        ) from None
    return image


def _transform(mode: str, image_size: tuple[int, int] | None) -> Callable[[Any], torch.Tensor]:
    from torchvision import transforms

    steps: list[Any] = [lambda image: image.convert(mode)]
    if image_size is not None:
        steps.append(transforms.Resize(image_size, antialias=True))
    steps.append(transforms.ToTensor())
    return transforms.Compose(steps)


def _check_image_size(image_size: Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    size = tuple(int(s) for s in image_size)
    if len(size) == 1:
        size = (size[0], size[0])
    if len(size) != 2 or min(size) < 1:
        raise ConfigError(
            f"image_size must be one or two positive integers (H W), got {list(image_size)}"
        )
    return size  # type: ignore[return-value]


def load_image_folder(
    path: Path,
    *,
    image_size: Sequence[int] | None = None,
    image_mode: str = "auto",
    test_fraction: float = 0.2,
    seed: int = 0,
    limit: int | None = None,
) -> Dataset:
    """A folder of images, one subfolder per class, as an unbinarized :class:`Dataset`.

    Parameters
    ----------
    path : Path
        The folder; its subfolders name the classes (``ImageFolder``'s layout).
    image_size : sequence of int, optional
        ``(H, W)`` (or one side for a square) to resize every image to; without it all
        images must already have the same size.
    image_mode : {"auto", "grayscale", "rgb"}
        One channel or three; ``"auto"`` keeps one channel when every image is grayscale.
    test_fraction, seed : float, int
        The held-out share and the seed of the stratified split.
    limit : int, optional
        Keep the first ``limit`` train and test items of the split.

    Returns
    -------
    Dataset
        Items of shape ``(C, H, W)`` in [0, 1], labels from the subfolders; named after the
        folder.

    Raises
    ------
    DataError
        For a folder without class subfolders or images, an unreadable image, or images
        of different sizes without ``image_size``.
    ConfigError
        For a bad ``image_size`` or ``image_mode``.
    """
    from torchvision.datasets import ImageFolder

    if image_mode not in IMAGE_MODES:
        raise ConfigError(f"image_mode must be one of {', '.join(IMAGE_MODES)}, got {image_mode!r}")
    size = _check_image_size(image_size)
    try:
        folder = ImageFolder(str(path), loader=_open)
    except FileNotFoundError as exc:
        raise DataError(
            f"no images in {path} ({str(exc).rstrip('.')}); put the images in one subfolder "
            "per class, e.g. DIR/cats/1.png and DIR/dogs/2.png"
        ) from None
    images = [folder.loader(p) for p, _ in folder.samples]
    if image_mode == "auto":
        gray = all(image.mode in _GRAY_MODES for image in images)
        image_mode = "grayscale" if gray else "rgb"
    transform = _transform("L" if image_mode == "grayscale" else "RGB", size)
    if size is None:
        sizes = {image.size for image in images}
        if len(sizes) > 1:
            found = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:3])
            raise DataError(
                f"images in {path} have {len(sizes)} different sizes ({found}, ...); "
                "resize them all with --image-size H W"
            )
    x = torch.stack([transform(image) for image in images])
    y = torch.as_tensor(folder.targets, dtype=torch.int64)
    # stratified when every class can give an item to each side
    counts = np.bincount(folder.targets)
    stratify = np.asarray(folder.targets) if len(counts) > 1 and counts.min() > 1 else None
    train_index, test_index = split_indices(len(x), test_fraction, seed, stratify, str(path))
    train_index, test_index = train_index[:limit], test_index[:limit]
    return Dataset(
        name=path.name,
        train=x[train_index],
        test=x[test_index],
        train_labels=y[train_index],
        test_labels=y[test_index],
    )
