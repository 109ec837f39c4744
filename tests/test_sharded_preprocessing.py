"""Array-job preprocessing: index and cache split over N tasks, merged, equal a single-process run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medclip.data.cache import CacheConfig, CacheError, build_cache, cache_part_paths, iter_shard, merge_cache_parts
from medclip.data.indexer import index_export, part_paths
from medclip.data.shards import Shard, resolve_shard
from medclip.data.splits import assign_split, assign_splits
from medclip.sample import SAMPLE_EXPORT as SAMPLE_EXPORT_DIR

REPO = Path(__file__).resolve().parents[1]
SAMPLE = SAMPLE_EXPORT_DIR
SALT = "shard-test"


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    df = df.sort_values("image_id").reset_index(drop=True)
    df["files"] = [None if f is None else list(f) for f in df["files"]]
    return df


@pytest.fixture(scope="module")
def mixed_export(shared_dir, tmp_path_factory) -> Path:
    """Real chest X-rays with reports and PHI (covid-chestxray PACS-like export) plus two real MR series."""
    from medclip.recipes import pacs_export as mod

    out = tmp_path_factory.mktemp("export")
    mod.make_pacs_export(shared_dir / "data" / "covid_cxr", out, licences=None, max_images=40, max_size=128)
    for series in ("mr_0003", "mr_0004"):  # 3 + 151 slices: a series is split across array tasks
        shutil.copytree(
            shared_dir / "data" / "dicom_series_nih" / "In" / "20180918Si" / series, out / "mr" / f"s{series}"
        )
    return out


def test_sharded_index_equals_single_process(mixed_export, tmp_path):
    single = index_export(
        mixed_export,
        tmp_path / "one" / "m.parquet",
        reports=mixed_export / "reports.csv",
        salt=SALT,
        workers=1,
        progress=False,
    )
    out = tmp_path / "many" / "m.parquet"
    for i in range(3):
        part = index_export(mixed_export, out, salt=SALT, workers=1, progress=False, shard=Shard(i, 3))
        assert part.part_path is not None and part.part_path.exists() and not out.exists()
    assert len(part_paths(out)) == 3
    merged = index_export(
        mixed_export, out, reports=mixed_export / "reports.csv", salt=SALT, progress=False, merge=True
    )
    assert part_paths(out) == []  # merged into the manifest's own state
    a, b = _sorted(pd.read_parquet(tmp_path / "one" / "m.parquet")), _sorted(pd.read_parquet(out))
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a, b)
    assert (a["kind"] == "volume").sum() == 2 and a["report_text"].str.len().gt(0).sum() == 40
    assert merged.files_seen == single.files_seen and merged.files_read == single.files_read
    assert merged.skipped == single.skipped
    # the merged state makes a later single run incremental, as after a single-process index
    again = index_export(mixed_export, out, reports=mixed_export / "reports.csv", salt=SALT, workers=1, progress=False)
    assert again.files_read == 0 and again.files_reused == single.files_seen


def test_merge_names_missing_parts_and_refuses_another_salt(mixed_export, tmp_path):
    out = tmp_path / "m.parquet"
    index_export(mixed_export, out, salt=SALT, workers=1, progress=False, shard=Shard(1, 3), verify_pixels=False)
    with pytest.raises(ValueError, match=r"2 of 3 index parts are missing \(shard index 0, 2\)"):
        index_export(mixed_export, out, salt=SALT, progress=False, merge=True)
    for i in (0, 2):
        index_export(mixed_export, out, salt=SALT, workers=1, progress=False, shard=Shard(i, 3), verify_pixels=False)
    with pytest.raises(ValueError, match="another salt"):
        index_export(mixed_export, out, salt="other", progress=False, merge=True)
    assert not out.exists()


def test_splits_are_a_function_of_the_patient_alone():
    """Why splits agree across shards: a patient's split is a hash of (seed, patient), whatever else is indexed."""
    rng = np.random.default_rng(0)
    patients = pd.Series([f"p{k}" for k in rng.integers(0, 500, 3000)])
    whole = assign_splits(patients, (0.7, 0.2, 0.1), seed=3)
    for part in np.array_split(rng.permutation(len(patients)), 4):  # any partition of the rows, any order
        sub = patients.iloc[part]
        assert (assign_splits(sub, (0.7, 0.2, 0.1), seed=3) == whole.iloc[part]).all()
    assert all(assign_split(p, (0.7, 0.2, 0.1), 3) == s for p, s in zip(patients, whole))
    assert set(whole) == {"train", "val", "test"}


@pytest.fixture(scope="module")
def sample_manifest(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("idx") / "manifest.parquet"
    index_export(SAMPLE, out, reports=SAMPLE / "reports.csv", salt=SALT, workers=1, progress=False)
    return out


def _samples(cache: Path) -> dict[str, set[str]]:
    index = json.loads((cache / "cache.json").read_text())
    return {name: {s["__key__"] for s in iter_shard(cache / name)} for name in index["shards"]}


def test_sharded_cache_equals_single_process(sample_manifest, tmp_path):
    cfg = CacheConfig(image_size=32, shard_size=8)
    build_cache(sample_manifest, tmp_path / "one", config=cfg, workers=1, progress=False)
    many = tmp_path / "many"
    results = [
        build_cache(sample_manifest, many, config=cfg, workers=1, progress=False, shard=Shard(i, 3)) for i in (2, 0, 1)
    ]
    assert [r.merged for r in results] == [False, False, True]  # the last part to land merges
    assert cache_part_paths(many) == []
    one, merged = (
        json.loads((tmp_path / "one" / "cache.json").read_text()),
        json.loads((many / "cache.json").read_text()),
    )
    assert merged == one  # config, shard list with counts and ids hashes, skipped, labels
    assert _samples(many) == _samples(tmp_path / "one")
    name = sorted(one["shards"])[0]
    a, b = list(iter_shard(tmp_path / "one" / name)), list(iter_shard(many / name))
    assert all(np.array_equal(x["image"], y["image"]) and x["meta"] == y["meta"] for x, y in zip(a, b))
    # a task run again reuses its finished shards
    again = build_cache(sample_manifest, many, config=cfg, workers=1, progress=False, shard=Shard(1, 3))
    assert again.written == 0 and again.reused_shards == len([k for k in range(len(one["shards"])) if k % 3 == 1])


def test_cache_merge_by_hand_names_missing_parts(sample_manifest, tmp_path):
    cfg = CacheConfig(image_size=32, shard_size=16)
    build_cache(sample_manifest, tmp_path, config=cfg, workers=1, progress=False, shard=Shard(0, 2))
    assert not (tmp_path / "cache.json").exists()
    with pytest.raises(CacheError, match=r"missing shard index \[1\]"):
        merge_cache_parts(tmp_path)
    with pytest.raises(CacheError, match="other settings"):
        build_cache(
            sample_manifest,
            tmp_path,
            config=CacheConfig(image_size=48, shard_size=16),
            workers=1,
            progress=False,
            shard=Shard(0, 2),
        )


def test_shard_defaults_from_a_slurm_array():
    env = {
        "SLURM_ARRAY_TASK_ID": "5",
        "SLURM_ARRAY_TASK_COUNT": "8",
        "SLURM_ARRAY_TASK_MIN": "1",
        "SLURM_ARRAY_TASK_MAX": "8",
    }
    assert resolve_shard(env=env) == Shard(4, 8)  # --array=1-8: task 5 is part 4
    assert resolve_shard(env={"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2"}) == Shard(0, 2)
    assert resolve_shard(2, 1, env=env) == Shard(1, 2)  # explicit flags win
    assert resolve_shard(env={}) == Shard(0, 1)
    with pytest.raises(ValueError, match="consecutive"):
        resolve_shard(
            env={
                "SLURM_ARRAY_TASK_ID": "4",
                "SLURM_ARRAY_TASK_COUNT": "5",
                "SLURM_ARRAY_TASK_MIN": "0",
                "SLURM_ARRAY_TASK_MAX": "8",
            }
        )
    with pytest.raises(ValueError, match="0..2"):
        resolve_shard(3, 3, env={})
    with pytest.raises(ValueError, match="both"):
        resolve_shard(3, None, env={})
    assert [x for i in range(3) for x in Shard(i, 3).block(list(range(10)))] == list(range(10))


def test_cli_array_tasks_then_merge(tmp_path, monkeypatch, capsys):
    from medclip.cli import main

    out = tmp_path / "m.parquet"
    for task in ("1", "2"):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", task)
        monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
        monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
        assert main(["index", str(SAMPLE), "-o", str(out), "--salt", SALT, "--workers", "1", "-q"]) == 0
        assert f"index part {task} of 2" in capsys.readouterr().out
    assert (
        main(
            [
                "index",
                str(SAMPLE),
                "-o",
                str(out),
                "--salt",
                SALT,
                "--reports",
                str(SAMPLE / "reports.csv"),
                "--merge",
                "-q",
            ]
        )
        == 0
    )
    assert len(pd.read_parquet(out)) == 67
    cache = tmp_path / "cache"
    for task in ("1", "2"):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", task)
        assert (
            main(
                [
                    "cache",
                    str(out),
                    "-o",
                    str(cache),
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
    assert sum(v["count"] for v in json.loads((cache / "cache.json").read_text())["shards"].values()) == 67
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    assert main(["cache", str(out), "-o", str(tmp_path / "empty"), "--merge"]) == 2
    assert "no parts found" in capsys.readouterr().err
