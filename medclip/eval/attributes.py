"""Categorical zero-shot: which of K classes an image shows (modality, plane, body region, disease
subtype), from knowledge-graph prompts, scored against a manifest column.

Each attribute is a graph task whose concepts are the classes (``knowledge/extensions/imaging.yaml``:
``imaging_modality``, ``imaging_plane``, ``body_region``, ``pneumonia_subtype``) and a manifest column
whose values map to those concepts. An image's class probabilities are the softmax, at the model's
temperature, of its similarity to each class's mean prompt embedding. Reported per attribute, on the
rows whose value maps to a class (the column -> concept mapping: :mod:`medclip.knowledge.attributes`): top-1 accuracy and balanced accuracy against their chance levels
(majority share; 1/K), one-vs-rest AUROC per class and their mean, with patient-bootstrap 95% CIs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from medclip.inference.encoders import EmbeddingModel, embed_texts, logit_scale_of
from medclip.knowledge import Graph
from medclip.knowledge.attributes import ATTRIBUTES, attribute_graph
from medclip.knowledge.prompts import attribute_prompts

from . import metrics as M


class AttributeClassifier:
    """Mean prompt embedding per class, computed once; ``predict_proba`` gives (N, K) class probabilities."""

    def __init__(
        self,
        classes: list[str],
        class_features: torch.Tensor,
        logit_scale: float,
        prompts: dict[str, list[str]] | None = None,
    ) -> None:
        if class_features.shape[0] != len(classes):
            raise ValueError(f"{len(classes)} classes but {class_features.shape[0]} class embeddings")
        self.classes = list(classes)
        self.class_features = F.normalize(class_features.float(), dim=-1)
        self.logit_scale = float(logit_scale)
        self.prompts = prompts or {}

    @classmethod
    def from_model(
        cls, model: EmbeddingModel, task: str, graph: Graph | None = None, batch_size: int = 64
    ) -> AttributeClassifier:
        """Embed each class's prompts (``attribute_prompts``) with the model's text tower."""
        graph = graph or attribute_graph()
        prompts = attribute_prompts(graph, task)
        was_training = model.training
        model.eval()
        try:
            feats = torch.stack(
                [F.normalize(embed_texts(model, p, batch_size).mean(0), dim=-1) for p in prompts.values()]
            )
        finally:
            model.train(was_training)
        return cls(list(prompts), feats, logit_scale_of(model), prompts)

    def predict_proba(self, image_features: torch.Tensor | np.ndarray) -> np.ndarray:
        """Softmax over the classes at the model's temperature: (N, K), rows sum to 1."""
        x = F.normalize(torch.as_tensor(image_features).float().cpu(), dim=-1)
        if x.ndim != 2 or x.shape[1] != self.class_features.shape[1]:
            raise ValueError(f"image features must be (N, {self.class_features.shape[1]}), got {tuple(x.shape)}")
        return torch.softmax(self.logit_scale * x @ self.class_features.T, dim=-1).numpy()


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    recalls = [float((pred[y == c] == c).mean()) for c in np.unique(y)]
    return float(np.mean(recalls)) if recalls else math.nan


def score_attribute(
    prob: np.ndarray, truth: np.ndarray, classes: list[str], groups: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Metrics of class probabilities ``prob`` (N, K) against true concept ids (rows not in ``classes`` dropped)."""
    index = {c: k for k, c in enumerate(classes)}
    keep = np.array([t in index for t in truth])
    prob, groups = prob[keep], np.asarray(groups)[keep]
    y = np.array([index[t] for t in truth[keep]], dtype=int)
    present = sorted(set(y.tolist()))
    n = int(y.size)
    if n == 0:
        return {"n": 0, "classes": classes, "note": "no row with a value among the classes"}
    pred = prob.argmax(1)
    rows = np.arange(n, dtype=float)
    boot: dict[str, Any] = dict(groups=groups, n_boot=n_boot, seed=seed)
    pick = lambda f: lambda _y, idx: f(idx.astype(int))  # noqa: E731 (bootstrap over row indices)
    accuracy = M.bootstrap_ci(pick(lambda i: float((pred[i] == y[i]).mean())), rows, rows, **boot)
    balanced = M.bootstrap_ci(pick(lambda i: _balanced_accuracy(y[i], pred[i])), rows, rows, **boot)
    per_class = {}
    for k in present:
        yk = (y == k).astype(float)
        per_class[classes[k]] = {"n": int(yk.sum()), "auroc": M.bootstrap_ci(M.auroc, yk, prob[:, k], **boot).to_dict()}

    def macro_auroc(i: np.ndarray) -> float:
        vals = [M.auroc((y[i] == k).astype(float), prob[i, k]) for k in present]
        vals = [v for v in vals if not math.isnan(v)]
        return float(np.mean(vals)) if len(vals) == len(present) else math.nan

    counts = np.bincount(y, minlength=len(classes))
    return {
        "n": n,
        "n_patients": int(len(np.unique(groups))),
        "classes": classes,
        "support": {classes[k]: int(counts[k]) for k in present},
        "accuracy": accuracy.to_dict(),
        "balanced_accuracy": balanced.to_dict(),
        "chance_accuracy": float(counts.max() / n),
        "chance_balanced_accuracy": 1.0 / len(present),
        "macro_auroc": M.bootstrap_ci(pick(macro_auroc), rows, rows, **boot).to_dict(),
        "per_class": per_class,
        "confusion": {classes[a]: {classes[b]: int(((y == a) & (pred == b)).sum()) for b in present} for a in present},
    }


def evaluate_attributes(
    model: EmbeddingModel,
    frame: pd.DataFrame,
    image_features: torch.Tensor | np.ndarray,
    attributes: Iterable[str] | None = None,
    graph: Graph | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Categorical zero-shot for each attribute whose column the manifest rows have with two or more classes.

    ``frame`` and ``image_features`` are aligned rows (a split of an evaluation); ``attributes`` names keys
    of :data:`ATTRIBUTES` (default: all that apply). Returns {attribute: metrics} (see :func:`score_attribute`).
    """
    wanted = list(attributes) if attributes is not None else list(ATTRIBUTES)
    unknown = [a for a in wanted if a not in ATTRIBUTES]
    if unknown:
        raise ValueError(f"unknown attribute(s) {unknown}; choose from {sorted(ATTRIBUTES)}")
    graph = graph or attribute_graph()
    out: dict[str, Any] = {}
    groups = frame["patient_id"].astype(str).to_numpy()
    for name in wanted:
        spec = ATTRIBUTES[name]
        if spec.column not in frame:
            continue
        truth = spec.classes_of(frame[spec.column])
        classes = graph.task_labels(spec.task)
        if len({t for t in truth if t in classes}) < 2:
            continue
        clf = AttributeClassifier.from_model(model, spec.task, graph)
        prob = clf.predict_proba(image_features)
        out[name] = {
            "column": spec.column,
            "task": spec.task,
            **score_attribute(prob, truth, clf.classes, groups, n_boot, seed),
        }
    return out


def format_attributes(results: Mapping[str, Any]) -> str:
    """One table row per attribute: accuracy and balanced accuracy against chance, macro AUROC."""

    def fmt(d: Mapping[str, Any]) -> str:
        fields: list[Any] = [math.nan if d[k] is None else d[k] for k in ("value", "low", "high", "n", "n_groups")]
        e = M.Estimate(*fields)
        return str(e)

    header = ["attribute", "n", "classes", "accuracy [95% CI]", "chance", "balanced acc.", "chance", "macro AUROC"]
    rows = [
        [
            name,
            str(r["n"]),
            str(len(r["support"])),
            fmt(r["accuracy"]),
            f"{r['chance_accuracy']:.3f}",
            fmt(r["balanced_accuracy"]),
            f"{r['chance_balanced_accuracy']:.3f}",
            fmt(r["macro_auroc"]),
        ]
        for name, r in results.items()
        if r.get("n")
    ]
    if not rows:
        return "Attributes: no manifest column with two or more known classes"
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "Zero-shot attributes (patient-bootstrap 95% CIs; chance = majority share / 1 over classes)\n" + "\n".join(
        [line(header), line(["-" * w for w in widths]), *map(line, rows)]
    )


def vs_chance(estimate: Mapping[str, Any], chance: float) -> str:
    """ "0.930 [0.880, 0.970]; chance 0.500: +0.430, the CI excludes chance" (or says that it does not)."""
    value, low, high = (estimate.get(k) for k in ("value", "low", "high"))
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"n/a (chance {chance:.3f})"
    text = f"{value:.3f}"
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return text + f"; chance {chance:.3f}: {value - chance:+.3f} (too few patients for a CI)"
    text += f" [{low:.3f}, {high:.3f}]; chance {chance:.3f}: {value - chance:+.3f}"
    if low > chance:
        return text + ", the CI excludes chance"
    if high < chance:
        return text + ", below chance (CI excludes it)"
    return text + ", the CI includes chance: not distinguishable from guessing"
