"""The quality suite's own logic (benchmarks/quality.py): paired bootstraps, capping by patient, the plain-CLIP
captions, and that every ablation is a valid training config."""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def q():
    spec = importlib.util.spec_from_file_location("quality_benchmark", REPO / "benchmarks" / "quality.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _auroc_run(q, y, score, groups):
    return q._auroc_stat(np.asarray(y, float), np.asarray(score, float), np.asarray(groups))


def test_paired_bootstrap_of_seed_averaged_statistic(q):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200).astype(float)
    groups = np.repeat(np.arange(100), 2).astype(str)
    good = [_auroc_run(q, y, y + rng.normal(0, s, 200), groups) for s in (0.5, 0.6, 0.7)]
    noise = [_auroc_run(q, y, rng.normal(0, 1, 200), groups) for _ in range(3)]
    point, lo, hi = q.paired_bootstrap(good, noise, n_boot=300)
    assert point == pytest.approx(np.mean([r.value for r in good]) - np.mean([r.value for r in noise]))
    assert 0 < lo <= point <= hi  # a real difference: the CI excludes 0
    same, lo0, hi0 = q.paired_bootstrap(good, good, n_boot=100)
    assert same == 0.0 and lo0 == hi0 == 0.0  # the same resample for both arms


def test_val_score_is_the_mean_gain_over_chance(q):
    g = np.array(["a", "b"])
    stats = {
        "x": q.Stat(0.75, g, lambda i: 0.75, 0.5),
        "y": q.Stat(0.3, g, lambda i: 0.3, 0.1),
        "z": q.Stat(math.nan, g, lambda i: math.nan, 0.5),
    }
    assert q.val_score(stats, ["x", "y", "z"]) == pytest.approx((0.5 + 0.2 / 0.9) / 2)


def test_val_score_difference_tells_a_real_gain_from_chance(q):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300).astype(float)
    groups = np.repeat(np.arange(150), 2).astype(str)

    def variant(noise: float) -> dict:
        return {
            "covid zero-shot": _auroc_run(q, y, y + rng.normal(0, noise, 300), groups),
            "medpix zero-shot": _auroc_run(q, y, y + rng.normal(0, noise, 300), groups),
        }

    keys = ["covid zero-shot", "medpix zero-shot"]
    better, worse = variant(0.4), variant(3.0)
    point, lo, hi = q.val_score_difference(better, worse, keys, n_boot=200)
    assert point == pytest.approx(q.val_score(better, keys) - q.val_score(worse, keys))
    assert 0 < lo <= point <= hi
    same, lo0, hi0 = q.val_score_difference(worse, variant(3.0), keys, n_boot=200)
    assert lo0 < 0 < hi0  # two equally noisy variants: the CI includes 0


def test_cap_keeps_whole_patients_of_one_split(q):
    df = pd.DataFrame({"patient_id": [f"p{i // 2}" for i in range(40)], "split": ["train"] * 30 + ["test"] * 10})
    capped = q._cap_patients(df, "train", 11, seed=0)
    train = capped[capped["split"] == "train"]
    assert 11 <= len(train) <= 12 and (train.groupby("patient_id").size() == 2).all()
    assert (capped["split"] == "test").sum() == 10


def test_plain_clip_captions_label_only_rows(q):
    frame = pd.DataFrame(
        {
            "report_findings": ["Heart is normal.", "", ""],
            "report_impression": ["", "", ""],
            "report_text": ["", "", ""],
            "label.pneumonia": [np.nan, 1.0, 0.0],
        }
    )
    assert q.plain_texts(frame) == ["Heart is normal.", "chest x-ray: pneumonia.", "chest x-ray: normal."]


def test_every_ablation_is_a_valid_training_config(q, tmp_path):
    from medclip.train.config import validate_config

    args = argparse.Namespace(
        batch_size=8,
        image_size=96,
        max_tokens=32,
        lr=1e-4,
        weight_decay=0.05,
        warmup=1,
        steps=2,
        loss=None,
        workdir=tmp_path,
    )
    for name in ("covid", "kermany", "medpix"):
        pd.DataFrame({"image_id": ["x"], "path": ["x.png"], "split": ["train"]}).to_parquet(
            tmp_path / f"{name}.parquet"
        )
    sets = {
        n: q.DataSet(n, tmp_path / f"{n}.parquet", tmp_path / f"{n}.parquet", "labels" if n == "kermany" else "report")
        for n in ("covid", "kermany", "medpix")
    }
    from medclip.train.config import DEFAULTS, deep_merge

    for name, (_, overrides) in q.ABLATIONS.items():
        config = q.medclip_config(sets, tmp_path / name, args, 0, overrides)
        for key, value in overrides.items():
            assert q._get_dotted(config, key) == value, (name, key)
        validate_config(deep_merge(DEFAULTS, config), f"ablation {name}")
    # report sets train in text mode "mixed", so data.label_text.mix_prob (the label_text_mix row) takes effect
    modes = {src["name"]: src["text"] for src in q.medclip_config(sets, tmp_path / "d", args, 0)["data"]["sources"]}
    assert modes == {"covid": "mixed", "kermany": "labels", "medpix": "mixed"}
    assert set(q.DEFAULT_ABLATIONS) <= set(q.ABLATIONS)
