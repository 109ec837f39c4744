"""Evaluation: zero-shot diagnosis, image-report retrieval, report drafting, few-shot, metrics.

>>> from medclip.eval import evaluate, format_results
>>> results = evaluate("runs/quickstart/model", "runs/quickstart/manifest.parquet", ["zeroshot"])
>>> print(format_results(results))

What evaluation scores (zero-shot classifier, thresholds, drafter, embedding index, open_clip
adapter) lives in :mod:`medclip.inference`, which the demo uses too; the names below are
re-exported from there for convenience.
"""

from medclip.inference import (
    DEFAULT_UNCERTAIN_MARGIN,
    PROMPT_STYLES,
    DraftedReport,
    EmbeddingIndex,
    OpenClipAdapter,
    ReportDrafter,
    ZeroShotClassifier,
    decide,
    embed_images,
    embed_texts,
    load_model,
    load_thresholds,
    load_uncertain_margin,
    save_thresholds,
)

from .drafting import score_drafts
from .retrieval import evaluate_retrieval
from .runner import TASKS, EvalOptions, Evaluator, evaluate, format_results

__all__ = [
    "DEFAULT_UNCERTAIN_MARGIN",
    "DraftedReport",
    "EmbeddingIndex",
    "EvalOptions",
    "Evaluator",
    "OpenClipAdapter",
    "PROMPT_STYLES",
    "ReportDrafter",
    "TASKS",
    "ZeroShotClassifier",
    "decide",
    "embed_images",
    "embed_texts",
    "evaluate",
    "evaluate_retrieval",
    "format_results",
    "load_model",
    "load_thresholds",
    "load_uncertain_margin",
    "save_thresholds",
    "score_drafts",
]
