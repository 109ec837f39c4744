"""Categorical zero-shot (modality, plane, body region, pneumonia subtype) and its sourced graph extension."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from medclip.eval.attributes import (
    AttributeClassifier,
    evaluate_attributes,
    format_attributes,
    score_attribute,
)
from medclip.knowledge.attributes import ATTRIBUTES, IMAGING_EXTENSION, attribute_graph
from medclip.knowledge.prompts import attribute_prompts
from medclip.model import create_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("tiny-test").eval()


@pytest.fixture(scope="module")
def graph():
    return attribute_graph()


def test_extension_package_copy_equals_the_yaml_source():
    source = yaml.safe_load((REPO / "knowledge" / "extensions" / "imaging.yaml").read_text())
    assert json.loads(IMAGING_EXTENSION.read_text()) == source


def test_every_added_concept_cites_a_registered_source(graph):
    ext = json.loads(IMAGING_EXTENSION.read_text())
    for entry in ext["concepts"]:
        concept = graph[entry["id"]]
        facts = [*concept.synonym_facts, *concept.definition, *concept.appearance]
        assert facts or concept.xrefs, entry["id"]
        for fact in facts:
            assert fact.source in graph.sources and graph.sources[fact.source].get("licence"), (entry["id"], fact)
        assert concept.xrefs and all(x["source"] in graph.sources for x in concept.xrefs), entry["id"]
    # attributes are not chest findings: the labeler's default label set does not grow
    common = set(graph.task_labels("chest_xray_common"))
    assert not common & {c["id"] for c in ext["concepts"]}
    assert graph.lookup("viral pneumonia").id == "viral_pneumonia" and "pneumonia" in graph.ancestors("viral_pneumonia")


def test_every_class_of_every_attribute_has_prompts(graph):
    for spec in ATTRIBUTES.values():
        prompts = attribute_prompts(graph, spec.task)
        assert list(prompts) == graph.task_labels(spec.task)
        assert all(len(p) >= 4 for p in prompts.values()), spec.task
        assert set(spec.values.values()) <= set(prompts), spec.name  # every mapped value is a class
    assert len(graph.task_labels("body_region")) == 12
    assert "focal lobar consolidation." in attribute_prompts(graph, "pneumonia_subtype")["bacterial_pneumonia"]


def test_score_attribute_against_hand_counts():
    classes = ["a", "b", "c"]
    truth = np.array(["a", "a", "b", "b", "c", "", "a", "zz"], dtype=object)  # '' and unknown values dropped
    prob = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.2, 0.7, 0.1],
            [0.1, 0.8, 0.1],
            [0.3, 0.6, 0.1],
            [0.1, 0.1, 0.8],
            [1, 0, 0],
            [0.6, 0.3, 0.1],
            [0, 0, 1],
        ]
    )
    groups = np.array(["p1", "p1", "p2", "p3", "p4", "p5", "p6", "p7"])
    r = score_attribute(prob, truth, classes, groups, n_boot=200, seed=0)
    assert r["n"] == 6 and r["support"] == {"a": 3, "b": 2, "c": 1} and r["n_patients"] == 5
    assert r["accuracy"]["value"] == pytest.approx(5 / 6)  # the second "a" is called "b"
    assert r["balanced_accuracy"]["value"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert r["chance_accuracy"] == pytest.approx(3 / 6) and r["chance_balanced_accuracy"] == pytest.approx(1 / 3)
    assert r["per_class"]["c"]["auroc"]["value"] == 1.0
    assert r["confusion"]["a"] == {"a": 2, "b": 1, "c": 0}
    lo, hi = r["accuracy"]["low"], r["accuracy"]["high"]
    assert lo <= r["accuracy"]["value"] <= hi and r["accuracy"]["n_groups"] == 5


def test_classifier_finds_the_class_whose_prompts_an_image_matches(model, graph):
    clf = AttributeClassifier.from_model(model, "imaging_plane", graph)
    assert clf.classes == ["plane_axial", "plane_coronal", "plane_sagittal"]
    feats = 3.0 * clf.class_features[[0, 1, 2, 2, 1, 0]]  # an image embedded exactly like a class's prompts
    prob = clf.predict_proba(feats)
    np.testing.assert_allclose(prob.sum(1), 1.0, rtol=1e-5)
    assert prob.argmax(1).tolist() == [0, 1, 2, 2, 1, 0]
    frame = pd.DataFrame(
        {
            "patient_id": list("uvwxyz"),
            "plane": ["axial", "coronal", "sagittal", "sagittal", "coronal", "axial"],
            "modality": ["CT"] * 6,
        }
    )  # one modality only: not scored
    out = evaluate_attributes(model, frame, feats, graph=graph, n_boot=50)
    assert list(out) == ["plane"] and out["plane"]["accuracy"]["value"] == 1.0
    assert "plane" in format_attributes(out) and "1.000" in format_attributes(out)
    with pytest.raises(ValueError, match="unknown attribute"):
        evaluate_attributes(model, frame, feats, attributes=["colour"], graph=graph)


def test_medpix_attributes_through_the_runner(shared_dir, model, tmp_path):
    root = shared_dir / "data" / "medpix"
    if not (root / "metadata.csv").is_file():
        pytest.skip("medpix not in the shared data")
    from medclip.recipes import medpix as mod

    mod.main([str(root), "-o", str(tmp_path / "m.parquet"), "--salt", "s"])
    from medclip.eval.runner import EvalOptions, Evaluator

    ev = Evaluator(model, tmp_path / "m.parquet", EvalOptions(split="test", max_images=40, n_boot=50, val_split=None))
    res = ev.run(["attributes"])["attributes"]
    assert {"modality", "plane", "body_region"} <= set(res)
    for r in res.values():
        assert r["n"] > 0 and 0 <= r["accuracy"]["value"] <= 1 and r["chance_accuracy"] > 0
    assert set(res["modality"]["support"]) == {"computed_tomography", "magnetic_resonance_imaging"}


def test_vs_chance_says_whether_the_interval_excludes_chance():
    from medclip.eval.attributes import vs_chance

    assert vs_chance({"value": 0.93, "low": 0.88, "high": 0.97}, 0.5).endswith("+0.430, the CI excludes chance")
    assert "not distinguishable from guessing" in vs_chance({"value": 0.55, "low": 0.45, "high": 0.66}, 0.5)
    assert "below chance" in vs_chance({"value": 0.3, "low": 0.2, "high": 0.4}, 0.5)
    assert vs_chance({"value": None, "low": None, "high": None}, 0.5) == "n/a (chance 0.500)"
