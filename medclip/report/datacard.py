"""The data card: what went into each split and source (counts, demographics, acquisition, labels).

Everything is counted from the manifest's non-PHI columns: salted ids for patients and studies, coarse
sex and 10-year age bands, view, modality, body part, manufacturer, whether a report is present, and
the ``label.<finding>`` columns (1 positive, 0 negative, -1 uncertain, NaN not mentioned).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from medclip.data.manifest import LABEL_PREFIX

#: (manifest column, what the report calls it): the attributes the data card and the subgroups use.
ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("sex", "sex"),
    ("age_group", "age band"),
    ("view_position", "view"),
    ("modality", "modality"),
    ("body_part", "body part"),
    ("manufacturer", "manufacturer"),
    ("source", "source / site"),
)
REPORT_COLUMNS = ("report_text", "report_findings", "report_impression")
UNKNOWN = "unknown"
#: Fewer positives (or negatives) than this in a split: its CIs mean little (a warning line).
MIN_SUPPORT = 10
_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2, "external": 3}


def attribute_values(frame: pd.DataFrame, column: str) -> pd.Series:
    """A column's values as strings, with empty / missing ones as ``"unknown"``."""
    if column not in frame:
        return pd.Series([UNKNOWN] * len(frame), index=frame.index, dtype=object)
    values = frame[column].astype(object).where(frame[column].notna(), "")
    text = values.map(lambda v: str(v).strip())
    return text.where(text != "", UNKNOWN)


def has_report(frame: pd.DataFrame) -> pd.Series:
    """True for rows with any report text."""
    present = pd.Series(False, index=frame.index)
    for col in REPORT_COLUMNS:
        if col in frame:
            present |= frame[col].fillna("").astype(str).str.strip() != ""
    return present


def label_counts(frame: pd.DataFrame, finding: str) -> dict[str, int]:
    """Positives, negatives, uncertain and not-mentioned rows for one finding."""
    col = LABEL_PREFIX + finding
    if col not in frame:
        return {"positive": 0, "negative": 0, "uncertain": 0, "not_mentioned": len(frame)}
    v = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=float)
    return {
        "positive": int((v == 1).sum()),
        "negative": int((v == 0).sum()),
        "uncertain": int((v == -1).sum()),
        "not_mentioned": int(np.isnan(v).sum()),
    }


def split_order(names: Sequence[str]) -> list[str]:
    """train, val, test first, then the rest alphabetically."""
    return sorted(names, key=lambda s: (_SPLIT_ORDER.get(s, 9), s))


def _group_card(frame: pd.DataFrame, findings: Sequence[str]) -> dict[str, Any]:
    card: dict[str, Any] = {
        "images": len(frame),
        "studies": int(frame["study_id"].nunique()) if "study_id" in frame else len(frame),
        "patients": int(frame["patient_id"].nunique()) if "patient_id" in frame else len(frame),
        "reports_present": int(has_report(frame).sum()),
        "reports_missing": int((~has_report(frame)).sum()),
        "attributes": {},
        "labels": {f: label_counts(frame, f) for f in findings},
    }
    for column, _ in ATTRIBUTES:
        if column == "source" and column not in frame:
            continue
        counts = attribute_values(frame, column).value_counts()
        card["attributes"][column] = {str(k): int(v) for k, v in counts.items()}
    return card


def data_card(frame: pd.DataFrame, findings: Sequence[str], *, min_support: int = MIN_SUPPORT) -> dict[str, Any]:
    """Per split (and per source, when the manifest has a ``source`` column): counts, attributes, labels,
    and warnings where a split is too small for its CIs to mean anything."""
    splits = split_order([str(s) for s in frame["split"].dropna().unique()]) if "split" in frame else []
    card: dict[str, Any] = {
        "total": _group_card(frame, findings),
        "splits": {s: _group_card(frame[frame["split"] == s], findings) for s in splits},
        "sources": {},
        "warnings": [],
        "min_support": min_support,
    }
    if "source" in frame and frame["source"].nunique() > 1:
        for source in sorted(attribute_values(frame, "source").unique()):
            card["sources"][source] = _group_card(frame[attribute_values(frame, "source") == source], findings)
    if "image_id" in frame:
        repeated = int(frame["image_id"].duplicated().sum())
        card["total"]["repeated_image_ids"] = repeated
        if repeated:
            card["warnings"].append(
                f"{repeated} row(s) repeat an image id already listed (the same file twice in the manifest): "
                "each counts once in the leakage audit but twice in every other table"
            )
    for split in splits:
        if split == "train":
            continue
        small = []
        for f in findings:
            c = card["splits"][split]["labels"][f]
            if 0 < c["positive"] + c["negative"] and (c["positive"] < min_support or c["negative"] < min_support):
                small.append(f"{f} ({c['positive']} positive, {c['negative']} negative)")
        if small:
            card["warnings"].append(
                f"split {split!r}: fewer than {min_support} positives or negatives for {len(small)} finding(s), "
                f"whose CIs mean little: " + "; ".join(small)
            )
        if card["splits"][split]["patients"] < 30:
            card["warnings"].append(
                f"split {split!r} holds only {card['splits'][split]['patients']} patients: every estimate on it is "
                "uncertain"
            )
    return card
