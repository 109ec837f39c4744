"""Per-finding decision thresholds, chosen on a validation split and stored with the checkpoint.

File: ``<checkpoint>/thresholds.json``::

    {"format": "medclip.thresholds", "criterion": "youden", "uncertain_margin": 0.05,
     "thresholds": {"pleural_effusion": 0.41, ...}}

The thresholds apply to :meth:`ZeroShotClassifier.predict_proba` (CheXzero positive-vs-negative
softmax). A missing file means "no calibrated thresholds": callers use 0.5.

Uncertain band: a probability ``p`` for a finding with threshold ``t`` and margin ``m`` is
``"positive"`` if ``p >= t + m``, ``"negative"`` if ``p < t - m``, else ``"uncertain"``
(:func:`decide`). The margin is stored in the same file (default :data:`DEFAULT_UNCERTAIN_MARGIN`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np

from medclip.checkpoint import THRESHOLDS_FILE, CheckpointDir

THRESHOLDS_FORMAT = "medclip.thresholds"
DEFAULT_THRESHOLD = 0.5
DEFAULT_UNCERTAIN_MARGIN = 0.05
CRITERIA = ("youden", "f1")
POSITIVE, UNCERTAIN, NEGATIVE = "positive", "uncertain", "negative"


def save_thresholds(checkpoint_dir: str | Path, thresholds: Mapping[str, float], *,
                    uncertain_margin: float = DEFAULT_UNCERTAIN_MARGIN, criterion: str | None = None) -> Path:
    """Write ``thresholds.json`` into the checkpoint folder (atomically); returns its path."""
    directory = CheckpointDir(checkpoint_dir).require().path
    clean: dict[str, float] = {}
    for cid, value in thresholds.items():
        v = float(value)
        if not 0.0 <= v <= 1.0 or math.isnan(v):
            raise ValueError(f"threshold for {cid!r} must lie in [0, 1], got {value!r}")
        clean[str(cid)] = v
    if not 0.0 <= uncertain_margin < 0.5:
        raise ValueError(f"uncertain_margin must lie in [0, 0.5), got {uncertain_margin}")
    payload = {"format": THRESHOLDS_FORMAT, "criterion": criterion, "uncertain_margin": float(uncertain_margin),
               "thresholds": clean}
    target = CheckpointDir(directory).thresholds
    fd, tmp = tempfile.mkstemp(prefix=f".{THRESHOLDS_FILE}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2)
            handle.write("\n")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _read(checkpoint_dir: str | Path) -> dict:
    path = CheckpointDir(checkpoint_dir).thresholds
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read thresholds ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != THRESHOLDS_FORMAT or not isinstance(data.get("thresholds"), dict):
        raise ValueError(f"{path}: not a medclip thresholds file (format != {THRESHOLDS_FORMAT!r})")
    return data


def load_thresholds(checkpoint_dir: str | Path) -> dict[str, float]:
    """{concept_id: threshold} from ``thresholds.json``; {} when the file is absent (callers default to 0.5)."""
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


def choose_thresholds(labels: np.ndarray, probabilities: np.ndarray, findings: list[str],
                      criterion: str = "youden") -> dict[str, float]:
    """One threshold per finding (columns of ``labels``/``probabilities``); unknown labels (NaN, -1) are ignored."""
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if labels.shape != probabilities.shape or labels.shape[1] != len(findings):
        raise ValueError(f"labels {labels.shape}, probabilities {probabilities.shape} and {len(findings)} findings disagree")
    out = {}
    for j, cid in enumerate(findings):
        known = np.isin(labels[:, j], (0.0, 1.0))
        out[cid] = choose_threshold(labels[known, j], probabilities[known, j], criterion)
    return out
