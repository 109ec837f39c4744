"""The WebDataset cache: build, resume, settings check, streaming by rank/worker, datasets."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from phi import assert_no_phi_in_text
from torch.utils.data import DataLoader

from medclip.data.cache import CacheConfig, CacheError, build_cache, cache_shards, iter_cache, read_cache_index
from medclip.data.dataset import CacheDataset, ManifestDataset, report_text
from medclip.data.indexer import index_export
from medclip.sample import SAMPLE_EXPORT as SAMPLE_EXPORT_DIR

REPO = Path(__file__).resolve().parents[1]
SAMPLE = SAMPLE_EXPORT_DIR


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("idx") / "manifest.parquet"
    res = index_export(SAMPLE, out, reports=SAMPLE / "reports.csv", salt="cache-test", workers=1, progress=False)
    df = pd.read_parquet(out)
    # a label column, as `medclip label` would add
    df["label.pneumonia"] = np.where(df["report_text"].str.contains("pneumonia", case=False), 1.0, np.nan)
    from medclip.data.manifest import manifest_metadata, write_manifest

    meta = manifest_metadata(out)
    write_manifest(df, out, extra=meta)
    assert len(res.manifest) == 67
    return out


@pytest.fixture(scope="module")
def cache(manifest, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache")
    res = build_cache(manifest, out, config=CacheConfig(image_size=64, shard_size=8), workers=1, progress=False)
    assert res.written == 67 and not res.skipped
    return out


def test_cache_layout_and_content(cache, manifest):
    index = read_cache_index(cache)
    assert index["labels"] == ["pneumonia"]
    shards = cache_shards(cache)
    assert sum(c for _, c in shards) == 67
    df = pd.read_parquet(manifest)
    for split, n in df["split"].value_counts().items():
        assert sum(c for _, c in cache_shards(cache, split)) == n
    samples = list(iter_cache(cache))
    assert len({s["__key__"] for s in samples}) == 67
    s = samples[0]
    assert s["image"].dtype == np.uint8 and s["image"].shape == (64, 64)
    assert s["image"].std() > 5  # a real image, not a blank
    assert "path" not in s["meta"] and "files" not in s["meta"]
    assert set(s["meta"]["labels"]) == {"pneumonia"}
    # standard tar that the webdataset package can read too
    with tarfile.open(shards[0][0]) as tar:
        names = tar.getnames()
    assert names[0].endswith(".image.npy") and names[1].endswith(".meta.json")


def test_shards_are_read_by_the_webdataset_package(cache):
    """The shard format is WebDataset's: the reference reader sees the same keys, arrays and metadata."""
    wds = pytest.importorskip("webdataset")
    ours = {s["__key__"]: s for s in iter_cache(cache)}
    urls = [str(path) for split in ("train", "val", "test") for path, _ in cache_shards(cache, split)]
    theirs = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode())
    assert len(theirs) == len(ours) == 67
    for sample in theirs:
        mine = ours[sample["__key__"]]
        assert np.array_equal(sample["image.npy"], mine["image"])
        assert sample["meta.json"] == mine["meta"]


def test_cache_matches_decode_path(cache, manifest):
    ds = ManifestDataset(manifest, split=None, image_size=64)
    by_id = {s["__key__"]: s for s in iter_cache(cache)}
    item = ds[3]
    cached = torch.from_numpy(by_id[item["image_id"]]["image"]).float() / 255
    assert torch.allclose(item["image"][0], cached)
    assert item["text"] == report_text(by_id[item["image_id"]]["meta"])


def test_resume_rebuilds_only_missing_shards(manifest, tmp_path):
    cfg = CacheConfig(image_size=32, shard_size=16)
    first = build_cache(manifest, tmp_path, config=cfg, workers=1, progress=False)
    shards = cache_shards(tmp_path)
    victim = shards[1][0]
    victim.unlink()  # as if the run was killed while writing it
    (victim.with_suffix(".tar.tmp")).write_bytes(b"partial")
    second = build_cache(manifest, tmp_path, config=cfg, workers=1, progress=False)
    assert second.reused_shards == len(shards) - 1
    assert second.written == shards[1][1]
    assert victim.exists() and not victim.with_suffix(".tar.tmp").exists()
    assert first.written == 67
    with pytest.raises(CacheError, match="other settings"):
        build_cache(manifest, tmp_path, config=CacheConfig(image_size=48, shard_size=16), workers=1, progress=False)


def test_unreadable_image_is_skipped_and_counted(manifest, tmp_path):
    from medclip.data.manifest import read_manifest

    df = read_manifest(manifest)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(Path(df["path"].iloc[0]).read_bytes()[:1500])
    df.loc[0, "path"] = str(broken)
    res = build_cache(df, tmp_path / "c", config=CacheConfig(image_size=32, shard_size=64), workers=1, progress=False)
    assert res.written == 66 and list(res.skipped) == [df.loc[0, "image_id"]]
    assert read_cache_index(tmp_path / "c")["skipped"] == res.skipped


@pytest.mark.parametrize("shard_size", [4, 64])  # shard-level and sample-level dealing
def test_cache_dataset_ranks_are_disjoint_and_equal(manifest, tmp_path, shard_size):
    out = tmp_path / "c"
    build_cache(manifest, out, config=CacheConfig(image_size=32, shard_size=shard_size), workers=1, progress=False)
    n_train = sum(c for _, c in cache_shards(out, "train"))
    seen = []
    for rank in range(2):
        ds = CacheDataset(out, "train", rank=rank, world_size=2, seed=3, buffer_size=8)
        ids = [it["image_id"] for it in ds]
        assert len(ids) == len(ds) == n_train // 2
        seen.append(set(ids))
    assert not seen[0] & seen[1]


def test_cache_dataset_workers_epochs_and_resume(cache):
    ds = CacheDataset(cache, "train", seed=0, buffer_size=16)
    loader = DataLoader(ds, batch_size=4, num_workers=2)
    batches = [b["image_id"] for b in loader]
    ids = [i for b in batches for i in b]
    assert len(ids) == len(set(ids)) == len(ds)
    assert batches[0][0] is not None and isinstance(next(iter(loader))["image"], torch.Tensor)
    # the same epoch again is the same order; another epoch is shuffled differently
    again = [i for b in DataLoader(ds, batch_size=4, num_workers=2) for i in b["image_id"]]
    assert again == ids
    ds.set_epoch(1)
    assert [i for b in DataLoader(ds, batch_size=4, num_workers=2) for i in b["image_id"]] != ids
    # resuming after 3 batches yields exactly the rest of the epoch, in order
    ds.set_epoch(0)
    ds.skip_batches(3, 4)
    rest = [i for b in DataLoader(ds, batch_size=4, num_workers=2) for i in b["image_id"]]
    assert rest == [i for b in batches[3:] for i in b]


def test_manifest_dataset_items(manifest):
    ds = ManifestDataset(manifest, split="train", image_size=48, require_text=True)
    item = ds[0]
    assert item["image"].shape == (1, 48, 48) and item["image"].dtype == torch.float32
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert item["text"]
    assert_no_phi_in_text(item["text"], ["Zzplanted"])
    assert item["labels"].shape == (1,)
    assert ds.label_names == ["pneumonia"]


def test_volumes_are_cached_resampled(shared_dir, tmp_path):
    """Real GE MR series (4D: 10 volumes of 15 slices) -> first volume, resampled, float16 (D, H, W)."""
    export = shared_dir / "data" / "dicom_series_nih" / "In" / "20180918GE"
    index_export(export, tmp_path / "m.parquet", salt="s", workers=1, progress=False)
    cfg = CacheConfig(volume_shape=(8, 32, 32), volume_spacing=(6.0, 8.0, 8.0))
    res = build_cache(tmp_path / "m.parquet", tmp_path / "c", config=cfg, workers=1, progress=False)
    assert res.written == 4 and not res.skipped
    samples = list(iter_cache(tmp_path / "c"))
    assert all(s["image"].shape == (8, 32, 32) and s["image"].dtype == np.float16 for s in samples)
    assert all(s["meta"]["kind"] == "volume" and float(s["image"].max()) > 0.5 for s in samples)
    ds = CacheDataset(tmp_path / "c", split=None, shuffle=False)
    assert next(iter(ds))["image"].shape == (1, 8, 32, 32)
