"""Which text a training sample gets: its report (augmented) or sentences written from its labels.

Label-to-text (UniMed-CLIP, Khattak et al., 2024): label-only data (Kermany's NORMAL / PNEUMONIA, a
user's label CSV) joins contrastive training by turning each row's finding labels into short,
varied report-like sentences from the knowledge graph (:meth:`ReportAugmenter.labels_to_text`:
positive findings named with graph synonyms, negative ones negated, "normal study" sentences when
nothing is positive). Per source (``data.sources[i].text``):

* ``report``: the report; a row without one gets its label text;
* ``labels``: always the label text;
* ``mixed``: the label text with probability ``mix_prob``, else the report (the single-source default,
  with ``data.label_text.mix_prob``).

Exam line (``data.label_text.exam_prob``): a sample whose row has acquisition attributes (modality, plane,
body region: :mod:`medclip.knowledge.attributes`) gets, with probability ``exam_prob``, the one-line
examination header a report opens with ("Axial MRI of the brain.") before its text, in knowledge-graph
words. Captions that never say "CT" or "MR" still teach the text tower what a CT looks like, which is
what zero-shot modality / plane / region prompts ask. A finding-like attribute (pneumonia subtype) is
written into label text as one more positive finding.

All randomness comes from the per-sample ``random.Random`` the data module seeds from
``(seed, epoch, sample)``, so resumed runs see the same texts.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from medclip.knowledge.attributes import EXAM_ATTRIBUTES, attribute_graph
from medclip.knowledge.augment import exam_line

#: ``text_transform(text, rng) -> text``: a report rewriting applied to each training sample (the one alias).
TextTransform = Callable[[str, random.Random], str]


def labels_mapping(labels: torch.Tensor | Sequence[float], names: Sequence[str]) -> dict[str, float]:
    """``{name: value}`` of the known labels of one sample (NaN = not mentioned is left out)."""
    values = labels.tolist() if isinstance(labels, torch.Tensor) else list(labels)
    return {n: float(v) for n, v in zip(names, values) if v is not None and not math.isnan(float(v))}


class TextPolicy:
    """``policy(item, rng, train) -> text`` for one sample (see the module docstring)."""

    def __init__(
        self,
        label_names: Sequence[str],
        *,
        report_transform: TextTransform | None = None,
        label_text: bool = True,
        mix_prob: float = 0.0,
        augmenter: Any = None,
        p_negatives: float = 1.0,
        exam_prob: float = 0.0,
    ) -> None:
        self.label_names = list(label_names)
        self.exam_prob = float(exam_prob)
        self._attribute_graph: Any = None
        self.report_transform = report_transform
        self.label_text = bool(label_text)
        self.mix_prob = float(mix_prob)
        self.p_negatives = p_negatives
        self._augmenter = augmenter

    @property
    def augmenter(self) -> Any:
        """The knowledge-graph :class:`ReportAugmenter` that writes label text (loaded when first needed)."""
        if self._augmenter is None:
            from medclip.knowledge import Graph, ReportAugmenter

            self._augmenter = ReportAugmenter(Graph.load())
        return self._augmenter

    @property
    def attribute_graph(self) -> Any:
        """The graph with the imaging-attribute concepts (loaded when first needed)."""
        if self._attribute_graph is None:
            self._attribute_graph = attribute_graph()
        return self._attribute_graph

    def label_text_for(
        self,
        labels: torch.Tensor | Sequence[float],
        rng: random.Random,
        attributes: Mapping[str, str] | None = None,
    ) -> str:
        """Report-like sentences from one sample's label vector and finding-like attributes ("" when none)."""
        known = labels_mapping(labels, self.label_names)
        for name, concept in (attributes or {}).items():
            if name not in EXAM_ATTRIBUTES:
                known.setdefault(concept, 1.0)
        if not known:
            return ""
        return self.augmenter.labels_to_text(known, rng, p_negatives=self.p_negatives, unknown="name")

    def exam_line_for(self, attributes: Mapping[str, str] | None, rng: random.Random) -> str:
        """The exam line of a sample's acquisition attributes ("" when it has none)."""
        return exam_line(self.attribute_graph, attributes, rng) if attributes else ""

    def __call__(self, item: Mapping[str, Any], rng: random.Random, train: bool = True) -> str:
        text = self._text(item, rng, train)
        if self.exam_prob > 0 and item.get("attributes"):
            exam = self.exam_line_for(item["attributes"], rng)
            if exam and (not text or rng.random() < self.exam_prob):
                text = f"{exam} {text}".strip()
        return text

    def _text(self, item: Mapping[str, Any], rng: random.Random, train: bool) -> str:
        text = str(item.get("text") or "")
        mode = item.get("text_mode") or "mixed"
        if self.label_text and item.get("labels") is not None:
            use_labels = mode == "labels" or not text.strip()
            if not use_labels and train and mode == "mixed":
                mix = float(item.get("mix_prob", self.mix_prob))
                use_labels = mix > 0 and rng.random() < mix
            if use_labels:
                written = self.label_text_for(item["labels"], rng, item.get("attributes"))
                if written:
                    return written
        if train and self.report_transform is not None:
            return self.report_transform(text, rng)
        return text
