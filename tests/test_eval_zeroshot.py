"""Zero-shot classifier (prompt ensembles, CheXzero softmax, multi-class) and thresholds on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medclip.inference.encoders import embed_texts
from medclip.inference.thresholds import (
    DEFAULT_UNCERTAIN_MARGIN,
    THRESHOLDS_FILE,
    choose_threshold,
    choose_thresholds,
    decide,
    load_thresholds,
    load_uncertain_margin,
    save_thresholds,
)
from medclip.inference.zeroshot import PROMPT_STYLES, ZeroShotClassifier, prompts_for_style
from medclip.knowledge import Graph
from medclip.model import create_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("tiny-test").eval()


@pytest.fixture(scope="module")
def graph():
    return Graph.load()


def test_predict_proba_is_the_pos_vs_neg_softmax_of_the_ensemble_means(model, graph):
    clf = ZeroShotClassifier.from_model(model, ["pleural_effusion", "cardiomegaly"], graph=graph)
    assert clf.findings == ["pleural_effusion", "cardiomegaly"]
    x = F.normalize(torch.randn(5, model.config.embed_dim), dim=-1)
    prob = clf.predict_proba(x)
    assert prob.shape == (5, 2) and ((prob > 0) & (prob < 1)).all()
    prompts = prompts_for_style(graph, ["pleural_effusion"], "ensemble")["pleural_effusion"]
    pos = F.normalize(embed_texts(model, prompts["positive"]).mean(0), dim=-1)
    neg = F.normalize(embed_texts(model, prompts["negative"]).mean(0), dim=-1)
    scale = float(model.logit_scale.detach().exp())
    expected = torch.softmax(torch.stack([scale * x @ pos, scale * x @ neg], dim=1), dim=1)[:, 0]
    np.testing.assert_allclose(prob[:, 0], expected.numpy(), rtol=1e-5, atol=1e-6)
    multi = clf.predict_multiclass(x)
    np.testing.assert_allclose(multi.sum(axis=1), 1.0, rtol=1e-6)
    # a 1-D embedding is one image; a wrong width is a clear error
    assert clf.predict_proba(x[0]).shape == (1, 2)
    with pytest.raises(ValueError, match="image features must be"):
        clf.predict_proba(torch.randn(2, 7))


def test_default_findings_and_styles(model, graph):
    clf = ZeroShotClassifier.from_model(model, graph=graph, style="sentence")
    assert clf.findings == graph.task_labels("chexpert14")
    for style in PROMPT_STYLES:
        prompts = prompts_for_style(graph, ["pneumonia", "no_finding"], style)
        assert set(prompts) == {"pneumonia", "no_finding"}
        assert all(p["positive"] and p["negative"] for p in prompts.values())
    assert prompts_for_style(graph, ["pneumonia"], "name")["pneumonia"] == {
        "positive": ["pneumonia"],
        "negative": ["no pneumonia."],
    }
    with pytest.raises(ValueError, match="prompt style"):
        prompts_for_style(graph, ["pneumonia"], "poetry")


def test_thresholds_round_trip_and_missing_file(tmp_path):
    assert load_thresholds(tmp_path) == {}
    assert load_uncertain_margin(tmp_path) == DEFAULT_UNCERTAIN_MARGIN
    path = save_thresholds(tmp_path, {"pneumonia": 0.3, "pleural_effusion": np.float32(0.7)}, uncertain_margin=0.1)
    assert path == tmp_path / THRESHOLDS_FILE
    assert load_thresholds(tmp_path) == pytest.approx({"pneumonia": 0.3, "pleural_effusion": 0.7})
    assert load_uncertain_margin(tmp_path) == 0.1
    with pytest.raises(ValueError, match="must lie in"):
        save_thresholds(tmp_path, {"pneumonia": 1.5})
    with pytest.raises(FileNotFoundError):
        save_thresholds(tmp_path / "nope", {"pneumonia": 0.5})
    (tmp_path / THRESHOLDS_FILE).write_text(json.dumps({"thresholds": [1, 2]}))
    with pytest.raises(ValueError, match="not a medclip thresholds file"):
        load_thresholds(tmp_path)
    (tmp_path / THRESHOLDS_FILE).write_text("{broken")
    with pytest.raises(ValueError, match=THRESHOLDS_FILE):
        load_thresholds(tmp_path)


def test_uncertain_band():
    assert decide(0.60, 0.5, 0.05) == "positive"
    assert decide(0.55, 0.5, 0.05) == "positive"
    assert decide(0.52, 0.5, 0.05) == "uncertain"
    assert decide(0.45, 0.5, 0.05) == "uncertain"
    assert decide(0.44, 0.5, 0.05) == "negative"


def test_choose_threshold_separates_and_maximises_f1():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8])
    t = choose_threshold(y, p, "youden")
    assert 0.3 < t < 0.6
    assert ((p >= t) == y).all()
    # F1 prefers catching the lone high-scoring negative's neighbours: check against brute force
    rng = np.random.default_rng(0)
    y2 = rng.integers(0, 2, 60)
    p2 = np.clip(rng.normal(0.4 + 0.2 * y2, 0.15), 0, 1)
    t2 = choose_threshold(y2, p2, "f1")
    from sklearn.metrics import f1_score

    best = max(f1_score(y2, p2 >= c) for c in np.unique(p2))
    assert f1_score(y2, p2 >= t2) == pytest.approx(best)
    assert choose_threshold(np.ones(4), np.linspace(0, 1, 4)) == 0.5  # one class: the default
    labels = np.array([[1, np.nan], [0, -1], [1, 1], [0, 0]])
    out = choose_thresholds(labels, np.array([[0.9, 0.1], [0.1, 0.9], [0.8, 0.7], [0.2, 0.2]]), ["a", "b"])
    assert set(out) == {"a", "b"} and 0.2 < out["a"] < 0.8 and 0.2 < out["b"] <= 0.7


def test_operating_points_round_trip_and_files_not_tied_to_the_model(tmp_path):
    from medclip.checkpoint import StaleFileError
    from medclip.inference.thresholds import FALLBACK, OperatingPoint, load_operating_points, recalibrate_command

    assert load_operating_points(tmp_path) is None
    auroc = {"value": 0.7, "low": float("nan"), "high": 0.9, "n": 30, "n_groups": 15}
    save_thresholds(
        tmp_path,
        {
            "edema": OperatingPoint(0.3, "youden", 30, 12, auroc),
            "pneumothorax": OperatingPoint(0.5, FALLBACK, 10, 0, reason="no positives in split 'val'"),
            "mass": 0.6,
        },
        model_fingerprint="abc",
        validation={"manifest": "/data/my manifest.parquet", "split": "tune"},
    )
    saved = json.loads((tmp_path / THRESHOLDS_FILE).read_text())  # strict JSON: NaN written as null
    assert saved["findings"]["edema"]["auroc"]["low"] is None and saved["thresholds"]["pneumothorax"] == 0.5
    points = load_operating_points(tmp_path, "abc")
    assert points.calibrated == ["edema", "mass"] and points.points["mass"].method == "manual"
    # no AUROC CI (its low is NaN): calibrated, but it may not raise the triage priority; a hand-set point may
    assert points.may_raise_priority == ["mass"] and "no CI" in points.points["edema"].priority_reason
    assert points.points["pneumothorax"].reason == "no positives in split 'val'"
    with pytest.raises(
        StaleFileError,
        match=r"another model \(fingerprint abc\).*recalibrate with: medclip eval "
        r"--checkpoint .* --manifest '/data/my manifest.parquet' --task zeroshot "
        r"--val-split tune --save-to-checkpoint$",
    ):
        load_operating_points(tmp_path, "def")
    # a file from before fingerprints were recorded is not trusted either
    (tmp_path / THRESHOLDS_FILE).write_text(json.dumps({"format": "medclip.thresholds", "thresholds": {"edema": 0.2}}))
    assert load_operating_points(tmp_path).points["edema"].calibrated
    with pytest.raises(StaleFileError, match="older medclip.*--manifest MANIFEST"):
        load_operating_points(tmp_path, "abc")
    assert recalibrate_command(
        "/ck",
        {"manifest": "m.parquet", "criterion": "f1", "unmentioned_as_negative": True, "findings": ["edema", "mass"]},
    ) == (
        "medclip eval --checkpoint /ck --manifest m.parquet --task zeroshot --findings edema,mass --criterion f1 "
        "--unmentioned-as-negative --save-to-checkpoint"
    )
