"""Keep file names, paths and header values out of logs: the readers' warnings, sanitised in one place.

pydicom (and nibabel, Pillow) put the file name and header values into their warnings and log
records ("End of file reached before delimiter ... found in file /uploads/DOE_JANE.dcm"). A file
name is often a patient name, so none of that may reach a server log, a SLURM ``.out`` file or a
notebook. Two guards:

- :func:`phi_safe_reading` (a context manager, also a decorator via :func:`phi_safe`) captures
  every Python warning raised while a file is read and re-emits it as one sanitised DEBUG record on
  the ``medclip.io`` logger: the warning's category and a fixed description of its kind, never its
  text. Every reader in :mod:`medclip.io`, the indexer's per-file reader and the demo's upload path
  run under it. Nested and concurrent use (demo threads) is safe: the first entrant installs the
  capture, the last one out removes it.
- :func:`guard_pydicom_logger` (installed when :mod:`medclip.io` is imported) rewrites every record of
  the ``pydicom`` logger (and its children) in place, before any other handler sees it: the level and
  logger name stay, the text becomes the same fixed description.
"""

from __future__ import annotations

import functools
import logging
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = ["guard_pydicom_logger", "phi_safe", "phi_safe_reading", "sanitize_reader_message"]

log = logging.getLogger("medclip.io")

F = TypeVar("F", bound=Callable[..., Any])

#: (substring of a reader's message, lower-cased) -> what may be said about it. First match wins.
_KINDS: tuple[tuple[str, str], ...] = (
    ("end of file", "file ends early (truncated)"),
    ("truncat", "file ends early (truncated)"),
    ("delimiter", "sequence or item delimiter missing"),
    ("expected explicit vr", "VR encoding differs from the transfer syntax"),
    ("expected implicit vr", "VR encoding differs from the transfer syntax"),
    ("transfer syntax", "transfer syntax problem"),
    ("character set", "unknown or invalid character set"),
    ("invalid value for vr", "header value does not match its VR"),
    ("value length", "header element length problem"),
    ("length of the pixel data", "pixel data length differs from the header"),
    ("pixel data", "pixel data problem"),
    ("preamble", "file preamble missing or invalid"),
    ("file meta", "file meta information missing or invalid"),
    ("unknown dicom tag", "unknown tag"),
    ("private", "private element problem"),
    ("decompressionbomb", "very large image"),
    ("exceeds limit", "very large image"),
    ("exif", "EXIF metadata problem"),
    ("scl_slope", "NIfTI scaling problem"),
    ("qform", "NIfTI orientation problem"),
    ("sform", "NIfTI orientation problem"),
)


def sanitize_reader_message(message: object) -> str:
    """A fixed description of a reader warning's kind; never any part of its text (names, paths, values)."""
    text = str(message).lower()
    for needle, kind in _KINDS:
        if needle in text:
            return kind
    return "other reader warning"


_lock = threading.Lock()
_depth = 0
_capture: warnings.catch_warnings | None = None


def _showwarning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    log.debug("reader %s: %s (file name and values withheld)", category.__name__, sanitize_reader_message(message))


@contextmanager
def phi_safe_reading() -> Iterator[None]:
    """Capture every warning raised inside the block; re-emit each as a sanitised DEBUG log record."""
    global _depth, _capture
    with _lock:
        if _depth == 0:
            _capture = warnings.catch_warnings()
            _capture.__enter__()
            warnings.simplefilter("always")
            warnings.showwarning = _showwarning
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _capture is not None:
                _capture.__exit__(None, None, None)
                _capture = None


def phi_safe(func: F) -> F:
    """Decorator: run ``func`` under :func:`phi_safe_reading`."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with phi_safe_reading():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


class _SanitizingHandler(logging.Handler):
    """First handler of the ``pydicom`` logger: rewrites each record in place before any other handler sees it.

    The message becomes a fixed description of its kind; arguments, exception text and stack are cleared.
    Records of child loggers (``pydicom.pixels...``) pass through their parent's handlers, so this one
    sees them too; the record then goes on (to the root logger's handlers) already sanitised.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            kind = sanitize_reader_message(record.getMessage())
        except Exception:  # a malformed record must not break reading
            kind = "other reader warning"
        record.msg = f"{kind} (file name and values withheld)"
        record.args = None
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None


_guard_installed = False


def guard_pydicom_logger() -> None:
    """Put :class:`_SanitizingHandler` first on the ``pydicom`` logger (once per process)."""
    global _guard_installed
    if _guard_installed:
        return
    pydicom_logger = logging.getLogger("pydicom")
    pydicom_logger.handlers.insert(0, _SanitizingHandler())
    _guard_installed = True
