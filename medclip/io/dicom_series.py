"""Series assembly: single-slice DICOM files (a folder or a list) into one volume.

Files are grouped by Series Instance UID; slices whose UID an anonymiser blanked are grouped by frame of
reference, series number, orientation, spacing, size and position continuity (:data:`INFERRED_GROUPING`,
the same keys the indexer uses: :func:`inferred_series_key`, :func:`inferred_run_ids`). Localizers are
skipped, a one-file series is read by :func:`medclip.io.dicom_read.read_dicom`, a series of Siemens
mosaics holds one volume per file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from medclip.deid import hash_identifier
from medclip.io.dicom_codecs import _decode
from medclip.io.dicom_geometry import (
    _POSITION_TOL_MM,
    _image_type,
    _is_mosaic,
    _order_key,
    _orientation,
    _plan_stack,
    _Slice,
    _slice_of,
    _to_volume,
)
from medclip.io.dicom_header import (
    _file_window,
    _floats,
    _frame_count,
    _has_voi_lut,
    _int,
    _pixel_spacing,
    _text,
    _value,
    safe_metadata,
)
from medclip.io.dicom_limits import _check_content, _check_pixel_module
from medclip.io.dicom_open import _read_dataset, is_dicom_file
from medclip.io.dicom_pixels import _modality_lut_note, _modality_values, _to_gray, _window_modality
from medclip.io.dicom_read import read_dicom
from medclip.io.guard import phi_safe
from medclip.io.image import ImageReadError, MedicalImage, MultiVolumeError
from medclip.io.windowing import WindowSpec, check_window

__all__ = [
    "INFERRED_GROUPING",
    "find_dicom_series",
    "inferred_run_ids",
    "inferred_series_key",
    "read_dicom_series",
    "slice_position",
    "split_position_runs",
]

PathLike = str | os.PathLike[str]


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
