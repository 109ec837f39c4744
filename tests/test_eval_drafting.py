"""Retrieval-based report drafting: neighbour selection, de-duplication, sections, save/load, scoring."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from medclip.eval.drafting import clinical_correctness, score_drafts
from medclip.inference.drafting import DraftedReport, ReportDrafter, drafting_corpus, drafting_text
from medclip.knowledge import ReportLabeler
from medclip.model import create_model

CORPUS = [
    "FINDINGS: Large right pleural effusion. Heart size is normal. IMPRESSION: Right pleural effusion.",
    "FINDINGS: Moderate right pleural effusion. The heart size is normal. IMPRESSION: Right pleural effusion.",
    "FINDINGS: The lungs are clear. No pneumothorax. IMPRESSION: No acute cardiopulmonary abnormality.",
    "Cardiomegaly with pulmonary edema.",
]


def _hand_drafter() -> ReportDrafter:
    """A drafter over CORPUS with hand-made embeddings: effusion reports near e0, normal near e1, edema near e2."""
    texts = CORPUS
    report_emb = torch.tensor([[1.0, 0.0, 0.0], [0.95, 0.05, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    sentences = [
        "Large right pleural effusion.",
        "Heart size is normal.",
        "Right pleural effusion.",
        "Moderate right pleural effusion.",
        "The heart size is normal.",
        "The lungs are clear.",
        "No pneumothorax.",
        "No acute cardiopulmonary abnormality.",
        "Cardiomegaly with pulmonary edema.",
    ]
    sections = [
        "findings",
        "findings",
        "impression",
        "findings",
        "findings",
        "findings",
        "findings",
        "impression",
        "findings",
    ]
    reports = [[0], [0], [0, 1], [1], [1], [2], [2], [2], [3]]
    sent_emb = torch.tensor(
        [
            [1.0, 0, 0],
            [0.5, 0.5, 0],
            [1.0, 0, 0.01],
            [0.99, 0.0, 0.0],
            [0.5, 0.5, 0.001],
            [0, 1.0, 0],
            [0, 0.9, 0.1],
            [0, 1.0, 0.05],
            [0, 0, 1.0],
        ]
    )
    return ReportDrafter(texts, report_emb, sentences, sections, reports, sent_emb, k=2)


def test_draft_takes_sentences_of_the_nearest_reports_without_duplicates():
    drafter = _hand_drafter()
    d = drafter.draft(torch.tensor([1.0, 0.0, 0.0]))
    assert isinstance(d, DraftedReport)
    assert d.neighbours == [0, 1]
    # "Moderate right pleural effusion." duplicates "Large right pleural effusion." in embedding space,
    # "The heart size is normal." duplicates "Heart size is normal."
    assert d.findings == "Large right pleural effusion. Heart size is normal."
    assert d.impression == "Right pleural effusion."
    assert d.text == "Large right pleural effusion. Heart size is normal. Right pleural effusion."
    normal = drafter.draft(torch.tensor([[0.0, 1.0, 0.0]]))
    assert normal.neighbours[0] == 2 and "lungs are clear" in normal.findings
    assert normal.impression == "No acute cardiopulmonary abnormality."
    with pytest.raises(ValueError, match="3 values"):
        drafter.draft(torch.ones(4))


def test_build_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = create_model("tiny-test").eval()
    drafter = ReportDrafter.build(model, CORPUS + ["", "   "], batch_size=2)
    assert len(drafter) == 4  # empty reports are dropped
    # the two effusion reports share their impression sentence: stored once, with both reports
    idx = drafter.sentences.index("Right pleural effusion.")
    assert drafter.sentence_reports[idx] == [0, 1] and drafter.sections[idx] == "impression"
    assert drafter.sections[drafter.sentences.index("Cardiomegaly with pulmonary edema.")] == "findings"
    x = F.normalize(torch.randn(model.config.embed_dim), dim=0)
    before = drafter.draft(x)
    drafter.save(tmp_path / "drafter")
    assert not list((tmp_path / "drafter").glob("*.pkl")) and not list((tmp_path / "drafter").glob("*.pt"))
    loaded = ReportDrafter.load(tmp_path / "drafter")
    assert loaded.draft(x) == before
    (tmp_path / "drafter" / "drafter.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a report drafter"):
        ReportDrafter.load(tmp_path / "drafter")
    with pytest.raises(FileNotFoundError, match="not a report drafter folder"):
        ReportDrafter.load(tmp_path)
    with pytest.raises(ValueError, match="no non-empty report"):
        ReportDrafter.build(model, ["", " "])


def test_scoring_against_the_true_report():
    labeler = ReportLabeler()
    truth = ["Large right pleural effusion.", "Cardiomegaly. No effusion.", "The lungs are clear."]
    perfect = score_drafts(truth, truth, labeler)
    assert perfect["macro_f1"] == 1.0 and perfect["micro_f1"] == 1.0
    assert perfect["bleu4"] == pytest.approx(1.0) and perfect["rouge_l"] == pytest.approx(1.0)
    # the second draft misses cardiomegaly and claims an effusion the truth negates
    drafts = ["Small right pleural effusion.", "There is a pleural effusion.", "The lungs are clear."]
    res = clinical_correctness(drafts, truth, labeler, findings=["pleural_effusion", "cardiomegaly"])
    assert res["per_finding"]["pleural_effusion"] == {"f1": pytest.approx(2 / 3), "support": 1, "predicted": 2}
    assert res["per_finding"]["cardiomegaly"]["f1"] == 0.0
    assert res["macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2)
    # micro: tp 1, fp 1, fn 1
    assert res["micro_f1"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="drafts but"):
        clinical_correctness(["a"], ["a", "b"], labeler)


def test_drafting_corpus_keeps_sections_drops_redactions_and_repeats() -> None:
    sectioned = {"report_text": "INDICATION: cough. FINDINGS: Small left effusion. Seen by XXXX. IMPRESSION: Effusion."}
    assert drafting_text(sectioned) == "FINDINGS: Small left effusion.\nIMPRESSION: Effusion."
    split = {"report_findings": "Lungs clear.", "report_impression": "Normal.", "report_text": "ignored"}
    assert drafting_text(split) == "FINDINGS: Lungs clear.\nIMPRESSION: Normal."
    assert drafting_corpus([sectioned, split, dict(sectioned), {"report_text": "XXXX."}]) == [
        "FINDINGS: Small left effusion.\nIMPRESSION: Effusion.",
        "FINDINGS: Lungs clear.\nIMPRESSION: Normal.",
    ]
