"""Pixel decoding: transfer syntaxes and the decoder fallback.

pydicom decodes in this process with its plugins minus GDCM (pylibjpeg, Pillow, its own RLE: they raise
Python exceptions on bad input); what they refuse in a JPEG / JPEG-LS / JPEG 2000 syntax goes to GDCM in
the worker process (:mod:`medclip.io.gdcm_worker`), where an abort costs one file, not the process.
Importing this module removes pydicom's in-process GDCM plugin. A Rust decoder's panic (pyo3
``PanicException``, a BaseException) is that file's :class:`ImageReadError` too.
"""

from __future__ import annotations

import os

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from medclip.io import gdcm_worker
from medclip.io.dicom_header import _DECODE_ERRORS, _exc_text, _text
from medclip.io.image import ImageReadError

PathLike = str | os.PathLike[str]

gdcm_worker.keep_gdcm_out_of_process()  # pydicom's GDCM plugin never runs in this process

# Transfer syntaxes whose frames are JPEG (SOF marker) / JPEG-LS (SOF55) / JPEG 2000 (SIZ) streams.
_JPEG_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81",
    }
)
_J2K_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.92",
        "1.2.840.10008.1.2.4.93",
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203",
    }
)

_YBR_FULL = ("YBR_FULL", "YBR_FULL_422")


def _decode(ds: Dataset, path: PathLike, frame: int | None) -> np.ndarray:
    """Decoded stored values: (frames, rows, cols[, samples]) or (rows, cols[, samples]).

    pydicom decodes with its plugins minus GDCM (pylibjpeg, Pillow, its own RLE: they raise Python
    exceptions on bad input); what they refuse goes to GDCM in the worker process
    (:mod:`medclip.io.gdcm_worker`), where an abort costs this one file, not the process.
    """
    # YBR_FULL(_422) is kept as YBR (raw): its Y channel is the luminance we want, so pydicom's
    # float64 YBR->RGB conversion (the slowest step for colour ultrasound cines) is skipped.
    raw = _text(ds, "PhotometricInterpretation") in _YBR_FULL
    try:
        return pydicom.pixels.pixel_array(ds, index=frame, raw=raw)
    except BaseException as exc:
        if not isinstance(exc, _DECODE_ERRORS) and not _is_decoder_panic(exc):
            raise  # KeyboardInterrupt, SystemExit, MemoryError: not this file's fault
        fallback = _gdcm_decode(ds, path, frame, raw)
        if fallback is not None:
            return fallback
        message = _exc_text(exc)
        lowered = message.lower()
        if isinstance(exc, StopIteration):
            reason = "malformed encapsulated pixel data (fewer frames than Number of Frames says)"
        elif "less than expected" in lowered or "truncat" in lowered or "end of file" in lowered:
            reason = f"pixel data truncated or wrong length ({message})"
        elif "plugin" in lowered or "decoder" in lowered or "no pixel data handler" in lowered:
            syntax = getattr(ds.file_meta.get("TransferSyntaxUID"), "name", "unknown transfer syntax")
            reason = f"no installed decoder could decode this {syntax} pixel data (python-gdcm may; {message})"
        else:
            reason = f"pixel data could not be decoded ({message})"
        raise ImageReadError(path, reason) from exc


def _is_decoder_panic(exc: BaseException) -> bool:
    """A Rust decoder's panic on malformed data (pylibjpeg-rle: "index out of bounds").

    pyo3's ``PanicException`` derives from BaseException, not Exception, so it passes pydicom's plugin loop
    and every ``except Exception`` above it (the indexer's, the demo's) unless it is caught here.
    """
    return type(exc).__name__ == "PanicException"


def _gdcm_decode(ds: Dataset, path: PathLike, frame: int | None, raw: bool) -> np.ndarray | None:
    """Stored values decoded by GDCM in the worker process, or None (no python-gdcm, not a GDCM codec, GDCM failed too).

    Only for the JPEG / JPEG-LS / JPEG 2000 streams pydicom's other plugins refused (e.g. 12-bit JPEG
    Extended, which only GDCM's IJG 12-bit codec reads), never to paper over a corrupt dataset. A GDCM
    crash, timeout or exhausted memory cap raises :class:`ImageReadError` for this file.
    """
    meta = getattr(ds, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "") if meta is not None else ""
    if syntax not in _JPEG_SYNTAXES and syntax not in _J2K_SYNTAXES:
        return None
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path) or not gdcm_worker.gdcm_installed():
        return None
    try:
        return gdcm_worker.decode(path, frame, raw)
    except gdcm_worker.GdcmWorkerError:
        return None  # no worker (not POSIX, a broken installation): pydicom's own error is reported
