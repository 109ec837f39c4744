"""File-system helpers: all-or-nothing file writes, and per-process temporary folders that a later start cleans up.

:func:`atomic_write` yields a temporary path beside the target and renames it into place only when
the block succeeds: a reader never sees a half-written file, and a crash leaves the old one.

Every temporary file medclip writes for a running process (the demo's uploads and extracted
zips, Gradio's copies of uploads) lives under one medclip-owned root,
``<system temp>/medclip-<uid>/`` (mode 0700), in a folder named after its owner process:
``proc-<pid>-<start time>``. The name is the marker: it is created in one ``mkdir``, and the
process start time tells a live owner from a recycled pid. The folder is removed when the
process exits normally; a process killed with SIGKILL cannot do that, so the next start calls
:func:`clean_stale_temp_dirs`, which removes every folder whose owner process is gone.
"""

from __future__ import annotations

import atexit
import errno
import os
import re
import secrets
import shutil
import stat
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "DiskFullError",
    "atomic_write",
    "clean_stale_temp_dirs",
    "disk_full_error",
    "is_disk_full",
    "process_alive",
    "process_temp_dir",
    "temp_root",
]

_PROC_DIR = re.compile(r"^proc-(\d+)-(\d+|x)$")
_UNKNOWN_START = "x"  # no /proc: the start time cannot be read, only whether the pid exists
_process_dir: tuple[int, Path] | None = None


class DiskFullError(OSError):
    """A write that ran out of disk space (``ENOSPC``) or quota (``EDQUOT``).

    The message names the file, how much space it needs (at least) and how much is free; the file's
    earlier version, if any, is unchanged. ``path``, ``needed`` and ``free`` (bytes) are attributes.
    """

    def __init__(self, path: str | os.PathLike[str], needed: int | None, free: int | None) -> None:
        self.path, self.needed, self.free = Path(path), needed, free
        need = f"needs at least {_size(needed)}" if needed else "needs more space"
        have = f"{_size(free)} free" if free is not None else "free space unknown"
        super().__init__(
            errno.ENOSPC,
            f"disk full while writing {self.path}: it {need}, {have} on that file system; "
            "the earlier version of the file, if any, is unchanged. Free some space (or give another "
            "output folder) and run again",
        )

    def __str__(self) -> str:
        return str(self.strerror)


_DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
#: How libraries word a full disk when they do not raise an OSError with its errno (torch's zip writer
#: raises RuntimeError("... file write failed"), pyarrow may carry only the text).
_DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded", "errno 28")


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a full disk or an exhausted quota."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL_ERRNOS:
            return True
        if any(marker in str(current).lower() for marker in _DISK_FULL_TEXT):
            return True
        current = current.__cause__ or current.__context__
    return False


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} bytes"  # pragma: no cover


def _free_bytes(path: Path) -> int | None:
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def disk_full_error(path: str | os.PathLike[str], *, needed: int | None = None) -> DiskFullError:
    """The :class:`DiskFullError` for ``path`` (free space read now with ``shutil.disk_usage``)."""
    return DiskFullError(path, needed, _free_bytes(Path(path).parent))


@contextmanager
def atomic_write(
    path: str | os.PathLike[str], *, fsync: bool = False, expected_bytes: int | None = None
) -> Iterator[Path]:
    """Write ``path`` all or nothing: ``with atomic_write(p) as tmp: <write tmp by any means>``.

    ``tmp`` is a new empty file in ``path``'s folder (created with the usual umask permissions), so
    any writer that takes a path works (``open``, ``pq.write_table``, safetensors, ``tarfile``). When
    the block ends without error, ``tmp`` replaces ``path`` in one rename; on any error (or Ctrl-C)
    it is removed and ``path`` keeps its old content. ``fsync=True`` flushes the data to disk first
    (checkpoints, where a power loss must not leave an empty file behind the rename).

    A full disk or quota (``ENOSPC`` / ``EDQUOT``, however the writer reports it) becomes one
    :class:`DiskFullError` naming ``path``, the space needed (``expected_bytes`` when the caller
    knows it, else at least what had been written) and the space free.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(target, needed=expected_bytes) from exc
        raise
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        if isinstance(exc, Exception) and not isinstance(exc, DiskFullError) and is_disk_full(exc):
            raise disk_full_error(target, needed=max(expected_bytes or 0, written) or None) from exc
        raise


def temp_root() -> Path:
    """The medclip-owned temporary root, ``<system temp>/medclip-<uid>`` (created with mode 0700).

    If that path exists but is not a private folder of this user (a link, another owner), a fresh
    private folder is used instead, with a warning: never write into a folder someone else controls.
    """
    uid = os.getuid() if hasattr(os, "getuid") else 0
    root = Path(tempfile.gettempdir()) / f"medclip-{uid}"
    try:
        root.mkdir(mode=0o700, exist_ok=True)
        info = root.lstat()
        if not stat.S_ISDIR(info.st_mode) or (hasattr(os, "getuid") and info.st_uid != uid):
            raise PermissionError(f"{root} is not a folder owned by this user")
        if stat.S_IMODE(info.st_mode) & 0o077:
            root.chmod(0o700)
        return root
    except OSError as exc:
        fallback = Path(tempfile.mkdtemp(prefix="medclip-"))
        warnings.warn(f"cannot use {root} for temporary files ({exc}); using {fallback}", stacklevel=2)
        return fallback


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, from /proc), "x" where unknown, None if no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None if Path("/proc/self/stat").exists() else _exists_without_proc(pid)
    except OSError:
        return _exists_without_proc(pid)
    fields = text.rsplit(")", 1)[-1].split()  # the command name (field 2) may hold spaces and ")"
    return fields[19] if len(fields) > 19 else _UNKNOWN_START  # field 22: starttime


def _exists_without_proc(pid: int) -> str | None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return _UNKNOWN_START  # exists, owned by someone else
    except OSError:
        return _UNKNOWN_START
    return _UNKNOWN_START


def process_alive(pid: int, start_time: str) -> bool:
    """Whether the process ``pid`` that started at ``start_time`` (as :func:`process_temp_dir` names it) still runs."""
    now = _start_time(pid)
    if now is None:
        return False
    return _UNKNOWN_START in (now, start_time) or now == start_time


def process_temp_dir(purpose: str | None = None) -> Path:
    """This process's private temporary folder (or its ``purpose`` subfolder), removed at exit.

    Lives under :func:`temp_root` as ``proc-<pid>-<start time>``; a start after a crash removes it
    with :func:`clean_stale_temp_dirs`.
    """
    global _process_dir
    pid = os.getpid()
    if _process_dir is None or _process_dir[0] != pid or not _process_dir[1].is_dir():  # new, forked or removed
        root = temp_root()
        path = root / f"proc-{pid}-{_start_time(pid) or _UNKNOWN_START}"
        path.mkdir(mode=0o700, exist_ok=True)
        if _process_dir is None or _process_dir[0] != pid:
            atexit.register(_remove_process_dir, pid)
        _process_dir = (pid, path)
    path = _process_dir[1]
    if purpose:
        path = path / purpose
        path.mkdir(mode=0o700, exist_ok=True)
    return path


def _remove_process_dir(pid: int) -> None:
    if _process_dir is None or _process_dir[0] != pid or os.getpid() != pid:
        return
    path = _process_dir[1]
    shutil.rmtree(path, ignore_errors=True)
    try:
        path.parent.rmdir()  # the shared root goes too when no other process uses it
    except OSError:
        pass


def clean_stale_temp_dirs(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove the ``proc-<pid>-<start>`` folders under ``root`` (default :func:`temp_root`) whose owner
    process is gone (killed, crashed); folders of live processes and anything else are kept.
    Returns the folders removed."""
    base = Path(root) if root is not None else temp_root()
    removed: list[Path] = []
    try:
        children = list(base.iterdir())
    except OSError:
        return removed
    for child in children:
        match = _PROC_DIR.match(child.name)
        if not match or child.is_symlink() or not child.is_dir():
            continue
        if process_alive(int(match.group(1)), match.group(2)):
            continue
        shutil.rmtree(child, ignore_errors=True)
        if not child.exists():
            removed.append(child)
    return removed
