"""Stored values to what the model sees (PS3.4 N.2): colour -> luminance, modality LUT, VOI LUT / window.

Modality LUT Sequence via ``pydicom.pixels.apply_modality_lut`` (an unusable one is ignored and noted in
metadata), else Rescale Slope/Intercept, per frame for enhanced multi-frame -> VOI LUT Sequence, else
Window Center/Width (first of several) -> MONOCHROME1 inversion. Colour images (RGB, YBR_*, PALETTE
COLOR) become luminance (ITU-R BT.601).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi

from medclip.io.dicom_codecs import _YBR_FULL, _decode
from medclip.io.dicom_header import (
    _DECODE_ERRORS,
    _colour_display_range,
    _file_window,
    _floats,
    _functional_item,
    _has_voi_lut,
    _int,
    _text,
    _value,
)
from medclip.io.dicom_limits import _check_content
from medclip.io.image import ImageReadError
from medclip.io.windowing import WindowSpec, window_image

__all__ = ["UNUSABLE_MODALITY_LUT", "VoiLut"]

PathLike = str | os.PathLike[str]

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as Y of YBR_FULL


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
        mapped: np.ndarray = self.table[index]
        return mapped


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
