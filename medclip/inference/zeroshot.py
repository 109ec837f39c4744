"""Zero-shot diagnosis from knowledge-graph prompt ensembles.

Two scorings of an image embedding ``x`` against each finding's prompt ensembles:

* CheXzero-style (:meth:`ZeroShotClassifier.predict_proba`): softmax over the pair
  (``x . positive_mean``, ``x . negative_mean``) scaled by the model's learned temperature, giving
  an independent probability per finding (multi-label).
* plain multi-class (:meth:`ZeroShotClassifier.predict_multiclass`): softmax over every finding's
  positive mean, i.e. which finding the image looks most like.

Prompt styles (for the sensitivity sweep): ``ensemble`` (the knowledge layer's full ensemble:
names x templates + radiographic appearance), ``templates`` (names x templates, no appearance),
``name`` (the preferred name alone vs "no <name>."), ``sentence`` ("there is <name>." vs
"there is no <name>."), ``appearance`` (the appearance descriptions, else the names).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medclip.knowledge import Graph, zeroshot_prompts
from medclip.knowledge.prompts import (
    NEGATIVE_TEMPLATES,
    NO_FINDING_NEGATIVE,
    NO_FINDING_POSITIVE,
    POSITIVE_TEMPLATES,
    prompt_names,
)

from .encoders import EmbeddingModel, embed_texts, logit_scale_of

PROMPT_STYLES = ("ensemble", "templates", "name", "sentence", "appearance")
NO_FINDING = "no_finding"
#: Findings shown when none are asked for: CheXpert's 14 observations.
DEFAULT_FINDINGS = "chexpert14"


def prompts_for_style(
    graph: Graph, findings: str | Iterable[str] | None, style: str = "ensemble"
) -> dict[str, dict[str, list[str]]]:
    """{concept_id: {"positive": [...], "negative": [...]}} in one prompt style (see the module docstring)."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt style must be one of {PROMPT_STYLES}, got {style!r}")
    full = zeroshot_prompts(graph, findings)
    if style == "ensemble":
        return full
    out: dict[str, dict[str, list[str]]] = {}
    for cid in full:
        if cid == NO_FINDING:
            single = style in ("name", "sentence")
            out[cid] = {
                "positive": list(NO_FINDING_POSITIVE[:1] if single else NO_FINDING_POSITIVE),
                "negative": list(NO_FINDING_NEGATIVE[:1] if single else NO_FINDING_NEGATIVE),
            }
            continue
        names = prompt_names(graph, cid) or [graph[cid].name.lower()]
        if style == "templates":
            pos = [t.format(name=n) for n in names for t in POSITIVE_TEMPLATES]
            neg = [t.format(name=n) for n in names for t in NEGATIVE_TEMPLATES]
        elif style == "name":
            pos, neg = [names[0]], [f"no {names[0]}."]
        elif style == "sentence":
            pos, neg = [f"there is {names[0]}."], [f"there is no {names[0]}."]
        else:  # appearance
            pos = [a.text.rstrip(".").lower() + "." for a in graph[cid].appearance] or [f"{n}." for n in names]
            neg = [f"no {n}." for n in names]
        out[cid] = {"positive": list(dict.fromkeys(pos)), "negative": list(dict.fromkeys(neg))}
    return out


def _mean_embedding(model: EmbeddingModel, texts: Sequence[str], batch_size: int) -> torch.Tensor:
    return F.normalize(embed_texts(model, texts, batch_size).mean(dim=0), dim=-1)


class ZeroShotClassifier:
    """Per-finding positive / negative prompt-ensemble embeddings, computed once, and the two scorings."""

    def __init__(
        self,
        findings: list[str],
        positive: torch.Tensor,
        negative: torch.Tensor,
        logit_scale: float,
        prompts: dict[str, dict[str, list[str]]] | None = None,
        style: str = "ensemble",
    ) -> None:
        if positive.shape != negative.shape or positive.shape[0] != len(findings):
            raise ValueError(
                f"{len(findings)} findings but prompt embeddings {tuple(positive.shape)} / {tuple(negative.shape)}"
            )
        self.findings = list(findings)
        self.positive = F.normalize(positive.float(), dim=-1)
        self.negative = F.normalize(negative.float(), dim=-1)
        self.logit_scale = float(logit_scale)
        self.prompts = prompts or {}
        self.style = style

    @classmethod
    def from_model(
        cls,
        model: EmbeddingModel,
        findings: str | Iterable[str] | None = None,
        graph: Graph | None = None,
        style: str = "ensemble",
        batch_size: int = 64,
    ) -> ZeroShotClassifier:
        """Embed every finding's prompt ensembles with ``model``'s text tower (once).

        ``findings``: concept ids / names or a graph task name (default: CheXpert's 14 observations).
        """
        graph = graph or Graph.load()
        prompts = prompts_for_style(graph, DEFAULT_FINDINGS if findings is None else findings, style)
        was_training = model.training
        model.eval()
        try:
            pos = torch.stack([_mean_embedding(model, p["positive"], batch_size) for p in prompts.values()])
            neg = torch.stack([_mean_embedding(model, p["negative"], batch_size) for p in prompts.values()])
        finally:
            model.train(was_training)
        return cls(list(prompts), pos, neg, logit_scale_of(model), prompts, style)

    def _features(self, image_features: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(image_features).float().cpu()
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.positive.shape[1]:
            raise ValueError(f"image features must be (N, {self.positive.shape[1]}), got {tuple(x.shape)}")
        return F.normalize(x, dim=-1)

    def logits(self, image_features: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Scaled positive-minus-negative similarity (N, F): the log-odds of :meth:`predict_proba`."""
        x = self._features(image_features)
        return self.logit_scale * (x @ self.positive.T - x @ self.negative.T)

    def predict_proba(self, image_features: torch.Tensor | np.ndarray) -> np.ndarray:
        """CheXzero positive-vs-negative softmax: probability (N, F) that each finding is present."""
        return torch.sigmoid(self.logits(image_features)).numpy()

    def predict_multiclass(self, image_features: torch.Tensor | np.ndarray) -> np.ndarray:
        """Softmax over the findings' positive prompts (N, F); rows sum to 1."""
        x = self._features(image_features)
        return torch.softmax(self.logit_scale * (x @ self.positive.T), dim=-1).numpy()
