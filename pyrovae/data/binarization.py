r"""Binarization: grey levels :math:`p \in [0, 1]` turned into binary pixels.

A Bernoulli likelihood is a normalized density only on binary data, so the modes of
:data:`BINARIZE` decide what the held-out numbers mean:

``"none"``
    Keep the values.
``"threshold"``
    :math:`x = [p > 0.5]`, a deterministic rounding.
``"static"``
    One fixed sample :math:`x \sim \mathrm{Bernoulli}(p)` of both splits, drawn with a generator
    seeded by ``seed`` (Larochelle and Murray's static binarization).
``"dynamic"``
    The training set is resampled every time a batch is drawn (Burda et al.), which acts as a
    regularizer; :meth:`~pyrovae.data.Dataset.batches` does that with the pass's generator. The
    test set is sampled once, with the same seeded generator as ``"static"``, so held-out numbers
    are comparable across runs and across the two stochastic modes.

References
----------
.. [1] H. Larochelle and I. Murray, "The neural autoregressive distribution estimator",
   AISTATS 2011.
.. [2] Y. Burda, R. Grosse and R. Salakhutdinov, "Importance weighted autoencoders",
   arXiv:1509.00519, 2015.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pyrovae.errors import ConfigError, DataError

__all__ = [
    "BINARIZE",
    "bernoulli",
    "binarize_draw",
    "binarize_items",
    "binarize_splits",
    "check_binarize",
    "check_unit_interval",
]


def bernoulli(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One Bernoulli sample with means ``x``, drawn with ``generator`` on whatever device it
    has (the global torch RNG when ``None``)."""
    if generator is None or generator.device == x.device:
        return torch.bernoulli(x, generator=generator)
    uniform = torch.rand(x.shape, generator=generator, device=generator.device).to(x.device)
    return (uniform < x).to(x.dtype)


def _keep(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return x


def _threshold(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return (x > 0.5).to(x.dtype)


_Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

# mode -> (train transform, test transform). "dynamic" keeps the grey-level training set here
# because Dataset.batches resamples it per batch.
_BINARIZERS: dict[str, tuple[_Transform, _Transform]] = {
    "none": (_keep, _keep),
    "threshold": (_threshold, _threshold),
    "static": (bernoulli, bernoulli),
    "dynamic": (_keep, bernoulli),
}

#: The binarization modes, in the order the CLI lists them.
BINARIZE: tuple[str, ...] = tuple(_BINARIZERS)


def check_binarize(mode: str) -> None:
    """Raise :class:`~pyrovae.errors.ConfigError` unless ``mode`` is one of :data:`BINARIZE`."""
    if mode not in _BINARIZERS:
        raise ConfigError(f"unknown binarization {mode!r}; choose one of: {', '.join(BINARIZE)}")


def check_unit_interval(x: torch.Tensor, mode: str, what: str) -> None:
    """Raise :class:`~pyrovae.errors.DataError` unless every value of ``x`` is in [0, 1]."""
    low, high = (float(v) for v in torch.aminmax(x))
    if low < 0.0 or high > 1.0:
        raise DataError(
            f"{what} has values in [{low:.4g}, {high:.4g}], but {mode} binarization needs "
            "values in [0, 1]; scale the data first (e.g. divide by its maximum)"
        )


def binarize_splits(
    train: torch.Tensor, test: torch.Tensor, mode: str, seed: int, name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(train, test)`` pair binarized by ``mode``; random draws are seeded by ``seed``.

    Raises
    ------
    DataError
        If ``mode`` is not ``"none"`` and a split has values outside [0, 1] (the message
        names it as ``"<name> <split> data"``).
    """
    check_binarize(mode)
    if mode != "none":
        for split, x in (("train", train), ("test", test)):
            check_unit_interval(x, mode, what=f"{name} {split} data")
    train_transform, test_transform = _BINARIZERS[mode]
    # Test first, so "static" and "dynamic" hold out the very same binary test set.
    generator = torch.Generator().manual_seed(seed)
    test = test_transform(test, generator)
    return train_transform(train, generator), test


def binarize_items(x: torch.Tensor, mode: str, seed: int, what: str) -> torch.Tensor:
    """``x`` binarized as a test set is (``"static"`` and ``"dynamic"``: one Bernoulli draw
    seeded with ``seed``)."""
    check_binarize(mode)
    if mode != "none":
        check_unit_interval(x, mode, what=what)
    return binarize_draw(x, mode, torch.Generator().manual_seed(seed))


def binarize_draw(x: torch.Tensor, mode: str, generator: torch.Generator) -> torch.Tensor:
    """``x`` binarized as a test set is, drawing with ``generator``: kept (``"none"``),
    thresholded at 0.5, or one Bernoulli draw (``"static"``, ``"dynamic"``); binary items are
    left as they are by every mode. Unchecked: see :func:`binarize_items`."""
    check_binarize(mode)
    return _BINARIZERS[mode][1](x, generator)
