"""Text augmentation determinism and content, and zero-shot prompts."""

from __future__ import annotations

import random

import pytest

from medclip.knowledge import Graph, ReportAugmenter, ReportLabeler, zeroshot_prompts

REPORT = (
    "Borderline cardiomegaly. Small left pleural effusion. No pneumothorax. "
    "Calcified granuloma in the right upper lobe. Mild degenerative changes of the thoracic spine."
)


@pytest.fixture(scope="module")
def graph() -> Graph:
    return Graph.load()


def test_same_seed_same_output(graph: Graph) -> None:
    a, b = ReportAugmenter(graph, seed=7), ReportAugmenter(graph, seed=7)
    assert [a(REPORT) for _ in range(5)] == [b(REPORT) for _ in range(5)]
    assert a(REPORT, random.Random(3)) == b(REPORT, random.Random(3))
    outs = {ReportAugmenter(graph, seed=s)(REPORT) for s in range(10)}
    assert len(outs) > 3


def test_sentence_sampling_keeps_order_and_subset(graph: Graph) -> None:
    aug = ReportAugmenter(graph, seed=0, p_synonym=0.0, p_description=0.0, p_keep_sentence=0.5)
    sentences = aug.sentences(REPORT)
    for _ in range(20):
        out = aug.sentences(aug(REPORT))
        assert 1 <= len(out) <= len(sentences)
        idx = [sentences.index(s) for s in out]
        assert idx == sorted(idx)


def test_synonym_substitution_preserves_labels(graph: Graph) -> None:
    aug = ReportAugmenter(graph, seed=1, p_synonym=1.0, p_keep_sentence=1.0, p_description=0.0)
    labeler = ReportLabeler(graph, findings=["cardiomegaly", "pleural_effusion", "pneumothorax"])
    before = {k: m.status for k, m in labeler.label(REPORT).items()}
    changed = 0
    for _ in range(10):
        out = aug(REPORT)
        changed += out != REPORT
        assert {k: m.status for k, m in labeler.label(out).items()} == before, out
    assert changed


def test_description_insertion(graph: Graph) -> None:
    aug = ReportAugmenter(graph, seed=0, p_synonym=0.0, p_keep_sentence=1.0, p_description=1.0)
    out = aug("Small left pleural effusion.")
    assert graph["pleural_effusion"].appearance[0].text in out


def test_labels_to_text(graph: Graph) -> None:
    aug = ReportAugmenter(graph, seed=0)
    labels = {"cardiomegaly": 1.0, "pneumonia": -1.0, "pneumothorax": 0.0, "edema": float("nan")}
    text = aug.labels_to_text(labels, random.Random(0))
    assert text == aug.labels_to_text(labels, random.Random(0))
    result = ReportLabeler(graph).label(text)
    assert result["cardiomegaly"].status == "positive"
    assert result["pneumonia"].status == "uncertain"
    assert result["edema"].status == "not_mentioned"
    assert (
        "abnormality" in aug.labels_to_text({"pneumothorax": 0.0}, random.Random(0)).lower()
        or "normal" in aug.labels_to_text({"pneumothorax": 0.0}, random.Random(0)).lower()
    )
    with pytest.raises(KeyError):
        aug.labels_to_text({"unicorn": 1.0}, random.Random(0))
    with pytest.raises(ValueError):
        aug.labels_to_text({"edema": 2.0}, random.Random(0))


def test_zeroshot_prompts(graph: Graph) -> None:
    prompts = zeroshot_prompts(graph, "chexpert14")
    assert list(prompts) == graph.task_labels("chexpert14")
    for cid, p in prompts.items():
        assert p["positive"] and p["negative"], cid
        assert not set(p["positive"]) & set(p["negative"])
    assert "no pleural effusion." in prompts["pleural_effusion"]["negative"]
    assert any("effusion" in s for s in prompts["pleural_effusion"]["positive"])
    assert any("costophrenic" in s for s in prompts["pleural_effusion"]["positive"])  # appearance
    labeler = ReportLabeler(graph, findings=["pleural_effusion"])
    for s in prompts["pleural_effusion"]["negative"]:
        assert labeler.label(s)["pleural_effusion"].status == "negative", s
    assert zeroshot_prompts(graph, ["Pneumothorax"]).keys() == {"pneumothorax"}
