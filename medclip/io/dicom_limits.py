"""Hostile-input limits, checked on the header before any pixel is decoded.

A file is refused (:class:`ImageReadError`) when its header is not an image's (no pixel data, no Rows /
Columns, a Segmentation), when it would decode to more than :data:`MAX_FRAME_PIXELS` per frame or
:data:`MAX_DECODED_SAMPLES` in all, or when an encapsulated JPEG / JPEG-LS / JPEG 2000 frame's own header
(SOF marker, SIZ segment) disagrees with Rows x Columns: a decoder allocates what the frame says. A
``.dcm.gz`` may inflate to at most :data:`MAX_GZIP_DICOM_BYTES` (:func:`medclip.io.dicom_open.dicom_source`).
After decoding, :func:`_check_content` refuses non-finite or constant pixel data.
"""

from __future__ import annotations

import os
import struct

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragmented_frames

from medclip.io.dicom_codecs import _J2K_SYNTAXES, _JPEG_SYNTAXES
from medclip.io.dicom_header import _DECODE_ERRORS, _exc_text, _frame_count, _int, _text, _value
from medclip.io.image import ImageReadError

__all__ = ["MAX_DECODED_SAMPLES", "MAX_FRAME_PIXELS", "MAX_GZIP_DICOM_BYTES"]

PathLike = str | os.PathLike[str]

#: Most bytes a gzip-compressed DICOM file (``.dcm.gz``) may inflate to; a gzip bomb is refused, not inflated.
MAX_GZIP_DICOM_BYTES = 2**30

#: Most samples (rows x columns x frames x samples per pixel) one file may decode to: 2**30 (4 GiB as float32).
MAX_DECODED_SAMPLES = 2**30
#: Most pixels one frame may hold (a 16384 x 16384 plane).
MAX_FRAME_PIXELS = 2**28

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# JPEG start-of-frame markers (baseline, extended, progressive, lossless, arithmetic) and JPEG-LS SOF55.
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


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


def _check_content(values: np.ndarray, path: PathLike) -> None:
    """No NaN/inf and not constant: such pixel data cannot be shown and would poison training."""
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise ImageReadError(path, "pixel data contain NaN or infinite values")
    low, high = values.min(), values.max()
    if low == high:
        raise ImageReadError(path, f"constant image: every pixel is {float(low):g}")
