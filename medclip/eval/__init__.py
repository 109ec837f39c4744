"""Evaluation: zero-shot diagnosis, image-report retrieval, report drafting, few-shot, metrics.

>>> from medclip.eval import evaluate, format_results
>>> results = evaluate("runs/quickstart/model", "runs/quickstart/manifest.parquet", ["zeroshot"])
>>> print(format_results(results))

Contracts used by the demo: :class:`ZeroShotClassifier`, :func:`save_thresholds` /
:func:`load_thresholds` / :func:`decide`, :class:`ReportDrafter`, :class:`EmbeddingIndex`,
:class:`OpenClipAdapter`.
"""

from .drafting import DraftedReport, ReportDrafter, score_drafts
from .encoders import OpenClipAdapter, embed_images, embed_texts, load_model
from .retrieval import EmbeddingIndex, evaluate_retrieval
from .runner import TASKS, EvalOptions, Evaluator, evaluate, format_results
from .thresholds import DEFAULT_UNCERTAIN_MARGIN, decide, load_thresholds, load_uncertain_margin, save_thresholds
from .zeroshot import PROMPT_STYLES, ZeroShotClassifier

__all__ = [
    "DEFAULT_UNCERTAIN_MARGIN", "DraftedReport", "EmbeddingIndex", "EvalOptions", "Evaluator", "OpenClipAdapter",
    "PROMPT_STYLES", "ReportDrafter", "TASKS", "ZeroShotClassifier", "decide", "embed_images", "embed_texts",
    "evaluate", "evaluate_retrieval", "format_results", "load_model", "load_thresholds", "load_uncertain_margin",
    "save_thresholds", "score_drafts",
]
