"""DICOM reading: one file (2D or multi-frame) or a series of files into a :class:`MedicalImage`.

Pixel pipeline (PS3.4 N.2): decode (pydicom with its pylibjpeg / Pillow / RLE plugins in this process;
GDCM only in a worker process, :mod:`medclip.io.gdcm_worker`, because it can abort the process on a
malformed file; bits stored and signedness corrected by pydicom) -> modality LUT (Modality LUT
Sequence via ``pydicom.pixels.apply_modality_lut``, else Rescale Slope/Intercept, per frame for
enhanced multi-frame) -> VOI (VOI LUT Sequence via ``pydicom.pixels.apply_voi``, else Window
Center/Width, first of several) -> MONOCHROME1 inversion.
Colour images (RGB, YBR_*, PALETTE COLOR) become luminance (ITU-R BT.601). Siemens mosaics are
unpacked into volumes with nibabel's CSA-header reader.

Metadata never carries PHI: identifiers are salted hashes (:func:`medclip.deid.hash_identifier`),
names, dates and free text are never read into it.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import warnings
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragmented_frames
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi

from medclip.deid import coarse_age, coarse_sex, hash_identifier
from medclip.io import gdcm_worker
from medclip.io.guard import phi_safe
from medclip.io.image import ImageReadError, MedicalImage, MultiVolumeError
from medclip.io.volume import canonical_volume
from medclip.io.windowing import WindowSpec, check_window, window_image

__all__ = ["dicom_source", "find_dicom_series", "is_dicom_file", "read_dicom", "read_dicom_series", "safe_metadata"]

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
)


def _exc_text(exc: BaseException) -> str:
    """``Type: message`` of a reader exception; a fixed text where pydicom's message quotes the raw header bytes."""
    if isinstance(exc, BytesLengthException):
        return f"{type(exc).__name__}: an element's length does not fit its VR (header bytes withheld)"
    return f"{type(exc).__name__}: {exc}"


gdcm_worker.keep_gdcm_out_of_process()  # pydicom's GDCM plugin never runs in this process

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as Y of YBR_FULL
_YBR_FULL = ("YBR_FULL", "YBR_FULL_422")

# Relative tolerances for assembling slices into a volume.
_POSITION_TOL_MM = 0.05  # slices closer than this along the normal share a position
_SPACING_REL_TOL = 0.02  # allowed relative deviation of slice gaps from their median
_ORIENTATION_TOL = 1e-3  # max abs difference between direction cosines


# --------------------------------------------------------------------------- file detection


_GZIP_MAGIC = b"\x1f\x8b"
#: Most bytes a gzip-compressed DICOM file (``.dcm.gz``) may inflate to; a gzip bomb is refused, not inflated.
MAX_GZIP_DICOM_BYTES = 2**30


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

    Inflation stops with :class:`ImageReadError` past :data:`MAX_GZIP_DICOM_BYTES`.
    """
    if not _is_gzip(path):
        return path
    out = bytearray()
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                out += chunk
                if len(out) > MAX_GZIP_DICOM_BYTES:
                    raise ImageReadError(
                        path,
                        f"gzip-compressed DICOM inflates to more than {MAX_GZIP_DICOM_BYTES / 2**20:.0f} MiB: refused",
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


# --------------------------------------------------------------------------- metadata


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
            return item[0]
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


# --------------------------------------------------------------------------- pixels


def _check_pixel_module(ds: Dataset, path: PathLike) -> None:
    if len(ds) == 0:
        raise ImageReadError(path, "no DICOM elements could be read: truncated or corrupt file")
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        if _int(ds, "Rows") and _int(ds, "Columns"):
            raise ImageReadError(path, "image header without pixel data: truncated file?")
        modality = _text(ds, "Modality") or "unknown modality"
        raise ImageReadError(path, f"no pixel data (a non-image DICOM object, {modality})")
    for keyword in ("Rows", "Columns"):
        if not _int(ds, keyword):
            raise ImageReadError(path, f"pixel data without a valid {keyword}")
    if _text(ds, "Modality") == "SEG":
        raise ImageReadError(path, "a DICOM Segmentation (SEG) holds label masks, not an image")
    _check_decoded_size(ds, path)


#: Most samples (rows x columns x frames x samples per pixel) one file may decode to: 2**30 (4 GiB as float32).
MAX_DECODED_SAMPLES = 2**30
#: Most pixels one frame may hold (a 16384 x 16384 plane).
MAX_FRAME_PIXELS = 2**28

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
# JPEG start-of-frame markers (baseline, extended, progressive, lossless, arithmetic) and JPEG-LS SOF55.
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def _jpeg_frame_size(data: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) from a JPEG / JPEG-LS stream's first SOF marker; None if it has none."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _SOF_MARKERS:
            if i + 10 > n or length < 8:
                return None
            rows = int.from_bytes(data[i + 5 : i + 7], "big")
            columns = int.from_bytes(data[i + 7 : i + 9], "big")
            return rows, columns, data[i + 9]
        i += 2 + length
    return None


def _j2k_frame_size(data: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) from a JPEG 2000 codestream's SIZ segment (bare or inside a JP2 file)."""
    start = 0
    if data[:12] == _JP2_SIGNATURE:
        start = data.find(b"\xff\x4f\xff\x51", 0, 1 << 20)
        if start < 0:
            return None
    if data[start : start + 4] != b"\xff\x4f\xff\x51" or len(data) < start + 42:
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", data[start + 8 : start + 24])
    (components,) = struct.unpack(">H", data[start + 40 : start + 42])
    return max(ysiz - yosiz, 0), max(xsiz - xosiz, 0), components


def _check_decoded_size(ds: Dataset, path: PathLike) -> None:
    """Refuse pixel data that would decode to more than the header says, or to too much, before decoding.

    The header's Rows x Columns x frames x samples is capped (:data:`MAX_DECODED_SAMPLES`,
    :data:`MAX_FRAME_PIXELS`). Each encapsulated frame's own dimensions (JPEG / JPEG-LS SOF marker,
    JPEG 2000 SIZ segment) must equal Rows x Columns: a decoder allocates what the frame says, so a
    3 MB file whose header says 320 x 320 but whose JPEG frame is 16000 x 16000 would otherwise be
    decoded whole. RLE frames are decoded to the header's size, so the header cap covers them.
    """
    rows, columns = _int(ds, "Rows") or 0, _int(ds, "Columns") or 0
    frames = _frame_count(ds)
    samples = _int(ds, "SamplesPerPixel") or 1
    if rows * columns > MAX_FRAME_PIXELS:
        raise ImageReadError(
            path,
            f"header says {rows} x {columns} pixels per frame, over the limit of "
            f"{MAX_FRAME_PIXELS / 1e6:.0f} megapixels",
        )
    if rows * columns * frames * samples > MAX_DECODED_SAMPLES:
        raise ImageReadError(
            path,
            f"header says {frames} frame(s) of {rows} x {columns} x {samples} samples, over "
            f"the limit of {MAX_DECODED_SAMPLES / 1e6:.0f} M samples per file",
        )
    meta = getattr(ds, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "") if meta is not None else ""
    if syntax not in _JPEG_SYNTAXES and syntax not in _J2K_SYNTAXES:
        return
    data = _value(ds, "PixelData")
    if not isinstance(data, (bytes, bytearray)):
        return
    codec = "JPEG 2000" if syntax in _J2K_SYNTAXES else "JPEG"
    try:
        fragmented = generate_fragmented_frames(data, number_of_frames=frames)
        for index, fragments in enumerate(fragmented):
            if index >= frames:
                break
            head = b"".join(fragments[:4])[: 1 << 20]  # the frame header lies in its first bytes
            size = _j2k_frame_size(head) if codec == "JPEG 2000" else _jpeg_frame_size(head)
            if size is None:
                raise ImageReadError(path, f"frame {index} is not a {codec} stream with a readable frame header")
            frame_rows, frame_columns, _ = size
            if (frame_rows, frame_columns) != (rows, columns):
                raise ImageReadError(
                    path,
                    f"encapsulated {codec} frame {index} is {frame_rows} x {frame_columns} "
                    f"pixels but the header says {rows} x {columns}: refused before decoding",
                )
    except ImageReadError:
        raise
    except _DECODE_ERRORS as exc:
        raise ImageReadError(path, f"malformed encapsulated pixel data ({_exc_text(exc)})") from exc


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
        if "less than expected" in lowered or "truncat" in lowered or "end of file" in lowered:
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


def _rescale(ds: Dataset, frame: int) -> tuple[float, float]:
    """(slope, intercept) for a frame: top level, else the Pixel Value Transformation macro."""
    source: Dataset | None = ds if "RescaleSlope" in ds or "RescaleIntercept" in ds else None
    if source is None:
        source = _functional_item(ds, "PixelValueTransformationSequence", frame)
    if source is None:
        return 1.0, 0.0
    slope = (_floats(_value(source, "RescaleSlope"), 1) or [1.0])[0]
    intercept = (_floats(_value(source, "RescaleIntercept"), 1) or [0.0])[0]
    return (slope if slope != 0 else 1.0), intercept


#: What metadata says when a Modality LUT Sequence is present but unusable (no descriptor or no data).
UNUSABLE_MODALITY_LUT = "unusable Modality LUT Sequence ignored (empty LUT Descriptor or LUT Data): identity used"


def _modality_lut_usable(ds: Dataset) -> bool | None:
    """None without a Modality LUT Sequence; else whether its first item holds a 3-value descriptor and data."""
    sequence = _value(ds, "ModalityLUTSequence")
    if not sequence:
        return None
    item = sequence[0]
    return _floats(_value(item, "LUTDescriptor"), 3) is not None and _value(item, "LUTData") is not None


def _modality_lut_note(ds: Dataset) -> dict[str, str]:
    """``{"modality_lut": ...}`` for metadata when the file's Modality LUT Sequence had to be ignored."""
    return {"modality_lut": UNUSABLE_MODALITY_LUT} if _modality_lut_usable(ds) is False else {}


def _modality_values(stored: np.ndarray, ds: Dataset, frames: Sequence[int]) -> np.ndarray:
    """Stored grayscale values -> modality values (float32), frame by frame along axis 0 when 3D.

    An unusable Modality LUT Sequence (anonymisers leave it with an empty LUT Descriptor) is ignored:
    the rescale below applies when present, else identity; :func:`_modality_lut_note` records it.
    """
    if _modality_lut_usable(ds):
        return np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    values = stored.astype(np.float32)
    if _text(ds, "Modality") == "RTDOSE":  # dose in Gy = stored value x Dose Grid Scaling
        scaling = _floats(_value(ds, "DoseGridScaling"), 1)
        if scaling:
            values *= np.float32(scaling[0])
    stack = values if values.ndim == 3 else values[None]
    for position, frame in enumerate(frames):
        slope, intercept = _rescale(ds, frame)
        if slope != 1.0:
            stack[position] *= np.float32(slope)
        if intercept != 0.0:
            stack[position] += np.float32(intercept)
    return values


class VoiLut:
    """The first VOI LUT Sequence item of a file as a table: modality values -> display values in [0, 1].

    Holds only the table (no header), so an image read with ``window=None`` can keep it and have it applied
    later under ``window="auto"`` (:func:`medclip.io.windowing.to_model_input`), as a read with "auto" does.
    """

    def __init__(self, first_mapped: int, table: np.ndarray) -> None:
        self.first_mapped = int(first_mapped)
        # The VOI LUT is defined on integer modality values; normalise by the table's own range,
        # which is robust to descriptors that declare more bits than the data use.
        low, high = float(table.min()), float(table.max())
        self.table = ((table.astype(np.float32) - low) * np.float32(1.0 / (high - low))).astype(np.float32)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        # values outside the table take its first / last entry (DICOM PS3.3 C.11.2.1.1)
        index = np.rint(values).astype(np.int64) - self.first_mapped
        np.clip(index, 0, len(self.table) - 1, out=index)
        return self.table[index]


def _voi_lut_function(ds: Dataset) -> VoiLut | None:
    """The first VOI LUT Sequence item as a :class:`VoiLut`, or None (no usable table)."""
    if not _has_voi_lut(ds):
        return None
    descriptor = _value(ds.VOILUTSequence[0], "LUTDescriptor")
    entries, first_mapped = (int(descriptor[0]) or 65536), int(descriptor[1])
    table = apply_voi(np.arange(first_mapped, first_mapped + entries, dtype=np.int64), ds, 0).astype(np.float32)
    if not float(table.max()) > float(table.min()):
        return None
    return VoiLut(first_mapped, table)


def _to_gray(stored: np.ndarray, ds: Dataset) -> tuple[np.ndarray, bool]:
    """Luminance for colour data; returns (array without a samples axis, was_colour)."""
    photometric = _text(ds, "PhotometricInterpretation")
    samples = _int(ds, "SamplesPerPixel") or 1
    if photometric == "PALETTE COLOR":
        stored = apply_color_lut(stored, ds)
        samples = 3
    if samples == 1:
        return stored, False
    if stored.shape[-1] != 3:
        raise ValueError(f"{samples} samples per pixel not supported")
    if photometric in _YBR_FULL:  # decoded raw (see _decode): Y is BT.601 luminance
        return stored[..., 0].astype(np.float32), True
    # pydicom has already converted YBR_* to RGB. Channel by channel: no float copy of all three.
    gray = np.multiply(stored[..., 0], _LUMA[0], dtype=np.float32)
    gray += np.multiply(stored[..., 1], _LUMA[1], dtype=np.float32)
    gray += np.multiply(stored[..., 2], _LUMA[2], dtype=np.float32)
    return gray, True


def _check_content(values: np.ndarray, path: PathLike) -> None:
    """No NaN/inf and not constant: such pixel data cannot be shown and would poison training."""
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise ImageReadError(path, "pixel data contain NaN or infinite values")
    low, high = values.min(), values.max()
    if low == high:
        raise ImageReadError(path, f"constant image: every pixel is {float(low):g}")


def _pixels(
    ds: Dataset, path: PathLike, frame: int | None, window: WindowSpec, n_frames: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode + modality LUT + window of one file; array is 2D, or 3D (frames first) when frame is None."""
    stored = _decode(ds, path, frame)
    frames = [frame] if frame is not None else list(range(n_frames))
    expected_ndim = 2 if (frame is not None or n_frames == 1) else 3
    try:
        stored, colour = _to_gray(stored, ds)
    except _DECODE_ERRORS as exc:
        raise ImageReadError(path, f"colour conversion failed ({type(exc).__name__}: {exc})") from exc
    if stored.ndim != expected_ndim:
        raise ImageReadError(path, f"decoded pixel array has shape {stored.shape}, expected {expected_ndim}D")
    _check_content(stored, path)
    if colour:
        low, high = _colour_display_range(ds) or [0.0, 255.0]
        return window_image(stored, window, display_range=(low, high))
    values = _modality_values(stored, ds, frames)
    # One window for all frames of a volume: the frames' window when they share one, else percentiles.
    frame_windows = {_file_window(ds, f) for f in frames}
    file_window = frame_windows.pop() if len(frame_windows) == 1 else None
    array, used = _window_modality(values, ds, window, path, file_window=file_window)
    used.update(_modality_lut_note(ds))
    return array, used


def _kept_voi_lut(ds: Dataset, window: WindowSpec) -> VoiLut | None:
    """The VOI LUT an image read as modality values (``window=None``) keeps for a later "auto" window."""
    if window is not None or _text(ds, "PhotometricInterpretation") not in ("MONOCHROME1", "MONOCHROME2"):
        return None
    try:
        return _voi_lut_function(ds)
    except _DECODE_ERRORS:
        return None


def _window_modality(
    values: np.ndarray,
    ds: Dataset,
    window: WindowSpec,
    path: PathLike,
    *,
    file_window: tuple[float, float, str] | None,
    use_voi_lut: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Window modality values with ``ds``'s VOI LUT (if ``use_voi_lut``) or ``file_window`` under "auto"."""
    voi = None
    if use_voi_lut and isinstance(window, str) and window.strip().lower() == "auto":
        try:
            voi = _voi_lut_function(ds)
        except _DECODE_ERRORS:
            voi = None  # a broken VOI LUT: fall back to the window / percentile, recorded in metadata
    try:
        return window_image(
            values,
            window,
            voi_lut=voi,
            file_window=file_window,
            monochrome1=_text(ds, "PhotometricInterpretation") == "MONOCHROME1",
        )
    except ValueError as exc:  # constant image, invalid width
        raise ImageReadError(path, str(exc)) from exc


# --------------------------------------------------------------------------- geometry


@dataclass
class _Slice:
    """Where one 2D slice (a file or a frame) lies in patient space (LPS, mm)."""

    index: int  # file index (series) or frame index (multi-frame)
    position: np.ndarray  # Image Position (Patient)
    row_cosine: np.ndarray  # direction of increasing column index
    column_cosine: np.ndarray  # direction of increasing row index
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    shape: tuple[int, int]
    order: tuple[float, ...]  # temporal order among slices at the same position


@dataclass
class _Stack:
    """Slices of one volume sorted along the normal, plus the voxel->RAS affine of (col, row, slice)."""

    indices: list[int]
    affine_ijk: np.ndarray
    n_volumes: int


def _orientation(value: Any) -> tuple[np.ndarray, np.ndarray] | None:
    cosines = _floats(value, 6)
    if cosines is None:
        return None
    row, column = np.asarray(cosines[:3]), np.asarray(cosines[3:])
    if not (abs(np.linalg.norm(row) - 1) < 0.01 and abs(np.linalg.norm(column) - 1) < 0.01):
        return None
    return row, column


def _plan_stack(slices: list[_Slice], volume_index: int | None, where: PathLike) -> _Stack:
    """Group slices by position, pick one volume, check it is a regular grid and build its affine."""
    first = slices[0]
    for item in slices[1:]:
        if item.shape != first.shape:
            raise ImageReadError(where, f"slices differ in size: {first.shape} vs {item.shape}")
        if not np.allclose(item.pixel_spacing, first.pixel_spacing, rtol=1e-3, atol=1e-4):
            raise ImageReadError(
                where, f"slices differ in pixel spacing: {first.pixel_spacing} vs {item.pixel_spacing}"
            )
        if (
            np.abs(item.row_cosine - first.row_cosine).max() > _ORIENTATION_TOL
            or np.abs(item.column_cosine - first.column_cosine).max() > _ORIENTATION_TOL
        ):
            raise ImageReadError(where, "slices have different orientations (Image Orientation (Patient))")
    normal = np.cross(first.row_cosine, first.column_cosine)
    distance = np.array([float(item.position @ normal) for item in slices])
    order = np.argsort(distance, kind="stable")
    # Cluster equal positions (repeats are time points / acquisitions of a 4D series).
    groups: list[list[int]] = [[int(order[0])]]
    for previous, current in zip(order[:-1], order[1:]):
        if distance[current] - distance[previous] > _POSITION_TOL_MM:
            groups.append([])
        groups[-1].append(int(current))
    counts = {len(group) for group in groups}
    if len(counts) != 1:
        raise ImageReadError(
            where,
            f"positions repeat unevenly ({min(counts)}..{max(counts)} slices per position): incomplete 4D series?",
        )
    n_volumes = counts.pop()
    if volume_index is None:
        if n_volumes > 1:
            raise MultiVolumeError(
                where,
                f"4D data: {n_volumes} volumes of {len(groups)} slices each; choose one with volume_index/frame 0..{n_volumes - 1}",
                n_volumes,
            )
        volume_index = 0
    if not 0 <= volume_index < n_volumes:
        raise ImageReadError(where, f"volume_index {volume_index} out of range: {n_volumes} volume(s)")
    chosen = [sorted(group, key=lambda k: (slices[k].order, slices[k].index))[volume_index] for group in groups]
    chosen_slices = [slices[k] for k in chosen]
    row_spacing, column_spacing = first.pixel_spacing
    if len(chosen_slices) > 1:
        steps = np.diff([float(item.position @ normal) for item in chosen_slices])
        median = float(np.median(steps))
        if np.abs(steps - median).max() > max(_SPACING_REL_TOL * median, 1e-3):
            raise ImageReadError(
                where,
                f"slice spacing is not uniform ({steps.min():.3f}..{steps.max():.3f} mm between positions): missing or overlapping slices?",
            )
        # Mean step vector, not the normal: keeps the geometry right for tilted (sheared) stacks.
        step = (chosen_slices[-1].position - chosen_slices[0].position) / (len(chosen_slices) - 1)
    else:
        step = normal * 1.0
    lps = np.eye(4)
    lps[:3, 0] = first.row_cosine * column_spacing
    lps[:3, 1] = first.column_cosine * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = chosen_slices[0].position
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS
    return _Stack(indices=[item.index for item in chosen_slices], affine_ijk=affine, n_volumes=n_volumes)


def _order_key(ds: Dataset) -> tuple[float, ...]:
    keys = ("TemporalPositionIdentifier", "TemporalPositionIndex", "AcquisitionNumber", "TriggerTime", "InstanceNumber")
    out = []
    for keyword in keys:
        value = _floats(_value(ds, keyword), 1)
        out.append(value[0] if value else 0.0)
    return tuple(out)


def _frame_slices(ds: Dataset, n_frames: int) -> list[_Slice] | None:
    """Per-frame geometry of a multi-frame file (enhanced functional groups or RT dose grid), if any."""
    shape = (_int(ds, "Rows") or 0, _int(ds, "Columns") or 0)
    offsets = _value(ds, "GridFrameOffsetVector")
    slices: list[_Slice] = []
    for frame in range(n_frames):
        plane = _functional_item(ds, "PlaneOrientationSequence", frame)
        orientation = _orientation(
            _value(plane, "ImageOrientationPatient") if plane else _value(ds, "ImageOrientationPatient")
        )
        spacing = _pixel_spacing(ds, frame)
        position_item = _functional_item(ds, "PlanePositionSequence", frame)
        position = _floats(_value(position_item, "ImagePositionPatient"), 3) if position_item else None
        if position is None and offsets is not None and orientation is not None:
            origin = _floats(_value(ds, "ImagePositionPatient"), 3)
            offset = _floats(offsets, n_frames)
            if origin is not None and offset is not None:
                normal = np.cross(*orientation)
                position = list(np.asarray(origin) + offset[frame] * normal)
        if orientation is None or spacing is None or position is None:
            return None
        content = _functional_item(ds, "FrameContentSequence", frame)
        temporal = _floats(_value(content, "TemporalPositionIndex"), 1) if content else None
        stack_position = _floats(_value(content, "InStackPositionNumber"), 1) if content else None
        slices.append(
            _Slice(
                index=frame,
                position=np.asarray(position, dtype=np.float64),
                row_cosine=orientation[0],
                column_cosine=orientation[1],
                pixel_spacing=(spacing[0], spacing[1]),
                shape=shape,
                order=((temporal or [0.0])[0], (stack_position or [0.0])[0], float(frame)),
            )
        )
    return slices


def _slice_of(ds: Dataset, index: int) -> _Slice | None:
    orientation = _orientation(_value(ds, "ImageOrientationPatient"))
    position = _floats(_value(ds, "ImagePositionPatient"), 3)
    spacing = _pixel_spacing(ds)
    if orientation is None or position is None or spacing is None:
        return None
    return _Slice(
        index=index,
        position=np.asarray(position, dtype=np.float64),
        row_cosine=orientation[0],
        column_cosine=orientation[1],
        pixel_spacing=(spacing[0], spacing[1]),
        shape=(_int(ds, "Rows") or 0, _int(ds, "Columns") or 0),
        order=_order_key(ds),
    )


def _slice_affine_2d(item: _Slice | None) -> np.ndarray | None:
    """(row, column, 0) -> RAS affine of a single 2D slice."""
    if item is None:
        return None
    lps = np.eye(4)
    lps[:3, 0] = item.column_cosine * item.pixel_spacing[0]
    lps[:3, 1] = item.row_cosine * item.pixel_spacing[1]
    lps[:3, 2] = np.cross(item.row_cosine, item.column_cosine)
    lps[:3, 3] = item.position
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _to_volume(stack_values: np.ndarray, stack: _Stack) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """(slices, rows, cols) in stack order -> the project's (D, H, W) canonical order."""
    data_ijk = np.transpose(stack_values, (2, 1, 0))  # (col, row, slice)
    array, affine, spacing = canonical_volume(data_ijk, stack.affine_ijk)
    return np.ascontiguousarray(array), affine, spacing


def _image_type(ds: Dataset) -> list[str]:
    value = _value(ds, "ImageType", [])
    return [str(v).strip().upper() for v in ([value] if isinstance(value, str) else value)]


def _is_mosaic(ds: Dataset) -> bool:
    """A Siemens mosaic: one 2D image that tiles the slices of a whole volume."""
    return "MOSAIC" in _image_type(ds)


def _mosaic_volume(ds: Dataset, path: PathLike) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Unpack a Siemens mosaic with nibabel's MosaicWrapper (CSA header) into the (D, H, W) order."""
    with warnings.catch_warnings():  # nibabel.nicom warns on import that it is "experimental"
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import csareader, dicomwrappers

    try:
        wrapper = dicomwrappers.wrapper_from_data(ds)
        if not getattr(wrapper, "is_mosaic", False):
            raise ImageReadError(path, "ImageType says MOSAIC but the Siemens CSA header does not describe one")
        data = np.asarray(wrapper.get_data(), dtype=np.float32)  # (rows, columns, slices), rescaled
        affine_lps = np.asarray(wrapper.affine, dtype=np.float64)  # nibabel's wrappers use DICOM LPS
    except ImageReadError:
        raise
    except (dicomwrappers.WrapperError, csareader.CSAError, *_DECODE_ERRORS) as exc:  # type: ignore[misc]  # mypy cannot type a starred exception tuple
        raise ImageReadError(path, f"Siemens mosaic could not be unpacked ({type(exc).__name__}: {exc})") from exc
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps
    array, affine, spacing = canonical_volume(data, affine)
    return np.ascontiguousarray(array), affine, spacing


# --------------------------------------------------------------------------- public readers


def _frame_count(ds: Dataset) -> int:
    frames = _int(ds, "NumberOfFrames")
    return frames if frames and frames > 0 else 1


@phi_safe
def read_dicom(
    path: PathLike,
    *,
    window: WindowSpec = "auto",
    frame: int | None = None,
    volume_index: int | None = None,
    salt: str | None = None,
) -> MedicalImage:
    """Read one DICOM file (with or without preamble/extension).

    Single-frame files give a 2D (H, W) image in stored row/column order. Multi-frame files give a
    (D, H, W) volume in the canonical order (see :mod:`medclip.io.volume`) when frames carry
    geometry (enhanced CT/MR, RT dose), else their frames stacked in file order (cine, secondary
    capture; ``affine`` None). ``frame=k`` returns that one frame as 2D. ``volume_index`` picks one
    volume of a 4D multi-frame file (frames repeating positions, e.g. temporal positions).
    ``window``: "auto" (VOI LUT, else the file's first window, else a robust percentile window), a
    preset name, (center, width), or None (modality values, e.g. HU). Raises
    :class:`ImageReadError` for anything unreadable: not DICOM, no pixel data, truncated,
    undecodable, constant or non-finite pixels, 4D without ``volume_index``.
    """
    check_window(window)
    ds = _read_dataset(path)
    try:
        return _read_dataset_pixels(ds, path, window=window, frame=frame, volume_index=volume_index, salt=salt)
    except ImageReadError:
        raise
    except _DECODE_ERRORS as exc:
        raise ImageReadError(path, _exc_text(exc)) from exc


def _read_dataset_pixels(
    ds: Dataset,
    path: PathLike,
    *,
    window: WindowSpec,
    frame: int | None,
    volume_index: int | None,
    salt: str | None,
) -> MedicalImage:
    _check_pixel_module(ds, path)
    metadata = safe_metadata(ds, salt)
    n_frames = _frame_count(ds)
    if frame is not None:
        if not 0 <= int(frame) < n_frames:
            raise ImageReadError(path, f"frame {frame} out of range: the file has {n_frames} frame(s)")
        frame = int(frame)
        metadata["frame"] = frame
        metadata["image_id"] = hash_identifier(f"{_value(ds, 'SOPInstanceUID', '')}#frame{frame}", salt)

    affine: np.ndarray | None  # None: frames without patient geometry
    if n_frames == 1 and frame is None and _is_mosaic(ds):
        values, affine, spacing = _mosaic_volume(ds, path)
        _check_content(values, path)
        array, used = _window_modality(values, ds, window, path, file_window=_file_window(ds))
        metadata.update(used)
        metadata.update({"frames": int(array.shape[0]), "mosaic": True})
        return MedicalImage(array=array, spacing=spacing, affine=affine, metadata=metadata, source=str(path))

    if n_frames == 1 or frame is not None:
        array, used = _pixels(ds, path, frame, window, n_frames)
        pixel_spacing = _pixel_spacing(ds, frame or 0)
        frame_slices = _frame_slices(ds, n_frames) if n_frames > 1 else None
        geometry = frame_slices[frame or 0] if frame_slices else _slice_of(ds, 0)
        metadata.update(used)
        return MedicalImage(
            array=array,
            spacing=tuple(pixel_spacing) if pixel_spacing else (1.0, 1.0),
            affine=_slice_affine_2d(geometry),
            metadata=metadata,
            source=str(path),
            voi_lut=_kept_voi_lut(ds, window),
        )

    slices = _frame_slices(ds, n_frames)
    values, used = _pixels(ds, path, None, window, n_frames)
    if slices is not None:
        stack = _plan_stack(slices, volume_index, path)
        array, affine, spacing = _to_volume(values[stack.indices], stack)
        metadata["volumes"] = stack.n_volumes
        metadata["volume_index"] = volume_index or 0
    else:
        # Frames without patient geometry (cine, secondary capture): keep file order.
        pixel = _pixel_spacing(ds) or [1.0, 1.0]
        between = (_floats(_value(ds, "SpacingBetweenSlices"), 1) or _floats(_value(ds, "SliceThickness"), 1) or [1.0])[
            0
        ]
        array, affine, spacing = values, None, (abs(between) or 1.0, pixel[0], pixel[1])
    metadata.update(used)
    return MedicalImage(array=array, spacing=spacing, affine=affine, metadata=metadata, source=str(path))


def _collect_files(paths: PathLike | Iterable[PathLike]) -> tuple[list[Path], str]:
    """Files of a folder (recursively, DICOM only) or an explicit list; and a name for errors."""
    if isinstance(paths, (str, os.PathLike)):
        root = Path(paths)
        if not root.is_dir():
            raise ImageReadError(root, "not a folder of DICOM files")
        files = sorted(p for p in root.rglob("*") if p.is_file() and is_dicom_file(p))
        if not files:
            raise ImageReadError(root, "folder holds no DICOM files")
        return files, str(root)
    files = [Path(p) for p in paths]
    if not files:
        raise ImageReadError("<empty list>", "no files given")
    where = str(files[0].parent) if len({f.parent for f in files}) == 1 else f"{files[0]} (+{len(files) - 1} files)"
    return files, where


#: What metadata says about a series assembled without a Series Instance UID (anonymised exports).
INFERRED_GROUPING = (
    "inferred: blank Series Instance UID; slices grouped by frame of reference, series number, "
    "orientation, pixel spacing, size and position continuity"
)


def slice_position(ds: Dataset) -> float | None:
    """A slice's position (mm) along its normal, or None without Image Position/Orientation (Patient)."""
    orientation = _orientation(_value(ds, "ImageOrientationPatient"))
    position = _floats(_value(ds, "ImagePositionPatient"), 3)
    if orientation is None or position is None:
        return None
    return float(np.asarray(position) @ np.cross(*orientation))


def inferred_series_key(ds: Dataset, file: PathLike, salt: str | None = None) -> str | None:
    """Salted key that slices of one anonymised series share when their Series Instance UID is blank.

    Built from the frame of reference, study UID (if any), series number, modality, orientation
    (3 decimals), pixel spacing, rows x columns and the folder. None for a file that is not a
    positioned slice (no orientation, position or spacing): it stays a series of its own.
    Position continuity is checked afterwards by :func:`split_position_runs`.
    """
    orientation = _orientation(_value(ds, "ImageOrientationPatient"))
    spacing = _pixel_spacing(ds)
    if orientation is None or spacing is None or _floats(_value(ds, "ImagePositionPatient"), 3) is None:
        return None
    cosines = ",".join(f"{round(float(v), 3) + 0.0:.3f}" for v in np.concatenate(orientation))
    parts = [
        "inferred-series",
        str(_value(ds, "FrameOfReferenceUID", "")),
        str(_value(ds, "StudyInstanceUID", "")),
        _text(ds, "SeriesNumber"),
        _text(ds, "Modality"),
        cosines,
        ",".join(f"{v:.4f}" for v in spacing),
        f"{_int(ds, 'Rows')}x{_int(ds, 'Columns')}",
        str(Path(file).resolve().parent),
    ]
    return hash_identifier("|".join(parts), salt)


def split_position_runs(positions: Sequence[float]) -> list[list[int]]:
    """Indices of slices in runs of contiguous, evenly spaced positions (each run sorted along the normal).

    Equal positions (time points, echoes) stay together; a gap of more than 1.5 times the median
    step between distinct positions starts a new run (a missing block or another stack).
    """
    if not len(positions):
        return []
    order = sorted(range(len(positions)), key=lambda i: positions[i])
    clusters: list[list[int]] = [[order[0]]]
    for previous, current in zip(order[:-1], order[1:]):
        if positions[current] - positions[previous] > _POSITION_TOL_MM:
            clusters.append([])
        clusters[-1].append(current)
    if len(clusters) <= 2:
        return [[i for cluster in clusters for i in cluster]]
    centres = [float(np.mean([positions[i] for i in cluster])) for cluster in clusters]
    steps = np.diff(centres)
    limit = 1.5 * float(np.median(steps)) + _POSITION_TOL_MM
    runs: list[list[int]] = [list(clusters[0])]
    for step, cluster in zip(steps, clusters[1:]):
        if step > limit:
            runs.append([])
        runs[-1].extend(cluster)
    return runs


def inferred_run_ids(key: str, positions: Sequence[float], salt: str | None = None) -> list[tuple[str, list[int]]]:
    """(series id, indices) per position run of one inferred series: the key itself when it is one run."""
    runs = split_position_runs(positions)
    if len(runs) == 1:
        return [(key, runs[0])]
    return [(hash_identifier(f"{key}#run{k}", salt), run) for k, run in enumerate(runs)]


def _group_series(
    headers: list[tuple[Path, Dataset]], salt: str | None
) -> tuple[dict[str, list[tuple[Path, Dataset]]], set[str]]:
    """Headers by hashed SeriesInstanceUID; blank UIDs grouped by :func:`inferred_series_key` and position runs.

    Returns the groups and the ids of the inferred ones. A file that is neither is a series of its own.
    """
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    pending: dict[str, list[tuple[Path, Dataset]]] = {}
    for file, ds in headers:
        uid = _value(ds, "SeriesInstanceUID", "")
        if uid:
            groups.setdefault(hash_identifier(uid, salt), []).append((file, ds))
            continue
        key = inferred_series_key(ds, file, salt)
        if key is None:
            groups.setdefault(hash_identifier(f"file:{file.resolve()}", salt), []).append((file, ds))
        else:
            pending.setdefault(key, []).append((file, ds))
    inferred: set[str] = set()
    for key, members in pending.items():
        positions = [slice_position(ds) or 0.0 for _, ds in members]
        for run_id, indices in inferred_run_ids(key, positions, salt):
            groups[run_id] = [members[i] for i in indices]
            inferred.add(run_id)
    return groups, inferred


@phi_safe
def find_dicom_series(paths: PathLike | Iterable[PathLike], salt: str | None = None) -> dict[str, list[Path]]:
    """Group DICOM files (a folder, searched recursively, or a list) by series: hashed series_id -> files.

    Reads headers only. Files that are not DICOM or have no pixel data are left out.
    """
    files, _ = _collect_files(paths)
    headers: list[tuple[Path, Dataset]] = []
    for file in files:
        try:
            ds = _read_dataset(file, stop_before_pixels=True)
        except ImageReadError:
            continue
        if not _int(ds, "Rows"):  # header-only read: no Rows means no image
            continue
        headers.append((file, ds))
    groups, _ = _group_series(headers, salt)
    return {key: [file for file, _ in members] for key, members in groups.items()}


@phi_safe
def read_dicom_series(
    paths: PathLike | Iterable[PathLike],
    *,
    window: WindowSpec = "auto",
    volume_index: int | None = None,
    series_id: str | None = None,
    salt: str | None = None,
) -> MedicalImage:
    """Assemble single-slice DICOM files (a folder or a list) into one (D, H, W) volume.

    Slices are grouped by SeriesInstanceUID (``series_id``, the salted hash, picks one when
    several series are present), sorted by position along the slice normal; slice spacing comes
    from the positions. When positions repeat (4D: fMRI, perfusion, multi-phase), the series holds
    several volumes; repeats are ordered by temporal position / acquisition number / trigger time /
    instance number and ``volume_index`` picks one (required then). DICOM files that are not
    images (DICOMDIR, reports) and localizer images inside the series are skipped; a one-file
    series is read with :func:`read_dicom`.
    Returned in the canonical (D, H, W) order with a RAS affine (:mod:`medclip.io.volume`), so it
    agrees with :func:`medclip.io.nifti.read_nifti` on the same data. "auto" window: the slices'
    common VOI LUT/window if they share one, else a percentile window over the volume. Raises
    :class:`ImageReadError` when the slices do not form a regular grid (mixed orientation or size,
    missing or uneven slices, several series without ``series_id``).
    """
    check_window(window)
    files, where = _collect_files(paths)
    headers: list[tuple[Path, Dataset]] = []
    for file in files:
        ds = _read_dataset(file, stop_before_pixels=True)
        if _int(ds, "Rows"):  # DICOMDIRs, reports, presentation states are not slices
            headers.append((file, ds))
    if not headers:
        raise ImageReadError(where, f"no DICOM image files among {len(files)} DICOM file(s)")
    by_series, inferred = _group_series(headers, salt)
    if series_id is not None:
        if series_id not in by_series:
            raise ImageReadError(where, f"series_id {series_id!r} not found among {len(by_series)} series")
        chosen = series_id
    elif len(by_series) > 1:
        raise ImageReadError(
            where, f"{len(by_series)} series found ({sorted(by_series)}); pass series_id to choose one"
        )
    else:
        chosen = next(iter(by_series))
    members = by_series[chosen]
    # Localizer (scout) images sometimes share the series of the stack they planned: not slices.
    localizers = [item for item in members if "LOCALIZER" in _image_type(item[1])]
    skipped_localizers = 0
    if localizers and len(localizers) < len(members):
        members = [item for item in members if "LOCALIZER" not in _image_type(item[1])]
        skipped_localizers = len(localizers)

    if len(members) == 1:  # a one-file "series": a 2D image, a multi-frame file or a mosaic
        return read_dicom(members[0][0], window=window, frame=None, volume_index=volume_index, salt=salt)
    if all(_is_mosaic(ds) for _, ds in members):
        return _read_mosaic_series(members, where, window=window, volume_index=volume_index, salt=salt)
    slices: list[_Slice] = []
    for index, (file, ds) in enumerate(members):
        if _frame_count(ds) > 1:
            raise ImageReadError(file, "multi-frame file inside a series; read it with read_dicom")
        item = _slice_of(ds, index)
        if item is None:
            raise ImageReadError(file, "slice lacks Image Position/Orientation (Patient) or Pixel Spacing")
        slices.append(item)
    stack = _plan_stack(slices, volume_index, where)

    values = []
    datasets = []
    for index in stack.indices:
        file = members[index][0]
        ds = _read_dataset(file)
        _check_pixel_module(ds, file)
        stored, colour = _to_gray(_decode(ds, file, None), ds)
        if colour or stored.ndim != 2:
            raise ImageReadError(file, "series slices must be single-frame grayscale")
        values.append(_modality_values(stored, ds, [0])[None])
        datasets.append(ds)
    volume = np.concatenate(values, axis=0)
    _check_content(volume, where)
    array, affine, spacing = _to_volume(volume, stack)

    # One window for the volume: the slices' window / VOI LUT when they all share it, else percentiles.
    reference = datasets[len(datasets) // 2]
    windows = {(_file_window(ds), _has_voi_lut(ds)) for ds in datasets}
    shared_window = len(windows) == 1
    array, used = _window_modality(
        array,
        reference,
        window,
        where,
        file_window=_file_window(reference) if shared_window else None,
        use_voi_lut=shared_window,
    )

    metadata = safe_metadata(reference, salt)
    series_uid = _value(reference, "SeriesInstanceUID", "")
    metadata.update(used)
    for ds in datasets:  # any slice whose Modality LUT had to be ignored
        metadata.update(_modality_lut_note(ds))
    metadata.update(
        {
            "frames": len(stack.indices),
            "slices": len(stack.indices),
            "volumes": stack.n_volumes,
            "volume_index": volume_index if volume_index is not None else 0,
            "image_id": hash_identifier(f"{series_uid}#volume{volume_index or 0}", salt),
            "files": len(members),
            "skipped_localizers": skipped_localizers,
        }
    )
    if chosen in inferred:  # no Series Instance UID to hash: the inferred group's own id
        metadata.update(
            {
                "series_id": chosen,
                "image_id": hash_identifier(f"{chosen}#volume{volume_index or 0}", salt),
                "series_grouping": INFERRED_GROUPING,
            }
        )
    if not shared_window:
        metadata.update(
            {"file_window_center": None, "file_window_width": None, "voi_lut_function": None, "has_voi_lut": False}
        )
    return MedicalImage(array=array, spacing=spacing, affine=affine, metadata=metadata, source=where)


def _read_mosaic_series(
    members: list[tuple[Path, Dataset]],
    where: str,
    *,
    window: WindowSpec,
    volume_index: int | None,
    salt: str | None,
) -> MedicalImage:
    """Siemens mosaics: every file is one whole volume (a time point); ``volume_index`` picks one."""
    ordered = sorted(members, key=lambda item: (_order_key(item[1]), str(item[0])))
    n_volumes = len(ordered)
    if volume_index is None:
        raise MultiVolumeError(
            where,
            f"4D data: {n_volumes} mosaic volumes; choose one with volume_index/frame 0..{n_volumes - 1}",
            n_volumes,
        )
    if not 0 <= volume_index < n_volumes:
        raise ImageReadError(where, f"volume_index {volume_index} out of range: {n_volumes} volume(s)")
    image = read_dicom(ordered[volume_index][0], window=window, salt=salt)
    series_uid = _value(ordered[volume_index][1], "SeriesInstanceUID", "")
    image.metadata.update(
        {
            "volumes": n_volumes,
            "volume_index": volume_index,
            "files": n_volumes,
            "image_id": hash_identifier(f"{series_uid}#volume{volume_index}", salt),
        }
    )
    image.source = where
    return image
