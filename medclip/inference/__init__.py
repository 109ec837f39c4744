"""Inference: what a trained model is used for, shared by ``medclip eval`` and the demo.

Zero-shot classification (:class:`ZeroShotClassifier`), operating points (:mod:`.thresholds`),
report drafting (:class:`ReportDrafter`), nearest-neighbour search (:class:`EmbeddingIndex`),
embedding helpers and the open_clip adapter (:class:`OpenClipAdapter`). Evaluation (metrics,
bootstrap CIs, plots) lives in :mod:`medclip.eval`; the demo's page logic in :mod:`medclip.demo`.
"""

from .drafting import DraftedReport, ReportDrafter
from .encoders import (
    describe_model,
    embed_images,
    embed_texts,
    load_model,
    logit_scale_of,
    model_image_size,
    model_preprocess,
)
from .index import EmbeddingIndex, faiss_available
from .openclip import OpenClipAdapter, is_open_clip
from .thresholds import (
    DEFAULT_THRESHOLD,
    DEFAULT_UNCERTAIN_MARGIN,
    decide,
    load_thresholds,
    load_uncertain_margin,
    save_thresholds,
)
from .zeroshot import DEFAULT_FINDINGS, PROMPT_STYLES, ZeroShotClassifier

__all__ = [
    "DEFAULT_FINDINGS",
    "DEFAULT_THRESHOLD",
    "DEFAULT_UNCERTAIN_MARGIN",
    "DraftedReport",
    "EmbeddingIndex",
    "OpenClipAdapter",
    "PROMPT_STYLES",
    "ReportDrafter",
    "ZeroShotClassifier",
    "decide",
    "describe_model",
    "embed_images",
    "embed_texts",
    "faiss_available",
    "is_open_clip",
    "load_model",
    "load_thresholds",
    "load_uncertain_margin",
    "logit_scale_of",
    "model_image_size",
    "model_preprocess",
    "save_thresholds",
]
