"""Preprocessing at cluster scale: index and cache throughput on a synthetic export of full-size DICOM.

The benchmark writes an export of radiograph-size DICOM files (2048 x 2500, 12-bit: JPEG Baseline
8-bit and uncompressed 16-bit, the two kinds a CXR archive holds), times them through

  index   header-only (``--no-verify``) at 1 and 2 processes, and as 2 array tasks run side by side
          (``Shard(i, 2)``) followed by the merge;
  cache   full-size JPEG DICOM -> 224 px at 1 and 2 processes and as 2 array tasks, with the reduced
          decode (JPEG DCT scaling before the resize, the default) and without it (``--full-decode``:
          "today's" rate, measured in the same run),

prints files/s per core, the scaling from 1 to 2 processes, and the wall time extrapolated to 377,110
images (MIMIC-CXR) on 32 cores, and deletes the export. Each file's content is one of a few real chest
X-rays (``../shared/data/xray_samples``, else a synthetic smooth image) upscaled to full size, with
its own identifiers; files are read from the page cache (just written), so disk speed is not measured.

  python benchmarks/scale.py             # 3000 files (10% uncompressed), cache on 400 JPEG files
  python benchmarks/scale.py --quick     # 400 files, cache on 48: under 3 minutes
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MIMIC_IMAGES = 377_110
CLUSTER_CORES = 32
ROWS, COLUMNS = 2500, 2048
SALT = "scale-benchmark"


def base_images(n: int = 4) -> list[np.ndarray]:
    """A few full-size uint16 (12-bit) radiographs: real X-rays upscaled, else smooth synthetic images."""
    from PIL import Image

    shared = Path(os.environ.get("MEDCLIP_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    sources = sorted((shared / "data" / "xray_samples").glob("*.png"))[:n]
    out = []
    for path in sources:
        im = Image.open(path).convert("L").resize((COLUMNS, ROWS), Image.Resampling.BICUBIC)
        out.append(np.asarray(im).astype(np.uint16) * 16)
    rng = np.random.default_rng(0)
    while len(out) < n:
        small = rng.random((40, 32)).astype(np.float32)
        im = Image.fromarray(small, mode="F").resize((COLUMNS, ROWS), Image.Resampling.BICUBIC)
        arr = np.asarray(im)
        out.append(((arr - arr.min()) / (np.ptp(arr) + 1e-6) * 4000).astype(np.uint16))
    return out


def write_export(root: Path, n_files: int, uncompressed_share: float) -> dict[str, list[Path]]:
    """``n_files`` DICOM files in ``patient/study/`` folders; returns the JPEG and uncompressed paths."""
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

    images = base_images()
    jpeg_frames = []
    for arr in images:
        buf = io.BytesIO()
        Image.fromarray((arr >> 4).astype(np.uint8)).save(buf, "JPEG", quality=90)
        jpeg_frames.append(buf.getvalue())
    step = round(1 / uncompressed_share) if uncompressed_share > 0 else 0
    kinds: dict[str, list[Path]] = {"jpeg": [], "uncompressed": []}
    for k in range(n_files):
        raw = bool(step) and k % step == step - 1
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if raw else JPEGBaseline8Bit
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.PatientID, ds.PatientName = f"SYN{k // 3:06d}", f"Synthetic^{k // 3}"
        ds.AccessionNumber = f"A{k:08d}"
        ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "DX", "PA", "CHEST"
        ds.Rows, ds.Columns = ROWS, COLUMNS
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
        ds.PixelSpacing = [0.139, 0.139]
        if raw:
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
            ds.WindowCenter, ds.WindowWidth = 2048, 4096
            ds.PixelData = images[k % len(images)].tobytes()
        else:
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
            ds.PixelData = encapsulate([jpeg_frames[k % len(jpeg_frames)]])
            ds["PixelData"].VR = "OB"
        folder = root / f"p{k // 3:06d}" / f"s{k:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{k:08d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        kinds["uncompressed" if raw else "jpeg"].append(path)
    return kinds


def _index_task(args: tuple[str, str, int, int]) -> float:
    from medclip.data.indexer import index_export
    from medclip.data.shards import Shard

    export, out, index, count = args
    t0 = time.perf_counter()
    index_export(
        export,
        out,
        salt=SALT,
        workers=1,
        verify_pixels=False,
        incremental=False,
        progress=False,
        shard=Shard(index, count),
    )
    return time.perf_counter() - t0


def _cache_task(args: tuple[str, str, int, int, bool]) -> float:
    from medclip.data.cache import CacheConfig, build_cache
    from medclip.data.shards import Shard

    manifest, out, index, count, reduced = args
    t0 = time.perf_counter()
    build_cache(
        manifest,
        out,
        config=CacheConfig(image_size=224, shard_size=16, reduced_decode=reduced),
        workers=1,
        progress=False,
        shard=Shard(index, count),
    )
    return time.perf_counter() - t0


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (workers, array tasks)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class Clock:
    """Wall and CPU seconds of a block: ``with Clock() as c: ...; c.wall, c.cpu``."""

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self._wall, cpu_seconds() - self._cpu


def timed(fn) -> Clock:
    with Clock() as clock:
        fn()
    return clock


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=3000, help="DICOM files in the export (default 3000)")
    ap.add_argument("--cache-files", type=int, default=400, help="JPEG files timed through the cache (default 400)")
    ap.add_argument("--uncompressed", type=float, default=0.1, help="share of uncompressed files (default 0.1)")
    ap.add_argument("--quick", action="store_true", help="400 files, cache on 48 (under 3 minutes)")
    ap.add_argument("--workdir", type=Path, default=None, help="where to write the export (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the export")
    args = ap.parse_args(argv)
    if args.quick:
        args.files, args.cache_files = 400, 48
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from medclip.data.cache import CacheConfig, build_cache
    from medclip.data.indexer import index_export
    from medclip.data.manifest import read_manifest

    work = Path(tempfile.mkdtemp(prefix="medclip-scale-", dir=args.workdir))
    export = work / "export"
    rows: list[tuple[str, str, int, Clock, int]] = []  # (stage, how, files, wall and CPU seconds, processes)
    try:
        t0 = time.perf_counter()
        kinds = write_export(export, args.files, args.uncompressed)
        n = args.files
        print(
            f"export: {n} files ({len(kinds['jpeg'])} JPEG Baseline, {len(kinds['uncompressed'])} uncompressed "
            f"16-bit), {ROWS} x {COLUMNS}, {sum(p.stat().st_size for p in export.rglob('*.dcm')) / 1e9:.2f} GB, "
            f"written in {time.perf_counter() - t0:.0f}s",
            flush=True,
        )

        # ---- index, header only
        for workers in (1, 2):
            s = timed(
                lambda w=workers: index_export(
                    export,
                    work / f"idx{w}" / "m.parquet",
                    salt=SALT,
                    workers=w,
                    verify_pixels=False,
                    incremental=False,
                    progress=False,
                )
            )
            rows.append(("index (headers)", f"{workers} process" + ("es" if workers > 1 else ""), n, s, workers))
        out = work / "idx-shards" / "m.parquet"
        with Clock() as clock:
            with mp.get_context("fork").Pool(2) as pool:
                pool.map(_index_task, [(str(export), str(out), i, 2) for i in range(2)])
            merge = timed(lambda: index_export(export, out, salt=SALT, merge=True, progress=False, verify_pixels=False))
        rows.append(("index (headers)", f"2 array tasks + merge ({merge.wall:.1f}s)", n, clock, 2))

        # ---- cache: JPEG files only, reduced decode vs today's full decode
        manifest = read_manifest(work / "idx1" / "m.parquet")
        jpeg = {str(p) for p in kinds["jpeg"][: args.cache_files]}
        sub = manifest[manifest["path"].isin(jpeg)].copy()
        sub_path = work / "jpeg.parquet"
        from medclip.data.manifest import write_manifest

        write_manifest(sub, sub_path, extra={"created_by": "scale benchmark"})
        m = len(sub)
        for reduced in (False, True):
            label = "reduced decode" if reduced else "full decode (today)"
            for workers in (1, 2):
                cfg = CacheConfig(image_size=224, shard_size=16, reduced_decode=reduced)
                s = timed(
                    lambda w=workers, c=cfg, r=reduced: build_cache(
                        sub_path, work / f"cache-{r}-{w}", config=c, workers=w, progress=False
                    )
                )
                rows.append((f"cache, {label}", f"{workers} process" + ("es" if workers > 1 else ""), m, s, workers))
            with Clock() as clock, mp.get_context("fork").Pool(2) as pool:
                pool.map(
                    _cache_task,
                    [(str(sub_path), str(work / f"cache-{reduced}-shards"), i, 2, reduced) for i in range(2)],
                )
            rows.append((f"cache, {label}", "2 array tasks", m, clock, 2))
        a = np.stack([s["image"] for s in _samples(work / "cache-True-1")]).astype(np.float32)
        b = np.stack([s["image"] for s in _samples(work / "cache-False-1")]).astype(np.float32)
        diff = np.abs(a - b)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nmachine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end "
        "(shared with other jobs: figures are lower bounds)"
    )
    print(
        f"{'stage':<30} {'run':<34} {'files':>6} {'wall s':>7} {'files/s':>8} {'per core':>9} {'CPU s':>7} "
        f"{'per CPU-s':>9}"
    )
    per_core: dict[tuple[str, str], float] = {}
    per_cpu: dict[tuple[str, str], float] = {}
    for stage, how, files, clock, procs in rows:
        rate = files / clock.wall
        per_core[(stage, how)] = rate / procs
        per_cpu[(stage, how)] = files / max(clock.cpu, 1e-9)
        print(
            f"{stage:<30} {how:<34} {files:>6} {clock.wall:>7.1f} {rate:>8.1f} {rate / procs:>9.1f} "
            f"{clock.cpu:>7.1f} {files / max(clock.cpu, 1e-9):>9.1f}"
        )
    print(
        "(per core = files/s / processes, wall clock; per CPU-s = files per CPU second the run actually got,\n"
        " which is what a core of one's own would give: on a shared machine the wall-clock rates are lower)"
    )
    print()
    for stage in dict.fromkeys(r[0] for r in rows):
        one = per_core[(stage, "1 process")]
        two = per_core[(stage, "2 processes")]
        linear = MIMIC_IMAGES / (one * CLUSTER_CORES)
        measured = linear / min(1.0, two / one)
        print(
            f"{stage:<30} scaling 1 -> 2 processes: {two * 2 / one:.2f}x ({two / one:.0%} per core); "
            f"{MIMIC_IMAGES:,} images on {CLUSTER_CORES} cores: ~{linear / 60:.1f} min if linear, "
            f"~{measured / 60:.1f} min at the per-core efficiency measured here"
        )
    today = per_core[("cache, full decode (today)", "1 process")]
    fast = per_core[("cache, reduced decode", "1 process")]
    today_cpu = per_cpu[("cache, full decode (today)", "1 process")]
    fast_cpu = per_cpu[("cache, reduced decode", "1 process")]
    index_rate = per_core[("index (headers)", "1 process")]
    index_cpu = per_cpu[("index (headers)", "1 process")]
    print(
        f"\ncache per core: reduced decode {fast:.1f} img/s vs today's {today:.1f} img/s = {fast / today:.2f}x wall, "
        f"{fast_cpu:.1f} vs {today_cpu:.1f} per CPU-s = {fast_cpu / today_cpu:.2f}x (target >= 2x); cached images "
        f"differ by {diff.mean():.2f} grey levels on average (99th percentile {np.percentile(diff, 99):.0f}, of 255)"
    )
    print(
        f"index per core: {index_rate:.0f} files/s wall, {index_cpu:.0f} files per CPU-s "
        "(target >= 1000 files/s per core)"
    )
    print(
        f"377,110 images on 32 cores at the per-CPU-s rates: index ~{MIMIC_IMAGES / (index_cpu * 32) / 60:.1f} min, "
        f"cache ~{MIMIC_IMAGES / (fast_cpu * 32) / 60:.1f} min (today's decode ~{MIMIC_IMAGES / (today_cpu * 32) / 60:.1f} min)"
    )
    return 0


def _samples(cache: Path) -> list[dict]:
    from medclip.data.cache import iter_cache

    return sorted(iter_cache(cache), key=lambda s: s["__key__"])


if __name__ == "__main__":
    sys.exit(main())
