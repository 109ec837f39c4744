"""Image I/O throughput: medclip.io vs MONAI on the same real files, in one run.

Two pipelines per file, both single-threaded (``torch.set_num_threads(1)``, like one DataLoader
worker), interleaved file by file, warm-up call not timed:

  decode  medclip ``load_image(path, window=None)``  vs  MONAI ``LoadImage(reader="PydicomReader")``
          (``PILReader`` for PNG/JPEG): pixels decoded and rescaled to modality values.
  model   medclip ``load_image`` -> ``to_model_input(size=224)`` (window, letterbox, uint8)
          vs  MONAI LoadImage -> ScaleIntensityRange (the same window medclip used, given to MONAI
          as configuration) or ScaleIntensityRangePercentiles(0.5, 99.5) where medclip used a
          VOI LUT or percentiles -> Resize(224, size_mode="longest", mode="area") -> SpatialPad(224)
          -> uint8. Multi-frame files: every frame resized.

It also checks that both produce comparable images: the mean absolute difference (0-255 grey
levels) of the two uint8 model inputs, pixel by pixel for 2D files; for multi-frame files the
sorted grey levels are compared, because MONAI puts the frame axis elsewhere and ignores the
per-frame geometry. MONAI ignores MONOCHROME1 (its image is the negative: the difference against
``255 - medclip`` is printed too) and ignores VOI LUT Sequences.

  python benchmarks/io_throughput.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import torch

SIZE = 224


def shared_dir() -> Path:
    env = os.environ.get("MEDCLIP_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


def pydicom_data_dir() -> Path:
    """The pydicom-data package's files (a folder that does not exist when it is not installed)."""
    try:
        import data_store  # the pydicom-data package
    except ImportError:
        return Path("pydicom-data-not-installed")
    return Path(data_store.__file__).parent / "data"


def file_groups() -> dict[str, list[Path]]:
    """Real files by type; a missing source is reported and skipped."""
    xray = shared_dir() / "data" / "xray_samples"
    nih = shared_dir() / "data" / "dicom_series_nih" / "In" / "20180918GE" / "mr_0004"
    bundled = Path(pydicom.__file__).parent / "data" / "test_files"
    extra = pydicom_data_dir()
    groups = {
        "CR JPEG-baseline 1024^2 (SIIM)": [
            xray / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
            xray / "Fake_MONOHR1.dcm",
        ],
        "CR uncompressed ~1.8k^2 MONO1": [extra / "RG1_UNCR.dcm", extra / "RG3_UNCR.dcm"],
        "CR JPEG2000 lossless ~1.8k^2": [extra / "RG1_J2KR.dcm", extra / "RG3_J2KR.dcm"],
        "CT slices 128^2/512^2": [bundled / "CT_small.dcm", extra / "693_UNCR.dcm", extra / "693_J2KR.dcm"],
        "MR slices (GE fMRI + 1024^2)": sorted(nih.glob("*.dcm"))[:6]
        + [extra / "MR2_UNCR.dcm", bundled / "MR_small.dcm"],
        "multi-frame (enhanced CT, MR)": [extra / "eCT_Supplemental.dcm", extra / "emri_small.dcm"],
        "VOI LUT (OT)": [extra / "vlut_04.dcm"],
        "PNG/JPEG 8-bit (NIH, PadChest)": [
            xray / "00000001_000.png",
            xray / "00027426_000.png",
            xray / "16747_3_1.jpg",
        ],
    }
    found = {}
    for name, paths in groups.items():
        present = [p for p in paths if p.is_file()]
        if len(present) < len(paths):
            print(f"note: {name}: {len(paths) - len(present)} file(s) not found, skipped")
        if present:
            found[name] = present
    return found


# --------------------------------------------------------------------------- pipelines


def medclip_decode(path: Path):
    from medclip.io import load_image

    return load_image(path, window=None)


def medclip_model_input(path: Path) -> np.ndarray:
    from medclip.io import load_image, to_model_input
    from medclip.io.windowing import resize_to_square

    image = load_image(path)
    if image.is_volume:
        frames = np.stack([resize_to_square(frame, SIZE) for frame in image.array])
        return (np.clip(frames, 0, 1) * 255 + 0.5).astype(np.uint8)
    return to_model_input(image, SIZE)


@dataclass
class MonaiPipeline:
    """MONAI's equivalent of medclip's pipeline for one file (window given as configuration)."""

    path: Path
    window: tuple[float, float] | None  # None -> percentiles
    volume: bool
    loader: Callable = field(init=False)
    transforms: Callable = field(init=False)

    def __post_init__(self) -> None:
        from monai.transforms import (
            Compose,
            LoadImage,
            Resize,
            ScaleIntensityRange,
            ScaleIntensityRangePercentiles,
            SpatialPad,
        )

        reader = "PydicomReader" if self.path.suffix.lower() not in (".png", ".jpg", ".jpeg") else "PILReader"
        self.loader = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)
        if self.window is None:
            scale = ScaleIntensityRangePercentiles(0.5, 99.5, 0.0, 1.0, clip=True)
        else:
            center, width = self.window
            scale = ScaleIntensityRange(center - width / 2, center + width / 2, 0.0, 1.0, clip=True)
        if self.volume:
            # MONAI's PydicomReader puts the frame axis between the two in-plane axes; keep it, resize
            # the in-plane axes (frames are square in the benchmark files, so no padding is needed).
            frames = int(pydicom.dcmread(self.path, stop_before_pixels=True).NumberOfFrames)
            shape = self.loader(self.path).shape[1:]
            size = tuple(-1 if n == frames else SIZE for n in shape)
            self.transforms = Compose([scale, Resize(size, mode="area")])
        else:
            self.transforms = Compose([scale, Resize(SIZE, size_mode="longest", mode="area"), SpatialPad((SIZE, SIZE))])

    def decode(self):
        return self.loader(self.path)

    def model_input(self) -> np.ndarray:
        out = self.transforms(self.loader(self.path))
        return (np.clip(np.asarray(out[0]), 0, 1) * 255 + 0.5).astype(np.uint8)


def monai_window(metadata: dict) -> tuple[float, float] | None:
    """The window medclip used, as MONAI configuration; None where MONAI must fall back to percentiles."""
    if metadata.get("window") in (None, "percentile", "voi_lut"):
        return None
    return metadata["window_center"], metadata["window_width"]


def comparable(medclip_image: np.ndarray, monai_image: np.ndarray, volume: bool) -> np.ndarray:
    """MONAI's uint8 output in medclip's layout (2D: MONAI stores (W, H))."""
    if volume:
        return np.sort(monai_image.reshape(-1))
    return monai_image.T


def content_box(shape: tuple[int, ...]) -> tuple[slice, slice]:
    """Where the letterboxed image lies in the SIZE x SIZE model input (the rest is padding)."""
    h, w = shape
    scale = SIZE / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    top, left = (SIZE - new_h) // 2, (SIZE - new_w) // 2
    return slice(top, top + new_h), slice(left, left + new_w)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# --------------------------------------------------------------------------- cache-read hook


def bench_cache_read(files: list[Path], repeats: int) -> float | None:
    """Images/s reading the same images back from a medclip cache (WebDataset shards) as training tensors.

    The cache is built once (not timed) with the same preprocessing (window "auto", 224 px); the timed
    part is what a DataLoader worker does per epoch: stream the shards and turn each sample into the
    float tensor and text of a training item (``CacheDataset``), on one core.
    """
    import tempfile

    import pandas as pd

    from medclip.data.cache import CacheConfig, build_cache
    from medclip.data.dataset import CacheDataset

    rows = [
        {
            "image_id": f"img{i:04d}",
            "path": str(p),
            "kind": "image",
            "files": None,
            "patient_id": f"p{i}",
            "study_id": f"s{i}",
            "series_id": f"s{i}",
            "split": "train",
            "report_text": "",
            "mtime": 0.0,
        }
        for i, p in enumerate(files)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        res = build_cache(
            pd.DataFrame(rows), tmp, config=CacheConfig(image_size=224, shard_size=64), workers=1, progress=False
        )
        if res.written == 0:
            return None
        ds = CacheDataset(tmp, "train", shuffle=False)
        for _ in ds:  # warm-up (page cache)
            pass
        n = 0
        start = time.perf_counter()
        for _ in range(repeats):
            for _item in ds:
                n += 1
        return n / (time.perf_counter() - start)


# --------------------------------------------------------------------------- run


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per file and pipeline (after 1 warm-up)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    from medclip.io import load_image

    groups = file_groups()
    header = (
        f"{'file type':32} {'n':>2} | {'decode img/s':>12} {'MONAI':>8} {'ratio':>6} | "
        f"{'model img/s':>11} {'MONAI':>8} {'ratio':>6} | {'|diff|':>6}  notes"
    )
    print(f"torch threads: 1, repeats: {args.repeats}, size: {SIZE}")
    print(header)
    print("-" * len(header))
    totals = np.zeros(4)  # seconds: medclip decode, monai decode, medclip model, monai model
    count = 0
    for name, paths in groups.items():
        seconds = np.zeros(4)
        diffs, notes, inverted = [], set(), []
        for path in paths:
            reference = load_image(path)
            volume = reference.is_volume
            monai = MonaiPipeline(path, monai_window(reference.metadata), volume)
            ours, theirs = medclip_model_input(path), monai.model_input()  # warm-up + comparison
            decoded, monai_decoded = medclip_decode(path).array, np.asarray(monai.decode())
            if abs(decoded.min() - monai_decoded.min()) > 0.5 or abs(decoded.max() - monai_decoded.max()) > 0.5:
                notes.add(
                    f"{path.name}: MONAI values {monai_decoded.min():g}..{monai_decoded.max():g} vs medclip "
                    f"{decoded.min():g}..{decoded.max():g} (MONAI skips the functional-group rescale)"
                    if "PerFrameFunctionalGroupsSequence" in pydicom.dcmread(path, stop_before_pixels=True)
                    else f"{path.name}: MONAI values {monai_decoded.min():g}..{monai_decoded.max():g} vs medclip "
                    f"{decoded.min():g}..{decoded.max():g}"
                )
            theirs = comparable(ours, theirs, volume)
            if volume:
                ours = np.sort(ours.reshape(-1))
                notes.add("sorted grey levels (MONAI: frame axis moved, identity affine)")
            else:  # compare the image, not the letterbox padding (black in both)
                box = content_box(reference.shape)
                ours, theirs = ours[box], theirs[box]
            diff = mean_abs_diff(ours, theirs)
            if reference.metadata.get("photometric") == "MONOCHROME1":
                inverted.append(mean_abs_diff(255 - ours, theirs))
            if reference.metadata.get("window") == "voi_lut":
                notes.add("MONAI ignores the VOI LUT (percentiles instead)")
            diffs.append(diff)
            for _ in range(args.repeats):
                seconds += [
                    timed(lambda path=path: medclip_decode(path)),
                    timed(monai.decode),
                    timed(lambda path=path: medclip_model_input(path)),
                    timed(monai.model_input),
                ]
        if inverted:
            notes.add(f"MONAI ignores MONOCHROME1: |diff| vs inverted medclip {np.mean(inverted):.1f}")
        n_images = len(paths) * args.repeats
        rate = n_images / seconds
        totals += seconds
        count += n_images
        print(
            f"{name:32} {len(paths):>2} | {rate[0]:>12.1f} {rate[1]:>8.1f} {rate[0] / rate[1]:>5.2f}x | "
            f"{rate[2]:>11.1f} {rate[3]:>8.1f} {rate[2] / rate[3]:>5.2f}x | {np.mean(diffs):>6.1f}  "
            + "; ".join(sorted(notes))
        )
    rate = count / totals
    print("-" * len(header))
    print(
        f"{'overall':32} {count // args.repeats:>2} | {rate[0]:>12.1f} {rate[1]:>8.1f} {rate[0] / rate[1]:>5.2f}x | "
        f"{rate[2]:>11.1f} {rate[3]:>8.1f} {rate[2] / rate[3]:>5.2f}x |"
    )
    cache_rate = bench_cache_read([p for paths in groups.values() for p in paths], args.repeats)
    if cache_rate is None:
        cache_text = "n/a (no image could be cached)"
    else:
        cache_text = (
            f"{cache_rate:>12.1f} img/s = {cache_rate / rate[2]:.1f}x the medclip model path (target >= 10x per core)"
        )
    print(f"{'cache read (uint8 224^2)':32}    | {cache_text}")
    print(
        "ratio = medclip / MONAI (higher is faster); |diff| = mean absolute grey-level difference of the model inputs"
    )


if __name__ == "__main__":
    main()
