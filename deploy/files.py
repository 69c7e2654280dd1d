"""Writing files all at once or not at all: what ``save_state`` and the command line write.

A file is written to a temporary file named ``.<name>.robometa-tmp-<pid>-<random>.tmp`` next
to the target, fsynced and renamed over it (:func:`atomic_write`). One left by a killed process
is removed by the next write, ``save_state`` or ``load_state`` of that target; files robometa
did not name are never touched. A failed write raises :class:`WriteError` (one line naming the
path) and leaves any previous file intact.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

#: marks robometa's temporary files: ``.<target name>.robometa-tmp-<pid>-<random>``.
TEMP_MARKER = ".robometa-tmp-"
_STALE_AFTER_S = 3600.0  # where a writer's process cannot be asked about (not POSIX)


class WriteError(OSError):
    """A file could not be written; the one-line message names the path. Any previous file
    at that path is unchanged and no partial file is left behind."""


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` all at once or not at all, and say which path failed.

    ``write(f)`` fills a new temporary file next to ``path`` (``.<name>.robometa-tmp-<pid>-
    <random>.tmp``, permissions as for any new file), which is fsynced and renamed over
    ``path``; then the directory is fsynced. Any ``OSError`` (disk full, read-only medium, a
    parent that is missing or a regular file, ``path`` a directory) becomes a one-line
    :class:`WriteError` naming ``path``; the temporary file is removed and a previous file at
    ``path`` is unchanged. Temporary files that killed writers of ``path`` left behind are
    removed first (:func:`remove_stale_temp_files`).
    """
    path = Path(path)
    remove_stale_temp_files(path)
    tmp: Path | None = None
    try:
        tmp, fd = _create_temp(path)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        raise WriteError(
            f"{path}: cannot write ({_os_reason(err)}); any previous file there is unchanged"
        ) from err
    finally:
        if tmp is not None:  # failed or interrupted (KeyboardInterrupt too): leave nothing
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    try:
        fsync_dir(path.parent)
    except OSError as err:
        raise WriteError(
            f"{path}: written, but its directory could not be synced ({_os_reason(err)}); "
            "the file may not survive a power cut"
        ) from err
    return path


def check_writable(path: str | Path) -> Path:
    """Raise :class:`WriteError` now if :func:`atomic_write` could not write ``path`` (its
    directory is missing, a regular file or read-only, or ``path`` is a directory), so a long
    run fails before it starts instead of after. Creates and removes one empty temporary
    file; a disk with room for an empty file but not the data is only found when writing."""
    path = Path(path)
    if path.is_dir():
        raise WriteError(f"{path}: cannot write (it is a directory)")
    try:
        tmp, fd = _create_temp(path)
    except OSError as err:
        raise WriteError(f"{path}: cannot write ({_os_reason(err)})") from err
    os.close(fd)
    os.unlink(tmp)
    return path


def remove_stale_temp_files(path: str | Path) -> list[Path]:
    """Remove the temporary files that writers of ``path`` killed mid-write left next to it.

    Only files named as robometa names them for ``path`` (see :func:`atomic_write`) whose
    process no longer runs (on POSIX; elsewhere: older than an hour); files robometa did not
    name are never touched. Best effort: a directory that cannot be listed or written (a
    read-only medium holding a state to load) is left as it is. Returns the removed paths.
    """
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.name}{TEMP_MARKER}") + r"(\d+)-[0-9a-f]{16}\.tmp")
    removed = []
    with contextlib.suppress(OSError):
        with os.scandir(path.parent) as entries:
            candidates = [e for e in entries if pattern.fullmatch(e.name)]
        for entry in candidates:
            pid = int(pattern.fullmatch(entry.name).group(1))
            if not entry.is_file(follow_symlinks=False) or not _writer_gone(pid, entry):
                continue
            with contextlib.suppress(FileNotFoundError):  # another process removed it
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _create_temp(path: Path) -> tuple[Path, int]:
    """A new, empty temporary file for ``path`` in its directory, opened for writing."""
    prefix = f".{path.name}{TEMP_MARKER}{os.getpid()}-"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.parent / f"{prefix}{secrets.token_hex(8)}.tmp"
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:  # 2**-64 per try
            continue


def _writer_gone(pid: int, entry: os.DirEntry) -> bool:
    """Whether the process that named a temporary file is gone (so the file is stale)."""
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return time.time() - entry.stat(follow_symlinks=False).st_mtime > _STALE_AFTER_S
    if pid <= 0 or pid == os.getpid():  # robometa never writes pid 0; ours may be writing
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):  # alive under another user / not a pid
        return False
    return False


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; elsewhere a rename is as good as it
    gets)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno != errno.EINVAL:  # EINVAL: this file system cannot sync directories
            raise
    finally:
        os.close(fd)


def _os_reason(err: OSError) -> str:
    """An ``OSError``'s reason without the temporary file's name."""
    return err.strerror or str(err)
