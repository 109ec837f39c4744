"""Where slices lie in patient space: stacking slices or frames into a regular grid with its affine.

Slices (files of a series, or frames of an enhanced multi-frame / RT dose file) are checked for one size,
pixel spacing and orientation, grouped by position along the normal (repeats are the volumes of 4D data),
checked for even spacing and given a voxel -> RAS affine; :func:`_to_volume` puts them in the canonical
(D, H, W) order of :mod:`medclip.io.volume`. Siemens mosaics (one image tiling a whole volume) are
unpacked with nibabel's CSA-header reader.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from medclip.io.dicom_header import _DECODE_ERRORS, _floats, _functional_item, _int, _pixel_spacing, _value
from medclip.io.image import ImageReadError, MultiVolumeError
from medclip.io.volume import canonical_volume

PathLike = str | os.PathLike[str]

# Relative tolerances for assembling slices into a volume.

_POSITION_TOL_MM = 0.05  # slices closer than this along the normal share a position
_SPACING_REL_TOL = 0.02  # allowed relative deviation of slice gaps from their median
_ORIENTATION_TOL = 1e-3  # max abs difference between direction cosines


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
