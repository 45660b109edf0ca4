"""Procedural dSprites: white shapes on black, rendered in code from their factors.

dSprites [1]_ holds every combination of five factors: shape (square, ellipse, heart), scale
(6 values), orientation (40), position x (32) and position y (32), as 64x64 binary images. We
render the same factor grid deterministically from the factors alone, so no file is needed;
the pixels are **not** those of DeepMind's file (our shapes, their size and margins differ in
detail), and scores on it are comparable with published dSprites numbers only in kind.

Geometry. The image is the unit square, pixel ``(row, col)`` centred at
``((col + 0.5) / W, (row + 0.5) / H)``. A point is inside the sprite when its inverse
transform (translate by the centre, rotate by ``-orientation``, divide by ``scale * 0.12``)
lies inside the canonical shape: the square ``max(|a|, |b|) <= 1``, the ellipse
``a^2 + (2 b)^2 <= 1`` (twice as wide as tall), or the heart
``(X^2 + Y^2 - 1)^3 - X^2 Y^3 <= 0`` with ``X = 1.15 a``, ``Y = 0.118 - 1.15 b`` (pointing
down at orientation 0). The centre is ``0.17 + 0.66 * pos`` along each axis (posX along the
columns, posY down the rows), so a sprite of scale 1 stays inside the frame.

Values. Each pixel is the share of its ``supersample x supersample`` sub-pixel points that
fall inside the sprite: gray levels in ``[0, 1]`` (anti-aliased edges), exact multiples of
``1 / supersample**2``. Binarize with ``binarize="threshold"`` for black-and-white images.

Factor grids (index ``i`` of ``n`` values):

=========== ======================= ================== ========================
factor      value                   ``dsprites``       ``dsprites-small``
=========== ======================= ================== ========================
shape       square, ellipse, heart  3                  3
scale       ``0.5 + 0.5 i/(n-1)``   6                  6
orientation ``2 pi i / n``          40                 10
posX, posY  ``i / (n - 1)``         32 each            16 each
image                               1x64x64            1x32x32
items                               737 280            46 080
=========== ======================= ================== ========================

The square looks the same every quarter turn and the ellipse every half turn, as in the
original, so orientation is only partly identifiable from the pixels.

References
----------
.. [1] L. Matthey, I. Higgins, D. Hassabis and A. Lerchner, "dSprites: disentanglement testing
   sprites dataset", https://github.com/deepmind/dsprites-dataset, 2017.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pyrovae.data.dataset import Dataset, split_indices
from pyrovae.data.factors import Factors, GridSampler

__all__ = ["DSPRITES_SUBSET", "FACTOR_NAMES", "SAMPLERS", "SHAPES", "DSprites", "load_dsprites"]

#: The shapes, in the order of the ``shape`` factor.
SHAPES = ("square", "ellipse", "heart")

#: The factors, in the order of a factor row.
FACTOR_NAMES = ("shape", "scale", "orientation", "posX", "posY")

#: How many items of the 64x64 product the ``dsprites`` data set draws (train and test together).
DSPRITES_SUBSET = 60_000

_HALF_SIZE = 0.12  # the half-width of a sprite of scale 1, in image widths
_MARGIN = 0.17  # the centre's distance from the border at position 0 (>= 0.12 * sqrt(2))
_CHUNK_POINTS = 2**22  # sub-pixel points evaluated at once (about 16 MB per temporary)


class DSprites(GridSampler):
    """The dSprites factor space and its renderer: a :class:`~pyrovae.data.factors.FactorSampler`.

    Parameters
    ----------
    image_size : int
        Height and width of the images.
    num_scales, num_orientations, num_positions : int
        How many values the scale, the orientation and each position take.
    supersample : int
        Sub-pixel points per side whose share inside the sprite is a pixel's value (1: the
        pixel centre alone, a binary image).

    Examples
    --------
    >>> import numpy as np
    >>> sprites = DSprites.small()
    >>> sprites.factor_sizes
    (3, 6, 10, 16, 16)
    >>> factors, images = sprites.sample_with_fixed(4, 0, np.random.default_rng(0))
    >>> images.shape, len(set(factors[:, 0]))
    (torch.Size([4, 1, 32, 32]), 1)
    """

    def __init__(
        self,
        image_size: int = 64,
        num_scales: int = 6,
        num_orientations: int = 40,
        num_positions: int = 32,
        supersample: int = 3,
    ) -> None:
        super().__init__(
            FACTOR_NAMES, (len(SHAPES), num_scales, num_orientations, num_positions, num_positions)
        )
        if image_size < 4 or supersample < 1:
            raise ValueError(
                f"image_size must be >= 4 and supersample >= 1, got {image_size}, {supersample}"
            )
        self.image_size = image_size
        self.supersample = supersample

    @classmethod
    def full(cls) -> DSprites:
        """The original grid: 64x64 images, 3 x 6 x 40 x 32 x 32 = 737 280 combinations."""
        return cls(64, 6, 40, 32, supersample=3)

    @classmethod
    def small(cls) -> DSprites:
        """32x32 images, 3 x 6 x 10 x 16 x 16 = 46 080 combinations (188 MB as float32)."""
        return cls(32, 6, 10, 16, supersample=3)

    @property
    def event_shape(self) -> tuple[int, int, int]:
        return (1, self.image_size, self.image_size)

    def values(self, factors: np.ndarray) -> dict[str, np.ndarray]:
        """The factors' values: scale, orientation (radians) and position in ``[0, 1]``."""
        factors = np.asarray(factors, dtype=np.int64)
        _, num_scales, num_orientations, num_positions, _ = self.factor_sizes
        return {
            "shape": factors[:, 0],
            "scale": 0.5 + 0.5 * factors[:, 1] / max(num_scales - 1, 1),
            "orientation": 2 * math.pi * factors[:, 2] / num_orientations,
            "posX": factors[:, 3] / max(num_positions - 1, 1),
            "posY": factors[:, 4] / max(num_positions - 1, 1),
        }

    def render(self, factors: np.ndarray) -> torch.Tensor:
        """The images of these factor rows, float32 of shape ``(n, 1, H, W)`` in ``[0, 1]``;
        the same rows give the same pixels whatever the batch."""
        factors = np.ascontiguousarray(factors, dtype=np.int64).reshape(-1, self.num_factors)
        if len(factors) and (factors.min() < 0 or (factors >= np.array(self.factor_sizes)).any()):
            raise ValueError(f"factors lie outside [0, size) for sizes {self.factor_sizes}")
        side = self.image_size * self.supersample
        images = torch.empty((len(factors), *self.event_shape))
        chunk = max(1, _CHUNK_POINTS // side**2)
        for start in range(0, len(factors), chunk):
            part = factors[start : start + chunk]
            images[start : start + chunk, 0] = self._render(part)
        return images

    def _render(self, factors: np.ndarray) -> torch.Tensor:
        v = self.values(factors)
        s, size = self.supersample, self.image_size
        # sub-pixel points, evenly spread inside each pixel
        grid = (torch.arange(size * s, dtype=torch.float64) + 0.5) / (size * s)
        span = 1.0 - 2 * _MARGIN
        cx = torch.from_numpy(_MARGIN + span * v["posX"])[:, None, None]
        cy = torch.from_numpy(_MARGIN + span * v["posY"])[:, None, None]
        theta = torch.from_numpy(v["orientation"])[:, None, None]
        radius = torch.from_numpy(v["scale"] * _HALF_SIZE)[:, None, None]
        dx = (grid[None, None, :] - cx).float()  # (n, 1, W s)
        dy = (grid[None, :, None] - cy).float()  # (n, H s, 1)
        cos, sin = (torch.cos(theta) / radius).float(), (torch.sin(theta) / radius).float()
        a = cos * dx + sin * dy  # rotate by -theta, then divide by the radius
        b = cos * dy - sin * dx
        inside = torch.zeros(a.shape, dtype=torch.bool)
        shape = torch.from_numpy(v["shape"])
        for index, test in enumerate((_square, _ellipse, _heart)):
            rows = (shape == index).nonzero().squeeze(1)
            if len(rows):
                inside[rows] = test(a[rows], b[rows])
        counts = inside.reshape(len(factors), size, s, size, s).sum(dim=(2, 4))
        return counts.float() / s**2


#: the factor space of each procedural data set, by its ``--dataset`` name: what the
#: disentanglement metrics of a run on it draw from (exactly: every combination renders)
SAMPLERS = {"dsprites": DSprites.full, "dsprites-small": DSprites.small}


def _square(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.maximum(a.abs(), b.abs()) <= 1.0


def _ellipse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a**2 + (2.0 * b) ** 2 <= 1.0


def _heart(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    x, y = 1.15 * a, 0.118 - 1.15 * b  # y points up; the curve spans about [-1.14, 1.14]^2
    return (x**2 + y**2 - 1.0) ** 3 - x**2 * y**3 <= 0.0


def load_dsprites(
    sprites: DSprites,
    name: str,
    *,
    num_items: int | None,
    test_fraction: float,
    seed: int,
    limit: int | None,
) -> Dataset:
    """A :class:`~pyrovae.data.Dataset` of rendered sprites with their factors.

    ``num_items`` combinations are drawn without replacement from the product space (all of
    it when ``None``), seeded by ``seed``, split into train and test by ``test_fraction``,
    cut to ``limit`` items each, and only then rendered. The labels are the shape; the
    factors of every item are ``dataset.factors``.
    """
    total = sprites.num_items
    if num_items is None or num_items >= total:
        positions = np.arange(total)
    else:
        rng = np.random.default_rng(seed)
        positions = np.sort(rng.choice(total, size=num_items, replace=False))
    train_index, test_index = split_indices(len(positions), test_fraction, seed, None, what=name)
    train_factors = sprites.unravel(positions[train_index[:limit]])
    test_factors = sprites.unravel(positions[test_index[:limit]])
    return Dataset(
        name=name,
        train=sprites.render(train_factors),
        test=sprites.render(test_factors),
        train_labels=torch.from_numpy(train_factors[:, 0].copy()),
        test_labels=torch.from_numpy(test_factors[:, 0].copy()),
        factors=Factors(FACTOR_NAMES, sprites.factor_sizes, train_factors, test_factors),
    )
