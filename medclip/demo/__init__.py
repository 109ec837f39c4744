"""The triage demo's engine, kept free of UI: uploads, model view, findings, priority, gallery, drafting.

>>> from medclip.demo import TriageEngine, read_upload
>>> engine = TriageEngine.load("runs/quickstart/model")          # model, prompts, gallery: once
>>> study = read_upload("chest.dcm")                               # limits, zip safety, de-identified header
>>> view, result = engine.triage(study, window="lung")
>>> result.priority.level, result.findings[0].name, result.report_text

The page is ``medclip.demo.app`` (``medclip demo``, or ``python app.py`` in the repository).
"""

from .engine import TriageEngine, TriageResult, default_gallery_dir
from .gallery import Gallery, GalleryError, GalleryMatch, build_gallery, model_fingerprint
from .triage import URGENCY, ConceptCard, FindingResult, TriagePriority, concept_card, rank_findings, triage_priority
from .uploads import (
    HEADER_FIELDS,
    LoadedStudy,
    StudyStore,
    UploadError,
    UploadLimits,
    extract_zip,
    read_upload,
    upload_workspace,
)

__all__ = [
    "HEADER_FIELDS",
    "URGENCY",
    "ConceptCard",
    "FindingResult",
    "Gallery",
    "GalleryError",
    "GalleryMatch",
    "LoadedStudy",
    "StudyStore",
    "TriageEngine",
    "TriageResult",
    "TriagePriority",
    "UploadError",
    "UploadLimits",
    "build_gallery",
    "concept_card",
    "default_gallery_dir",
    "extract_zip",
    "model_fingerprint",
    "rank_findings",
    "read_upload",
    "triage_priority",
    "upload_workspace",
]
