"""Training-text augmentation from the knowledge graph, deterministic under a seed.

* sentence sampling: a report is many partial descriptions of the image, so a random non-empty
  subset of its sentences (order kept) is still a positive text for it;
* synonym substitution: a finding's name is swapped for another of its graph names;
* description insertion: a finding's radiographic appearance is added after its sentence;
* label-to-text: images that only have labels get a short report written from the labels, so
  labelled datasets can join contrastive training;
* exam line: an image's acquisition attributes (modality, plane, body region) as the one-line
  examination header a report opens with ("Axial CT of the chest.").
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping

from .graph import Graph, normalize_name
from .labeler import NO_FINDING
from .matching import PhraseMatcher, sentence_spans, tokenize

_WORDLIKE = re.compile(r"^[A-Za-z][A-Za-z -]*$")

POSITIVE_TEMPLATES = (
    "There is {name}.",
    "{Name} is present.",
    "Findings consistent with {name}.",
    "{Name}.",
    "The radiograph shows {name}.",
    "Evidence of {name}.",
    "{Name} is seen.",
    "Findings compatible with {name}.",
)
UNCERTAIN_TEMPLATES = (
    "Possible {name}.",
    "{Name} cannot be excluded.",
    "Findings may represent {name}.",
    "Questionable {name}.",
)
NEGATIVE_TEMPLATES = (
    "No {name}.",
    "No evidence of {name}.",
    "There is no {name}.",
    "{Name} is not seen.",
    "No radiographic evidence of {name}.",
    "Negative for {name}.",
)
NORMAL_TEMPLATES = (
    "No acute cardiopulmonary abnormality.",
    "Normal chest radiograph.",
    "The lungs are clear. No acute cardiopulmonary process.",
)


#: Exam-line templates by the attributes they name (M = modality, P = plane, R = body region).
EXAM_TEMPLATES: dict[frozenset[str], tuple[str, ...]] = {
    frozenset("MPR"): (
        "{P} {M} of the {R}.",
        "{M} {R}, {P} images.",
        "Exam: {M} of the {R}, {P} plane.",
        "{R} {M}, {P} view.",
    ),
    frozenset("MR"): ("{M} of the {R}.", "{R} {M}.", "Exam: {M} {R}."),
    frozenset("MP"): ("{P} {M} image.", "{M}, {P} plane.", "{P} {M} images."),
    frozenset("PR"): ("{P} image of the {R}.", "{R}, {P} view."),
    frozenset("M"): ("{M}.", "{M} images.", "Exam: {M}."),
    frozenset("P"): ("{P} view.", "{P} image."),
    frozenset("R"): ("Image of the {R}.", "{R} imaging."),
}
#: Which exam attribute fills which template slot.
EXAM_SLOTS = {"modality": "M", "plane": "P", "body_region": "R"}


def exam_line(graph: Graph, attributes: Mapping[str, str], rng: random.Random) -> str:
    """A report's examination header from ``{attribute: concept id}`` (modality, plane, body region), each
    concept under one of its graph names; "" when none of them is in ``graph``."""
    slots: dict[str, str] = {}
    for attribute, slot in EXAM_SLOTS.items():
        cid = attributes.get(attribute)
        if cid and cid in graph:
            names = [n for n in graph[cid].names if len(n.split()) <= 4 and "(" not in n]
            slots[slot] = rng.choice(names or [graph[cid].name])
    if not slots:
        return ""
    line = rng.choice(EXAM_TEMPLATES[frozenset(slots)]).format(**slots)
    return _cap(line)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


class ReportAugmenter:
    """Augment report text with graph knowledge; the same seed gives the same outputs."""

    def __init__(
        self,
        graph: Graph | None = None,
        seed: int = 0,
        *,
        p_synonym: float = 0.3,
        p_keep_sentence: float = 0.7,
        p_description: float = 0.1,
        p_negatives: float = 0.5,
    ):
        self.graph = graph or Graph.load()
        self.rng = random.Random(seed)
        self.p_synonym, self.p_keep_sentence = p_synonym, p_keep_sentence
        self.p_description, self.p_negatives = p_description, p_negatives
        # Only whole names (no stems, no organ words) are swapped, and only for their own concept.
        self._names = {c.id: [n.lower() for n in c.names if _WORDLIKE.match(n) and len(n) > 3] for c in self.graph}
        self._matcher = PhraseMatcher((n, c.id) for c in self.graph for n in self._names[c.id])

    def sentences(self, text: str) -> list[str]:
        """The report's sentences (stripped, non-empty)."""
        return [text[a:b] for a, b in sentence_spans(text)]

    def __call__(self, text: str, rng: random.Random | None = None) -> str:
        """One augmented version of ``text`` (sentence subset, synonyms, descriptions)."""
        rng = rng or self.rng
        sentences = self.sentences(text)
        if not sentences:
            return text
        keep = [s for s in sentences if rng.random() < self.p_keep_sentence]
        if not keep:
            keep = [rng.choice(sentences)]
        return " ".join(self._augment_sentence(s, rng) for s in keep)

    def _augment_sentence(self, sentence: str, rng: random.Random) -> str:
        tokens = tokenize(sentence)
        out, last = [], 0
        described: list[str] = []
        for m in self._matcher.find([t.norm for t in tokens]):
            cid = m.payloads[0]
            start, end = tokens[m.start].start, tokens[m.end - 1].end
            alternatives = [n for n in self._names[cid] if normalize_name(n) != normalize_name(sentence[start:end])]
            if alternatives and rng.random() < self.p_synonym:
                new = rng.choice(alternatives)
                out.append(sentence[last:start])
                out.append(_cap(new) if sentence[start].isupper() else new)
                last = end
            if self.graph[cid].appearance and rng.random() < self.p_description:
                described.append(self.graph[cid].appearance[0].text)
        out.append(sentence[last:])
        text = "".join(out)
        for d in described:
            text = f"{text} {d if d.endswith('.') else d + '.'}"
        return text

    def labels_to_text(
        self,
        labels: Mapping[str, float | None],
        rng: random.Random | None = None,
        *,
        p_negatives: float | None = None,
        unknown: str = "raise",
    ) -> str:
        """A short report from labels {concept_id: 1 / 0 / -1 / NaN} (manifest encoding).

        Each positive / uncertain finding gets a sentence from varied templates under one of its graph
        names (order shuffled); each negative one is negated with probability ``p_negatives`` (default:
        the augmenter's); no positive finding gives a normal-study sentence. ``unknown="name"`` writes a
        label that is not in the graph under its own name (``bacterial_pneumonia`` -> "bacterial
        pneumonia") instead of raising ``KeyError``.
        """
        rng = rng or self.rng
        p_negatives = self.p_negatives if p_negatives is None else p_negatives
        positive: list[str] = []
        uncertain: list[str] = []
        negative: list[str] = []
        for cid, value in labels.items():
            if cid == NO_FINDING or value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            if cid not in self.graph and unknown != "name":
                raise KeyError(f"unknown finding {cid!r} in labels")
            bucket = {1: positive, -1: uncertain, 0: negative}.get(int(value))
            if bucket is None:
                raise ValueError(f"label {cid}={value!r}: expected 1, 0, -1 or NaN")
            bucket.append(cid)

        def label_name(cid: str) -> str:
            return self.graph[cid].name if cid in self.graph else cid.replace("_", " ").strip()

        parts = []
        for bucket, templates in ((positive, POSITIVE_TEMPLATES), (uncertain, UNCERTAIN_TEMPLATES)):
            for cid in bucket:
                known = cid in self.graph
                names = [label_name(cid)] + ([n for n in self._names[cid] if rng.random() < 0.5] if known else [])
                name = rng.choice(names)
                parts.append(rng.choice(templates).format(name=name, Name=_cap(name)))
                if known and self.graph[cid].appearance and rng.random() < self.p_description:
                    parts.append(self.graph[cid].appearance[0].text)
        rng.shuffle(parts)
        if not positive and not uncertain:
            parts.append(rng.choice(NORMAL_TEMPLATES))
        for cid in negative:
            if rng.random() < p_negatives:
                name = label_name(cid)
                parts.append(rng.choice(NEGATIVE_TEMPLATES).format(name=name, Name=_cap(name)))
        return " ".join(parts)
