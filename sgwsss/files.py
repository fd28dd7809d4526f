"""Atomic file writes: the one place that writes a temp file and renames it (no torch import).

Every file the package writes for later reading (checkpoints, pseudo-label and
prediction PNGs, ``config.json``, the results JSON, the label cache, a run's
trimmed ``metrics.jsonl``) goes through :func:`atomic_open`: the bytes go to a
hidden temp file in the target's folder, which ``os.replace`` then moves onto the
target in one step. A write that fails with an exception removes its temp file; a
process killed mid-write (SIGKILL, power loss) leaves the previous file (or no file)
and its hidden temp file, which the next run removes (:func:`remove_stale_temps`:
temp files whose writer PID is no longer alive). It never leaves a partial file
that a resumed run would take for a finished one.
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import IO, Iterator, Union

__all__ = ["atomic_open", "atomic_write_text", "temp_path", "remove_stale_temps"]

PathLike = Union[str, os.PathLike]


def temp_path(path: PathLike) -> Path:
    """The temp file of ``path`` for this process: ``.<name>.tmp<pid>`` in the same folder."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb", fsync: bool = False) -> Iterator[IO]:
    """Open a temp file for writing; on a clean exit it replaces ``path`` atomically.

    ``mode`` is ``"wb"`` or ``"w"``; ``fsync=True`` flushes the bytes to disk before the
    rename (checkpoints). Missing parent folders are created. On an exception the temp
    file is removed and the exception propagates; ``path`` is untouched.

    >>> with atomic_open("out.json", "w") as fh:  # doctest: +SKIP
    ...     fh.write("{}")
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, mode) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_open`); returns ``path``."""
    with atomic_open(path, "w") as fh:
        fh.write(text)
    return Path(path)


_TEMP_NAME = re.compile(r"^\..+\.tmp(\d+)$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    except OverflowError:
        return False
    return True


def remove_stale_temps(folder: PathLike, recursive: bool = False) -> list:
    """Remove the temp files of :func:`temp_path` in ``folder`` whose writer is gone.

    A temp file is ``.<name>.tmp<pid>``; it is stale when no process ``pid`` is alive (a
    writer killed by SIGKILL). Temp files of live processes (e.g. another DDP rank) are
    kept. ``recursive=True`` also looks in sub-folders. Returns the removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in (folder.rglob(".*.tmp*") if recursive else folder.glob(".*.tmp*")):
        match = _TEMP_NAME.match(path.name)
        if match and path.is_file() and not _pid_alive(int(match.group(1))):
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed
