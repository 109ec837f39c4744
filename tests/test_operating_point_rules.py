"""Issue 20: an operating point chosen on 4 positives flagged every patient. Minimum support, degenerate
thresholds and the AUROC floor decide which operating points are calibrated and which may raise the priority."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medclip.demo.render import render_findings, render_priority
from medclip.demo.triage import rank_findings, triage_priority
from medclip.eval.metrics import auroc, bootstrap_ci
from medclip.eval.runner import format_operating_points
from medclip.inference.thresholds import (
    AUROC_FLOOR,
    FALLBACK,
    MIN_NEGATIVES,
    MIN_POSITIVES,
    THRESHOLDS_FILE,
    CalibrationRules,
    OperatingPoint,
    calibrate,
    judge,
    load_operating_points,
    save_thresholds,
)
from medclip.knowledge import Graph


@pytest.fixture(scope="module")
def graph() -> Graph:
    return Graph.load()


def _val_auroc(y: np.ndarray, p: np.ndarray, groups: np.ndarray, cid: str) -> dict:
    return {cid: bootstrap_ci(auroc, y, p, groups=groups, n_boot=200, seed=0).to_dict()}


def _four_positives() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The issue's validation split: 12 images of 6 patients, 4 positives, a score that ranks them well."""
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0], dtype=float)
    p = np.array([0.36, 0.41, 0.44, 0.52, 0.30, 0.33, 0.35, 0.37, 0.38, 0.31, 0.34, 0.29])
    return y, p, np.repeat(np.arange(6), 2)


def _healthy(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """200 validation images of 100 patients (two each), 60 positives, a clearly informative score."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(60), np.zeros(140)]
    p = np.clip(np.r_[rng.normal(0.62, 0.08, 60), rng.normal(0.45, 0.08, 140)], 0.01, 0.99)
    return y, p, np.repeat(np.arange(100), 2)


def test_defaults_are_the_documented_rules() -> None:
    assert (MIN_POSITIVES, MIN_NEGATIVES, AUROC_FLOOR) == (10, 10, 0.6)
    assert CalibrationRules().to_dict() == {
        "min_positives": 10,
        "min_negatives": 10,
        "auroc_floor": 0.6,
        "flag_rate_margin": 0.02,
    }
    with pytest.raises(ValueError, match="at least 1"):
        CalibrationRules(min_positives=0)
    with pytest.raises(ValueError, match="auroc_floor"):
        CalibrationRules(auroc_floor=1.5)


def test_a_point_chosen_on_4_positives_is_not_calibrated_and_never_raises_the_priority(graph: Graph) -> None:
    y, p, groups = _four_positives()
    point = calibrate(
        y[:, None],
        p[:, None],
        ["pleural_effusion"],
        auroc=_val_auroc(y, p, groups, "pleural_effusion"),
        groups=groups,
        n_boot=200,
    )["pleural_effusion"]
    assert not point.calibrated and point.method == FALLBACK and point.threshold == 0.5
    assert point.reason == "only 4 positives (needs 10); only 8 negatives (needs 10)"
    assert point.can_raise_priority is False and point.priority_reason == "not calibrated"
    # what Youden chose is kept for the record, never used
    assert point.candidate is not None and point.candidate["method"] == "youden" and 0.29 < point.candidate["threshold"]
    assert point.auroc is not None and point.n == 12 and point.positives == 4 and point.negatives == 8
    # the issue's point as a caller builds it (Youden at 0.00 on 4 positives): judged, it cannot drive the priority
    issue = OperatingPoint(0.0, "youden", n=12, positives=4, auroc={"value": 0.81, "low": 0.62, "high": 0.95})
    results = rank_findings([0.36, 0.2], ["pleural_effusion", "cardiomegaly"], graph, {"pleural_effusion": issue})
    effusion = next(r for r in results if r.concept_id == "pleural_effusion")
    assert effusion.status == "not calibrated" and not effusion.can_raise_priority
    assert effusion.point.reason.endswith("threshold 0.00 flags every image")
    priority = triage_priority(results)
    assert priority.level == "not calibrated" and priority.reasons == () and effusion.name in priority.not_calibrated
    html = render_findings(results) + render_priority(priority)
    assert "only 4 positives (needs 10)" in html and "PRIORITY" not in html.replace("Triage priority", "")


def test_save_thresholds_writes_a_4_positive_point_as_not_calibrated(tmp_path: Path) -> None:
    save_thresholds(tmp_path, {"pleural_effusion": OperatingPoint(0.0, "youden", n=12, positives=4)})
    saved = json.loads((tmp_path / THRESHOLDS_FILE).read_text())
    assert saved["version"] == 3 and saved["thresholds"] == {"pleural_effusion": 0.5}  # never the 0.00
    record = saved["findings"]["pleural_effusion"]
    assert record["method"] == "fallback" and record["candidate"] == {"method": "youden", "threshold": 0.0}
    assert record["can_raise_priority"] is False and "only 4 positives (needs 10)" in record["reason"]


def test_youden_on_the_lowest_score_flags_everyone_and_is_not_calibrated(graph: Graph) -> None:
    """Enough support, but the score is useless (positives score lowest): Youden's J is best (0) just below
    the lowest score, a threshold that flags every validation image."""
    y = np.r_[np.ones(12), np.zeros(12)]
    p = np.r_[np.linspace(0.20, 0.30, 12), np.linspace(0.31, 0.45, 12)]
    groups = np.arange(24)
    point = calibrate(
        y[:, None],
        p[:, None],
        ["pneumothorax"],
        auroc=_val_auroc(y, p, groups, "pneumothorax"),
        groups=groups,
        n_boot=100,
    )["pneumothorax"]
    assert not point.calibrated and point.reason == "threshold flags 100% of validation images"
    assert point.candidate is not None and point.candidate["flag_rate"] == 1.0
    assert point.candidate["threshold"] < p.min()  # Youden landed below the lowest score
    assert point.score_range == (pytest.approx(0.20), pytest.approx(0.45))
    # pneumothorax is critical: trusted, that point would make every study urgent
    results = rank_findings([0.25], ["pneumothorax"], graph, {"pneumothorax": point})
    assert results[0].status == "not calibrated" and not results[0].flagged
    assert triage_priority(results).level == "not calibrated"
    # a point that flags (almost) no one is degenerate too
    rare = judge(OperatingPoint(0.9, "f1", n=500, positives=20, flag_rate=0.01, score_range=(0.1, 0.95)))
    assert not rare.calibrated and rare.reason == "threshold flags 1% of validation images"


def test_a_healthy_split_gives_a_calibrated_point_in_clinician_units(graph: Graph) -> None:
    y, p, groups = _healthy()
    point = calibrate(
        y[:, None],
        p[:, None],
        ["pneumothorax"],
        auroc=_val_auroc(y, p, groups, "pneumothorax"),
        groups=groups,
        n_boot=300,
        seed=1,
    )["pneumothorax"]
    assert point.calibrated and point.method == "youden" and point.reason == "" and point.candidate is None
    t = point.threshold
    assert p.min() < t < p.max() and point.flag_rate == pytest.approx(float((p >= t).mean()))
    sens, spec = point.sensitivity, point.specificity
    assert sens is not None and spec is not None
    assert sens["value"] == pytest.approx(float((p[y == 1] >= t).mean()))
    assert spec["value"] == pytest.approx(float((p[y == 0] < t).mean()))
    for est in (sens, spec):  # patient-bootstrap 95% CIs
        assert est["low"] <= est["value"] <= est["high"] and est["n_groups"] == 100
    assert point.can_raise_priority is True
    assert (
        point.priority_reason.startswith("validation AUROC CI lower bound") and "> floor 0.60" in point.priority_reason
    )
    results = rank_findings([0.99], ["pneumothorax"], graph, {"pneumothorax": point})
    assert results[0].flagged and triage_priority(results).level == "urgent"
    html = render_findings(results)
    assert f"flags at probability &ge; {t:.2f}" in html and "validation sensitivity " in html
    assert f"specificity {spec['value']:.2f} ({spec['low']:.2f}&ndash;{spec['high']:.2f})" in html
    assert "data-can-raise-priority='true'" in html


def test_a_calibrated_point_whose_auroc_ci_reaches_the_floor_cannot_raise_the_priority(graph: Graph) -> None:
    y, p, groups = _healthy()
    weak = {"pneumothorax": {"value": 0.68, "low": 0.55, "high": 0.80, "n": 200, "n_groups": 100}}
    point = calibrate(y[:, None], p[:, None], ["pneumothorax"], auroc=weak, groups=groups, n_boot=50)["pneumothorax"]
    assert point.calibrated and point.can_raise_priority is False
    assert point.priority_reason == "validation AUROC CI lower bound 0.55 <= floor 0.60"
    results = rank_findings(
        [0.99, 0.1], ["pneumothorax", "cardiomegaly"], graph, {"pneumothorax": point, "cardiomegaly": 0.5}
    )
    pneumothorax = next(r for r in results if r.concept_id == "pneumothorax")
    assert pneumothorax.status == "positive" and not pneumothorax.flagged  # called, but it cannot drive the priority
    priority = triage_priority(results)
    assert priority.level == "routine" and priority.cannot_raise == (pneumothorax.name,)
    html = render_findings(results) + render_priority(priority)
    assert "validation AUROC CI lower bound 0.55 &lt;= floor 0.60" in html and "URGENT" not in html
    # a looser floor is the user's call
    loose = calibrate(
        y[:, None], p[:, None], ["pneumothorax"], auroc=weak, n_boot=0, rules=CalibrationRules(auroc_floor=0.5)
    )
    assert loose["pneumothorax"].can_raise_priority is True


def test_rules_are_configurable_and_stored_in_thresholds_json(tmp_path: Path) -> None:
    y, p, groups = _four_positives()
    rules = CalibrationRules(min_positives=3, min_negatives=3, auroc_floor=0.5)
    points = calibrate(
        y[:, None],
        p[:, None],
        ["pleural_effusion"],
        auroc=_val_auroc(y, p, groups, "pleural_effusion"),
        groups=groups,
        n_boot=200,
        rules=rules,
    )
    assert points["pleural_effusion"].calibrated
    save_thresholds(tmp_path, points, rules=rules, model_fingerprint="abc")
    saved = json.loads((tmp_path / THRESHOLDS_FILE).read_text())
    assert saved["rules"] == rules.to_dict()
    loaded = load_operating_points(tmp_path, "abc")
    assert loaded is not None and loaded.rules == rules and loaded.version == 3
    assert loaded.points["pleural_effusion"] == points["pleural_effusion"]  # the JSON round trip is exact
    assert judge(loaded.points["pleural_effusion"], rules) == loaded.points["pleural_effusion"]  # idempotent


def test_a_version_2_file_is_judged_by_the_new_rules_at_load(tmp_path: Path) -> None:
    """An old checkpoint's 4-positive point is not trusted either; its healthy points still are."""
    import torch

    from medclip.checkpoint import CheckpointDir
    from medclip.demo import TriageEngine
    from medclip.model import create_model

    torch.manual_seed(0)
    model_dir = create_model("tiny-test").save_pretrained(tmp_path / "model")
    fingerprint = CheckpointDir(model_dir).fingerprint()
    v2 = {
        "format": "medclip.thresholds",
        "version": 2,
        "model_fingerprint": fingerprint,
        "criterion": "youden",
        "uncertain_margin": 0.05,
        "validation": {"manifest": "/data/m.parquet", "split": "val"},
        "thresholds": {"pleural_effusion": 0.0, "edema": 0.42, "pneumothorax": 0.5, "fracture": 0.3},
        "findings": {
            "pleural_effusion": {
                "threshold": 0.0,
                "method": "youden",
                "n": 12,
                "positives": 4,
                "auroc": {"value": 0.81, "low": 0.62, "high": 0.95, "n": 12, "n_groups": 6},
            },
            "edema": {
                "threshold": 0.42,
                "method": "youden",
                "n": 120,
                "positives": 31,
                "auroc": {"value": 0.83, "low": 0.75, "high": 0.9, "n": 120, "n_groups": 60},
            },
            "pneumothorax": {
                "threshold": 0.5,
                "method": "fallback",
                "n": 120,
                "positives": 0,
                "reason": "no positives in split 'val'",
            },
            "fracture": {"threshold": 0.3, "method": "manual"},
        },
    }
    (Path(model_dir) / THRESHOLDS_FILE).write_text(json.dumps(v2))
    points = load_operating_points(model_dir, fingerprint)
    assert points is not None and points.version == 2 and points.rules == CalibrationRules()
    effusion = points.points["pleural_effusion"]
    assert not effusion.calibrated and effusion.threshold == 0.5 and not effusion.can_raise_priority
    assert (
        effusion.reason == "only 4 positives (needs 10); only 8 negatives (needs 10); threshold 0.00 flags every image"
    )
    assert points.calibrated == ["edema", "fracture"] and points.may_raise_priority == ["edema", "fracture"]
    assert points.points["edema"].threshold == 0.42 and points.points["edema"].sensitivity is None
    engine = TriageEngine.load(model_dir)
    assert "thresholds.json is version 2" in engine.gallery_note and "recalibrate" in engine.gallery_note
    assert engine.thresholds["pleural_effusion"].reason == effusion.reason


def test_eval_table_says_which_findings_got_an_operating_point_and_why() -> None:
    y4, p4, _ = _four_positives()
    yh, ph, groups = _healthy()
    y = np.full((200, 3), np.nan)
    p = np.full((200, 3), 0.5)
    y[:, 0], p[:, 0] = yh, ph
    y[:12, 1], p[:12, 1] = y4, p4
    y[:, 2] = 0.0
    findings = ["edema", "pleural_effusion", "pneumothorax"]
    val_auroc = _val_auroc(yh, ph, groups, "edema")
    points = calibrate(y, p, findings, auroc=val_auroc, groups=groups, n_boot=100)
    table = format_operating_points(
        {
            "split": "val",
            "rules": CalibrationRules().to_dict(),
            "findings": {c: q.to_dict() for c, q in points.items()},
        },
        "/ck/thresholds.json",
    )
    lines = table.splitlines()
    assert lines[0].startswith("Operating points (split 'val'): 1 of 3 calibrated") and "thresholds.json" in lines[0]
    assert lines[1].split() == ["finding", "operating", "point", "(validation)", "status"]
    rows = {line.split()[0]: line for line in lines[3:]}
    assert set(rows) == set(findings)
    assert f"p >= {points['edema'].threshold:.2f}; sens " in rows["edema"] and "may raise priority" in rows["edema"]
    assert rows["pleural_effusion"].endswith("not calibrated: only 4 positives (needs 10); only 8 negatives (needs 10)")
    assert rows["pneumothorax"].endswith("not calibrated: no positives in split 'val'")
