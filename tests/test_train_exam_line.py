"""The exam line: a row's modality / plane / body region written as a report's examination header."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medclip.data.dataset import ManifestDataset
from medclip.data.manifest import write_manifest
from medclip.knowledge.attributes import attribute_graph, row_attributes
from medclip.knowledge.augment import exam_line
from medclip.train.text import TextPolicy

CT_CHEST = {"modality": "computed_tomography", "plane": "plane_axial", "body_region": "region_chest"}


@pytest.fixture(scope="module")
def graph():
    return attribute_graph()


def test_exam_line_names_every_attribute_in_graph_words(graph) -> None:
    lines = {exam_line(graph, CT_CHEST, random.Random(s)) for s in range(60)}
    assert len(lines) > 10  # varied templates and synonyms, not one sentence
    for line in lines:
        low = line.lower()
        assert any(n.lower() in low for n in graph["computed_tomography"].names), line
        assert any(n.lower() in low for n in graph["plane_axial"].names), line
        assert any(n.lower() in low for n in graph["region_chest"].names), line
        assert not any(n.lower() in low for n in ("mri", "magnetic resonance", "sagittal", "coronal")), line
    only_mr = exam_line(graph, {"modality": "magnetic_resonance_imaging"}, random.Random(0)).lower()
    assert any(n.lower() in only_mr for n in graph["magnetic_resonance_imaging"].names)
    assert exam_line(graph, {}, random.Random(0)) == ""
    assert exam_line(graph, {"modality": "not_a_concept"}, random.Random(0)) == ""
    assert exam_line(graph, CT_CHEST, random.Random(3)) == exam_line(graph, CT_CHEST, random.Random(3))


def test_exam_prob_opens_that_share_of_texts_with_the_exam_line() -> None:
    item = {"text": "A mass in the right lower lobe.", "labels": torch.tensor([]), "attributes": CT_CHEST}
    never = TextPolicy([], exam_prob=0.0)
    assert all(never(item, random.Random(s)) == item["text"] for s in range(50))
    always = TextPolicy([], exam_prob=1.0)
    for s in range(50):
        text = always(item, random.Random(s))
        assert text.endswith(item["text"]) and len(text) > len(item["text"]) + 5
    half = TextPolicy([], exam_prob=0.5)
    opened = sum(half(item, random.Random(s)) != item["text"] for s in range(400))
    assert 150 < opened < 250
    # rows without attributes (chest X-ray sets) are unchanged
    plain = {"text": item["text"], "labels": torch.tensor([]), "attributes": {}}
    assert always(plain, random.Random(0)) == item["text"]


def test_subtype_attribute_becomes_a_positive_finding_in_label_text() -> None:
    policy = TextPolicy(["pneumonia"], label_text=True)
    item = {
        "text": "",
        "labels": torch.tensor([1.0]),
        "attributes": {"pneumonia_subtype": "viral_pneumonia"},
        "text_mode": "labels",
    }
    texts = [policy(item, random.Random(s)).lower() for s in range(20)]
    assert all("viral" in t for t in texts), texts
    assert not any("bacterial" in t for t in texts)


def test_datasets_carry_the_rows_attributes(tmp_path: Path) -> None:
    records = []
    for k, (modality, plane, region) in enumerate((("CT", "axial", "region_chest"), ("MR", "", ""), ("CR", "", ""))):
        path = tmp_path / f"img{k}.png"
        Image.fromarray((np.random.default_rng(k).random((8, 8)) * 255).astype(np.uint8)).save(path)
        records.append(
            {
                "image_id": f"i{k}",
                "path": str(path),
                "kind": "image",
                "files": None,
                "patient_id": f"p{k}",
                "study_id": f"s{k}",
                "series_id": f"s{k}",
                "modality": modality,
                "plane": plane,
                "body_region": region,
                "report_text": "text",
                "split": "train",
            }
        )
    manifest = write_manifest(pd.DataFrame(records), tmp_path / "m.parquet", root=tmp_path)
    ds = ManifestDataset(manifest, image_size=8, with_images=False)
    assert ds[0]["attributes"] == CT_CHEST
    assert ds[1]["attributes"] == {"modality": "magnetic_resonance_imaging"}
    assert ds[2]["attributes"] == {}  # a radiograph's modality is not a CT / MR class
    assert row_attributes({"modality": float("nan"), "plane": None}) == {}
