"""4D series in the cache: every volume as its own sample (CacheConfig.all_volumes), on a real GE MR series."""

from __future__ import annotations

import numpy as np
import pytest

from medclip.data.cache import CacheConfig, build_cache, iter_cache
from medclip.data.dataset import CacheDataset
from medclip.data.indexer import index_export


@pytest.fixture(scope="module")
def mr_manifest(shared_dir, tmp_path_factory):
    export = shared_dir / "data" / "dicom_series_nih" / "In" / "20180918GE"
    out = tmp_path_factory.mktemp("mr") / "m.parquet"
    index_export(export, out, salt="s", workers=1, progress=False, fractions=(1.0, 0.0, 0.0))
    return out


def test_all_volumes_of_a_4d_series_become_samples(mr_manifest, tmp_path):
    grid = {"volume_shape": (4, 16, 16), "volume_spacing": (12.0, 16.0, 16.0), "shard_size": 64}
    first = build_cache(mr_manifest, tmp_path / "first", config=CacheConfig(**grid), workers=1, progress=False)
    every = build_cache(
        mr_manifest, tmp_path / "all", config=CacheConfig(all_volumes=True, **grid), workers=1, progress=False
    )
    assert first.written == 4 and not first.skipped and not every.skipped
    one = {s["__key__"]: s for s in iter_cache(tmp_path / "first")}
    samples = {s["__key__"]: s for s in iter_cache(tmp_path / "all")}
    assert every.written == len(samples) == 40  # 4 series x 10 volumes (of 15 slices) each
    for image_id, sample in one.items():
        keys = sorted(k for k in samples if k.startswith(image_id + "_v"))
        assert keys == [f"{image_id}_v{k:03d}" for k in range(10)]
        metas = [samples[k]["meta"] for k in keys]
        assert [m["volume_index"] for m in metas] == list(range(10)) and {m["volumes"] for m in metas} == {10}
        assert {m["source_image_id"] for m in metas} == {image_id} and [m["image_id"] for m in metas] == keys
        assert len({m["patient_id"] for m in metas} | {sample["meta"]["patient_id"]}) == 1
        np.testing.assert_array_equal(samples[keys[0]]["image"], sample["image"])  # volume 0 = the default
        assert not np.array_equal(samples[keys[0]]["image"], samples[keys[5]]["image"])  # the others differ
    items = list(CacheDataset(tmp_path / "all", split="train", shuffle=False))
    assert len(items) == 40 and items[0]["image"].shape == (1, 4, 16, 16)
    assert len({it["image_id"] for it in items}) == 40


def test_3d_volumes_are_read_once_and_keep_their_id(tmp_path):
    nib = pytest.importorskip("nibabel")
    rng = np.random.default_rng(0)
    export = tmp_path / "export" / "patient1"
    export.mkdir(parents=True)
    nib.save(nib.Nifti1Image(rng.random((16, 16, 8)).astype(np.float32), np.eye(4)), export / "ct.nii.gz")
    nib.save(nib.Nifti1Image(rng.random((16, 16, 8, 3)).astype(np.float32), np.eye(4)), export / "fmri.nii.gz")
    index_export(
        tmp_path / "export", tmp_path / "m.parquet", salt="s", workers=1, progress=False, fractions=(1.0, 0.0, 0.0)
    )
    cfg = CacheConfig(all_volumes=True, volume_shape=(4, 8, 8), volume_spacing=(2.0, 2.0, 2.0))
    res = build_cache(tmp_path / "m.parquet", tmp_path / "c", config=cfg, workers=1, progress=False)
    metas = sorted((s["meta"] for s in iter_cache(tmp_path / "c")), key=lambda m: m["image_id"])
    assert res.written == 4 and not res.skipped  # 1 (3D) + 3 (4D)
    assert sum("volume_index" not in m for m in metas) == 1
    assert sorted(m["volume_index"] for m in metas if "volume_index" in m) == [0, 1, 2]


def test_cli_flag():
    from medclip.cli import build_parser

    assert build_parser().parse_args(["cache", "m.parquet", "-o", "c", "--all-volumes"]).all_volumes
    assert not build_parser().parse_args(["cache", "m.parquet", "-o", "c"]).all_volumes
