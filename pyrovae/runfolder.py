"""What keeps a run folder whole: one writer at a time, atomic writes, no leftovers.

- :func:`lock` takes ``RUN/.lock`` for a command that writes into a run folder: an
  ``fcntl.flock`` on the file, which the kernel releases when the process ends, however it
  ends; the file holds the holder's process id, host, command and start time, so a second
  writer is refused with a message naming the first. A lock file that no process holds is
  stale (its process was killed): it is reported in one warning and taken over. A lock
  from another host cannot be checked and is refused, with the fix.
- :func:`atomic_write` is the one way the package writes a file that must never be seen
  half-written: a temporary file of a unique name next to it (``.NAME.<random>.tmp``),
  then ``os.replace``. A failed write (a full disk) leaves the old file and no temporary file.
- :func:`remove_leftovers` deletes the temporary files that a killed command left in a run
  folder; :func:`lock` calls it once the lock is held.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shlex
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from pyrovae.errors import PyroVAEError, file_error_message, write_failure

__all__ = [
    "LOCK_NAME",
    "RunFolderError",
    "atomic_write",
    "command_line",
    "lock",
    "remove_leftovers",
    "write_json",
    "write_text",
]

logger = logging.getLogger(__name__)

#: the lock file of a run folder
LOCK_NAME = ".lock"

#: the run folders this process holds (resolved): a nested lock of one of them is a no-op
_HELD: set[Path] = set()


class RunFolderError(PyroVAEError):
    """A run folder that another command holds, or a file that could not be written."""


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` atomically: ``write(file)`` fills a temporary file of a unique name in
    the same folder (flushed to disk), which then replaces ``path``.

    An interruption at any moment leaves either the old or the new file, never a partial
    one; a failed write (e.g. a full disk) leaves the old file and no temporary file, and
    raises :class:`RunFolderError` naming the file and the cause.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, _mode(path))  # mkstemp's 0600 would hide the file from the group
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        # a full or read-only disk (torch's stream writer reports a full disk as a
        # RuntimeError): one message naming the file, what is kept and what to do
        failure = write_failure(e, path)
        if failure is None and not isinstance(e, OSError):
            raise
        cause = f"cannot write {path}: {e.strerror or e}" if failure is None else str(failure)
        kept = "; the previous one is kept" if path.exists() else ""
        raise RunFolderError(f"{cause}{kept}") from e


def _mode(path: Path) -> int:
    """The permissions of the file ``path`` replaces, or of a new file (``umask``)."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` with :func:`atomic_write`."""
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(value: Any, path: str | os.PathLike) -> None:
    """Write ``value`` as indented JSON to ``path`` with :func:`atomic_write`."""
    write_text(path, json.dumps(value, indent=2) + "\n")


def remove_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of interrupted atomic writes in ``folder`` (its own files
    only, not its subfolders'); returns them. Call it holding the folder's lock: another
    writer's temporary file is not a leftover."""
    folder = Path(folder)
    found = [
        p
        for p in folder.glob(".*.tmp")
        if p.is_file() and p.name.count(".") >= 3  # .NAME.<random>.tmp
    ]
    legacy = folder / "metrics.tmp"  # the fixed name of pyrovae before 0.2
    if legacy.is_file():
        found.append(legacy)
    for p in found:
        p.unlink(missing_ok=True)
    if found:
        logger.info(
            "removed %d temporary file(s) an interrupted command left in %s: %s",
            len(found),
            folder,
            ", ".join(p.name for p in found),
        )
    return found


def command_line(argv: list[str] | None = None) -> str:
    """This process's command line as a user typed it (``pyrovae train ...``)."""
    argv = list(sys.argv if argv is None else argv)
    if argv and (argv[0].endswith(("pyrovae", os.path.join("pyrovae", "__main__.py")))):
        argv[0] = "pyrovae"
    text = shlex.join(argv) if argv else "python"
    return text if len(text) <= 300 else text[:297] + "..."


def _read(path: Path) -> dict[str, Any] | None:
    """The holder a lock file names; ``None`` when it is gone. A file being written is read
    again for a moment; one that stays unreadable names no one (``{}``)."""
    for _ in range(20):
        try:
            holder = _parse(path.read_text())
        except FileNotFoundError:
            return None
        if holder:
            return holder
        time.sleep(0.05)
    return {}


def _parse(text: str) -> dict[str, Any]:
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "an unknown command (its lock file is unreadable)"
    return (
        f"process {holder.get('pid')} on {holder.get('host')} since {holder.get('since')} "
        f"({holder.get('command')})"
    )


#: the open lock files of the locks this process holds, by their holders' tokens
_FILES: dict[str, int] = {}


def acquire(folder: Path, command: str | None = None) -> dict[str, Any]:
    """Take the lock of ``folder`` (which exists); returns what the lock file holds.

    The lock is ``fcntl.flock`` on ``RUN/.lock``, held while the file stays open: the
    kernel releases it when its process ends, however it ends, so a lock file that no
    process holds is stale (reported and taken over), whatever process id it names. The
    file's text names the holder for the message a second writer gets.

    Raises
    ------
    RunFolderError
        If another process holds it, or a process on another host named itself in it
        (``flock`` is not trusted across machines sharing a file system).
    """
    path = folder / LOCK_NAME
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command or command_line(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "token": secrets.token_hex(8),
    }
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise _lock_error(folder, e) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = _read(path) or {}
            raise RunFolderError(
                f"{folder} is in use by {_describe(holder)}; wait for it to finish, or stop "
                "it (the lock ends with its process)"
            ) from None
        except OSError as e:
            os.close(fd)
            raise _lock_error(folder, e) from e
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if not current:  # its holder released it (removed the file) meanwhile: again
            os.close(fd)
            continue
        previous = _parse(os.pread(fd, 1 << 16, 0).decode(errors="replace"))
        host = previous.get("host")
        if host is not None and host != me["host"]:
            os.close(fd)
            raise RunFolderError(
                f"{folder} is in use by {_describe(previous)}; wait for it to finish; if you "
                f"are sure no pyrovae command on {host} uses this folder, remove {path}"
            )
        if os.fstat(fd).st_size:
            logger.warning(
                "taking over the stale lock of %s: no process holds it (it ended without "
                "releasing it)",
                _describe(previous),
            )
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
            os.fsync(fd)
        except OSError as e:
            path.unlink(missing_ok=True)
            os.close(fd)
            raise _lock_error(folder, e) from e
        _FILES[me["token"]] = fd
        return me
    raise RunFolderError(f"cannot lock the run folder {folder}: its lock keeps changing hands")


def _lock_error(folder: Path, error: OSError) -> RunFolderError:
    return RunFolderError(f"cannot lock the run folder {folder}: {file_error_message(error)}")


def release(folder: Path, holder: dict[str, Any]) -> None:
    """Release ``folder``'s lock that ``holder`` (from :func:`acquire`) holds: the file is
    removed while still locked, then closed."""
    fd = _FILES.pop(holder["token"], None)
    if fd is None:
        return
    try:
        (folder / LOCK_NAME).unlink(missing_ok=True)
    finally:
        os.close(fd)


@contextlib.contextmanager
def lock(
    folder: str | os.PathLike, command: str | None = None, *, create: bool = False
) -> Iterator[Path]:
    """Hold the lock of the run folder ``folder`` for the ``with`` block, then release it
    (on an exception or Ctrl-C too); temporary files that interrupted writes left there are
    removed once it is held (:func:`remove_leftovers`). Inside a ``with`` block that holds
    it already (in this process), it is a no-op.

    ``create``: make the folder if it does not exist, and remove it again if the block
    fails before a run started in it (before its first ``checkpoint.pt``): a fresh run that
    is refused or fails leaves no folder behind.
    """
    folder = Path(folder)
    key = folder.resolve()
    if key in _HELD:  # this process holds it already (a library call inside a command)
        yield folder
        return
    created = False
    if create and not folder.exists():
        try:
            folder.mkdir(parents=True)
            created = True
        except FileExistsError:
            pass
        except OSError as e:
            raise RunFolderError(
                f"cannot create the run folder {folder} ({e.strerror or e}); choose a "
                "--workdir you can write to"
            ) from e
    holder = acquire(folder, command)
    _HELD.add(key)
    try:
        remove_leftovers(folder)
        yield folder
    except BaseException:
        if created:
            _remove_unstarted(folder)
        raise
    finally:
        _HELD.discard(key)
        release(folder, holder)
    if created and not any(p.name != LOCK_NAME for p in folder.iterdir()):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _remove_unstarted(folder: Path) -> None:
    """Remove a run folder this command created if no run started in it (no
    ``checkpoint.pt``): everything in it is this command's (it held the lock)."""
    if not (folder / "checkpoint.pt").exists():
        shutil.rmtree(folder, ignore_errors=True)
