"""Scoring drafted reports: clinical correctness and text overlap against the true reports.

:func:`score_drafts` compares drafts with the true reports by clinical correctness (findings the
knowledge labeler extracts from each; a finding counts when positive) and by text overlap
(corpus BLEU-4 by sacreBLEU, mean ROUGE-L by Google's rouge-score). The drafter itself is :class:`medclip.inference.drafting.ReportDrafter`.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence

import numpy as np

from medclip.optional import MissingExtraError

from .metrics import corpus_bleu, f1_score, mean_rouge_l

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------- scoring
def positive_findings(labeler, text: str) -> set[str]:
    """Concept ids the labeler finds positive in a text."""
    return {cid for cid, mention in labeler.label(text).items() if mention.status == "positive"}


def clinical_correctness(
    drafts: Sequence[str], references: Sequence[str], labeler=None, findings: Sequence[str] | None = None
) -> dict:
    """Per-finding F1 of labeler-extracted positive findings (draft vs truth), their macro mean over
    findings present in the truth, and micro F1 over all (report, finding) pairs."""
    from medclip.knowledge import ReportLabeler

    if len(drafts) != len(references):
        raise ValueError(f"{len(drafts)} drafts but {len(references)} references")
    labeler = labeler or ReportLabeler()
    pred = [positive_findings(labeler, d) for d in drafts]
    true = [positive_findings(labeler, r) for r in references]
    names = list(findings) if findings is not None else sorted(set().union(*true, *pred)) if drafts else []
    per_finding = {}
    tp_all = fp_all = fn_all = 0
    for cid in names:
        y = np.array([cid in t for t in true], dtype=float)
        p = np.array([cid in q for q in pred], dtype=float)
        tp, fp, fn = int((y * p).sum()), int(((1 - y) * p).sum()), int((y * (1 - p)).sum())
        tp_all, fp_all, fn_all = tp_all + tp, fp_all + fp, fn_all + fn
        per_finding[cid] = {"f1": f1_score(y, p), "support": int(y.sum()), "predicted": int(p.sum())}
    supported = [v["f1"] for v in per_finding.values() if v["support"] > 0]
    micro = 0.0 if tp_all == 0 else 2 * tp_all / (2 * tp_all + fp_all + fn_all)
    return {
        "macro_f1": float(np.mean(supported)) if supported else math.nan,
        "micro_f1": float(micro),
        "per_finding": per_finding,
        "n_reports": len(drafts),
    }


def score_drafts(drafts: Sequence[str], references: Sequence[str], labeler=None) -> dict:
    """Clinical correctness (:func:`clinical_correctness`) plus BLEU-4 (sacreBLEU) and ROUGE-L (rouge-score)
    of drafts against true reports. Without the ``reports`` extra both are NaN and ``text_overlap``
    says what to install (logged once as a warning)."""
    result = clinical_correctness(drafts, references, labeler)
    try:
        result["bleu4"] = corpus_bleu(list(drafts), list(references))
        result["rouge_l"] = mean_rouge_l(list(drafts), list(references))
    except MissingExtraError as err:
        result["bleu4"] = result["rouge_l"] = math.nan
        result["text_overlap"] = str(err)
        _warn_missing_once(str(err))
    return result


@functools.cache
def _warn_missing_once(message: str) -> None:
    logger.warning("BLEU-4 and ROUGE-L not computed: %s", message)
