"""Per-finding performance, calibration and subgroup tables on one scored set of images.

A *scored set* is a manifest's rows with their labels and the model's zero-shot probabilities
(:meth:`medclip.inference.zeroshot.ZeroShotClassifier.predict_proba`). Every estimate carries a 95%
patient-bootstrap CI and the n behind it; an estimate on fewer than ``min_support`` positives or
negatives is not shown ("n/a: 4 positives; needs 10"), because its CI would mean little.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from medclip.eval import metrics as M

from .datacard import MIN_SUPPORT, attribute_values

#: (column, name) of the attributes the headline metrics are broken down by.
SUBGROUP_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("sex", "sex"),
    ("age_group", "age band"),
    ("view_position", "view"),
    ("modality", "modality"),
    ("source", "site / source"),
)


@dataclass
class ScoredSet:
    """Rows of a manifest with their labels (N, F: 1 / 0 / NaN unknown) and probabilities (N, F)."""

    name: str
    frame: pd.DataFrame
    findings: list[str]
    labels: np.ndarray
    probs: np.ndarray

    @property
    def patients(self) -> np.ndarray:
        return self.frame["patient_id"].astype(str).to_numpy()

    def subset(self, mask: np.ndarray, name: str) -> ScoredSet:
        return ScoredSet(
            name, self.frame[mask].reset_index(drop=True), self.findings, self.labels[mask], self.probs[mask]
        )


@dataclass(frozen=True)
class Threshold:
    """A finding's operating point as the report uses it: the probability at which it flags."""

    value: float
    calibrated: bool
    method: str = ""
    reason: str = ""


def sensitivity_at(threshold: float) -> Callable[[np.ndarray, np.ndarray], float]:
    """Share of positives flagged (probability >= threshold); NaN without positives."""

    def metric(y: np.ndarray, s: np.ndarray) -> float:
        pos = y == 1
        return float((s[pos] >= threshold).mean()) if pos.any() else math.nan

    return metric


def specificity_at(threshold: float) -> Callable[[np.ndarray, np.ndarray], float]:
    """Share of negatives not flagged; NaN without negatives."""

    def metric(y: np.ndarray, s: np.ndarray) -> float:
        neg = y == 0
        return float((s[neg] < threshold).mean()) if neg.any() else math.nan

    return metric


def brier(y: np.ndarray, s: np.ndarray) -> float:
    """Mean squared difference between probability and outcome."""
    return float(np.mean((np.asarray(s) - np.asarray(y)) ** 2)) if len(y) else math.nan


def support_reason(positives: int, negatives: int, min_support: int) -> str:
    """Why an estimate is not shown, or "" when there is enough support."""
    if positives >= min_support and negatives >= min_support:
        return ""
    if positives + negatives == 0:
        return "n/a: no labelled images"
    parts = []
    if positives < min_support:
        parts.append(f"{positives} positive{'s' if positives != 1 else ''}")
    if negatives < min_support:
        parts.append(f"{negatives} negative{'s' if negatives != 1 else ''}")
    return f"n/a: {' and '.join(parts)}; needs {min_support}"


def finding_metrics(
    scored: ScoredSet,
    thresholds: Mapping[str, Threshold],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    min_support: int = MIN_SUPPORT,
    reliability: bool = True,
    headline_only: bool = False,
) -> dict[str, dict[str, Any]]:
    """Per finding: n, positives, AUROC / AUPRC / ECE / Brier with CIs, and sensitivity / specificity at the
    operating point where one is calibrated; ``reason`` says why a finding is not evaluated."""
    out: dict[str, dict[str, Any]] = {}
    for j, finding in enumerate(scored.findings):
        known = ~np.isnan(scored.labels[:, j])
        y, p, groups = scored.labels[known, j], scored.probs[known, j], scored.patients[known]
        pos, neg = int((y == 1).sum()), int((y == 0).sum())
        entry: dict[str, Any] = {"n": int(known.sum()), "positives": pos, "negatives": neg}
        entry["patients"] = int(len(set(groups.tolist())))
        reason = support_reason(pos, neg, min_support)
        entry["reason"] = reason
        t = thresholds.get(finding)
        entry["threshold"] = None if t is None else t.value
        entry["threshold_calibrated"] = bool(t is not None and t.calibrated)
        if reason:
            out[finding] = entry
            continue
        boot = {"groups": groups, "n_boot": n_boot, "seed": seed}
        entry["auroc"] = M.bootstrap_ci(M.auroc, y, p, **boot).to_dict()
        entry["prevalence"] = pos / (pos + neg)
        if not headline_only:
            entry["auprc"] = M.bootstrap_ci(M.auprc, y, p, **boot).to_dict()
            entry["ece"] = M.bootstrap_ci(M.expected_calibration_error, y, p, **boot).to_dict()
            entry["brier"] = M.bootstrap_ci(brier, y, p, **boot).to_dict()
        if t is not None and t.calibrated:
            entry["sensitivity"] = M.bootstrap_ci(sensitivity_at(t.value), y, p, **boot).to_dict()
            entry["specificity"] = M.bootstrap_ci(specificity_at(t.value), y, p, **boot).to_dict()
        if reliability:
            table = M.reliability_table(y, p)
            entry["reliability"] = {k: [None if math.isnan(x) else float(x) for x in v] for k, v in table.items()}
        out[finding] = entry
    return out


def mean_auroc(per_finding: Mapping[str, Mapping[str, Any]]) -> float:
    """Mean AUROC over the findings that were evaluated (NaN if none)."""
    values = [e["auroc"]["value"] for e in per_finding.values() if e.get("auroc") and e["auroc"]["value"] is not None]
    return float(np.mean(values)) if values else math.nan


def subgroup_metrics(
    scored: ScoredSet,
    thresholds: Mapping[str, Threshold],
    overall: Mapping[str, Mapping[str, Any]],
    *,
    attributes: Sequence[tuple[str, str]] = SUBGROUP_ATTRIBUTES,
    n_boot: int = 1000,
    seed: int = 0,
    min_support: int = MIN_SUPPORT,
    progress: bool = True,
) -> dict[str, Any]:
    """Every headline metric per value of each attribute, with CIs and n; a cell whose CI lies wholly below
    the overall point estimate is flagged. Attributes with fewer than two recorded values are listed under
    ``not_broken_down`` with the reason."""
    from tqdm.auto import tqdm

    flagged: list[dict[str, Any]] = []
    out: dict[str, Any] = {"attributes": {}, "not_broken_down": {}, "flagged": flagged}
    n_groups = sum(attribute_values(scored.frame, c).nunique() for c, _ in attributes if c in scored.frame)
    bar = tqdm(total=n_groups, desc=f"subgroups ({scored.name})", unit="group", disable=not progress)
    for column, label in attributes:
        values = attribute_values(scored.frame, column)
        recorded = sorted(v for v in values.unique() if v != "unknown")
        if column not in scored.frame or not recorded or len(values.unique()) < 2:
            out["not_broken_down"][column] = f"one {label} only ({recorded[0]})" if recorded else f"no {label} recorded"
            bar.update(values.nunique() if column in scored.frame else 0)
            continue
        groups: dict[str, Any] = {}
        for value in sorted(values.unique(), key=lambda v: (v == "unknown", v)):
            mask = (values == value).to_numpy()
            sub = scored.subset(mask, f"{scored.name} {label}={value}")
            cells = finding_metrics(
                sub,
                thresholds,
                n_boot=n_boot,
                seed=seed,
                min_support=min_support,
                reliability=False,
                headline_only=True,
            )
            bar.update(1)
            group_flags: list[str] = []
            group: dict[str, Any] = {
                "images": int(mask.sum()),
                "patients": int(sub.frame["patient_id"].nunique()),
                "findings": cells,
                "mean_auroc": None if math.isnan(mean_auroc(cells)) else mean_auroc(cells),
                "flagged": group_flags,
            }
            for finding, cell in cells.items():
                for metric in ("auroc", "sensitivity", "specificity"):
                    whole = (overall.get(finding) or {}).get(metric)
                    part = cell.get(metric)
                    if not whole or not part or whole.get("value") is None or part.get("high") is None:
                        continue
                    if part["high"] < whole["value"]:
                        group_flags.append(f"{finding} {metric}")
                        flagged.append(
                            {
                                "attribute": column,
                                "group": value,
                                "finding": finding,
                                "metric": metric,
                                "value": part["value"],
                                "high": part["high"],
                                "overall": whole["value"],
                            }
                        )
            groups[value] = group
        out["attributes"][column] = groups
    bar.close()
    return out
