"""Atomic writes: readers never see half a file or folder, and a failed write leaves the old one intact.

Files: ``atomic_write`` (temp file beside the target, fsync, rename). Folders:
``swap_into_place`` puts a complete temp folder at a path in one step where Linux allows
(``renameat2(RENAME_EXCHANGE)``), else with two renames; ``sibling`` names such temp folders
with the writer's pid so ``remove_litter`` can tell a killed run's leftovers from a live save.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Union

PathLike = Union[str, os.PathLike]
log = logging.getLogger(__name__)


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
        os.chmod(tmp, mode & ~umask())
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


def sibling(path: Path, kind: str) -> Path:
    """A fresh hidden name beside ``path``: ``.<name>.<kind>-<pid>-<random>`` (the pid lets a
    later save tell a killed run's litter from a save still running)."""
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def litter(path: Path) -> list[Path]:
    """Leftovers of earlier saves of ``path`` whose process is gone (or of unknown origin)."""
    found = []
    prefixes = (f".{path.name}.tmp-", f".{path.name}.old-")
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return found
    for entry in entries:
        rest = next((entry.name[len(p):] for p in prefixes if entry.name.startswith(p)), None)
        if rest is None:
            continue
        pid = rest.split("-", 1)[0]
        if pid.isdigit() and "-" in rest and _process_alive(int(pid)):
            continue  # a save in progress (this process's or another's): not litter
        found.append(entry)
    return found


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or a number no process can have
        return False
    except OSError:
        return True  # exists but belongs to someone else (or cannot be told): leave it alone
    return True


def remove_litter(path: str | os.PathLike) -> list[Path]:
    """Delete ``.<name>.tmp-*`` / ``.<name>.old-*`` beside ``path`` left by killed saves; returns them."""
    removed = []
    for entry in litter(Path(path)):
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError as err:
            log.warning("could not remove %s left by an interrupted save: %s", entry, err)
    if removed:
        log.info("removed %d leftover(s) of interrupted saves of %s", len(removed), path)
    return removed


def umask() -> int:
    """The process umask, read without changing it where Linux shows it (os.umask would race)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``).

    False where the system or the file system cannot (then nothing was changed).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # not supported here: fall back to two renames
    raise OSError(code, os.strerror(code), str(b))


def swap_into_place(tmp: Path, path: Path) -> None:
    """Put the complete folder ``tmp`` at ``path``; an existing index there is replaced.

    With an atomic exchange the path always holds a complete index; the old one ends up at the
    temp name and is deleted. Without, the old index is renamed aside first and restored if the
    second rename fails.
    """
    if not path.exists():
        os.replace(tmp, path)  # atomic: there was nothing to replace
    elif exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)  # the previous index, now at the temp name
    else:
        old = sibling(path, "old")
        os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(old, path)
            raise
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(path.parent)
