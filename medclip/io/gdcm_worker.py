"""GDCM in a worker process: a decoder that can abort never runs in medclip's own process.

python-gdcm wraps C++. On some malformed files GDCM throws a C++ exception that its Python wrapper does
not translate (e.g. a JPEG Lossless file whose header has an element with another VR than the one
GDCM's attribute template expects: ``gdcmAttribute.h: GetVR().Compatible(de.GetVR())``); ``std::terminate``
then aborts the process with SIGABRT and nothing in Python can catch it. One such file in a PACS
export would end a ``medclip index`` or ``medclip cache`` run, and one upload would end the demo
server for everyone. So:

- :func:`keep_gdcm_out_of_process` (run when :mod:`medclip.io.dicom_codecs` is imported) removes GDCM from
  pydicom's pixel decoders in this process: pydicom decodes with its other plugins (pylibjpeg,
  Pillow, its own RLE), which raise Python exceptions on bad input;
- what those cannot decode (12-bit JPEG Extended, for one) goes to :func:`decode`, which asks one
  reused worker process (``python -c ... medclip.io.gdcm_worker``): pydicom's GDCM plugin, then GDCM's own
  file reader. The worker starts on first use and again after a crash, a timeout or a fork; a lock
  serialises requests (the demo's concurrent users); each call has a timeout (:data:`TIMEOUT_S`) and
  the worker's address space a cap (:data:`MEMORY_LIMIT_BYTES`, ``RLIMIT_AS``);
- a crash, a timeout or an exhausted memory cap becomes :class:`~medclip.io.ImageReadError` for
  that one file ("the GDCM decoder crashed on this file"); the caller skips it and goes on;
- the worker logs nothing, and its stdout and stderr go to /dev/null: GDCM's own messages may quote
  header values, and the file's path travels only over the private socket to the worker.

The worker needs a POSIX system (a socket pair passed to the child); elsewhere GDCM is not used and
the files only it decodes are refused with a reason that says so.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CRASH_REASON",
    "MEMORY_LIMIT_BYTES",
    "TIMEOUT_S",
    "GdcmWorkerError",
    "decode",
    "gdcm_installed",
    "keep_gdcm_out_of_process",
    "shutdown",
    "worker_info",
]

#: Seconds one decode may take in the worker before it is killed and the file refused.
TIMEOUT_S = 120.0
#: Seconds the worker may take to start (import pydicom, numpy, GDCM).
START_TIMEOUT_S = 60.0
#: The worker's address-space cap (``RLIMIT_AS``): the largest file the header caps of
#: :mod:`medclip.io.dicom_limits` allow (2**30 16-bit samples) decodes within it, with GDCM's copies.
MEMORY_LIMIT_BYTES = 8 * 2**30
#: What an ImageReadError says when GDCM took the worker down.
CRASH_REASON = "the GDCM decoder crashed on this file"

_PLUGIN = ("pydicom.pixels.decoders.gdcm", "_decode_frame")
_removed_from: list[str] = []  # transfer syntaxes whose pydicom decoder had a "gdcm" plugin here


class GdcmWorkerError(RuntimeError):
    """The worker could not be started (a broken installation, no POSIX): not the file's fault."""


def gdcm_installed() -> bool:
    """True when python-gdcm can be imported (checked without importing it here)."""
    try:
        return importlib.util.find_spec("gdcm") is not None
    except (ImportError, ValueError):
        return False


def keep_gdcm_out_of_process() -> None:
    """Remove GDCM from pydicom's pixel decoders in this process (idempotent).

    pydicom 3 tries its ``gdcm`` plugin first for every JPEG, JPEG-LS and JPEG 2000 syntax when
    python-gdcm is installed; without it, pydicom goes on with pylibjpeg / Pillow. Only the worker
    process puts the plugin back (:func:`_restore_gdcm_plugin`).
    """
    import pydicom.uid
    from pydicom.pixels import get_decoder

    for uid in pydicom.uid.AllTransferSyntaxes:
        try:
            decoder = get_decoder(uid)
        except NotImplementedError:
            continue
        try:
            decoder.remove_plugin("gdcm")
        except ValueError:  # no such plugin for this syntax, or already removed
            continue
        if str(uid) not in _removed_from:
            _removed_from.append(str(uid))


def _restore_gdcm_plugin() -> None:
    """In the worker only: give pydicom's decoders their GDCM plugin back."""
    from pydicom.pixels import get_decoder

    for uid in _removed_from:
        decoder = get_decoder(uid)
        if "gdcm" not in decoder.available_plugins:
            try:
                decoder.add_plugin("gdcm", _PLUGIN)
            except ValueError:
                continue


# --------------------------------------------------------------------------- parent side


class _Worker:
    """One GDCM worker process, owned by the process that started it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._owner = os.getpid()

    def forget_after_fork(self) -> None:
        """In a forked child: the worker belongs to the parent; drop it (a later call starts this process's own)."""
        self._lock = threading.Lock()
        conn, self._conn, self._proc = self._conn, None, None
        if conn is not None:
            try:
                conn.close()  # this process's copy of the socket; the parent's stays open
            except OSError:
                pass
        self._owner = os.getpid()

    def _start(self) -> None:
        if os.name != "posix":
            raise GdcmWorkerError("the isolated GDCM worker needs a POSIX system")
        parent, child = socket.socketpair()
        import medclip

        # the sys.path entry this medclip came from (site-packages, or a checkout): the worker imports the same one
        root = str(Path(medclip.__file__).resolve().parent.parent)
        code = f"import sys; sys.path.insert(0, {root!r}); from medclip.io.gdcm_worker import _serve; _serve()"
        env = dict(os.environ)
        env.update(
            MEDCLIP_GDCM_WORKER_FD=str(child.fileno()),
            MEDCLIP_GDCM_WORKER_MEMORY=str(int(MEMORY_LIMIT_BYTES)),
            OMP_NUM_THREADS="1",
            OPENBLAS_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
        )
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", code],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,  # GDCM's messages (and std::terminate's) may quote header values
                pass_fds=(child.fileno(),),
                env=env,
            )
        except OSError as exc:
            parent.close()
            raise GdcmWorkerError(f"the GDCM worker could not be started ({type(exc).__name__})") from exc
        finally:
            child.close()
        conn = Connection(parent.detach())
        try:
            ready = conn.poll(START_TIMEOUT_S) and conn.recv()
        except (EOFError, OSError):
            ready = None
        if not (isinstance(ready, tuple) and ready[:1] == ("ready",)):
            conn.close()
            proc.kill()
            proc.wait()
            raise GdcmWorkerError(f"the GDCM worker did not start (exit status {proc.returncode})")
        self._proc, self._conn = proc, conn

    def _stop(self, kill: bool) -> int | None:
        """Close the connection and end the worker (killed, or waited for); its exit status."""
        conn, proc, self._conn, self._proc = self._conn, self._proc, None, None
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass
        if proc is None:
            return None
        if kill and proc.poll() is None:
            proc.kill()
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def request(self, message: tuple[Any, ...], timeout: float) -> tuple[str, Any]:
        """Send one request: ``("ok", value)``, ``("fail", why)``, ``("memory", None)``, ``("crashed", status)``, ``("timeout", s)``."""
        with self._lock:
            if self._owner != os.getpid():  # pragma: no cover - register_at_fork handles this
                self.forget_after_fork()
            if self._conn is None:
                self._start()
            assert self._conn is not None
            try:
                self._conn.send(message)
                if not self._conn.poll(timeout):
                    self._stop(kill=True)
                    return "timeout", timeout
                reply: tuple[str, Any] = self._conn.recv()
            except (EOFError, OSError):
                return "crashed", self._stop(kill=False)
            return reply

    def close(self) -> None:
        with self._lock:
            if self._owner == os.getpid():
                self._stop(kill=False)


_WORKER = _Worker()
atexit.register(_WORKER.close)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_WORKER.forget_after_fork)


def _status_text(status: int | None) -> str:
    if status is not None and status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


def decode(
    path: str | os.PathLike[str], frame: int | None, raw: bool, *, timeout: float | None = None
) -> np.ndarray | None:
    """The stored values of ``path`` (as :func:`pydicom.pixels.pixel_array` gives them) decoded by GDCM in the worker.

    None when GDCM cannot decode them either (the caller's own reason stands). Raises
    :class:`~medclip.io.ImageReadError` when GDCM takes the worker down (:data:`CRASH_REASON`), runs past
    ``timeout`` (default :data:`TIMEOUT_S`) or past :data:`MEMORY_LIMIT_BYTES`; :class:`GdcmWorkerError`
    when the worker cannot start.
    """
    from medclip.io.image import ImageReadError

    seconds = TIMEOUT_S if timeout is None else float(timeout)
    kind, value = _WORKER.request(("decode", os.fspath(path), frame, bool(raw)), seconds)
    if kind == "ok":
        return np.asarray(value)
    if kind == "crashed":
        raise ImageReadError(path, f"{CRASH_REASON} ({_status_text(value)}; it ran in a separate process)")
    if kind == "timeout":
        raise ImageReadError(path, f"the GDCM decoder took longer than {seconds:g} s on this file: stopped")
    if kind == "memory":
        raise ImageReadError(
            path, f"the GDCM decoder needed more than its {MEMORY_LIMIT_BYTES / 2**30:g} GiB memory cap"
        )
    return None


def worker_info(timeout: float = START_TIMEOUT_S) -> dict[str, Any]:
    """The worker's process id and address-space cap (starting it if needed): for tests and diagnostics."""
    kind, value = _WORKER.request(("info",), timeout)
    if kind != "ok":
        raise GdcmWorkerError(f"the GDCM worker did not answer ({kind})")
    return dict(value)


def shutdown() -> None:
    """End the worker now (it also ends at exit); the next :func:`decode` starts a fresh one."""
    _WORKER.close()


# --------------------------------------------------------------------------- worker side


def _cap_memory(limit: int) -> int | None:
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    try:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        soft = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        return resource.getrlimit(resource.RLIMIT_AS)[0]
    except (ValueError, OSError):  # pragma: no cover - a platform that refuses the cap
        return None


_GDCM_SCALARS = {
    "UINT8": "u1",
    "INT8": "i1",
    "UINT12": "<u2",
    "INT12": "<i2",
    "UINT16": "<u2",
    "INT16": "<i2",
    "UINT32": "<u4",
    "INT32": "<i4",
    "FLOAT32": "<f4",
    "FLOAT64": "<f8",
}


def _reader_decode(ds: Any, path: str, frame: int | None) -> np.ndarray | None:
    """Grayscale pixels decoded by GDCM's own file reader, or None (colour, a size mismatch, GDCM failed).

    For JPEG streams pydicom's plugins refuse, e.g. 12-bit JPEG Extended (process 2/4) files that only
    GDCM's IJG 12-bit codec reads (pydicom's GDCM plugin declines those on purpose).
    """
    import gdcm

    from medclip.io.dicom_header import _frame_count, _int

    if (_int(ds, "SamplesPerPixel") or 1) != 1 or not os.path.isfile(path):
        return None
    reader = gdcm.ImageReader()
    reader.SetFileName(path)
    if not reader.Read():
        return None
    image = reader.GetImage()
    dtype = _GDCM_SCALARS.get(image.GetPixelFormat().GetScalarTypeAsString())
    if dtype is None:
        return None
    values: np.ndarray = np.frombuffer(image.GetBuffer().encode("utf-8", "surrogateescape"), dtype=dtype)
    rows, columns, frames = _int(ds, "Rows") or 0, _int(ds, "Columns") or 0, _frame_count(ds)
    if values.size != rows * columns * frames:
        return None
    values = values.reshape(frames, rows, columns)
    chosen: np.ndarray = values[frame] if frame is not None else values[0] if frames == 1 else values
    return chosen.copy()


def _decode_here(path: str, frame: int | None, raw: bool) -> tuple[str, Any]:
    """In the worker: pydicom's GDCM plugin, then GDCM's file reader. Never names the file in its reply."""
    import pydicom.pixels

    from medclip.io.dicom_open import _read_dataset
    from medclip.io.image import ImageReadError

    try:
        ds = _read_dataset(path)
    except ImageReadError as exc:
        return "fail", exc.reason
    try:
        return "ok", pydicom.pixels.pixel_array(ds, index=frame, raw=raw, decoding_plugin="gdcm")
    except MemoryError:
        return "memory", None
    except Exception as exc:  # noqa: BLE001 - any plugin failure: GDCM's file reader may still decode it
        plugin_error = f"{type(exc).__name__}: {str(exc).splitlines()[-1] if str(exc) else ''}"
    try:
        values = _reader_decode(ds, path, frame)
    except MemoryError:
        return "memory", None
    except Exception as exc:  # noqa: BLE001 - GDCM's reader failed too: the plugin's reason stands
        values = None
        plugin_error += f"; GDCM's reader: {type(exc).__name__}"
    if values is None:
        return "fail", f"GDCM could not decode it either ({plugin_error})"
    return "ok", values


def _serve() -> None:
    """The worker's loop: answer requests until the parent closes the socket."""
    import logging

    global MEMORY_LIMIT_BYTES
    fd = int(os.environ["MEDCLIP_GDCM_WORKER_FD"])
    MEMORY_LIMIT_BYTES = int(os.environ.get("MEDCLIP_GDCM_WORKER_MEMORY", MEMORY_LIMIT_BYTES))
    conn = Connection(fd)
    logging.disable(logging.CRITICAL)  # the worker logs nothing: no file names, no header values
    import warnings

    warnings.simplefilter("ignore")
    import gdcm
    import pydicom.pixels.decoders.gdcm  # noqa: F401 - imported before the memory cap

    import medclip.io.dicom_codecs  # noqa: F401 - removes the plugin here too; put back just below

    _restore_gdcm_plugin()
    for switch in (gdcm.Trace.SetError, gdcm.Trace.SetWarning, gdcm.Trace.SetDebug):
        switch(False)
    cap = _cap_memory(MEMORY_LIMIT_BYTES)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent closed the socket or died
        if message[0] == "info":
            reply: tuple[str, Any] = ("ok", {"pid": os.getpid(), "memory_limit": cap})
        elif message[0] == "decode":
            try:
                reply = _decode_here(message[1], message[2], message[3])
            except MemoryError:
                reply = ("memory", None)
            except Exception as exc:  # noqa: BLE001 - reported, the worker goes on
                reply = ("fail", f"GDCM decoding failed ({type(exc).__name__})")
        else:
            reply = ("fail", "unknown request")
        try:
            conn.send(reply)
        except MemoryError:
            conn.send(("memory", None))
        except (EOFError, OSError):
            return
