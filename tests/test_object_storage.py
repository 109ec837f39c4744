"""Manifests and caches on object storage: a real S3-compatible server (moto) on 127.0.0.1, started here.

Skipped cleanly when moto's server or s3fs is not installed (test extras: ``moto[server]``, ``s3fs``)
or the server cannot start.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from test_sharded_preprocessing import SAMPLE

from medclip.data.cache import CacheConfig, build_cache, read_cache_index
from medclip.data.dataset import CacheDataset, CacheMapDataset
from medclip.data.indexer import index_export
from medclip.data.manifest import read_manifest, write_manifest
from medclip.data.shards import Shard

SALT = "s3-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 endpoint on 127.0.0.1 with one bucket; yields the bucket URL."""
    server_mod = pytest.importorskip("moto.server", reason="moto[server] not installed")
    s3fs = pytest.importorskip("s3fs", reason="s3fs not installed")
    try:
        server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
    except Exception as exc:  # noqa: BLE001  (no free port, blocked socket, missing server extras)
        pytest.skip(f"cannot start an S3 server on 127.0.0.1 ({exc})")
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    mp.delenv("AWS_PROFILE", raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir("medclip-test")
    yield "s3://medclip-test"
    s3fs.S3FileSystem.clear_instance_cache()
    mp.undo()
    server.stop()


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    index_export(SAMPLE, out / "manifest.parquet", reports=SAMPLE / "reports.csv", salt=SALT, workers=1, progress=False)
    build_cache(
        out / "manifest.parquet",
        out / "cache",
        config=CacheConfig(image_size=32, shard_size=16),
        workers=1,
        progress=False,
    )
    return out


def _items(dataset) -> list[dict]:
    return list(dataset) if isinstance(dataset, CacheDataset) else [dataset[i] for i in range(len(dataset))]


def _same(a: list[dict], b: list[dict]) -> None:
    assert [x["image_id"] for x in a] == [y["image_id"] for y in b] and len(a) > 0
    for x, y in zip(a, b):
        assert torch.equal(x["image"], y["image"]) and x["text"] == y["text"]
        assert torch.equal(torch.nan_to_num(x["labels"], 7.0), torch.nan_to_num(y["labels"], 7.0))


def test_manifest_and_cache_on_s3_stream_the_same_samples(s3, local):
    url = f"{s3}/site/manifest.parquet"
    df = read_manifest(local / "manifest.parquet")
    write_manifest(df, url, root=SAMPLE, extra={"created_by": "test"})
    back = read_manifest(url)
    pd.testing.assert_frame_equal(back.drop(columns=["files"]), df.drop(columns=["files"]))
    assert back.attrs["medclip"]["root"] == str(SAMPLE.resolve())

    result = build_cache(
        url, f"{s3}/site/cache", config=CacheConfig(image_size=32, shard_size=16), workers=1, progress=False
    )
    assert result.written == 67
    assert read_cache_index(f"{s3}/site/cache")["shards"] == read_cache_index(local / "cache")["shards"]
    for split in ("train", "val"):
        _same(
            _items(CacheDataset(f"{s3}/site/cache", split, shuffle=False)),
            _items(CacheDataset(local / "cache", split, shuffle=False)),
        )
    _same(_items(CacheMapDataset(f"{s3}/site/cache", "train")), _items(CacheMapDataset(local / "cache", "train")))
    # a shuffled epoch on rank 1 of 2 is the same stream too
    a = CacheDataset(f"{s3}/site/cache", "train", seed=3, rank=1, world_size=2, buffer_size=8)
    b = CacheDataset(local / "cache", "train", seed=3, rank=1, world_size=2, buffer_size=8)
    _same(_items(a), _items(b))
    # resuming a bucket cache reuses its uploaded shards
    again = build_cache(
        url, f"{s3}/site/cache", config=CacheConfig(image_size=32, shard_size=16), workers=1, progress=False
    )
    assert again.written == 0 and again.reused_shards == len(read_cache_index(local / "cache")["shards"])


def test_array_tasks_write_one_cache_in_a_bucket(s3, local):
    target = f"{s3}/array/cache"
    results = [
        build_cache(
            local / "manifest.parquet",
            target,
            config=CacheConfig(image_size=32, shard_size=16),
            workers=1,
            progress=False,
            shard=Shard(i, 2),
        )
        for i in range(2)
    ]
    assert [r.merged for r in results] == [False, True]
    assert read_cache_index(target) == read_cache_index(local / "cache")
    ids = sorted(x["image_id"] for x in CacheDataset(target, None, shuffle=False))
    assert ids == sorted(read_manifest(local / "manifest.parquet")["image_id"])


def test_storage_helpers_and_fit_paths_on_a_bucket(s3):
    from medclip.data import storage
    from medclip.train.data import resolve_path

    assert resolve_path(f"{s3}/site/cache") == f"{s3}/site/cache"  # not folded into a local path
    target = storage.join(s3, "h", "cache.part-00001-of-00002.json")
    assert target == f"{s3}/h/cache.part-00001-of-00002.json" and not storage.exists(target)
    storage.write_bytes(target, b"{}")
    assert storage.exists(target) and storage.read_text(target) == "{}"
    assert storage.glob(f"{s3}/h", "cache.part-*-of-*.json") == [target]
    storage.unlink(target)
    storage.unlink(target)  # a missing file is fine
    assert not storage.exists(target) and storage.glob(f"{s3}/h", "*.json") == []
    with pytest.raises(ValueError, match="cannot open this storage"):
        storage.exists("nosuchproto://x/y")


def test_cli_cache_to_a_bucket(s3, local):
    from medclip.cli import build_parser, main

    args = build_parser().parse_args(["cache", f"{s3}/site/manifest.parquet", "-o", f"{s3}/cli/cache"])
    assert args.manifest == f"{s3}/site/manifest.parquet" and args.output == f"{s3}/cli/cache"
    assert (
        main(
            [
                "cache",
                str(local / "manifest.parquet"),
                "-o",
                f"{s3}/cli/cache",
                "--image-size",
                "32",
                "--shard-size",
                "16",
                "--workers",
                "1",
                "-q",
            ]
        )
        == 0
    )
    assert read_cache_index(f"{s3}/cli/cache") == read_cache_index(local / "cache")


def test_a_recipe_writes_its_manifest_to_a_bucket(s3, tmp_path):
    from medclip.recipes import kermany_pneumonia as mod
    from medclip.sample import SAMPLE_KERMANY as sample

    assert mod.main([str(sample), "-o", f"{s3}/recipes/kermany.parquet", "--salt", SALT]) == 0
    df = read_manifest(f"{s3}/recipes/kermany.parquet")
    assert len(df) == 360 and all(p.startswith(str(sample.resolve())) for p in df["path"])
