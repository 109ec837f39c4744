"""Corrupted or missing cache shards during training: a member whose image.npy is garbage, a tar truncated mid-member,
a shard deleted after the epoch started. Each bad sample is skipped with a counted warning (its place filled by a
recent good sample, so every rank yields its share), more than ``data.max_bad_samples`` stop the run with a message
naming the shard, and an exact resume over the same files is still exact."""

from __future__ import annotations

import copy
import io
import logging
import tarfile
from pathlib import Path

import pytest
import torch
from test_train_fit import CRASH_AFTER, _config, _weights, manifest, one_torch_thread  # noqa: F401 (fixtures)

from medclip.data.cache import CacheConfig, CacheError, build_cache
from medclip.data.dataset import CacheDataset, CacheMapDataset
from medclip.train import fit


@pytest.fixture()
def cache(manifest: Path, tmp_path: Path) -> Path:  # noqa: F811
    """24 train samples in 3 shards of 8 (and 6 val)."""
    out = tmp_path / "cache"
    build_cache(manifest, out, config=CacheConfig(image_size=32, shard_size=8), workers=1, progress=False)
    return out


def _shard(cache: Path, k: int) -> Path:
    return cache / "train" / f"shard-{k:06d}.tar"


def _garble(shard: Path, key: str, member: str = "image.npy") -> None:
    """Rewrite ``shard`` with the ``member`` of sample ``key`` replaced by bytes that are not a .npy file."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar if m.isfile()]  # type: ignore[union-attr]
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            if info.name == f"{key}.{member}":
                data = b"\x93NUMPY garbage from a bad disk block" * 3
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _keys(shard: Path) -> list[str]:
    with tarfile.open(shard) as tar:
        return list(dict.fromkeys(m.name.partition(".")[0] for m in tar))


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "medclip.data.dataset"]


def test_a_garbage_image_member_is_skipped_with_a_counted_warning(
    cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad_key = _keys(_shard(cache, 0))[3]
    _garble(_shard(cache, 0), bad_key)
    dataset = CacheDataset(cache, "train", shuffle=False)
    with caplog.at_level(logging.WARNING, logger="medclip.data.dataset"):
        ids = [item["image_id"] for item in dataset]
    assert len(ids) == len(dataset) == 24  # the rank still yields its share
    assert bad_key not in ids and len(set(ids)) == 23  # one good sample repeated in the bad one's place
    (message,) = _warnings(caplog)
    assert message.startswith(f"cache shard {_shard(cache, 0)}: sample {bad_key} skipped (image.npy does not decode")
    assert "1 bad in this epoch, the run stops past 100 (data.max_bad_samples)" in message


def test_a_shard_truncated_mid_member_skips_its_tail_and_too_many_bad_samples_stop_naming_it(
    cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shard = _shard(cache, 1)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2 + 100])  # a full quota / dead node mid-write: cut inside a member
    with caplog.at_level(logging.WARNING, logger="medclip.data.dataset"):
        ids = [item["image_id"] for item in CacheDataset(cache, "train", shuffle=False, max_bad_samples=8)]
    assert len(ids) == 24
    (message,) = _warnings(caplog)
    # the cut lands in a member's data or header: either way the shard's samples past it count as bad
    assert message.startswith(f"cache shard {shard}: 3 samples skipped (the shard ")
    assert "truncated" in message and "after 5 samples" in message and "cache.json lists 8" in message

    with pytest.raises(CacheError) as info:
        list(CacheDataset(cache, "train", shuffle=False, max_bad_samples=2))
    text = str(info.value)
    assert text.startswith(f"cache shard {shard}: the shard ") and "truncated" in text
    assert "exceed data.max_bad_samples = 2, so training stops" in text and "run `medclip cache` again" in text


def test_a_shard_deleted_after_the_epoch_started_is_skipped_or_stops_the_run(
    cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for limit, stops in ((8, False), (7, True)):
        dataset = CacheDataset(cache, "train", shuffle=False, max_bad_samples=limit)
        stream = iter(dataset)
        first = [next(stream)["image_id"] for _ in range(3)]  # the epoch has started
        gone = _shard(cache, 2)
        saved = gone.read_bytes()
        gone.unlink()
        try:
            if stops:
                with pytest.raises(CacheError, match=f"cache shard {gone}: the shard is missing"):
                    list(stream)
            else:
                with caplog.at_level(logging.WARNING, logger="medclip.data.dataset"):
                    rest = [item["image_id"] for item in stream]
                assert len(first + rest) == 24
                assert any("8 samples skipped (the shard is missing" in m for m in _warnings(caplog))
        finally:
            gone.write_bytes(saved)


def test_random_access_cache_skips_bad_members_and_a_deleted_shard(
    cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad_key = _keys(_shard(cache, 0))[1]
    _garble(_shard(cache, 0), bad_key)
    dataset = CacheMapDataset(cache, "train", max_bad_samples=9)
    with caplog.at_level(logging.WARNING, logger="medclip.data.dataset"):
        items = [dataset[k]["image_id"] for k in range(len(dataset))]
    assert len(items) == 24 and bad_key not in items  # the next good item takes the bad one's place
    assert any(f"cache shard {_shard(cache, 0)}:" in m for m in _warnings(caplog))
    _shard(cache, 2).unlink()
    with pytest.raises(CacheError, match="exceed data.max_bad_samples = 9"):
        [dataset[k] for k in range(len(dataset))]

    # a broken meta.json: skipped as an item; where the sampler reads ids at setup, an error naming the shard
    _shard(cache, 2).write_bytes(b"")
    _garble(_shard(cache, 1), _keys(_shard(cache, 1))[0], member="meta.json")
    fresh = CacheMapDataset(cache, "train", max_bad_samples=20)
    assert len(fresh) == 16 and len({fresh[k]["image_id"] for k in range(len(fresh))}) == 14
    with pytest.raises(ValueError, match=f"cache shard {_shard(cache, 1)}: meta.json of sample #8 cannot be read"):
        fresh.image_ids()


@pytest.mark.slow
def test_fit_over_a_corrupted_cache_finishes_and_resumes_exactly(cache: Path, tmp_path: Path) -> None:
    _garble(_shard(cache, 1), _keys(_shard(cache, 1))[2])
    base = _config({"cache_dir": str(cache)}, tmp_path / "full", max_steps=7)
    base["data"]["dataset_kwargs"] = {"buffer_size": 4}
    base["data"]["max_bad_samples"] = 3
    base["checkpoint"]["every_n_steps"] = 2
    full = fit(copy.deepcopy(base))

    killed = copy.deepcopy(base)
    killed["output_dir"] = str(tmp_path / "killed")
    killed["trainer"]["callbacks"] = [{"class_path": CRASH_AFTER, "init_args": {"step": 5}}]
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(killed)
    resumed = copy.deepcopy(base)
    resumed["output_dir"] = str(tmp_path / "killed")
    resumed["resume"] = str(tmp_path / "killed" / "checkpoints" / "step-00000004.ckpt")
    a, b = _weights(full), _weights(fit(resumed))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)

    strict = copy.deepcopy(base)
    strict["output_dir"] = str(tmp_path / "strict")
    strict["data"]["max_bad_samples"] = 0
    with pytest.raises(CacheError, match="exceed data.max_bad_samples = 0"):
        fit(strict)
