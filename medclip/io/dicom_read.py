"""Reading one DICOM file (2D, multi-frame or a Siemens mosaic) into a :class:`MedicalImage`.

Open (:mod:`~medclip.io.dicom_open`) -> header checks and limits (:mod:`~medclip.io.dicom_limits`) ->
decode (:mod:`~medclip.io.dicom_codecs`) -> modality and display values (:mod:`~medclip.io.dicom_pixels`)
-> geometry of multi-frame files (:mod:`~medclip.io.dicom_geometry`).
"""

from __future__ import annotations

import os

import numpy as np
from pydicom.dataset import Dataset

from medclip.deid import hash_identifier
from medclip.io.dicom_geometry import (
    _frame_slices,
    _is_mosaic,
    _mosaic_volume,
    _plan_stack,
    _slice_affine_2d,
    _slice_of,
    _to_volume,
)
from medclip.io.dicom_header import (
    _DECODE_ERRORS,
    _exc_text,
    _file_window,
    _floats,
    _frame_count,
    _pixel_spacing,
    _value,
    safe_metadata,
)
from medclip.io.dicom_limits import _check_content, _check_pixel_module
from medclip.io.dicom_open import _read_dataset
from medclip.io.dicom_pixels import _kept_voi_lut, _pixels, _window_modality
from medclip.io.guard import phi_safe
from medclip.io.image import ImageReadError, MedicalImage
from medclip.io.windowing import WindowSpec, check_window

__all__ = ["read_dicom"]

PathLike = str | os.PathLike[str]


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
