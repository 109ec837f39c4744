"""``load_image``: one entry point that recognises the input by its content and calls the right reader."""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterable
from pathlib import Path

from medclip.io.dicom import is_dicom_file, read_dicom, read_dicom_series
from medclip.io.guard import phi_safe
from medclip.io.image import ImageReadError, MedicalImage
from medclip.io.nifti import read_nifti
from medclip.io.raster import read_raster
from medclip.io.windowing import WindowSpec, check_window

__all__ = ["detect_format", "load_image"]

PathLike = str | os.PathLike[str]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_GZIP_MAGIC = b"\x1f\x8b"
_RASTER_MAGICS = (_PNG_MAGIC, _JPEG_MAGIC, b"II*\x00", b"MM\x00*", b"BM")  # + TIFF, BMP


def _is_nifti_header(head: bytes) -> bool:
    """NIfTI-1 ('n+1'/'ni1' at byte 344) or NIfTI-2 ('n+2'/'ni2' at byte 4), either byte order."""
    return head[344:347] in (b"n+1", b"ni1") or head[4:7] in (b"n+2", b"ni2")


@phi_safe
def detect_format(path: PathLike) -> str:
    """'dicom_series' (folder), 'dicom', 'nifti', 'raster' from the bytes, not the file name.

    Raises :class:`ImageReadError` for a missing path or an unrecognised format.
    """
    path = Path(path)
    if path.is_dir():
        return "dicom_series"
    try:
        with open(path, "rb") as fh:
            head = fh.read(548)
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot open ({exc.strerror or exc})") from exc
    if not head:
        raise ImageReadError(path, "empty file")
    if head.startswith(_GZIP_MAGIC):
        try:
            with gzip.open(path, "rb") as fh:
                inner = fh.read(548)
        except (OSError, EOFError, zlib.error) as exc:
            raise ImageReadError(path, f"corrupt gzip file ({exc})") from exc
        if _is_nifti_header(inner):
            return "nifti"
        if is_dicom_file(path):  # .dcm.gz
            return "dicom"
        raise ImageReadError(path, "gzip file that holds neither a NIfTI image nor a DICOM file")
    if _is_nifti_header(head):
        return "nifti"
    if is_dicom_file(path):
        return "dicom"
    if head.startswith(_RASTER_MAGICS):
        return "raster"
    raise ImageReadError(path, "unrecognised format: not DICOM, NIfTI, PNG, JPEG, TIFF or BMP")


@phi_safe
def load_image(
    path: PathLike | Iterable[PathLike],
    *,
    window: WindowSpec = "auto",
    frame: int | None = None,
    salt: str | None = None,
) -> MedicalImage:
    """Read any supported input into a :class:`MedicalImage`, dispatching on content.

    ``path``: a DICOM file (with or without preamble/extension), a folder or list of DICOM files
    forming one series, a NIfTI file (.nii/.nii.gz), or a PNG/JPEG (8/16-bit). ``window``: "auto",
    a preset name (:data:`medclip.io.windowing.WINDOW_PRESETS`), (center, width), or None for
    modality values. ``frame``: one frame of a multi-frame DICOM (returned 2D), or the volume
    index of 4D data (NIfTI, DICOM series with repeated positions). ``salt`` keys the hashed ids.
    Raises :class:`ImageReadError` (a ValueError naming the file and reason) for unreadable input
    and ValueError for an invalid ``window``.
    """
    check_window(window)
    if not isinstance(path, (str, os.PathLike)):
        return read_dicom_series(path, window=window, volume_index=frame, salt=salt)
    kind = detect_format(path)
    if kind == "dicom_series":
        return read_dicom_series(path, window=window, volume_index=frame, salt=salt)
    if kind == "dicom":
        return read_dicom(path, window=window, frame=frame, salt=salt)
    if kind == "nifti":
        return read_nifti(path, window=window, volume_index=frame, salt=salt)
    if frame not in (None, 0):
        raise ImageReadError(path, f"frame {frame} requested from a single-frame {kind} image")
    return read_raster(path, window=window, salt=salt)
