"""Per-finding operating points, chosen on a validation split and stored with the checkpoint.

File: ``<checkpoint>/thresholds.json`` (see :class:`medclip.checkpoint.CheckpointDir`)::

    {"format": "medclip.thresholds", "version": 3,
     "model_fingerprint": "3f2a...",           # the model the points were chosen for
     "criterion": "youden", "uncertain_margin": 0.05,
     "rules": {"min_positives": 10, "min_negatives": 10, "auroc_floor": 0.6, "flag_rate_margin": 0.02},
     "validation": {"manifest": "/abs/manifest.parquet", "split": "val", "test_split": "test", ...},
     "thresholds": {"pleural_effusion": 0.41, "pneumothorax": 0.5, "edema": 0.5, ...},
     "findings": {
        "pleural_effusion": {"threshold": 0.41, "method": "youden", "n": 120, "positives": 31, "negatives": 89,
                             "auroc": {"value": 0.83, "low": 0.75, "high": 0.90, "n": 120, "n_groups": 60},
                             "flag_rate": 0.38, "score_range": [0.12, 0.77],
                             "sensitivity": {"value": 0.81, "low": 0.66, "high": 0.93, ...},
                             "specificity": {"value": 0.74, "low": 0.64, "high": 0.83, ...},
                             "can_raise_priority": true,
                             "priority_reason": "validation AUROC CI lower bound 0.75 > floor 0.60"},
        "edema": {"threshold": 0.5, "method": "fallback", "n": 12, "positives": 4, "negatives": 8,
                  "auroc": {...}, "score_range": [0.31, 0.52],
                  "reason": "only 4 positives (needs 10); threshold flags 100% of validation images",
                  "candidate": {"method": "youden", "threshold": 0.0, "flag_rate": 1.0,
                                "sensitivity": {...}, "specificity": {...}},
                  "can_raise_priority": false, "priority_reason": "not calibrated"},
        "pneumothorax": {"threshold": 0.5, "method": "fallback", "n": 40, "positives": 0, "negatives": 40,
                         "reason": "no positives in split 'val'", "can_raise_priority": false, ...}}}

``method`` says how a point was chosen: a criterion on the validation split (``"youden"``,
``"f1"``), by hand (``"manual"``, a bare number given to :func:`save_thresholds`) or not at all
(``"fallback"``: 0.5, with the ``reason``). A fallback finding is *not calibrated*: the demo shows
it as such, with its reason, and it never sets the triage priority.

The rules (:class:`CalibrationRules`, defaults :data:`MIN_POSITIVES`, :data:`MIN_NEGATIVES`,
:data:`AUROC_FLOOR`, :data:`FLAG_RATE_MARGIN`; stored under ``"rules"``):

* **Support and degeneracy** (calibrated or not). A point chosen by a criterion counts as calibrated
  only with at least ``min_positives`` positives and ``min_negatives`` negatives in the validation
  split, a threshold strictly inside the range of validation scores (``score_range``) and a
  validation flag rate (share of validation images with ``p >= threshold``) inside
  ``(flag_rate_margin, 1 - flag_rate_margin)``. Otherwise it becomes the 0.5 ``fallback`` with the
  reasons (``"only 4 positives (needs 10)"``, ``"threshold flags 100% of validation images"``), and
  what the criterion had chosen is kept under ``candidate`` (never used).
* **Who may raise the triage priority** (``can_raise_priority`` + ``priority_reason``). A calibrated
  point may only when the lower bound of its validation AUROC 95% CI lies above ``auroc_floor``; a
  point set by hand may (whoever set it answers for it); a fallback never.

``sensitivity`` / ``specificity`` are measured on the validation split at the threshold, with
patient-bootstrap 95% CIs (:func:`medclip.eval.metrics.bootstrap_ci`); ``flag_rate`` is a plain share.

Version 2 files (no rules, no flag rate) are still read, and their points are judged by the default
rules at load time (:func:`judge`): a version-2 point chosen on 4 positives, or with a threshold of
0.00 (which flags every image), loads as not calibrated. :func:`save_thresholds` judges every point
it writes, and :func:`medclip.demo.triage.rank_findings` every point it is handed.

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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medclip.checkpoint import THRESHOLDS_FILE, CheckpointDir, StaleFileError, write_json

THRESHOLDS_FORMAT = "medclip.thresholds"
THRESHOLDS_VERSION = 3
DEFAULT_THRESHOLD = 0.5
DEFAULT_UNCERTAIN_MARGIN = 0.05
CRITERIA = ("youden", "f1")
MANUAL, FALLBACK = "manual", "fallback"
POSITIVE, UNCERTAIN, NEGATIVE = "positive", "uncertain", "negative"
#: The status of a finding without a calibrated operating point (no call is made).
NOT_CALIBRATED = "not calibrated"
#: A point chosen on validation data needs at least this many positives ...
MIN_POSITIVES = 10
#: ... and this many negatives to count as calibrated.
MIN_NEGATIVES = 10
#: A calibrated point may raise the triage priority only when its validation AUROC CI lower bound exceeds this.
AUROC_FLOOR = 0.6
#: A validation flag rate within this distance of 0 or 1 makes a point degenerate (it flags almost no one / everyone).
FLAG_RATE_MARGIN = 0.02

__all__ = [
    "AUROC_FLOOR",
    "CRITERIA",
    "DEFAULT_THRESHOLD",
    "DEFAULT_UNCERTAIN_MARGIN",
    "FALLBACK",
    "FLAG_RATE_MARGIN",
    "MANUAL",
    "MIN_NEGATIVES",
    "MIN_POSITIVES",
    "NEGATIVE",
    "NOT_CALIBRATED",
    "POSITIVE",
    "THRESHOLDS_FILE",
    "UNCERTAIN",
    "CalibrationRules",
    "OperatingPoint",
    "OperatingPoints",
    "StaleFileError",
    "calibrate",
    "choose_threshold",
    "choose_thresholds",
    "decide",
    "judge",
    "load_operating_points",
    "load_thresholds",
    "load_uncertain_margin",
    "recalibrate_command",
    "save_thresholds",
]


def _nan_to_none(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _estimate(data: object) -> dict[str, Any] | None:
    """A stored estimate ({"value", "low", "high", ...}) as a plain dict (strict JSON: NaN -> None)."""
    return {str(k): _nan_to_none(v) for k, v in data.items()} if isinstance(data, Mapping) else None


def _number_or_none(value: object) -> float | None:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


@dataclass(frozen=True)
class CalibrationRules:
    """When a point chosen on validation data counts as calibrated, and when it may raise the priority."""

    min_positives: int = MIN_POSITIVES
    min_negatives: int = MIN_NEGATIVES
    auroc_floor: float = AUROC_FLOOR
    flag_rate_margin: float = FLAG_RATE_MARGIN

    def __post_init__(self) -> None:
        if self.min_positives < 1 or self.min_negatives < 1:
            raise ValueError(
                f"min_positives and min_negatives must be at least 1, got {self.min_positives}, {self.min_negatives}"
            )
        if not 0.0 <= self.auroc_floor < 1.0:
            raise ValueError(f"auroc_floor must lie in [0, 1), got {self.auroc_floor}")
        if not 0.0 <= self.flag_rate_margin < 0.5:
            raise ValueError(f"flag_rate_margin must lie in [0, 0.5), got {self.flag_rate_margin}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "min_positives": self.min_positives,
            "min_negatives": self.min_negatives,
            "auroc_floor": self.auroc_floor,
            "flag_rate_margin": self.flag_rate_margin,
        }

    @classmethod
    def from_dict(cls, data: object) -> CalibrationRules:
        """The stored rules; missing keys (or no ``"rules"`` at all: a version-2 file) take the defaults."""
        data = data if isinstance(data, Mapping) else {}
        default = cls()
        return cls(
            min_positives=int(data.get("min_positives", default.min_positives)),
            min_negatives=int(data.get("min_negatives", default.min_negatives)),
            auroc_floor=float(data.get("auroc_floor", default.auroc_floor)),
            flag_rate_margin=float(data.get("flag_rate_margin", default.flag_rate_margin)),
        )


@dataclass(frozen=True)
class OperatingPoint:
    """One finding's threshold, how it was chosen, what it does on the validation split and whether it may
    raise the triage priority (see the module docstring for the rules)."""

    threshold: float
    method: str = MANUAL  # "youden" | "f1" (chosen on validation) | "manual" | "fallback" (not calibrated)
    n: int | None = None
    positives: int | None = None
    auroc: dict[str, Any] | None = None  # {"value", "low", "high", "n", "n_groups"} on the validation split
    reason: str = ""  # why a fallback is not calibrated
    negatives: int | None = None  # validation negatives (n - positives when not given)
    flag_rate: float | None = None  # share of validation images with p >= threshold
    sensitivity: dict[str, Any] | None = None  # at the threshold on validation, with a patient-bootstrap 95% CI
    specificity: dict[str, Any] | None = None
    score_range: tuple[float, float] | None = None  # (lowest, highest) validation score
    candidate: dict[str, Any] | None = None  # a fallback's rejected point: {"method", "threshold", "flag_rate", ...}
    can_raise_priority: bool | None = None  # None: not judged yet (see :func:`judge`)
    priority_reason: str = ""

    @property
    def calibrated(self) -> bool:
        """False for the 0.5 fallback of a finding the validation split could not (or not reliably) tune."""
        return self.method != FALLBACK

    @property
    def n_negatives(self) -> int | None:
        """Validation negatives (recorded, or n - positives)."""
        if self.negatives is not None:
            return self.negatives
        if self.n is not None and self.positives is not None:
            return self.n - self.positives
        return None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"threshold": self.threshold, "method": self.method}
        for key in ("n", "positives"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.n_negatives is not None:
            out["negatives"] = self.n_negatives
        for key in ("auroc", "sensitivity", "specificity"):  # strict JSON: NaN (e.g. one class only) as null
            if getattr(self, key) is not None:
                out[key] = _estimate(getattr(self, key))
        if self.flag_rate is not None:
            out["flag_rate"] = self.flag_rate
        if self.score_range is not None:
            out["score_range"] = list(self.score_range)
        if self.reason:
            out["reason"] = self.reason
        if self.candidate is not None:
            out["candidate"] = {k: _estimate(v) if isinstance(v, Mapping) else v for k, v in self.candidate.items()}
        if self.can_raise_priority is not None:
            out["can_raise_priority"] = self.can_raise_priority
            out["priority_reason"] = self.priority_reason
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OperatingPoint:
        score_range = data.get("score_range")
        can_raise = data.get("can_raise_priority")
        candidate = data.get("candidate")
        return cls(
            threshold=_threshold(data.get("threshold"), "?"),
            method=str(data.get("method", MANUAL)),
            n=None if data.get("n") is None else int(data["n"]),
            positives=None if data.get("positives") is None else int(data["positives"]),
            auroc=_estimate(data.get("auroc")),
            reason=str(data.get("reason", "")),
            negatives=None if data.get("negatives") is None else int(data["negatives"]),
            flag_rate=_number_or_none(data.get("flag_rate")),
            sensitivity=_estimate(data.get("sensitivity")),
            specificity=_estimate(data.get("specificity")),
            score_range=(
                (float(score_range[0]), float(score_range[1]))
                if isinstance(score_range, (list, tuple)) and len(score_range) == 2
                else None
            ),
            candidate=dict(candidate) if isinstance(candidate, Mapping) else None,
            can_raise_priority=None if can_raise is None else bool(can_raise),
            priority_reason=str(data.get("priority_reason", "")),
        )


def _support_problems(point: OperatingPoint, rules: CalibrationRules) -> list[str]:
    if point.n is None or point.positives is None:
        return ["validation size and positives not recorded"]
    problems = []
    negatives = point.n_negatives or 0
    if point.positives < rules.min_positives:
        problems.append(f"only {point.positives} positives (needs {rules.min_positives})")
    if negatives < rules.min_negatives:
        problems.append(f"only {negatives} negatives (needs {rules.min_negatives})")
    return problems


def _degenerate_problem(point: OperatingPoint, rules: CalibrationRules) -> str | None:
    t, rate, span = point.threshold, point.flag_rate, point.score_range
    if rate is not None:
        if rate >= 1.0 - rules.flag_rate_margin:
            return f"threshold flags {rate:.0%} of validation images"
        if rate <= rules.flag_rate_margin:
            return f"threshold flags {rate:.0%} of validation images"
    if span is not None:
        low, high = span
        if t <= low:
            return "threshold flags 100% of validation images"
        if t > high:
            return "threshold flags 0% of validation images"
        if t >= high:
            return f"threshold {t:.2f} is the highest validation score"
    # what a version-2 file lets us see: probabilities lie strictly inside (0, 1)
    if t <= 0.0:
        return f"threshold {t:.2f} flags every image"
    if t >= 1.0:
        return f"threshold {t:.2f} flags no image"
    return None


def judge(point: OperatingPoint, rules: CalibrationRules | None = None) -> OperatingPoint:
    """``point`` judged by ``rules`` (default :class:`CalibrationRules`): a point chosen on validation data
    with too little support or a degenerate threshold becomes the 0.5 fallback (not calibrated) with the
    reasons, its choice kept under ``candidate``; every point gets ``can_raise_priority`` and its reason.
    Idempotent."""
    rules = rules or CalibrationRules()
    if point.method == FALLBACK:
        return replace(point, can_raise_priority=False, priority_reason="not calibrated")
    if point.method == MANUAL:
        return replace(point, can_raise_priority=True, priority_reason="set by hand (not validated)")
    problems = _support_problems(point, rules)
    degenerate = _degenerate_problem(point, rules)
    if degenerate:
        problems.append(degenerate)
    if problems:
        candidate: dict[str, Any] = {"method": point.method, "threshold": point.threshold}
        for key in ("flag_rate", "sensitivity", "specificity"):
            if getattr(point, key) is not None:
                candidate[key] = getattr(point, key)
        return replace(
            point,
            threshold=DEFAULT_THRESHOLD,
            method=FALLBACK,
            reason="; ".join(problems),
            flag_rate=None,
            sensitivity=None,
            specificity=None,
            candidate=candidate,
            can_raise_priority=False,
            priority_reason="not calibrated",
        )
    low = _number_or_none((point.auroc or {}).get("low"))
    floor = rules.auroc_floor
    if low is None:
        can, why = False, "validation AUROC has no CI (too few patients or no bootstrap)"
    elif low > floor:
        can, why = True, f"validation AUROC CI lower bound {low:.2f} > floor {floor:.2f}"
    else:
        can, why = False, f"validation AUROC CI lower bound {low:.2f} <= floor {floor:.2f}"
    return replace(point, can_raise_priority=can, priority_reason=why)


@dataclass(frozen=True)
class OperatingPoints:
    """The operating points of one checkpoint: per finding, the uncertain margin, and their provenance."""

    points: dict[str, OperatingPoint]
    uncertain_margin: float = DEFAULT_UNCERTAIN_MARGIN
    criterion: str | None = None
    model_fingerprint: str | None = None
    validation: dict[str, Any] = field(default_factory=dict)
    rules: CalibrationRules = field(default_factory=CalibrationRules)
    version: int = THRESHOLDS_VERSION  # of the file they were read from

    @property
    def thresholds(self) -> dict[str, float]:
        """{concept_id: threshold} of every finding (fallbacks included)."""
        return {cid: p.threshold for cid, p in self.points.items()}

    @property
    def calibrated(self) -> list[str]:
        """The findings with a calibrated (or hand-set) operating point."""
        return [cid for cid, p in self.points.items() if p.calibrated]

    @property
    def may_raise_priority(self) -> list[str]:
        """The findings whose operating point may raise the triage priority."""
        return [cid for cid, p in self.points.items() if p.can_raise_priority]


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
    for key, option, default in (
        ("min_positives", "--min-positives", MIN_POSITIVES),
        ("min_negatives", "--min-negatives", MIN_NEGATIVES),
        ("auroc_floor", "--auroc-floor", AUROC_FLOOR),
    ):
        if validation.get(key) not in (None, default):
            parts += [option, str(validation[key])]
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
    rules: CalibrationRules | None = None,
) -> Path:
    """Write ``thresholds.json`` into the checkpoint folder (atomically); returns its path.

    ``thresholds``: per finding an :class:`OperatingPoint` or a bare number (recorded as set by
    hand); every point is judged by ``rules`` (default :class:`CalibrationRules`) before it is
    written, so a point chosen on too few positives, or a degenerate one, is written as not
    calibrated. ``model_fingerprint``: the model the points belong to (default: the folder's own
    model, when it holds one). ``validation``: where they were chosen (manifest, split, options),
    kept for the recalibration command.
    """
    ckpt = CheckpointDir(checkpoint_dir).require()
    rules = rules or CalibrationRules()
    points = {
        str(cid): value if isinstance(value, OperatingPoint) else OperatingPoint(_threshold(value, str(cid)))
        for cid, value in thresholds.items()
    }
    for cid, point in points.items():
        _threshold(point.threshold, cid)
    points = {cid: judge(point, rules) for cid, point in points.items()}
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
        "rules": rules.to_dict(),
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
    """The checkpoint's operating points, each judged by the file's rules (the defaults for a version-2
    file), or None when it has no ``thresholds.json``.

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
    rules = CalibrationRules.from_dict(data.get("rules"))  # a version-2 file: the default rules
    records: dict[str, Any] = data["findings"] if isinstance(data.get("findings"), dict) else {}
    points: dict[str, OperatingPoint] = {}
    for cid, value in data["thresholds"].items():
        record = records.get(cid)
        point = (
            OperatingPoint.from_dict(record)
            if isinstance(record, Mapping)
            else OperatingPoint(_threshold(value, str(cid)))
        )
        points[str(cid)] = judge(point, rules)
    margin = float(data.get("uncertain_margin", DEFAULT_UNCERTAIN_MARGIN))
    version = int(data.get("version", 1))
    return OperatingPoints(points, margin, data.get("criterion"), recorded, dict(validation), rules, version)


def load_thresholds(checkpoint_dir: str | Path) -> dict[str, float]:
    """{concept_id: threshold} from ``thresholds.json`` (unchecked, as written: not-calibrated findings
    hold the 0.5 fallback; a version-2 file's points are not judged here, use
    :func:`load_operating_points`); {} when the file is absent."""
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
    data (a midpoint between adjacent distinct scores, or just below the lowest score: then it flags
    everyone, which :func:`judge` rejects); 0.5 when only one class is present."""
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


def _sensitivity_at(threshold: float):
    def metric(y: np.ndarray, s: np.ndarray) -> float:
        pos = y == 1
        return float((s[pos] >= threshold).mean()) if pos.any() else math.nan

    return metric


def _specificity_at(threshold: float):
    def metric(y: np.ndarray, s: np.ndarray) -> float:
        neg = y == 0
        return float((s[neg] < threshold).mean()) if neg.any() else math.nan

    return metric


def calibrate(
    labels: np.ndarray,
    probabilities: np.ndarray,
    findings: list[str],
    criterion: str = "youden",
    *,
    split: str = "val",
    auroc: Mapping[str, Mapping[str, Any]] | None = None,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    rules: CalibrationRules | None = None,
) -> dict[str, OperatingPoint]:
    """Per finding, the operating point chosen on validation data, judged by ``rules`` (:func:`judge`):
    ``criterion`` where both classes are present, with its validation flag rate, score range and
    sensitivity / specificity (95% CI by bootstrap over ``groups``, the patients; ``n_boot`` resamples);
    else, or when the rules reject it, the 0.5 fallback with the reason. ``auroc``: per finding the
    validation AUROC with its CI (computed by the caller, e.g. with
    :func:`medclip.eval.metrics.bootstrap_ci`); without a CI a point cannot raise the priority."""
    from medclip.eval.metrics import bootstrap_ci

    rules = rules or CalibrationRules()
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    chosen = choose_thresholds(labels, probabilities, findings, criterion)
    group_of = None if groups is None else np.asarray(groups, dtype=object).ravel()
    out = {}
    for j, cid in enumerate(findings):
        known = np.isin(labels[:, j], (0.0, 1.0))
        y, p = labels[known, j], probabilities[known, j]
        n, pos = int(y.size), int(y.sum())
        stats = dict((auroc or {}).get(cid) or {}) or None
        score_range = (float(p.min()), float(p.max())) if n else None
        if n == 0 or pos == 0 or pos == n:
            missing = "labelled images" if n == 0 else "positives" if pos == 0 else "negatives"
            point = OperatingPoint(
                DEFAULT_THRESHOLD,
                FALLBACK,
                n,
                pos,
                stats,
                f"no {missing} in split {split!r}",
                negatives=n - pos,
                score_range=score_range,
            )
        else:
            t = chosen[cid]
            patients = None if group_of is None else group_of[known]
            point = OperatingPoint(
                t,
                criterion,
                n,
                pos,
                stats,
                negatives=n - pos,
                flag_rate=float((p >= t).mean()),
                sensitivity=bootstrap_ci(_sensitivity_at(t), y, p, patients, n_boot=n_boot, seed=seed).to_dict(),
                specificity=bootstrap_ci(_specificity_at(t), y, p, patients, n_boot=n_boot, seed=seed).to_dict(),
                score_range=score_range,
            )
        out[cid] = judge(point, rules)
    return out
