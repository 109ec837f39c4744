"""Per-finding operating points, chosen on a validation split and stored with the checkpoint.

File: ``<checkpoint>/thresholds.json`` (see :class:`medclip.checkpoint.CheckpointDir`)::

    {"format": "medclip.thresholds", "version": 2,
     "model_fingerprint": "3f2a...",           # the model the points were chosen for
     "criterion": "youden", "uncertain_margin": 0.05,
     "validation": {"manifest": "/abs/manifest.parquet", "split": "val", "test_split": "test", ...},
     "thresholds": {"pleural_effusion": 0.41, "pneumothorax": 0.5, ...},
     "findings": {
        "pleural_effusion": {"threshold": 0.41, "method": "youden", "n": 120, "positives": 31,
                             "auroc": {"value": 0.83, "low": 0.75, "high": 0.90, ...}},
        "pneumothorax": {"threshold": 0.5, "method": "fallback", "n": 40, "positives": 0,
                         "reason": "no positives in split 'val'"}}}

``method`` says how a point was chosen: a criterion on the validation split (``"youden"``,
``"f1"``), by hand (``"manual"``, a bare number given to :func:`save_thresholds`) or not at all
(``"fallback"``: 0.5, because the validation split lacked positives or negatives). A fallback
finding is *not calibrated*: the demo shows it as such and it never sets the triage priority.

The file belongs to one model: :func:`load_operating_points` refuses it when the recorded
fingerprint is not the checkpoint's (:class:`StaleFileError`, whose message ends with the command
that recalibrates). The thresholds apply to :meth:`ZeroShotClassifier.predict_proba`
(CheXzero positive-vs-negative softmax).

Uncertain band: a probability ``p`` for a finding with threshold ``t`` and margin ``m`` is
``"positive"`` if ``p >= t + m``, ``"negative"`` if ``p < t - m``, else ``"uncertain"``
(:func:`decide`). The margin is stored in the same file (default :data:`DEFAULT_UNCERTAIN_MARGIN`).
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medclip.checkpoint import THRESHOLDS_FILE, CheckpointDir, StaleFileError, write_json

THRESHOLDS_FORMAT = "medclip.thresholds"
THRESHOLDS_VERSION = 2
DEFAULT_THRESHOLD = 0.5
DEFAULT_UNCERTAIN_MARGIN = 0.05
CRITERIA = ("youden", "f1")
MANUAL, FALLBACK = "manual", "fallback"
POSITIVE, UNCERTAIN, NEGATIVE = "positive", "uncertain", "negative"
#: The status of a finding without a calibrated operating point (no call is made).
NOT_CALIBRATED = "not calibrated"

__all__ = [
    "CRITERIA",
    "DEFAULT_THRESHOLD",
    "DEFAULT_UNCERTAIN_MARGIN",
    "FALLBACK",
    "MANUAL",
    "NEGATIVE",
    "NOT_CALIBRATED",
    "POSITIVE",
    "THRESHOLDS_FILE",
    "UNCERTAIN",
    "OperatingPoint",
    "OperatingPoints",
    "StaleFileError",
    "calibrate",
    "choose_threshold",
    "choose_thresholds",
    "decide",
    "load_operating_points",
    "load_thresholds",
    "load_uncertain_margin",
    "recalibrate_command",
    "save_thresholds",
]


@dataclass(frozen=True)
class OperatingPoint:
    """One finding's threshold and how it was chosen (validation size, positives, AUROC with 95% CI)."""

    threshold: float
    method: str = MANUAL  # "youden" | "f1" (chosen on validation) | "manual" | "fallback" (not calibrated)
    n: int | None = None
    positives: int | None = None
    auroc: dict[str, Any] | None = None  # {"value", "low", "high", "n", "n_groups"} on the validation split
    reason: str = ""

    @property
    def calibrated(self) -> bool:
        """False for the 0.5 fallback of a finding the validation split could not tune."""
        return self.method != FALLBACK

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"threshold": self.threshold, "method": self.method}
        for key in ("n", "positives"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.auroc is not None:  # strict JSON: NaN (e.g. one class only) is written as null
            out["auroc"] = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in self.auroc.items()}
        if self.reason:
            out["reason"] = self.reason
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OperatingPoint:
        auroc = data.get("auroc")
        return cls(
            threshold=_threshold(data.get("threshold"), "?"),
            method=str(data.get("method", MANUAL)),
            n=None if data.get("n") is None else int(data["n"]),
            positives=None if data.get("positives") is None else int(data["positives"]),
            auroc=dict(auroc) if isinstance(auroc, Mapping) else None,
            reason=str(data.get("reason", "")),
        )


@dataclass(frozen=True)
class OperatingPoints:
    """The operating points of one checkpoint: per finding, the uncertain margin, and their provenance."""

    points: dict[str, OperatingPoint]
    uncertain_margin: float = DEFAULT_UNCERTAIN_MARGIN
    criterion: str | None = None
    model_fingerprint: str | None = None
    validation: dict[str, Any] = field(default_factory=dict)

    @property
    def thresholds(self) -> dict[str, float]:
        """{concept_id: threshold} of every finding (fallbacks included)."""
        return {cid: p.threshold for cid, p in self.points.items()}

    @property
    def calibrated(self) -> list[str]:
        """The findings with a calibrated (or hand-set) operating point."""
        return [cid for cid, p in self.points.items() if p.calibrated]


def _threshold(value: object, cid: str) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"threshold for {cid!r} must be a number, got {value!r}") from None
    if not 0.0 <= v <= 1.0 or math.isnan(v):
        raise ValueError(f"threshold for {cid!r} must lie in [0, 1], got {value!r}")
    return v


def recalibrate_command(checkpoint_dir: str | Path, validation: Mapping[str, Any] | None = None) -> str:
    """The ``medclip eval`` command that chooses (and saves) the operating points for a checkpoint again."""
    validation = validation or {}
    parts = [
        "medclip",
        "eval",
        "--checkpoint",
        str(checkpoint_dir),
        "--manifest",
        str(validation.get("manifest") or "MANIFEST"),
        "--task",
        "zeroshot",
    ]
    if validation.get("test_split") not in (None, "test"):
        parts += ["--split", str(validation["test_split"])]
    if validation.get("split") not in (None, "val"):
        parts += ["--val-split", str(validation["split"])]
    findings = validation.get("findings")
    if findings:
        parts += ["--findings", findings if isinstance(findings, str) else ",".join(findings)]
    if validation.get("criterion") not in (None, "youden"):
        parts += ["--criterion", str(validation["criterion"])]
    if validation.get("unmentioned_as_negative"):
        parts.append("--unmentioned-as-negative")
    parts.append("--save-to-checkpoint")
    return " ".join(part if part == "MANIFEST" else shlex.quote(part) for part in parts)


def save_thresholds(
    checkpoint_dir: str | Path,
    thresholds: Mapping[str, float | OperatingPoint],
    *,
    uncertain_margin: float = DEFAULT_UNCERTAIN_MARGIN,
    criterion: str | None = None,
    model_fingerprint: str | None = None,
    validation: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``thresholds.json`` into the checkpoint folder (atomically); returns its path.

    ``thresholds``: per finding an :class:`OperatingPoint` or a bare number (recorded as set by
    hand). ``model_fingerprint``: the model the points belong to (default: the folder's own model,
    when it holds one). ``validation``: where they were chosen (manifest, split, options), kept for
    the recalibration command.
    """
    ckpt = CheckpointDir(checkpoint_dir).require()
    points = {
        str(cid): value if isinstance(value, OperatingPoint) else OperatingPoint(_threshold(value, str(cid)))
        for cid, value in thresholds.items()
    }
    for cid, point in points.items():
        _threshold(point.threshold, cid)
    if not 0.0 <= uncertain_margin < 0.5:
        raise ValueError(f"uncertain_margin must lie in [0, 0.5), got {uncertain_margin}")
    if model_fingerprint is None and ckpt.is_model():
        model_fingerprint = ckpt.fingerprint()
    payload = {
        "format": THRESHOLDS_FORMAT,
        "version": THRESHOLDS_VERSION,
        "model_fingerprint": model_fingerprint,
        "criterion": criterion,
        "uncertain_margin": float(uncertain_margin),
        "validation": dict(validation or {}),
        "thresholds": {cid: p.threshold for cid, p in points.items()},
        "findings": {cid: p.to_dict() for cid, p in points.items()},
    }
    write_json(ckpt.thresholds, payload)
    return ckpt.thresholds


def _read(checkpoint_dir: str | Path) -> dict:
    path = CheckpointDir(checkpoint_dir).thresholds
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read thresholds ({exc})") from exc
    if (
        not isinstance(data, dict)
        or data.get("format") != THRESHOLDS_FORMAT
        or not isinstance(data.get("thresholds"), dict)
    ):
        raise ValueError(f"{path}: not a medclip thresholds file (format != {THRESHOLDS_FORMAT!r})")
    return data


def load_operating_points(checkpoint_dir: str | Path, model_fingerprint: str | None = None) -> OperatingPoints | None:
    """The checkpoint's operating points, or None when it has no ``thresholds.json``.

    With ``model_fingerprint`` (the model they will be used with), a file recorded for another model,
    or for no model (written by an older medclip), raises :class:`StaleFileError` whose message ends
    with the command that recalibrates. Findings the file names without a record of how they were
    chosen (an older file) count as set by hand.
    """
    ckpt = CheckpointDir(checkpoint_dir)
    data = _read(ckpt.path)
    if not data:
        return None
    validation: dict[str, Any] = data["validation"] if isinstance(data.get("validation"), dict) else {}
    recorded = data.get("model_fingerprint")
    if model_fingerprint is not None and recorded != model_fingerprint:
        what = (
            f"chosen for another model (fingerprint {recorded})"
            if recorded
            else "not tied to a model (written by an older medclip)"
        )
        raise StaleFileError(
            f"{ckpt.thresholds}: operating points {what}, not for this checkpoint's model "
            f"(fingerprint {model_fingerprint}); recalibrate with: {recalibrate_command(ckpt.path, validation)}"
        )
    records: dict[str, Any] = data["findings"] if isinstance(data.get("findings"), dict) else {}
    points: dict[str, OperatingPoint] = {}
    for cid, value in data["thresholds"].items():
        record = records.get(cid)
        points[str(cid)] = (
            OperatingPoint.from_dict(record)
            if isinstance(record, Mapping)
            else OperatingPoint(_threshold(value, str(cid)))
        )
    margin = float(data.get("uncertain_margin", DEFAULT_UNCERTAIN_MARGIN))
    return OperatingPoints(points, margin, data.get("criterion"), recorded, dict(validation))


def load_thresholds(checkpoint_dir: str | Path) -> dict[str, float]:
    """{concept_id: threshold} from ``thresholds.json`` (unchecked); {} when the file is absent."""
    data = _read(checkpoint_dir)
    return {str(k): float(v) for k, v in data.get("thresholds", {}).items()}


def load_uncertain_margin(checkpoint_dir: str | Path) -> float:
    """The stored uncertain-band half width (the default when no file exists)."""
    return float(_read(checkpoint_dir).get("uncertain_margin", DEFAULT_UNCERTAIN_MARGIN))


def decide(probability: float, threshold: float = DEFAULT_THRESHOLD, margin: float = DEFAULT_UNCERTAIN_MARGIN) -> str:
    """``"positive"`` / ``"uncertain"`` / ``"negative"`` for one probability (see the module docstring)."""
    if probability >= threshold + margin:
        return POSITIVE
    if probability < threshold - margin:
        return NEGATIVE
    return UNCERTAIN


def choose_threshold(y_true: np.ndarray, y_prob: np.ndarray, criterion: str = "youden") -> float:
    """The probability cut-off maximising Youden's J (sensitivity + specificity - 1) or F1 on labelled
    data (a midpoint between adjacent distinct scores); 0.5 when only one class is present."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_prob, dtype=np.float64).ravel()
    n_pos, n_neg = y.sum(), y.size - y.sum()
    if n_pos == 0 or n_neg == 0:
        return DEFAULT_THRESHOLD
    values = np.unique(p)
    # candidate cut-offs: midpoints between distinct scores, plus one below the smallest
    cuts = np.r_[values[0] - 1e-6, (values[:-1] + values[1:]) / 2.0] if values.size > 1 else np.r_[values[0]]
    pred = p[None, :] >= cuts[:, None]
    tp = (pred & (y == 1)).sum(axis=1)
    fp = (pred & (y == 0)).sum(axis=1)
    if criterion == "youden":
        score = tp / n_pos - fp / n_neg
    else:
        fn = n_pos - tp
        score = np.where(tp > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    return float(np.clip(cuts[int(np.argmax(score))], 0.0, 1.0))


def choose_thresholds(
    labels: np.ndarray, probabilities: np.ndarray, findings: list[str], criterion: str = "youden"
) -> dict[str, float]:
    """One threshold per finding (columns of ``labels``/``probabilities``); unknown labels (NaN, -1) are ignored."""
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if labels.shape != probabilities.shape or labels.shape[1] != len(findings):
        raise ValueError(
            f"labels {labels.shape}, probabilities {probabilities.shape} and {len(findings)} findings disagree"
        )
    out = {}
    for j, cid in enumerate(findings):
        known = np.isin(labels[:, j], (0.0, 1.0))
        out[cid] = choose_threshold(labels[known, j], probabilities[known, j], criterion)
    return out


def calibrate(
    labels: np.ndarray,
    probabilities: np.ndarray,
    findings: list[str],
    criterion: str = "youden",
    *,
    split: str = "val",
    auroc: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, OperatingPoint]:
    """Per finding, the operating point chosen on validation data and how: ``criterion`` where both
    classes are present, else the 0.5 fallback with the reason. ``auroc``: per finding the validation
    AUROC with its CI (computed by the caller, e.g. with :func:`medclip.eval.metrics.bootstrap_ci`)."""
    labels = np.asarray(labels, dtype=np.float64)
    chosen = choose_thresholds(labels, probabilities, findings, criterion)
    out = {}
    for j, cid in enumerate(findings):
        y = labels[np.isin(labels[:, j], (0.0, 1.0)), j]
        n, pos = int(y.size), int(y.sum())
        stats = dict((auroc or {}).get(cid) or {}) or None
        if n == 0 or pos == 0 or pos == n:
            missing = "labelled images" if n == 0 else "positives" if pos == 0 else "negatives"
            out[cid] = OperatingPoint(DEFAULT_THRESHOLD, FALLBACK, n, pos, stats, f"no {missing} in split {split!r}")
        else:
            out[cid] = OperatingPoint(chosen[cid], criterion, n, pos, stats)
    return out
