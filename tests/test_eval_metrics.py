"""Evaluation metrics against scikit-learn, published values and hand-checked examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score

from medclip.eval import metrics as M


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_and_auprc_match_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200).astype(float)
    s = np.round(rng.normal(size=200) + y * 0.7, 1)  # rounding creates many tied scores
    assert M.auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert M.auprc(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_threshold_metrics_match_sklearn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 150).astype(float)
    s = rng.random(150)
    pred = (s >= 0.4).astype(float)
    assert M.f1_at(0.4)(y, s) == pytest.approx(f1_score(y, pred))
    assert M.accuracy_at(0.4)(y, s) == pytest.approx(accuracy_score(y, pred))
    assert M.f1_score([0, 0], [0, 0]) == 0.0


@pytest.mark.parametrize("seed", [4, 5])
def test_every_classification_metric_equals_sklearn_on_random_tied_data(seed):
    from sklearn.metrics import confusion_matrix

    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    y = rng.integers(0, 2, n).astype(float)
    y[:2] = (0.0, 1.0)  # both classes present
    s = rng.integers(0, 6, n) / 5.0  # six score levels: heavy ties, scores exactly at the threshold
    for score in (s, np.full(n, 0.4)):  # and every score tied
        assert M.auroc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
        assert M.auprc(y, score) == average_precision_score(y, score)
        pred = (score >= 0.4).astype(float)
        assert M.f1_at(0.4)(y, score) == f1_score(y, pred, zero_division=0)
        assert M.accuracy_at(0.4)(y, score) == accuracy_score(y, pred)
        tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
        assert M.confusion_counts(y, pred) == (tp, fp, fn, tn)
    # the patient bootstrap of a sklearn function equals bootstrapping medclip's wrapper of it
    groups = rng.integers(0, max(n // 3, 2), n)
    ours = M.bootstrap_ci(M.auroc, y, s, groups=groups, n_boot=40, seed=seed)
    sk = M.bootstrap_ci(
        lambda a, b: roc_auc_score(a, b) if 0 < a.sum() < a.size else math.nan,
        y,
        s,
        groups=groups,
        n_boot=40,
        seed=seed,
    )
    assert (ours.value, ours.low, ours.high) == pytest.approx((sk.value, sk.low, sk.high), nan_ok=True)


def test_undefined_and_invalid_inputs():
    assert math.isnan(M.auroc([1, 1, 1], [0.2, 0.4, 0.9]))
    assert math.isnan(M.auprc([0, 0], [0.1, 0.2]))
    with pytest.raises(ValueError, match="0 or 1"):
        M.auroc([1, -1, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="differ in length"):
        M.auroc([1, 0], [0.1])


def test_ece_hand_checked():
    # bin [0.2, 0.3): p=0.25 x2, one positive -> |0.5-0.25|; bin [0.9, 1.0]: p=0.95 x2, both positive -> |1-0.95|
    y = [1, 0, 1, 1]
    p = [0.25, 0.25, 0.95, 0.95]
    assert M.expected_calibration_error(y, p, n_bins=10) == pytest.approx((2 * 0.25 + 2 * 0.05) / 4)
    table = M.reliability_table(y, p, n_bins=10)
    assert table["count"].tolist() == [0, 0, 2, 0, 0, 0, 0, 0, 0, 2]
    assert M.expected_calibration_error([1, 0], [1.0, 0.0]) == 0.0


def test_bootstrap_by_patient_keeps_images_of_a_patient_together():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(20), np.zeros(30)]
    s = rng.normal(size=50) + y
    patients = [f"p{i:03d}" for i in range(50)]
    single = M.bootstrap_ci(M.auroc, y, s, groups=patients, n_boot=300, seed=5)
    # every patient has two identical images: AUROC is unchanged by duplicating all rows, and a
    # patient-level bootstrap draws the same patients, so the interval must be identical
    doubled = M.bootstrap_ci(
        M.auroc, np.repeat(y, 2), np.repeat(s, 2), groups=np.repeat(patients, 2), n_boot=300, seed=5
    )
    assert doubled.value == pytest.approx(single.value)
    assert (doubled.low, doubled.high) == pytest.approx((single.low, single.high))
    assert doubled.n == 100 and doubled.n_groups == 50
    assert single.low < single.value < single.high
    # resampling images instead of patients pretends to have twice the data: a narrower interval
    naive = M.bootstrap_ci(M.auroc, np.repeat(y, 2), np.repeat(s, 2), n_boot=300, seed=5)
    assert naive.high - naive.low < doubled.high - doubled.low


def test_bootstrap_one_class_gives_nan_interval():
    est = M.bootstrap_ci(M.auroc, [1, 1, 1], [0.1, 0.5, 0.9], groups=["a", "b", "c"], n_boot=50)
    assert math.isnan(est.value) and math.isnan(est.low) and str(est) == "n/a"


def test_recall_hand_checked_at_study_level():
    # gallery: reports of studies A, A, B, C; queries are images of A, B, C
    sim = np.array(
        [
            [0.1, 0.9, 0.5, 0.0],  # A: its second report is best -> rank 1
            [0.8, 0.7, 0.6, 0.1],  # B: two A reports score higher -> rank 3
            [0.9, 0.8, 0.7, 0.2],  # C: three others higher -> rank 4
        ]
    )
    ranks = M.ranks_of_matches(sim, ["A", "B", "C"], ["A", "A", "B", "C"])
    assert ranks.tolist() == [1, 3, 4]
    assert M.recall_at_k(ranks, 1) == pytest.approx(1 / 3)
    assert M.recall_at_k(ranks, 3) == pytest.approx(2 / 3)
    assert M.recall_at_k(ranks, 5) == 1.0
    assert M.median_rank(ranks) == 3.0
    # the same ranks from top-k neighbour lists (what an approximate index returns)
    neighbours = np.argsort(-sim, axis=1)
    assert M.ranks_from_neighbours(neighbours, ["A", "B", "C"], ["A", "A", "B", "C"]).tolist() == [1, 3, 4]
    assert M.ranks_from_neighbours(neighbours[:, :2], ["A", "B", "C"], ["A", "A", "B", "C"]).tolist() == [1, 3, 3]
    # a query with no match in the gallery is excluded
    assert M.ranks_of_matches(sim[:1], ["Z"], ["A", "A", "B", "C"]).tolist() == [0]


NLTK_HYP1 = "It is a guide to action which ensures that the military always obeys the commands of the party"
NLTK_REFS1 = [
    "It is a guide to action that ensures that the military will forever heed Party commands",
    "It is the guiding principle which guarantees the military forces always being under the command of the Party",
    "It is the practical guide for the army always to heed the directions of the party",
]
NLTK_HYP2 = "he read the book because he was interested in world history"
NLTK_REF2 = "he was interested in world history because he read the book"


def test_bleu_matches_published_values():
    # the values printed in NLTK's bleu_score documentation for Papineni et al.'s example
    assert M.corpus_bleu([NLTK_HYP1], [NLTK_REFS1]) == pytest.approx(0.5045666840058485, abs=1e-12)
    assert M.corpus_bleu([NLTK_HYP1, NLTK_HYP2], [NLTK_REFS1, [NLTK_REF2]]) == pytest.approx(
        0.5920778868801042, abs=1e-12
    )
    assert M.corpus_bleu(["no acute findings ."], ["no acute findings ."]) == pytest.approx(1.0)
    assert M.corpus_bleu(["the the the the"], ["the cat is on the mat"]) == 0.0


def test_rouge_l_hand_checked():
    # LCS("the cat sat on the mat", "the cat on the mat") = 5; P = 5/6, R = 1
    assert M.rouge_l("the cat sat on the mat", "the cat on the mat") == pytest.approx(2 * (5 / 6) / (5 / 6 + 1))
    assert M.rouge_l("", "anything") == 0.0
    assert M.mean_rouge_l(["a b", "c"], ["a b", "d"]) == pytest.approx(0.5)


def test_bleu_and_rouge_are_the_reference_implementations():
    import sacrebleu
    from rouge_score import rouge_scorer

    hyps = ["No pleural effusion. Heart size is normal.", "Mild cardiomegaly; lungs clear!", ""]
    refs = [
        "There is no pleural effusion. The heart size is normal.",
        "Cardiomegaly, lungs are clear.",
        "Normal chest.",
    ]
    expected = sacrebleu.corpus_bleu(hyps, [refs], lowercase=True, smooth_method="none").score / 100
    assert M.corpus_bleu(hyps, refs) == pytest.approx(expected, abs=1e-12) and 0 < expected < 1
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    for h, r in zip(hyps, refs):
        assert M.rouge_l(h, r) == scorer.score(r, h)["rougeL"].fmeasure
    # rouge-score's tokenizer ignores case and punctuation
    assert M.rouge_l("No pleural effusion.", "no pleural effusion") == 1.0
    assert M.corpus_bleu([], []) == 0.0
    with pytest.raises(ValueError, match="hypotheses but"):
        M.corpus_bleu(["a"], [])


def test_text_overlap_without_the_reports_extra_is_one_line_and_drafts_still_score(monkeypatch, caplog):
    import sys

    from medclip.eval.drafting import score_drafts
    from medclip.knowledge import ReportLabeler
    from medclip.optional import MissingExtraError

    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # import sacrebleu -> ImportError
    M._bleu_scorer.cache_clear()
    try:
        with pytest.raises(MissingExtraError) as err:
            M.corpus_bleu(["a b c d"], ["a b c d"])
        assert "\n" not in str(err.value) and "pip install 'medclip-kit[reports]'" in str(err.value)
        with caplog.at_level("WARNING", logger="medclip.eval.drafting"):
            res = score_drafts(["Large pleural effusion."], ["Large pleural effusion."], ReportLabeler())
        assert res["macro_f1"] == 1.0 and math.isnan(res["bleu4"]) and math.isnan(res["rouge_l"])
        assert "medclip-kit[reports]" in res["text_overlap"]
        assert any("BLEU-4 and ROUGE-L not computed" in r.getMessage() for r in caplog.records)
    finally:
        M._bleu_scorer.cache_clear()
