"""Triage: per-finding decisions at the evaluation's operating points, urgency tiers and concept cards.

Only findings with a calibrated operating point (chosen on a validation split with enough positives
and negatives and not degenerate, or set by hand; :func:`medclip.inference.thresholds.judge`) are
called positive / uncertain / negative; a finding whose point is the 0.5 fallback or that has none
is shown as ``"not calibrated"`` with the reason and never raises the priority. Of the calibrated
ones, only those whose point may raise the priority (``OperatingPoint.can_raise_priority``: the
validation AUROC CI lies above the floor, or the point was set by hand) set it; the others are
called but listed as unable to. With no finding that may set the priority, the priority itself is
``"not calibrated"``.

Urgency tiers follow the usual split of radiology results communication (ACR Practice Parameter
for Communication of Diagnostic Imaging Findings, 2020): *critical* findings that need action
within minutes to hours (air where it must not be: pneumothorax, pneumoperitoneum,
pneumomediastinum), *significant* findings that need attention the same day (consolidation,
effusion, edema, fracture, a mass, ...), and everything else *routine*. Findings a site adds to
the knowledge graph default to routine; pass ``urgency=`` to change the mapping.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medclip.inference.thresholds import (
    DEFAULT_THRESHOLD,
    DEFAULT_UNCERTAIN_MARGIN,
    FALLBACK,
    NOT_CALIBRATED,
    POSITIVE,
    UNCERTAIN,
    OperatingPoint,
    decide,
    judge,
)
from medclip.knowledge import Graph

__all__ = [
    "ConceptCard",
    "FindingResult",
    "PRIORITY_LABELS",
    "URGENCY",
    "concept_card",
    "rank_findings",
    "triage_priority",
]

CRITICAL, SIGNIFICANT, ROUTINE = 2, 1, 0

#: Urgency tier per concept id of the knowledge graph (missing ids are routine).
URGENCY: dict[str, int] = {
    "pneumothorax": CRITICAL,
    "pneumoperitoneum": CRITICAL,
    "pneumomediastinum": CRITICAL,
    "consolidation": SIGNIFICANT,
    "pneumonia": SIGNIFICANT,
    "covid19_pneumonia": SIGNIFICANT,
    "pleural_effusion": SIGNIFICANT,
    "edema": SIGNIFICANT,
    "heart_failure": SIGNIFICANT,
    "pericardial_effusion": SIGNIFICANT,
    "fracture": SIGNIFICANT,
    "lung_lesion": SIGNIFICANT,
    "mass": SIGNIFICANT,
    "enlarged_cardiomediastinum": SIGNIFICANT,
    "subcutaneous_emphysema": SIGNIFICANT,
    "tuberculosis": SIGNIFICANT,
    "airspace_disease": SIGNIFICANT,
}

#: Study-level priority names, by tier.
PRIORITY_LABELS: dict[int, str] = {CRITICAL: "urgent", SIGNIFICANT: "priority", ROUTINE: "routine"}
#: The priority when no finding has a calibrated operating point: none can be set.
UNCALIBRATED_PRIORITY = NOT_CALIBRATED


@dataclass(frozen=True)
class ConceptCard:
    """What the knowledge graph says about a finding, each fact with the source it came from."""

    concept_id: str
    name: str
    definition: str = ""
    synonyms: tuple[str, ...] = ()
    appearance: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()  # human-readable names (with licence) of the sources used above


@dataclass(frozen=True)
class FindingResult:
    """One finding's probability, the operating point it was judged at and the resulting status."""

    concept_id: str
    name: str
    probability: float
    threshold: float
    margin: float
    status: str  # "positive" | "uncertain" | "negative" | "not calibrated"
    urgency: int
    card: ConceptCard | None = None
    point: OperatingPoint | None = None  # how the threshold was chosen (validation n, positives, AUROC)

    @property
    def calibrated(self) -> bool:
        """False when the finding has no calibrated operating point (no call is made)."""
        return self.status != NOT_CALIBRATED

    @property
    def can_raise_priority(self) -> bool:
        """Calibrated, and its operating point may raise the triage priority (see the module docstring)."""
        return self.calibrated and self.point is not None and bool(self.point.can_raise_priority)

    @property
    def flagged(self) -> bool:
        """An urgent (critical-tier) finding that is positive or uncertain at a point that may raise the priority:
        shown first, drives the priority."""
        return self.urgency == CRITICAL and self.status in (POSITIVE, UNCERTAIN) and self.can_raise_priority


def _source_label(graph: Graph, key: str) -> str:
    info = graph.sources.get(key) or {}
    name = str(info.get("name") or key)
    licence = info.get("licence")
    return f"{name} ({licence})" if licence else name


def concept_card(graph: Graph, concept_id: str) -> ConceptCard:
    """The knowledge-graph card of one concept: definition, synonyms, radiographic appearance, sources."""
    concept = graph[concept_id]
    used: list[str] = []

    def note(source: str) -> None:
        if source and source not in used:
            used.append(source)

    definition = ""
    if concept.definition:
        definition = concept.definition[0].text
        note(concept.definition[0].source)
    synonyms = tuple(n for n in concept.names[1:] if n.lower() != concept.name.lower())
    for fact in concept.synonym_facts:
        if fact.text in synonyms:
            note(fact.source)
    appearance = tuple(f.text for f in concept.appearance)
    for fact in concept.appearance:
        note(fact.source)
    return ConceptCard(
        concept_id=concept.id,
        name=concept.name,
        definition=definition,
        synonyms=synonyms,
        appearance=appearance,
        sources=tuple(_source_label(graph, s) for s in used),
    )


def rank_findings(
    probabilities: Sequence[float] | np.ndarray,
    findings: Sequence[str],
    graph: Graph,
    thresholds: Mapping[str, float | OperatingPoint] | None = None,
    margin: float = DEFAULT_UNCERTAIN_MARGIN,
    urgency: Mapping[str, int] | None = None,
    cards: Mapping[str, ConceptCard] | None = None,
) -> list[FindingResult]:
    """Judge each finding at its operating point and rank: flagged urgent findings first, then by probability.

    ``thresholds``: per-finding operating points from evaluation
    (:func:`medclip.inference.thresholds.load_operating_points`) or bare numbers (set by hand). A point
    not judged yet is judged by the default rules (:func:`medclip.inference.thresholds.judge`). A finding
    without one, or whose point is the uncalibrated 0.5 fallback, gets the status ``"not calibrated"``.
    ``margin``: the uncertain band's half width.
    """
    probs = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if probs.shape[0] != len(findings):
        raise ValueError(f"{probs.shape[0]} probabilities for {len(findings)} findings")
    thresholds = thresholds or {}
    urgency = URGENCY if urgency is None else urgency
    results = []
    for cid, p in zip(findings, probs):
        given = thresholds.get(cid)
        point = (
            given
            if isinstance(given, OperatingPoint)
            else (
                OperatingPoint(DEFAULT_THRESHOLD, FALLBACK, reason="no operating point")
                if given is None
                else OperatingPoint(float(given))
            )
        )
        if point.can_raise_priority is None:  # not judged yet (made in code): the default rules
            point = judge(point)
        card = cards.get(cid) if cards is not None else (concept_card(graph, cid) if cid in graph else None)
        results.append(
            FindingResult(
                concept_id=cid,
                name=graph[cid].name if cid in graph else cid,
                probability=float(p),
                threshold=point.threshold,
                margin=float(margin),
                status=decide(float(p), point.threshold, margin) if point.calibrated else NOT_CALIBRATED,
                urgency=int(urgency.get(cid, ROUTINE)),
                card=card,
                point=point,
            )
        )
    return sorted(results, key=lambda r: (not r.flagged, -r.probability))


@dataclass(frozen=True)
class TriagePriority:
    """The study's priority and the findings that set it."""

    level: str  # "urgent" | "priority" | "routine" | "not calibrated" (no finding may set the priority)
    reasons: tuple[str, ...] = field(default_factory=tuple)
    review: tuple[str, ...] = field(default_factory=tuple)  # uncertain findings of a higher tier
    not_calibrated: tuple[str, ...] = field(default_factory=tuple)  # urgent/significant findings that cannot count
    #: urgent/significant findings that are calibrated but whose point may not raise the priority (AUROC CI too low)
    cannot_raise: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "reasons": list(self.reasons),
            "review": list(self.review),
            "not_calibrated": list(self.not_calibrated),
            "cannot_raise": list(self.cannot_raise),
        }


def triage_priority(results: Sequence[FindingResult]) -> TriagePriority:
    """Highest tier among positive findings; uncertain findings of a higher tier are listed for review.

    An uncertain critical finding raises the study to at least "priority" (a radiologist should
    look today) without calling it urgent. Only findings whose operating point may raise the priority
    count (:attr:`FindingResult.can_raise_priority`); the others of a higher tier are listed (not
    calibrated, or calibrated but unable to), and with no finding that may set it the level is
    ``"not calibrated"``.
    """
    not_calibrated = tuple(r.name for r in results if not r.calibrated and r.urgency > ROUTINE)
    cannot_raise = tuple(r.name for r in results if r.calibrated and not r.can_raise_priority and r.urgency > ROUTINE)
    if results and not any(r.can_raise_priority for r in results):
        return TriagePriority(level=UNCALIBRATED_PRIORITY, not_calibrated=not_calibrated, cannot_raise=cannot_raise)
    counted = [r for r in results if r.can_raise_priority]
    tier = ROUTINE
    for r in counted:
        if r.status == POSITIVE:
            tier = max(tier, r.urgency)
        elif r.status == UNCERTAIN and r.urgency == CRITICAL:
            tier = max(tier, SIGNIFICANT)
    reasons = tuple(r.name for r in counted if r.status == POSITIVE and r.urgency == tier and tier > ROUTINE)
    review = tuple(r.name for r in counted if r.status == UNCERTAIN and r.urgency >= max(tier, SIGNIFICANT))
    return TriagePriority(
        level=PRIORITY_LABELS[tier],
        reasons=reasons,
        review=review,
        not_calibrated=not_calibrated,
        cannot_raise=cannot_raise,
    )
