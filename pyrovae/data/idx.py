"""IDX files, the format of LeCun's MNIST and of Fashion-MNIST.

References
----------
.. [1] Y. LeCun, L. Bottou, Y. Bengio and P. Haffner, "Gradient-based learning applied to document
   recognition", Proceedings of the IEEE, 1998.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from math import prod
from pathlib import Path

import numpy as np

from pyrovae.errors import DataError

__all__ = ["IDX_STEMS", "find_idx_files", "read_idx"]

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

#: The four files of an MNIST-like data set, without their optional ``.gz``.
IDX_STEMS = {
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


def find_idx_files(directory: Path) -> dict[tuple[str, str], Path] | None:
    """The four IDX files in ``directory`` (uncompressed preferred), or None if any is missing."""
    found = {}
    for key, stem in IDX_STEMS.items():
        candidates = [directory / stem, directory / f"{stem}.gz"]
        existing = [c for c in candidates if c.is_file()]
        if not existing:
            return None
        found[key] = existing[0]
    return found
