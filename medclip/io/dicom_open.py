"""Opening a DICOM file: detection by content, ``.dcm.gz`` inflated in memory (capped), bare datasets.

Archive quirks handled here: gzip-compressed files (inflation capped by
:data:`medclip.io.dicom_limits.MAX_GZIP_DICOM_BYTES`), datasets without preamble or file meta (read with
``force``, given the transfer syntax they were read with). :func:`_read_dataset` is ``dcmread`` whose
every failure is an :class:`ImageReadError` with a reason.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medclip.io import dicom_limits
from medclip.io.dicom_header import _DECODE_ERRORS, _exc_text
from medclip.io.image import ImageReadError

__all__ = ["dicom_source", "is_dicom_file"]

PathLike = str | os.PathLike[str]

_GZIP_MAGIC = b"\x1f\x8b"


def _is_gzip(path: PathLike) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(2) == _GZIP_MAGIC
    except OSError:
        return False


def _head(path: PathLike, n: int = 132) -> bytes:
    """The first ``n`` bytes of a file, inflated first when it is gzip-compressed; b"" if unreadable."""
    try:
        if _is_gzip(path):
            with gzip.open(path, "rb") as fh:
                return fh.read(n)
        with open(path, "rb") as fh:
            return fh.read(n)
    except (OSError, EOFError, zlib.error):
        return b""


def is_dicom_file(path: PathLike) -> bool:
    """True if the file starts like DICOM ('DICM' after the preamble, or a bare dataset), gzip-compressed or not."""
    head = _head(path)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    return _looks_like_bare_dataset(head)


def dicom_source(path: PathLike) -> PathLike | io.BytesIO:
    """What to hand ``pydicom.dcmread``: the path, or the inflated bytes of a gzip-compressed DICOM file.

    Inflation stops with :class:`ImageReadError` past :data:`medclip.io.dicom_limits.MAX_GZIP_DICOM_BYTES`.
    """
    limit = dicom_limits.MAX_GZIP_DICOM_BYTES
    if not _is_gzip(path):
        return path
    out = bytearray()
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                out += chunk
                if len(out) > limit:
                    raise ImageReadError(
                        path,
                        f"gzip-compressed DICOM inflates to more than {limit / 2**20:.0f} MiB: refused",
                    )
    except (OSError, EOFError, zlib.error) as exc:
        raise ImageReadError(path, f"corrupt gzip file ({type(exc).__name__}: {exc})") from exc
    return io.BytesIO(bytes(out))


def _looks_like_bare_dataset(head: bytes) -> bool:
    """A dataset without preamble: the first element is a group 0002/0008 tag, little or big endian."""
    if len(head) < 8:
        return False
    for order in ("<", ">"):
        group, element = struct.unpack(order + "HH", head[:4])
        if group in (0x0002, 0x0008) and element < 0x0100:
            vr = head[4:6]
            explicit = vr.isalpha() and vr.isupper()
            if explicit:
                return True
            length: int
            (length,) = struct.unpack(order + "I", head[4:8])
            return length < 0x10000  # implicit VR: a plausible element length
    return False


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """Datasets without file meta (or without its Transfer Syntax UID) get the one they were read with."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = ds.original_encoding
    if implicit is None or little is None:
        return
    if meta is None:
        ds.file_meta = pydicom.dataset.FileMetaDataset()
    if implicit:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    else:
        ds.file_meta.TransferSyntaxUID = (
            pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian
        )


def _read_dataset(path: PathLike, *, stop_before_pixels: bool = False) -> Dataset:
    """dcmread with clear errors; bare datasets (no preamble/meta) are read with ``force``."""
    try:
        source = dicom_source(path)  # a .dcm.gz is inflated in memory
        try:
            ds = pydicom.dcmread(source, stop_before_pixels=stop_before_pixels)
        except InvalidDicomError:
            if not _looks_like_bare_dataset(_head(path)):
                raise ImageReadError(path, "not a DICOM file (no 'DICM' marker and no DICOM header)") from None
            if isinstance(source, io.BytesIO):
                source.seek(0)
            ds = pydicom.dcmread(source, stop_before_pixels=stop_before_pixels, force=True)
        _ensure_transfer_syntax(ds)
        return ds
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a folder; use read_dicom_series for a series") from None
    except (EOFError, struct.error) as exc:
        raise ImageReadError(path, f"truncated or corrupt DICOM header ({type(exc).__name__}: {exc})") from exc
    except _DECODE_ERRORS as exc:
        raise ImageReadError(path, f"unreadable DICOM header ({_exc_text(exc)})") from exc
