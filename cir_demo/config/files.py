"""Atomic writes: readers never see half a file, and a failed write leaves the old one intact."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Union

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write(path: PathLike, write: Callable[[str], None], *, mode: int = 0o666) -> Path:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, fsync it, then rename it onto ``path``.

    ``mode`` (before the umask) is applied to the result: mkstemp makes 0600 files, which another
    service user could not read.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Atomically write UTF-8 text."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return atomic_write(path, write)
