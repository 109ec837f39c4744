"""DICOM header values, read defensively, and the non-PHI metadata of a dataset (:func:`safe_metadata`).

Every value is read through :func:`_value` (absent, empty or malformed -> a default), so a broken element
never stops a read. Identifiers leave only as salted hashes (:func:`medclip.deid.hash_identifier`);
names, dates and free text are never read into metadata. :data:`_DECODE_ERRORS` is what pydicom, its
decoders and numpy raise on malformed input: the ``dicom_*`` modules turn it into ImageReadError.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.pixels import apply_color_lut

from medclip.deid import coarse_age, coarse_sex, hash_identifier

__all__ = ["safe_metadata"]

PathLike = str | os.PathLike[str]

#: Exceptions that pydicom, its decoders and numpy raise on malformed input; turned into ImageReadError.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    IndexError,
    OSError,
    EOFError,
    RuntimeError,
    NotImplementedError,
    struct.error,
    zlib.error,
    InvalidDicomError,
    BytesLengthException,  # an element whose length is no multiple of its VR's value size (not a ValueError)
    StopIteration,  # pydicom's frame generator: encapsulated pixel data with fewer frames than Number of Frames
)


def _exc_text(exc: BaseException) -> str:
    """``Type: message`` of a reader exception; a fixed text where pydicom's message quotes the raw header bytes."""
    if isinstance(exc, BytesLengthException):
        return f"{type(exc).__name__}: an element's length does not fit its VR (header bytes withheld)"
    return f"{type(exc).__name__}: {exc}"


def _value(ds: Dataset, keyword: str, default: Any = None) -> Any:
    """A header value, or ``default`` when it is absent, empty or malformed."""
    try:
        value = ds.get(keyword, None)
        if value is None:
            return default
        value = getattr(value, "value", value)
    except _DECODE_ERRORS:
        return default
    if value is None or value == "" or (isinstance(value, (list, tuple, bytes)) and len(value) == 0):
        return default
    return value


def _text(ds: Dataset, keyword: str) -> str:
    value = _value(ds, keyword, "")
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else ""
    return str(value).strip().upper()


def _int(ds: Dataset, keyword: str) -> int | None:
    value = _value(ds, keyword)
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _floats(value: Any, count: int) -> list[float] | None:
    """``count`` finite floats from a multi-valued element, else None."""
    if value is None:
        return None
    try:
        items = [float(v) for v in (value if hasattr(value, "__len__") and not isinstance(value, str) else [value])]
    except (TypeError, ValueError):
        return None
    if len(items) < count or not all(np.isfinite(items[:count])):
        return None
    return items[:count]


def _functional_item(ds: Dataset, sequence: str, frame: int = 0) -> Dataset | None:
    """First item of a functional-group macro for ``frame``: per-frame group, else shared group."""
    for group_keyword, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        groups = _value(ds, group_keyword)
        if not groups or index >= len(groups):
            continue
        item = _value(groups[index], sequence)
        if item:
            first: Dataset = item[0]
            return first
    return None


def _pixel_spacing(ds: Dataset, frame: int = 0) -> list[float] | None:
    """(row, column) spacing in mm: Pixel Spacing, functional groups, else Imager Pixel Spacing."""
    spacing = _floats(_value(ds, "PixelSpacing"), 2)
    if spacing is None:
        item = _functional_item(ds, "PixelMeasuresSequence", frame)
        if item is not None:
            spacing = _floats(_value(item, "PixelSpacing"), 2)
    if spacing is None:
        spacing = _floats(_value(ds, "ImagerPixelSpacing"), 2)
    if spacing is None or min(spacing) <= 0:
        return None
    return spacing


def _file_window(ds: Dataset, frame: int = 0) -> tuple[float, float, str] | None:
    """First (center, width, VOI LUT function) of the file (top level or frame VOI LUT), if valid."""
    source: Dataset | None = ds if "WindowCenter" in ds else _functional_item(ds, "FrameVOILUTSequence", frame)
    if source is None:
        return None
    center = _floats(_value(source, "WindowCenter"), 1)
    width = _floats(_value(source, "WindowWidth"), 1)
    if center is None or width is None:
        return None
    function = _text(source, "VOILUTFunction") or _text(ds, "VOILUTFunction") or "LINEAR"
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    valid = width[0] >= 1.0 if function == "LINEAR" else width[0] > 0.0  # PS3.3 C.11.2.1.2
    return (center[0], width[0], function) if valid else None


def _has_voi_lut(ds: Dataset) -> bool:
    sequence = _value(ds, "VOILUTSequence")
    if not sequence:
        return False
    item = sequence[0]
    return _value(item, "LUTDescriptor") is not None and _value(item, "LUTData") is not None


def _colour_display_range(ds: Dataset) -> list[float] | None:
    """[0, 2**bits - 1] for colour data (shown as stored), None for grayscale."""
    photometric = _text(ds, "PhotometricInterpretation")
    if photometric != "PALETTE COLOR" and (_int(ds, "SamplesPerPixel") or 1) == 1:
        return None
    bits = _int(ds, "BitsStored") or 8
    if photometric == "PALETTE COLOR":
        # 8- or 16-bit entries, judged from the table itself (descriptors are often wrong).
        descriptor = _floats(_value(ds, "RedPaletteColorLookupTableDescriptor"), 3)
        try:
            entries, first = (int(descriptor[0]) or 65536, int(descriptor[1])) if descriptor else (256, 0)
            table = apply_color_lut(np.arange(first, first + entries, dtype=np.int64), ds)
            bits = 16 if table.max() > 255 else 8
        except _DECODE_ERRORS:
            bits = 8
    return [0.0, float(2**bits - 1)]


def safe_metadata(ds: Dataset, salt: str | None = None) -> dict[str, Any]:
    """Non-PHI header fields of a dataset; works on a header read with ``stop_before_pixels=True``.

    Identifiers (PatientID, Study/Series/SOP Instance UIDs) appear only as salted hashes
    (``patient_id``, ``study_id``, ``series_id``, ``image_id``); sex and age only coarsened; no
    names, dates, free-text descriptions or raw UIDs.
    """
    window = _file_window(ds)
    frames = _int(ds, "NumberOfFrames") or 1
    transfer_syntax = ""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        transfer_syntax = str(meta.TransferSyntaxUID.name)
    return {
        "format": "dicom",
        "modality": _text(ds, "Modality"),
        "view_position": _text(ds, "ViewPosition"),
        "body_part": _text(ds, "BodyPartExamined"),
        "photometric": _text(ds, "PhotometricInterpretation"),
        "rows": _int(ds, "Rows"),
        "columns": _int(ds, "Columns"),
        "frames": frames,
        "bits_stored": _int(ds, "BitsStored"),
        "pixel_spacing": _pixel_spacing(ds),
        "slice_thickness": next(iter(_floats(_value(ds, "SliceThickness"), 1) or []), None),
        "manufacturer": str(_value(ds, "Manufacturer", "")).strip(),
        "transfer_syntax": transfer_syntax,
        "sex": coarse_sex(_value(ds, "PatientSex", "")),
        "age_group": coarse_age(_value(ds, "PatientAge", "")),
        "patient_id": hash_identifier(_value(ds, "PatientID", ""), salt),
        "study_id": hash_identifier(_value(ds, "StudyInstanceUID", ""), salt),
        "series_id": hash_identifier(_value(ds, "SeriesInstanceUID", ""), salt),
        "image_id": hash_identifier(_value(ds, "SOPInstanceUID", ""), salt),
        "file_window_center": window[0] if window else None,
        "file_window_width": window[1] if window else None,
        "voi_lut_function": window[2] if window else None,
        "has_voi_lut": _has_voi_lut(ds),
        "display_range": _colour_display_range(ds),
    }


def _frame_count(ds: Dataset) -> int:
    frames = _int(ds, "NumberOfFrames")
    return frames if frames and frames > 0 else 1
