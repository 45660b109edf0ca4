"""What keeps a run folder whole: one writer at a time, atomic writes, no leftovers.

- :func:`lock` takes ``RUN/.lock`` for a command that writes into a run folder: the file is
  created with ``O_CREAT | O_EXCL`` and holds the holder's process id, host, command and
  start time, so a second writer is refused with a message naming the first. A lock whose
  process is gone (same host, the process id no longer alive) is stale: it is reported in one
  warning and taken over. A lock from another host cannot be checked and is refused, with
  the fix.
- :func:`atomic_write` is the one way the package writes a file that must never be seen
  half-written: a temporary file of a unique name next to it (``.NAME.XXXXXXXX.tmp``), then
  ``os.replace``. A failed write (a full disk) leaves the old file and no temporary file.
- :func:`remove_leftovers` deletes the temporary files that a killed command left in a run
  folder; :func:`lock` calls it once the lock is held.
"""

from __future__ import annotations

import contextlib
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

from pyrovae.errors import PyroVAEError, write_failure

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
        if p.is_file() and p.name.count(".") >= 3  # .NAME.XXXXXXXX.tmp
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _read(path: Path) -> dict[str, Any] | None:
    """The holder a lock file names; ``None`` when it is gone. A file being written is read
    again for a moment; one that stays unreadable names no one."""
    for _ in range(20):
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
            if isinstance(holder, dict):
                return holder
        except ValueError:
            pass
        time.sleep(0.05)
    return {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "an unknown command (its lock file is unreadable)"
    return (
        f"process {holder.get('pid')} on {holder.get('host')} since {holder.get('since')} "
        f"({holder.get('command')})"
    )


def _create(path: Path, holder: dict[str, Any]) -> bool:
    """Create the lock file holding ``holder``; ``False`` when it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(holder) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return True


def _take_over(path: Path, stale: dict[str, Any]) -> None:
    """Remove the stale lock ``stale`` at ``path`` unless another process replaced it
    meanwhile: it is moved aside first (atomic), then checked."""
    aside = path.with_name(f"{LOCK_NAME}.{os.getpid()}.{secrets.token_hex(4)}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if _read(aside) != stale:  # someone took it over already: put theirs back
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    aside.unlink(missing_ok=True)


def acquire(folder: Path, command: str | None = None) -> dict[str, Any]:
    """Take the lock of ``folder`` (which exists); returns what the lock file holds.

    Raises
    ------
    RunFolderError
        If a live process holds it, or a process on another host.
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
            if _create(path, me):
                return me
        except OSError as e:
            raise RunFolderError(
                f"cannot lock the run folder {folder} ({e.strerror or e}); check that it is "
                "writable"
            ) from e
        holder = _read(path)
        if holder is None:
            continue  # released meanwhile
        host = holder.get("host")
        pid = holder.get("pid")
        if holder and host == me["host"] and isinstance(pid, int) and not _alive(pid):
            logger.warning(
                "taking over the stale lock of %s: that process no longer runs",
                _describe(holder),
            )
            _take_over(path, holder)
            continue
        if holder and host != me["host"]:
            fix = (
                f"wait for it to finish; if you are sure no pyrovae command on {host} uses "
                f"this folder, remove {path}"
            )
        elif not holder:
            fix = f"if no pyrovae command uses this folder, remove {path}"
        else:
            fix = "wait for it to finish, or stop it (a killed command's lock is taken over)"
        raise RunFolderError(f"{folder} is in use by {_describe(holder)}; {fix}")
    raise RunFolderError(f"cannot lock the run folder {folder}: its lock keeps changing hands")


def release(folder: Path, holder: dict[str, Any]) -> None:
    """Remove ``folder``'s lock if it is still ``holder``'s."""
    path = folder / LOCK_NAME
    if _read(path) == holder:
        path.unlink(missing_ok=True)


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
