"""Atomic file writes: a reader sees the previous file or the new one, never a half-written one."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

# The names of the temporary files of write_atomic (.NAME.RANDOM.tmp) and of checkpoint saves, which keep
# the saved file's suffix (.STEM.tmp.SUFFIX): a process killed mid-write leaves one of them behind.
_TEMPORARY = re.compile(r"^\..+\.tmp(\.[^.]+)?$")


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, then move it into place.

    The folder is created if needed. A crash mid-write leaves the previous file (or none) and no
    temporary file behind.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file as 0600; give it the permissions a plain open() would have.
        os.chmod(temporary, 0o666 & ~current_umask())
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def current_umask() -> int:
    """The process's file-mode creation mask (read by setting and restoring it)."""
    current = os.umask(0)
    os.umask(current)
    return current


def remove_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that killed atomic writes left anywhere under ``folder``.

    Only names these writers use are touched (``.NAME.RANDOM.tmp``, ``.STEM.tmp.SUFFIX``); call it only
    when no process writes under ``folder``. Returns the paths deleted.
    """
    removed = []
    for path in sorted(Path(folder).rglob(".*")):
        if path.is_file() and _TEMPORARY.match(path.name):
            path.unlink()
            removed.append(path)
    return removed


def path_safe(name: str) -> str:
    """``name`` with every run of characters other than letters, digits, ``.``, ``_`` and ``-`` as one ``-``
    (an agent's ``module:Class``, a dataset's ``synthetic:fabric?...``), for folder names."""
    return re.sub(r"[^\w.-]+", "-", name)
