"""Preprocessed image cache as WebDataset tar shards.

Why WebDataset: plain POSIX tar files that any node can stream sequentially (local disk, NFS, object
stores via ``pipe:``), readable by the ``webdataset`` package (a test reads our shards with it), LitData-free
tooling, or ``tar`` itself; no database, no random access needed. Each image is decoded, windowed and resized
exactly once.

Why medclip reads them itself rather than through ``webdataset.WebDataset``: training needs epochs of equal
length on every rank and worker and an exact mid-epoch resume (``CacheDataset.skip_batches``), which the
package's pipeline (shard shuffling, resampling, ``with_epoch``) does not give; our reader is a short loop
over ``tarfile``. The package is therefore a test dependency only.

The cache folder may be an fsspec URL (``s3://bucket/cache``, ``gs://...``; :mod:`medclip.data.storage`):
shards are staged locally and uploaded when complete, and training nodes stream them from the bucket
(``data.cache_dir: s3://bucket/cache``). Manifests can live there too.

Layout::

    CACHE_DIR/cache.json                   config, shard list with counts, skipped images
    CACHE_DIR/<split>/shard-000000.tar     samples: <key>.image.npy, <key>.meta.json

Shards are written to a temporary name and renamed when complete, and ``cache.json`` is updated after
every shard, so an interrupted run resumes at the first missing shard. In a bucket the index of the shards
uploaded so far is ``cache.partial.json`` instead, and ``cache.json`` is uploaded last, once every shard is
there (training nodes elsewhere never see an unfinished cache); a rerun resumes from the partial index. An
upload's transient faults (HTTP 500/503, a dropped connection) are retried with backoff
(:func:`medclip.data.storage.retry_call`); one that persists, or a refusal (403, no such bucket), stops the
run with one :class:`~medclip.data.storage.StorageError` naming the object, and the same command run again
resumes.

Array jobs (``--num-shards N --shard-index i``, or a SLURM array's variables): task i writes the tar
shards k with k % N == i and its own ``cache.part-0000i-of-0000N.json``; when the last part lands, its
task merges them into ``cache.json`` (``medclip cache --merge`` does the same by hand). Shard names and
contents do not depend on N, so the merged cache equals a single-process one.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import tarfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

import medclip.io  # noqa: F401  (imported before the worker pool forks, so workers start warm)
from medclip.data import storage
from medclip.data.manifest import LABEL_PREFIX, label_columns, read_manifest
from medclip.data.shards import Shard, missing_parts, parse_part_tag
from medclip.fsutil import DiskFullError, disk_full_error, is_disk_full
from medclip.knowledge.attributes import ATTRIBUTE_COLUMNS
from medclip.model.preprocess import PreprocessConfig, preprocess

CACHE_VERSION = 1
#: Manifest columns copied into each sample's meta.json (never paths: they can carry identifiers), with the
#: image-attribute columns (``medclip.knowledge.attributes``) that training writes into text.
_BASE_META_COLUMNS = (
    "image_id",
    "kind",
    "patient_id",
    "study_id",
    "series_id",
    "modality",
    "view_position",
    "body_part",
    "sex",
    "age_group",
    "report_indication",
    "report_findings",
    "report_impression",
    "report_text",
    "split",
)
META_COLUMNS = _BASE_META_COLUMNS + tuple(c for c in ATTRIBUTE_COLUMNS if c not in _BASE_META_COLUMNS)


class CacheError(ValueError):
    """A cache folder that is missing, inconsistent or was built with other settings."""


@dataclass
class CacheConfig:
    """How images were preprocessed; a cache is only resumed or reused with the same config."""

    image_size: int = 224
    window: str = "auto"
    volume_shape: tuple[int, int, int] = (64, 128, 128)
    volume_spacing: tuple[float, float, float] = (3.0, 1.5, 1.5)
    shard_size: int = 512
    #: decode JPEG / JPEG 2000 DICOM at the smallest power-of-two reduction still >= 2 x image_size (DCT
    #: scaling, resolution levels) instead of full size; False: the full decode (slower, same within ~1 grey level)
    reduced_decode: bool = True
    #: 4D series (fMRI, dynamic / multi-phase CT and MR): one sample per volume (key ``<image_id>_v000`` ...,
    #: meta ``volume_index`` / ``volumes``) instead of the first volume only
    all_volumes: bool = False

    def to_json(self) -> dict:
        d = asdict(self)
        d["volume_shape"] = list(self.volume_shape)
        d["volume_spacing"] = list(self.volume_spacing)
        return d

    def preprocess_config(self) -> PreprocessConfig:
        """What a model trained on this cache sees (``medclip fit`` saves it with the model)."""
        return PreprocessConfig.from_dict(self.to_json(), strict=False)


def read_volume_row(row: dict, window: Any, volume_index: int | None) -> Any:
    """The windowed volume of a manifest row (its DICOM files, a series folder, a multi-frame DICOM file or a
    NIfTI file); ``volume_index`` picks one volume of 4D data, None raises :class:`medclip.io.MultiVolumeError`
    (which says how many there are) for 4D data and reads 3D data once."""
    from medclip.io import load_image, read_dicom, read_dicom_series
    from medclip.io.loader import detect_format

    files = row.get("files")
    if files is not None and len(files):
        return read_dicom_series(list(files), window=window, volume_index=volume_index)
    path = row["path"]
    if detect_format(path) == "dicom":  # one multi-frame file: frame= would pick a 2D frame, not a volume
        return read_dicom(path, window=window, volume_index=volume_index)
    return load_image(path, window=window, frame=volume_index)  # NIfTI / a series folder: frame = volume


def preprocess_volumes(row: dict, config: CacheConfig) -> list[tuple[int | None, np.ndarray]]:
    """Every volume of a volume row as ``(volume_index, array)``: one ``(None, array)`` for 3D data (read
    once), ``(k, array)`` for each volume k of 4D data (``CacheConfig.all_volumes``)."""
    from medclip.io import MultiVolumeError

    pre = config.preprocess_config()
    try:
        return [(None, preprocess(read_volume_row(row, pre.window_spec, None), pre, kind="volume"))]
    except MultiVolumeError as exc:
        n_volumes = exc.n_volumes
    return [(k, preprocess(read_volume_row(row, pre.window_spec, k), pre, kind="volume")) for k in range(n_volumes)]


def preprocess_row(row: dict, config: CacheConfig | PreprocessConfig) -> np.ndarray:
    """Read one manifest row with the config's window and turn it into the array the model sees
    (:func:`medclip.model.preprocess`): what the cache stores, the manifest datasets and eval yield."""
    from medclip.io import load_image

    pre = config.preprocess_config() if isinstance(config, CacheConfig) else config
    reduced = config.reduced_decode if isinstance(config, CacheConfig) else CacheConfig.reduced_decode
    window = pre.window_spec
    if row.get("kind") == "volume":
        # a 4D acquisition (fMRI, dynamic series) is represented by one volume (pre.volume_index, the first);
        # CacheConfig.all_volumes caches them all (preprocess_volumes)
        return preprocess(read_volume_row(row, window, pre.volume_index), pre, kind="volume")
    image = reduced_decode_image(row["path"], window, pre.image_size) if reduced else None
    if image is None:
        image = load_image(row["path"], window=window)
    return preprocess(image, pre)  # a multi-frame 2D acquisition: one frame (pre.frame, the middle) represents it


#: JPEG Baseline (8-bit; Pillow/libjpeg-turbo scale the DCT by 1/2, 1/4, 1/8 while decoding)
_JPEG_BASELINE = frozenset({"1.2.840.10008.1.2.4.50"})
#: JPEG Extended (process 2 & 4): scaled like baseline when its samples are 8-bit
_JPEG_EXTENDED = frozenset({"1.2.840.10008.1.2.4.51"})
#: JPEG 2000 (lossless and lossy): decoded at a lower resolution level (OpenJPEG's reduce)
_J2K = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"})
_NOT_DICOM_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".nii", ".nii.gz", ".gz")


def _reduction(rows: int, columns: int, size: int) -> int:
    """The largest of 8, 4, 2 that leaves the long side >= 2 x ``size`` (1: no reduction helps).

    The margin of 2 keeps the final resize an antialiased shrink: decoded right at ``size`` the codec's
    own downsampling (8x8 block means, the wavelet low band) would show, by up to 2-10 grey levels."""
    for factor in (8, 4, 2):
        if max(rows, columns) // factor >= 2 * size:
            return factor
    return 1


@medclip.io.phi_safe
def reduced_decode_image(path: str | Path, window: Any, size: int) -> Any:
    """A single-frame grayscale JPEG / JPEG 2000 DICOM decoded at reduced resolution, or None.

    The codec does the reduction (JPEG: Pillow's draft mode, libjpeg's DCT scaling by 1/2, 1/4 or 1/8;
    JPEG 2000: a lower resolution level), by the largest factor that keeps the long side at least
    2 x ``size``, so the cache's resize still shrinks (a 2500-pixel radiograph for 224: 1/4). The header checks of the full path run first (the
    same files are refused for the same reasons); modality LUT, VOI LUT / window and MONOCHROME1 are
    those of :func:`medclip.io.load_image`. Anything else (colour, multi-frame, 12/16-bit JPEG, other
    syntaxes, small images) returns None: the caller decodes at full size. The cached image then
    equals the full decode's within about one grey level (``tests/test_cache_reduced_decode.py``).
    """
    from PIL import Image
    from pydicom.encaps import generate_frames

    from medclip.io import dicom_geometry, dicom_header, dicom_limits, dicom_open, dicom_pixels
    from medclip.io.image import MedicalImage

    if str(path).lower().endswith(_NOT_DICOM_SUFFIXES) or not dicom_open.is_dicom_file(path):
        return None
    ds = dicom_open._read_dataset(path)
    meta = getattr(ds, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "") if meta is not None else ""
    bits = int(ds.get("BitsAllocated", 0) or 0)
    jpeg = syntax in _JPEG_BASELINE or (syntax in _JPEG_EXTENDED and bits == 8)
    if (
        not (jpeg or syntax in _J2K)
        or dicom_header._frame_count(ds) != 1
        or int(ds.get("SamplesPerPixel", 1) or 1) != 1
    ):
        return None
    if str(ds.get("PhotometricInterpretation", "")) not in ("MONOCHROME1", "MONOCHROME2"):
        return None
    if int(ds.get("PixelRepresentation", 0) or 0) != 0 or "PixelData" not in ds:
        return None
    dicom_limits._check_pixel_module(ds, path)  # size caps and frame-header checks, as before a full decode
    rows, columns = int(ds.Rows), int(ds.Columns)
    factor = _reduction(rows, columns, size)
    if factor == 1 or dicom_geometry._is_mosaic(ds):
        return None
    want = (-(-rows // factor), -(-columns // factor))
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        with Image.open(io.BytesIO(frame)) as im:
            if jpeg:
                if im.mode != "L":
                    return None
                im.draft("L", (want[1], want[0]))
            else:
                im.reduce = {8: 3, 4: 2, 2: 1}[factor]  # type: ignore[method-assign,assignment]  # Jpeg2KImageFile: levels to skip
            im.load()
            stored = np.asarray(im)
    except Exception:  # noqa: BLE001  (Pillow cannot: the full decoder decides, with its own error)
        return None
    if stored.ndim != 2 or abs(stored.shape[0] - want[0]) > 1 or abs(stored.shape[1] - want[1]) > 1:
        return None
    dicom_limits._check_content(stored, path)
    values = dicom_pixels._modality_values(stored, ds, [0])
    array, used = dicom_pixels._window_modality(values, ds, window, path, file_window=dicom_header._file_window(ds, 0))
    metadata = dicom_header.safe_metadata(ds)
    metadata.update(used)
    metadata["decoded_at"] = f"1/{factor}"
    spacing = dicom_header._pixel_spacing(ds, 0) or [1.0, 1.0]
    return MedicalImage(
        array=array,
        spacing=(spacing[0] * factor, spacing[1] * factor),
        affine=None,
        metadata=metadata,
        source=str(path),
    )


def _sample_meta(row: dict, labels: list[str]) -> dict:
    meta = {k: (row.get(k) if not _isnan(row.get(k)) else None) for k in META_COLUMNS if k in row}
    meta["labels"] = {c[len(LABEL_PREFIX) :]: (None if _isnan(row.get(c)) else float(row[c])) for c in labels}
    return meta


def _isnan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _encode_npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _work(args: tuple[dict, CacheConfig]) -> list[tuple[str, bytes | None, str, dict]]:
    """The samples of one row: ``(key, npy bytes or None, reason skipped, extra meta)``; several for a 4D
    series with ``all_volumes`` (keys ``<image_id>_vNNN``)."""
    row, config = args
    try:
        if config.all_volumes and row.get("kind") == "volume":
            volumes = preprocess_volumes(row, config)
            if volumes[0][0] is not None:  # 4D: one sample per volume
                return [
                    (
                        f"{row['image_id']}_v{k:03d}",
                        _encode_npy(arr),
                        "",
                        {"volume_index": k, "volumes": len(volumes), "source_image_id": row["image_id"]},
                    )
                    for k, arr in volumes
                ]
            return [(row["image_id"], _encode_npy(volumes[0][1]), "", {})]
        return [(row["image_id"], _encode_npy(preprocess_row(row, config)), "", {})]
    except Exception as exc:  # counted and listed, never fatal
        reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return [(row["image_id"], None, str(reason)[:200], {})]


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


@dataclass
class CacheResult:
    """What ``build_cache`` wrote."""

    cache_dir: Path | str
    written: int = 0
    reused_shards: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    merged: bool = False  # an array task: whether it completed the last part and wrote cache.json

    def summary(self) -> str:
        s = f"cache: {self.cache_dir}: {self.written} images written, {self.reused_shards} shards already complete"
        if self.skipped:
            from collections import Counter

            reasons = Counter(self.skipped.values())
            s += f"; skipped {len(self.skipped)}: " + ", ".join(f"{k}: {v}" for k, v in reasons.most_common())
        if self.merged:
            s += "; last array task: parts merged into cache.json"
        return s + f" ({self.seconds:.1f}s)"


#: In a bucket: the index of the shards uploaded so far (``cache.json`` is uploaded last).
PARTIAL_INDEX = "cache.partial.json"


def build_cache(
    manifest: str | Path | pd.DataFrame,
    cache_dir: str | Path,
    *,
    config: CacheConfig | None = None,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    shard: Shard | None = None,
) -> CacheResult:
    """Decode every manifest row once into WebDataset shards under ``cache_dir``; resumes an interrupted run.

    With ``shard`` (task i of N) only the tar shards k with k % N == i are written, with a part index;
    the task that completes the last part merges them into ``cache.json`` (see the module docstring).
    An object store that keeps failing (or refuses) stops the run with a
    :class:`~medclip.data.storage.StorageError`; the shards uploaded before stay and a rerun resumes.
    """
    try:
        return _build_cache(
            manifest,
            cache_dir,
            config=config,
            workers=workers,
            progress=progress,
            overwrite=overwrite,
            shard=shard,
        )
    except storage.StorageError as exc:
        if not str(exc.location).startswith(str(storage.as_location(cache_dir))):
            raise  # the manifest, not the cache
        then = (
            "run the same command again to resume" if exc.transient else "once that is fixed, the same command resumes"
        )
        raise storage.StorageError(
            f"{exc}. The shards uploaded before are kept (cache.json is uploaded only when every shard is there): "
            + then,
            location=exc.location,
            attempts=exc.attempts,
            transient=exc.transient,
        ) from exc


def _build_cache(
    manifest: str | Path | pd.DataFrame,
    cache_dir: str | Path,
    *,
    config: CacheConfig | None,
    workers: int | None,
    progress: bool,
    overwrite: bool,
    shard: Shard | None,
) -> CacheResult:
    t0 = time.perf_counter()
    config = config or CacheConfig()
    shard = shard or Shard()
    df = read_manifest(manifest) if not isinstance(manifest, pd.DataFrame) else manifest
    cache_dir = storage.as_location(cache_dir)  # a folder, or a URL (s3://bucket/cache): shards are uploaded
    storage.makedirs(cache_dir)
    index_path = storage.join(cache_dir, "cache.json")
    if not shard.is_whole:
        write_path = storage.join(cache_dir, f"cache.{shard.tag}.json")
    elif storage.is_url(cache_dir):  # a bucket: cache.json goes up last, when every shard is there
        write_path = storage.join(cache_dir, PARTIAL_INDEX)
    else:
        write_path = index_path
    index: dict = {"version": CACHE_VERSION, "config": config.to_json(), "shards": {}, "skipped": {}}
    for path in dict.fromkeys([index_path, write_path]):  # the merged index, then this task's own part
        if storage.exists(path) and not overwrite:
            old = json.loads(storage.read_text(path))
            if old.get("config") != config.to_json() or old.get("version") != CACHE_VERSION:
                raise CacheError(
                    f"{cache_dir}: cache was built with other settings {old.get('config')}; "
                    "use another folder or overwrite=True (--overwrite)"
                )
            index["shards"].update(old.get("shards", {}))
            index["skipped"].update(old.get("skipped", {}))
    labels = label_columns(df)
    index["labels"] = [c[len(LABEL_PREFIX) :] for c in labels]
    result = CacheResult(cache_dir=cache_dir)

    jobs: list[tuple[str, str, list[dict]]] = []
    for split, part in df.sort_values("image_id").groupby("split", sort=True):
        records = part.to_dict("records")
        for i in range(0, len(records), config.shard_size):
            name = f"{split}/shard-{i // config.shard_size:06d}.tar"
            jobs.append((split, name, records[i : i + config.shard_size]))
    all_names = [name for _, name, _ in jobs]
    if not shard.is_whole:  # this task's tar shards only, dealt round-robin
        jobs = [job for k, job in enumerate(jobs) if shard.owns(k)]
        index["shards"] = {n: v for n, v in index["shards"].items() if n in {name for _, name, _ in jobs}}
        index.update({"shard": shard.index, "num_shards": shard.count, "complete": False})
    todo = []
    for split, name, recs in jobs:
        done = index["shards"].get(name)
        if done and done.get("ids_hash") == _ids_hash(recs) and storage.exists(storage.join(cache_dir, name)):
            result.reused_shards += 1
        else:
            todo.append((split, name, recs))

    n_workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    total = sum(len(r) for _, _, r in todo)
    bar = tqdm(total=total, desc="caching", unit=" img", disable=not progress)
    pool = ProcessPoolExecutor(n_workers) if n_workers > 1 and total > 8 else None
    try:
        for split, name, recs in todo:
            target = storage.join(cache_dir, name)
            if storage.is_url(target):  # staged locally, uploaded in one request when complete
                from medclip.fsutil import process_temp_dir

                tmp = process_temp_dir("cache") / name.replace("/", "-")
            else:
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                tmp = Path(target).with_suffix(".tar.tmp")
            by_id = {r["image_id"]: r for r in recs}
            count = 0
            args = [(r, config) for r in recs]
            outputs = pool.map(_work, args, chunksize=4) if pool else map(_work, args)
            try:
                with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
                    for rec, samples in zip(recs, outputs):
                        bar.update()
                        for key, data, reason, extra in samples:
                            if data is None:
                                index["skipped"][key] = reason
                                result.skipped[key] = reason
                                continue
                            meta = {**_sample_meta(by_id[rec["image_id"]], labels), **extra, "image_id": key}
                            _add_bytes(tar, f"{key}.image.npy", data)
                            _add_bytes(tar, f"{key}.meta.json", json.dumps(meta).encode())
                            index["skipped"].pop(key, None)
                            count += 1
                storage.upload(tmp, target)
            except Exception as exc:
                # the shard stays unwritten (cache.json does not list it; a rerun writes it), the earlier
                # shards and their index are kept; a full disk says which shard and how much space it needed
                written = Path(tmp).stat().st_size if Path(tmp).exists() else 0
                Path(tmp).unlink(missing_ok=True)
                if is_disk_full(exc) and not isinstance(exc, (DiskFullError, storage.StorageError)):
                    raise disk_full_error(tmp if storage.is_url(target) else target, needed=written or None) from exc
                raise
            Path(tmp).unlink(missing_ok=True)
            index["shards"][name] = {"split": split, "count": count, "ids_hash": _ids_hash(recs)}
            result.written += count
            _write_index(write_path, index)
    finally:
        bar.close()
        if pool:
            pool.shutdown()
    if shard.is_whole:
        stale = set(index["shards"]) - set(all_names)
        for name in stale:
            index["shards"].pop(name)
            storage.unlink(storage.join(cache_dir, name))
        _write_index(index_path, index)
        if write_path != index_path:
            storage.unlink(write_path)
    else:
        index.update({"complete": True, "all_shards": all_names})
        _write_index(write_path, index)
        result.merged = merge_cache_parts(cache_dir, require_complete=False)
    result.seconds = time.perf_counter() - t0
    return result


def cache_part_paths(cache_dir: str | Path) -> list[Path | str]:
    """The array tasks' part indexes (``cache.part-*-of-*.json``) in a cache folder (or URL)."""
    return storage.glob(storage.as_location(cache_dir), "cache.part-*-of-*.json")


def merge_cache_parts(cache_dir: str | Path, *, require_complete: bool = True) -> bool:
    """Merge the array tasks' part indexes into ``cache.json`` once every part is complete.

    Returns True when merged. With ``require_complete`` (``medclip cache --merge``) a missing or unfinished
    part is an error naming it; otherwise (a task finishing its part) the merge waits for the last task.
    Shards of an earlier ``cache.json`` that the new run no longer has are deleted, as a single run does.
    """
    cache_dir = storage.as_location(cache_dir)
    paths = cache_part_paths(cache_dir)
    parts = []
    for p in paths:
        try:
            parts.append((parse_part_tag(storage.name(p)), json.loads(storage.read_text(p))))
        except (OSError, ValueError):  # another task merged and removed it meanwhile
            if require_complete:
                raise
    count, missing = missing_parts([s for s, _ in parts if s is not None])
    unfinished = sorted(s.index for s, part in parts if s is not None and not part.get("complete"))
    if not parts or missing or unfinished:
        if require_complete:
            what = (
                "no parts found"
                if not parts
                else (f"missing shard index {missing[:20]}" if missing else f"unfinished shard index {unfinished[:20]}")
            )
            raise CacheError(f"{cache_dir}: cannot merge the cache parts ({what}); run those array tasks first")
        return False
    first = parts[0][1]
    for s, part in parts:
        if part.get("config") != first.get("config") or part.get("version") != first.get("version"):
            raise CacheError(f"{cache_dir}: part {s.index if s else '?'} of {count} was built with other settings")
    all_names = first.get("all_shards", [])
    merged = {
        "version": first["version"],
        "config": first["config"],
        "shards": {},
        "skipped": {},
        "labels": first.get("labels", []),
    }
    for _, part in parts:
        merged["shards"].update({n: v for n, v in part["shards"].items() if n in all_names})
        merged["skipped"].update(part.get("skipped", {}))
    lost = [n for n in all_names if n not in merged["shards"]]
    if lost:
        raise CacheError(f"{cache_dir}: the parts do not cover shard {lost[0]} ({len(lost)} missing)")
    old_path = storage.join(cache_dir, "cache.json")
    if storage.exists(old_path):
        try:
            old = json.loads(storage.read_text(old_path))
        except ValueError:
            old = {}
        for name in set(old.get("shards", {})) - set(all_names):
            storage.unlink(storage.join(cache_dir, name))
    _write_index(old_path, merged)
    for p in paths:
        storage.unlink(p)
    return True


def _ids_hash(recs: list[dict]) -> str:
    import hashlib

    h = hashlib.sha256()
    for r in recs:
        h.update(f"{r['image_id']}:{r.get('mtime')}:{r.get('report_text', '')}\n".encode())
        for c, v in r.items():
            if c.startswith(LABEL_PREFIX):
                h.update(f"{c}={v};".encode())
    return h.hexdigest()[:16]


def _write_index(path: Path | str, index: dict) -> None:
    storage.write_bytes(path, json.dumps(index, indent=1, sort_keys=True).encode())


def read_cache_index(cache_dir: str | Path) -> dict:
    """The ``cache.json`` of a cache folder."""
    p = storage.join(storage.as_location(cache_dir), "cache.json")
    if not storage.exists(p):
        raise CacheError(f"{cache_dir}: not a medclip cache (no cache.json); build one with `medclip cache`")
    return json.loads(storage.read_text(p))


def cache_shards(cache_dir: str | Path, split: str | None = None) -> list[tuple[Path | str, int]]:
    """(shard path, sample count) for one split (or all), in a stable order."""
    index = read_cache_index(cache_dir)
    out = []
    for name, info in sorted(index["shards"].items()):
        if split is None or info["split"] == split:
            out.append((storage.join(storage.as_location(cache_dir), name), int(info["count"])))
    return out


def iter_shard(path: str | Path, *, tolerant: bool = False) -> Iterator[dict]:
    """Samples of one shard: ``{"__key__", "image": np.ndarray, "meta": dict}``; a path or a URL (streamed).

    ``tolerant``: a member that does not decode (garbage ``image.npy``, broken ``meta.json``) or is missing
    gives its sample an ``"__error__"`` (the reason) instead of raising; a truncated or unreadable tar still
    raises (``tarfile.TarError``, ``OSError``, ``EOFError``) after the samples read before it."""
    with storage.open_file(storage.as_location(path)) as handle:
        yield from _iter_tar(handle, tolerant=tolerant)


def _iter_tar(handle: Any, *, tolerant: bool = False) -> Iterator[dict]:
    current: dict = {}

    def finished(sample: dict) -> dict:
        if tolerant and "__error__" not in sample:
            missing = [m for m, k in (("image.npy", "image"), ("meta.json", "meta")) if k not in sample]
            if missing:
                sample["__error__"] = f"no {' or '.join(missing)} member"
        return sample

    with tarfile.open(fileobj=handle, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            if current and current["__key__"] != key:
                yield finished(current)
                current = {}
            current["__key__"] = key
            handle = tar.extractfile(member)
            data = handle.read() if handle is not None else b""
            try:
                if ext == "image.npy":
                    current["image"] = np.load(io.BytesIO(data), allow_pickle=False)
                elif ext == "meta.json":
                    current["meta"] = json.loads(data)
            except (ValueError, EOFError, OSError) as exc:  # np.load / json on bytes that are not what they claim
                if not tolerant:
                    raise
                current["__error__"] = f"{ext} does not decode ({type(exc).__name__}: {str(exc)[:120]})"
    if current:
        yield finished(current)


def iter_cache(
    cache_dir: str | Path,
    split: str | None = None,
    *,
    shuffle_shards: bool = False,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[dict]:
    """All samples of a split, shard by shard; shards are dealt round-robin to ranks."""
    shards = cache_shards(cache_dir, split)
    if shuffle_shards:
        random.Random(seed).shuffle(shards)
    for i, (path, _) in enumerate(shards):
        if i % world_size == rank:
            yield from iter_shard(path)
