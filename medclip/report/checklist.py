"""Which reporting-checklist items the report covers (CLAIM 2024, TRIPOD+AI), and the study information
only the researcher can give (``--study-info study.yaml``).

Items are named by their topic as the checklists word them, not by number: CLAIM 2024 (Tejani et al.,
Radiology: Artificial Intelligence 2024) and TRIPOD+AI (Collins et al., BMJ 2024) number them
differently, and a reviewer finds an item by its wording. Each entry points at the report section that
answers it, or at the ``study.yaml`` key that must hold the answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

#: study.yaml keys the report reads (each a short free text), with what belongs there.
STUDY_INFO_KEYS: dict[str, str] = {
    "title": "the study's title",
    "study_design": "retrospective or prospective; the study goal (model creation, feasibility, ...)",
    "data_sources": "where and when the images and reports were collected (sites, dates, equipment)",
    "eligibility": "inclusion and exclusion criteria; consecutive, random or convenience series",
    "reference_standard": "how the reference standard (ground truth) was established, and why",
    "annotators": "who produced the reference labels, their qualifications, and how disagreements were settled",
    "sample_size": "how the sample size was chosen",
    "intended_use": "the clinical role the model is studied for",
    "ethics": "ethics board approval and consent (or waiver)",
    "funding": "sources of funding and the funders' role",
    "conflicts": "conflicts of interest",
    "registration": "registration number and where the protocol can be read",
    "code_availability": "where the code, the model and the data can be obtained",
}

# (checklist, item as worded, report section id or "study:<key>")
_ITEMS: tuple[tuple[str, str, str], ...] = (
    ("CLAIM 2024", "Study design: retrospective or prospective; study goal", "study:study_design"),
    ("CLAIM 2024", "Data sources", "study:data_sources"),
    ("CLAIM 2024", "Eligibility criteria", "study:eligibility"),
    ("CLAIM 2024", "Data preprocessing steps", "model-card"),
    ("CLAIM 2024", "Selection of data subsets", "data-card"),
    ("CLAIM 2024", "De-identification methods", "phi-scan"),
    ("CLAIM 2024", "How missing data were handled", "data-card"),
    ("CLAIM 2024", "Definition of the reference standard, in detail to allow replication", "study:reference_standard"),
    ("CLAIM 2024", "Source of reference-standard annotations; annotators' qualifications", "study:annotators"),
    ("CLAIM 2024", "How data were assigned to partitions; their proportions", "data-card"),
    ("CLAIM 2024", "Level at which partitions are disjoint (e.g. patient)", "leakage"),
    ("CLAIM 2024", "Detailed description of the model; software and libraries", "model-card"),
    ("CLAIM 2024", "Initialization of model parameters (e.g. transfer learning)", "model-card"),
    ("CLAIM 2024", "Details of training: hyperparameters, steps", "model-card"),
    ("CLAIM 2024", "Metrics of model performance", "performance"),
    ("CLAIM 2024", "Statistical measures of uncertainty (confidence intervals)", "performance"),
    ("CLAIM 2024", "Robustness or sensitivity analysis", "subgroups"),
    ("CLAIM 2024", "Validation or testing on external data", "external"),
    ("CLAIM 2024", "Flow of participants or cases", "data-card"),
    ("CLAIM 2024", "Demographic and clinical characteristics of cases in each partition", "data-card"),
    ("CLAIM 2024", "Performance on all data partitions, with precision (95% CI)", "performance"),
    ("CLAIM 2024", "Failure analysis of incorrectly classified cases", "failures"),
    ("CLAIM 2024", "Study limitations", "model-card"),
    ("CLAIM 2024", "Implications for practice; intended use", "model-card"),
    ("CLAIM 2024", "Registration; where the protocol can be accessed", "study:registration"),
    ("CLAIM 2024", "Sources of funding", "study:funding"),
    ("TRIPOD+AI", "Data sources and setting", "study:data_sources"),
    ("TRIPOD+AI", "Eligibility criteria of participants", "study:eligibility"),
    ("TRIPOD+AI", "Data preparation and preprocessing", "model-card"),
    ("TRIPOD+AI", "Outcome: how and when assessed (reference standard)", "study:reference_standard"),
    ("TRIPOD+AI", "Sample size", "study:sample_size"),
    ("TRIPOD+AI", "Missing data: how handled", "data-card"),
    ("TRIPOD+AI", "How data were used for development and evaluation (splits)", "data-card"),
    ("TRIPOD+AI", "Model type, building and internal validation", "model-card"),
    ("TRIPOD+AI", "Performance measures with uncertainty", "performance"),
    ("TRIPOD+AI", "Calibration", "calibration"),
    ("TRIPOD+AI", "Fairness: performance across subgroups", "subgroups"),
    ("TRIPOD+AI", "Model output and how it is turned into a decision (thresholds)", "operating-points"),
    ("TRIPOD+AI", "Differences between development and evaluation data", "external"),
    ("TRIPOD+AI", "Participants: characteristics, numbers with the outcome", "data-card"),
    ("TRIPOD+AI", "Ethical approval and consent", "study:ethics"),
    ("TRIPOD+AI", "Funding and conflicts of interest", "study:conflicts"),
    ("TRIPOD+AI", "Availability of code, model and data", "study:code_availability"),
    ("TRIPOD+AI", "Patient privacy of reported outputs", "phi-scan"),
)


class StudyInfoError(ValueError):
    """A study.yaml that cannot be read or has keys the report does not know."""


def load_study_info(path: str | Path | None) -> dict[str, str]:
    """The study information from a YAML mapping of the keys in :data:`STUDY_INFO_KEYS` (empty without a file)."""
    if path is None:
        return {}
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StudyInfoError(f"{path}: study information file not found") from None
    except yaml.YAMLError as exc:
        raise StudyInfoError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise StudyInfoError(f"{path}: must be a mapping of keys to text, e.g. 'reference_standard: ...'")
    unknown = sorted(set(map(str, data)) - set(STUDY_INFO_KEYS))
    if unknown:
        import difflib

        hints = [
            f"{k} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, STUDY_INFO_KEYS, 1)) else k
            for k in unknown
        ]
        raise StudyInfoError(f"{path}: unknown key(s) {', '.join(hints)}; known keys: {', '.join(STUDY_INFO_KEYS)}")
    return {str(k): str(v).strip() for k, v in data.items() if v is not None and str(v).strip()}


def checklist(study_info: Mapping[str, str], sections: Mapping[str, str]) -> list[dict[str, Any]]:
    """Each checklist item with where the report answers it: ``status`` "covered" (a section of this report),
    "study-info" (the researcher's text from study.yaml) or "missing" (with the study.yaml key to fill)."""
    out = []
    for guideline, item, where in _ITEMS:
        entry: dict[str, Any] = {"checklist": guideline, "item": item}
        if where.startswith("study:"):
            key = where.split(":", 1)[1]
            entry["study_info_key"] = key
            if study_info.get(key):
                entry.update(status="study-info", where="study-information")
            else:
                entry.update(status="missing", where=f"study.yaml: {key}")
        elif where in sections:
            entry.update(status="covered", where=where)
        else:
            entry.update(status="missing", where=f"section {where} not in this report")
        out.append(entry)
    return out
