"""User-facing errors.

Every problem a user can fix (bad config, bad data, missing or incompatible files)
raises a subclass of :class:`PyroVAEError` with one readable message that names the
problem and the fix. The CLI prints that message and exits with status 2; so it does for
the other failures a user causes, a file system that refuses a file and memory that runs
out (:func:`user_message`).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "NumericsError",
    "PyroVAEError",
    "file_error_message",
    "out_of_memory_message",
    "user_message",
    "write_failure",
]


class PyroVAEError(Exception):
    """Base class of the errors a user can act on."""


class ConfigError(PyroVAEError, ValueError):
    """An unknown name or an out-of-range value in a configuration."""


class DataError(PyroVAEError, ValueError):
    """Data that is missing, malformed, or outside a likelihood's support."""


class CheckpointError(PyroVAEError):
    """A checkpoint that is missing, corrupt, or from another architecture."""


#: errno -> what a user can do about a file that cannot be written or read
_FILE_FIXES = {
    errno.ENOSPC: "free space on its disk or choose a folder on another disk",
    errno.EDQUOT: "free space within your quota or choose a folder on another disk",
    errno.EACCES: "choose a folder you may write to, or change its permissions",
    errno.EPERM: "choose a folder you may write to, or change its permissions",
    errno.EROFS: "its file system is read-only; choose a folder on a writable disk",
    errno.ENOENT: "a folder on its path is missing or cannot hold new files; choose another path",
    errno.ENOTDIR: "a part of its path is a file, not a folder; choose another path",
    errno.EISDIR: "it is a folder; give a file name",
    errno.EEXIST: "something of that name is in the way; choose another path",
    errno.ENAMETOOLONG: "its name is too long; choose a shorter path",
    errno.EMFILE: "too many files are open; close some programs or raise `ulimit -n`",
}


def file_error_message(error: OSError) -> str:
    """``FILE: what went wrong; what to do`` for an :class:`OSError` of the file system."""
    path = f"{error.filename}: " if error.filename is not None else ""
    fix = _FILE_FIXES.get(error.errno or 0)
    return f"{path}{error.strerror or error}" + (f"; {fix}" if fix else "")


_OUT_OF_MEMORY = re.compile(r"can't allocate memory|out of memory", re.IGNORECASE)


def user_message(error: BaseException) -> str | None:
    """The one-line message for an error a user caused and can fix, or ``None`` for a bug.

    Besides :class:`PyroVAEError`, these are an :class:`OSError` from the file system (a
    path that cannot be created or written, a full disk: the message names the file and
    what to do) and running out of memory (:class:`MemoryError`, or torch's ``can't
    allocate memory`` and ``CUDA out of memory``: the message suggests smaller sizes).
    """
    if isinstance(error, PyroVAEError):
        return str(error)
    if isinstance(error, OSError) and error.errno in _FILE_FIXES:
        if error.filename is None:  # a write into an open file: the file is not known
            return f"a file could not be written or read: {file_error_message(error)}"
        return f"cannot write or read {file_error_message(error)}"
    if isinstance(error, MemoryError) or (
        isinstance(error, RuntimeError) and _OUT_OF_MEMORY.search(str(error))
    ):
        return out_of_memory_message(str(error))
    return None


def out_of_memory_message(detail: str = "") -> str:
    """What to say when an allocation failed (``detail``: torch's message, if any)."""
    asked = re.search(r"allocate (\d+) bytes", detail)
    if asked:
        what = f" (an allocation of {int(asked.group(1)) / 1e9:.1f} GB failed)"
    elif "CUDA out of memory" in detail:
        what = " (" + detail.split(". ")[0].strip().rstrip(".") + " on the GPU)"
    else:
        what = ""
    return (
        f"out of memory{what}; use a smaller --batch-size or --eval-batch-size, or a smaller "
        "network (--hidden, --latent-dim)"
    )


#: torch.save's messages when the file it writes cannot take more bytes
_TORCH_WRITER = re.compile(r"inline_container|PytorchStreamWriter|file write failed")


def write_failure(error: BaseException, path: str | os.PathLike) -> PyroVAEError | None:
    """The user error for ``error`` raised while writing the file ``path`` (an
    :class:`OSError`, or the ``RuntimeError`` of torch's stream writer on a full disk),
    naming the file, its disk's free space and what to do; ``None`` for other errors."""
    if isinstance(error, OSError) and error.errno in _FILE_FIXES:
        return PyroVAEError(
            f"cannot write {file_error_message(OSError(error.errno, error.strerror, str(path)))}"
        )
    if isinstance(error, RuntimeError) and _TORCH_WRITER.search(str(error)):
        try:
            free = f"; its disk has {shutil.disk_usage(Path(path).parent).free / 1e6:.1f} MB free"
        except OSError:
            free = ""
        return PyroVAEError(
            f"cannot write {path} (torch: {str(error).strip().splitlines()[0]}){free}: "
            f"{_FILE_FIXES[errno.ENOSPC]}"
        )
    return None


class NumericsError(PyroVAEError, ArithmeticError):
    """Training that diverged: a loss, gradient or held-out number became NaN or infinite."""
