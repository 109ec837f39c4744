"""Triage at the evaluation's operating points: only calibrated findings are called and set the priority."""

from __future__ import annotations

import pytest

from medclip.demo.render import render_findings, render_priority
from medclip.demo.triage import rank_findings, triage_priority
from medclip.inference.thresholds import FALLBACK, OperatingPoint
from medclip.knowledge import Graph

FINDINGS = ["pneumothorax", "pleural_effusion", "cardiomegaly"]
AUROC = {"value": 0.9, "low": 0.8, "high": 0.97, "n": 50, "n_groups": 30}


@pytest.fixture(scope="module")
def graph() -> Graph:
    return Graph.load()


def test_a_calibrated_critical_finding_makes_the_study_urgent(graph: Graph) -> None:
    points = {"pneumothorax": OperatingPoint(0.3, "youden", 50, 12, AUROC), "pleural_effusion": 0.6}
    results = rank_findings([0.7, 0.2, 0.9], FINDINGS, graph, points)
    assert [r.concept_id for r in results] == ["pneumothorax", "cardiomegaly", "pleural_effusion"]  # flagged first
    assert results[0].flagged and results[0].status == "positive"
    assert results[2].status == "negative" and results[2].point.method == "manual"  # a bare number: set by hand
    assert results[1].status == "not calibrated"  # no operating point at all
    priority = triage_priority(results)
    assert priority.level == "urgent" and priority.reasons == (results[0].name,)


def test_uncalibrated_findings_never_raise_the_priority(graph: Graph) -> None:
    """Regression (issue 12.4): 0.5 fallbacks were shown as operating points and made a study urgent."""
    trap = OperatingPoint(0.5, FALLBACK, 40, 0, reason="no positives in split 'val'")
    points = {
        "pneumothorax": trap,
        "pleural_effusion": OperatingPoint(0.5, FALLBACK, 40, 40, reason="x"),
        "cardiomegaly": OperatingPoint(0.4, "youden", 40, 12, AUROC),
    }
    results = rank_findings([0.99, 0.98, 0.1], FINDINGS, graph, points)
    pneumothorax = next(r for r in results if r.concept_id == "pneumothorax")
    assert pneumothorax.status == "not calibrated" and not pneumothorax.flagged
    priority = triage_priority(results)
    assert priority.level == "routine" and priority.reasons == ()
    assert set(priority.not_calibrated) == {pneumothorax.name, graph["pleural_effusion"].name}
    html = render_findings(results) + render_priority(priority)
    assert "&ge; 0.50" not in html  # a fallback is never shown as a chosen operating point
    assert html.count("data-status='not calibrated'") == 2 and "no positives in split &#x27;val&#x27;" in html
    assert "AUROC 0.90 (0.80&ndash;0.97)" in html and "n 40, 12 pos, 28 neg" in html
    assert "not calibrated, cannot set the priority" in html and "Triage priority: ROUTINE" in html


def test_nothing_calibrated_means_no_priority(graph: Graph) -> None:
    results = rank_findings([0.99, 0.98, 0.97], FINDINGS, graph, None)
    priority = triage_priority(results)
    assert {r.status for r in results} == {"not calibrated"} and priority.level == "not calibrated"
    assert "NOT CALIBRATED" in render_priority(priority)
