"""Rule-based report labeler: report text -> positive / negative / uncertain / not mentioned per finding.

Mentions come from the graph's phrases (CheXpert labeler, NegBio, HPO, curated); their status
from the graph's cue lexicon (NegBio / CheXpert pattern templates plus curated cues), with
NegEx-style scope: a cue before a mention reaches it unless a clause terminator ("but",
"however", ";") lies between, so "no effusion or pneumothorax" negates both. Uncertainty cues
that contain a negation ("cannot exclude") win over negation, as in the CheXpert labeler.
A differential ("A versus B", "A vs. B", "A or B", "A and/or B") governs only the findings
named right before and right after its connector; ``versus_policy`` decides their status
(default: both uncertain, as CheXpert and CheXbert do). A change of a normal state ("loss of
the normal lordosis", "straightening of the normal thoracic kyphosis") is not a negation.
Indication / history / comparison sections and "history of" statements are not findings.
A finding's positive or uncertain status propagates to its is-a ancestors; ``no_finding`` is
positive when nothing (support devices aside) is positive or uncertain.

Any object with ``label(text_or_sections) -> dict[str, Mention]`` (``Labeler``) can replace
:class:`ReportLabeler` in :func:`medclip.data.labels.label_manifest`, e.g. a model-based labeler.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from functools import cache
from typing import Protocol

from .graph import Graph, normalize_name
from .matching import Match, PhraseMatcher, Token, phrase_tokens, sentence_spans, tokenize

POSITIVE, NEGATIVE, UNCERTAIN, NOT_MENTIONED = "positive", "negative", "uncertain", "not_mentioned"
STATUS_VALUE = {POSITIVE: 1.0, NEGATIVE: 0.0, UNCERTAIN: -1.0, NOT_MENTIONED: math.nan}
_RANK = {POSITIVE: 3, UNCERTAIN: 2, NEGATIVE: 1, NOT_MENTIONED: 0}

NO_FINDING = "no_finding"
#: Findings that do not make a study abnormal (as in CheXpert's "No Finding").
NOT_ABNORMAL = frozenset({"support_devices"})

#: Tokens between a cue and the mention it governs (before / after the mention).
PRE_WINDOW = 12
POST_WINDOW = 6
#: Tokens around an anatomic mention ("heart size") searched for its modifier ("enlarged").
MODIFIER_WINDOW = 6
#: Most tokens between a differential's connector ("versus", "or") and the finding before it
#: ("pleural thickening bilaterally versus") / after it ("versus a small pericardial effusion").
ALTERNATIVE_GAP_BEFORE = 2
ALTERNATIVE_GAP_AFTER = 3

#: How a differential "A versus B" / "A or B" (no other hedge) is labelled:
#: "uncertain": every alternative uncertain (CheXpert, CheXbert, NegBio);
#: "first": the first alternative positive, the others uncertain;
#: "all": every alternative positive (how the Indiana University / Open-i indexers index them).
VERSUS_POLICIES = ("uncertain", "first", "all")

_REDACTED_TOKEN = re.compile(r"X{3,}|x{4,}")
#: A semicolon ends a negation / uncertainty scope as a sentence end does (sentences: ``sentence_spans``).
_CLAUSE_END = re.compile(r";")
_LIST_SEPARATOR = re.compile(r"[\s,]*")


@dataclass(frozen=True)
class Mention:
    """A finding's status in one report, with the evidence that decided it."""

    status: str
    evidence_span: tuple[int, int] | None = None  # character span of the phrase in its section's text
    section: str | None = None
    phrase: str | None = None  # the report's words that named the finding
    sentence: str | None = None
    cue: str | None = None  # the negation / uncertainty cue or differential connector, if any
    inferred_from: str | None = None  # concept id the status was propagated from

    @property
    def value(self) -> float:
        """Manifest encoding: 1 positive, 0 negative, -1 uncertain, NaN not mentioned."""
        return STATUS_VALUE[self.status]

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if v is not None}


_NOT_MENTIONED = Mention(NOT_MENTIONED)


class Labeler(Protocol):
    """What :func:`label_manifest` needs from a labeler (rule-based or model-based)."""

    findings: list[str]

    def label(self, report: str | Mapping[str, str | None]) -> dict[str, Mention]: ...


@dataclass(frozen=True)
class _Cue:
    start: int
    end: int
    kinds: frozenset[str]
    text: str  # as written in the report
    key: str  # normalised phrase


class ReportLabeler:
    """Label reports with the graph's findings; fast, deterministic, rule-based."""

    def __init__(
        self,
        graph: Graph | None = None,
        findings: str | Iterable[str] | None = None,
        propagate: bool = True,
        versus_policy: str = "uncertain",
    ):
        if versus_policy not in VERSUS_POLICIES:
            raise ValueError(f"versus_policy must be one of {', '.join(VERSUS_POLICIES)}, got {versus_policy!r}")
        self.graph = graph or Graph.load()
        self.findings = self.graph.resolve(findings)
        self.propagate = propagate
        self.versus_policy = versus_policy
        phrases = []
        for c in self.graph:
            for f in c.mention_facts:
                phrases.append((f.text, (c.id, "anatomic" if f.anatomic else "mention")))
            for f in c.exclusion_facts:
                phrases.append((f.text, (c.id, "exclude")))
        self._mentions = PhraseMatcher(phrases)
        cue_kinds = (
            "negation_before",
            "negation_after",
            "uncertainty_before",
            "uncertainty_after",
            "uncertainty_first",
            "alternative",
            "pseudo",
            "terminators",
            "scope_closers",
            "history",
        )
        self._cues = PhraseMatcher((text, kind) for kind in cue_kinds for text in self.graph.cue_phrases(kind))
        self._adjectives = {" ".join(phrase_tokens(t)[0]) for t in self.graph.cue_phrases("negation_adjective")}
        self._modifiers = {c.id: [" " + normalize_name(m) + " " for m in c.modifiers] for c in self.graph}
        self._history_sections = {normalize_name(t) for t in self.graph.cue_phrases("history_sections")}
        titles = sorted({t for t in self.graph.cue_phrases("section_titles")}, key=len, reverse=True)
        self._section_re = (
            re.compile(
                r"(?:^|(?<=[\s.]))(" + "|".join(re.escape(t).replace(r"\ ", r"\s+") for t in titles) + r")\s*:",
                re.IGNORECASE,
            )
            if titles
            else None
        )
        self._ancestors = {cid: self.graph.ancestors(cid) for cid in self.graph.concepts}
        self._lineage = {cid: {cid, *anc} for cid, anc in self._ancestors.items()}
        devices = (
            {"support_devices", *self.graph.descendants("support_devices")}
            if "support_devices" in self.graph
            else set()
        )
        self._not_abnormal = (NOT_ABNORMAL | devices) & set(self.graph.concepts)

    # ------------------------------------------------------------------ sections
    def split_sections(self, text: str) -> dict[str, str]:
        """Split full report text at section headers ("FINDINGS:", "IMPRESSION:") -> {title: text}."""
        if not self._section_re:
            return {"text": text}
        out: dict[str, str] = {}
        last_title, last_end = "text", 0
        for m in self._section_re.finditer(text):
            chunk = text[last_end : m.start()]
            if chunk.strip():
                out[last_title] = (out.get(last_title, "") + " " + chunk).strip() if last_title in out else chunk
            last_title, last_end = " ".join(m.group(1).lower().split()), m.end()
        chunk = text[last_end:]
        if chunk.strip():
            out[last_title] = (out[last_title] + " " + chunk) if last_title in out else chunk
        return out

    def _is_history(self, section: str) -> bool:
        key = normalize_name(section.removeprefix("report_"))
        return key in self._history_sections or key in {"indication", "history", "comparison"}

    # ------------------------------------------------------------------ labelling
    def label(self, report: str | Mapping[str, str | None]) -> dict[str, Mention]:
        """Label one report (full text, or a mapping of section name -> text) for every finding."""
        if isinstance(report, str):
            sections = self.split_sections(report)
        elif isinstance(report, Mapping):
            sections = {}
            for name, text in report.items():
                if isinstance(text, str) and text.strip():
                    key = str(name).removeprefix("report_")
                    if key == "text":
                        for sub, sub_text in self.split_sections(text).items():
                            sections.setdefault(sub, sub_text)
                    else:
                        sections[key] = text
        else:
            raise TypeError(f"report must be a string or a mapping of sections, got {type(report).__name__}")
        found: dict[str, Mention] = {}
        has_text = False
        for section, text in sections.items():
            if self._is_history(section):
                continue
            has_text = has_text or bool(text.strip())
            for cid, mention in self._label_text(section, text):
                if _RANK[mention.status] > _RANK[found[cid].status if cid in found else NOT_MENTIONED]:
                    found[cid] = mention
        if self.propagate:
            for cid, mention in list(found.items()):
                if mention.status in (POSITIVE, UNCERTAIN):
                    for anc in self._ancestors[cid]:
                        current = found.get(anc)
                        if current is None or _RANK[mention.status] > _RANK[current.status]:
                            found[anc] = Mention(
                                mention.status,
                                mention.evidence_span,
                                mention.section,
                                mention.phrase,
                                mention.sentence,
                                mention.cue,
                                inferred_from=cid,
                            )
        if NO_FINDING in self.graph and has_text:
            found[NO_FINDING] = self._no_finding(found)
        return {cid: found.get(cid, _NOT_MENTIONED) for cid in self.findings}

    def _no_finding(self, found: dict[str, Mention]) -> Mention:
        abnormal = {cid: m for cid, m in found.items() if cid != NO_FINDING and cid not in self._not_abnormal}
        positives = [cid for cid, m in abnormal.items() if m.status == POSITIVE]
        if positives:
            m = abnormal[positives[0]]
            return Mention(NEGATIVE, m.evidence_span, m.section, m.phrase, m.sentence, None, positives[0])
        uncertain = [cid for cid, m in abnormal.items() if m.status == UNCERTAIN]
        if uncertain:
            m = abnormal[uncertain[0]]
            return Mention(UNCERTAIN, m.evidence_span, m.section, m.phrase, m.sentence, m.cue, uncertain[0])
        explicit = found.get(NO_FINDING)
        if explicit is not None and explicit.status == POSITIVE:
            return explicit
        return Mention(POSITIVE, inferred_from="no positive findings")

    def _label_text(self, section: str, text: str):
        # De-identified text replaces words with "XXXX"; the redacted word is unknown, so it is
        # skipped: "Aortic XXXX calcification" still names aortic calcification, "no XXXX of a
        # pleural effusion" still negates it. Offsets into the original text are kept.
        tokens = [t for t in tokenize(text) if not _REDACTED_TOKEN.fullmatch(text[t.start : t.end])]
        if not tokens:
            return
        bounds = sorted([end for _, end in sentence_spans(text)] + [m.start() for m in _CLAUSE_END.finditer(text)])
        sentence_of = [bisect.bisect_right(bounds, t.start) for t in tokens]
        start = 0
        for i in range(1, len(tokens) + 1):
            if i == len(tokens) or sentence_of[i] != sentence_of[start]:
                yield from self._label_sentence(section, text, tokens[start:i])
                start = i

    def _label_sentence(self, section: str, text: str, toks: list[Token]):
        norms = [t.norm for t in toks]
        cues = [
            _Cue(
                m.start,
                m.end,
                frozenset(m.payloads),
                text[toks[m.start].start : toks[m.end - 1].end],
                " ".join(m.phrase),
            )
            for m in self._cues.find(norms)
        ]
        terminators = [c for c in cues if "terminators" in c.kinds]
        closers = terminators + [c for c in cues if "scope_closers" in c.kinds]
        sentence = text[toks[0].start : toks[-1].end]
        matches = [m for m in self._mentions.find(norms) if _names_a_finding(m.payloads)]
        roles = self._alternatives(matches, cues, text, toks) if any("alternative" in c.kinds for c in cues) else {}

        def comma_between(a: int, b: int) -> bool:  # a comma between token a-1 and token b
            return "," in text[toks[a - 1].end : toks[b].start]

        owners: list[set[str]] | None = None
        for index, match in enumerate(matches):
            excluded = {cid for cid, kind in match.payloads if kind == "exclude"}
            for cid, kind in match.payloads:
                if kind == "exclude" or cid in excluded:
                    continue
                status, cue = self._status(
                    match.start,
                    match.end,
                    cues,
                    terminators,
                    kind == "anatomic",
                    roles.get(index),
                    comma_between,
                    closers,
                )
                if status is None:  # a history statement, not a finding
                    continue
                if kind == "anatomic":
                    if owners is None:
                        owners = _token_owners(matches, len(norms))
                    if (
                        not self._has_modifier(cid, norms, match.start, match.end, terminators, owners)
                        and status != NEGATIVE
                    ):
                        continue  # "heart size is stable": names the organ, not a finding
                span = (toks[match.start].start, toks[match.end - 1].end)
                yield cid, Mention(status, span, section, text[span[0] : span[1]], sentence, cue)

    @staticmethod
    def _alternatives(
        matches: list[Match], cues: list[_Cue], text: str, toks: list[Token]
    ) -> dict[int, tuple[_Cue, bool]]:
        """Mentions joined by a differential connector: {match index: (connector, is first alternative)}.

        A connector governs the nearest mention ending at most ``ALTERNATIVE_GAP_BEFORE`` tokens
        before it (and the mentions listed before that one with only commas between: "A, B or C")
        and the nearest mention starting at most ``ALTERNATIVE_GAP_AFTER`` tokens after it, with no
        other cue in between ("atelectasis with or without effusion" is not a differential).
        """
        roles: dict[int, tuple[_Cue, bool]] = {}
        for c in cues:
            if "alternative" not in c.kinds:
                continue

            def clear(a: int, b: int, c: _Cue = c) -> bool:  # tokens [a, b): no other cue; no comma, unless "A, or B"
                return not any(o is not c and o.start < b and o.end > a for o in cues) and (
                    a == b or "," not in text[toks[a - 1].end : toks[b].start]
                )

            before = [
                i
                for i, m in enumerate(matches)
                if m.end <= c.start and c.start - m.end <= ALTERNATIVE_GAP_BEFORE and clear(m.end, c.start)
            ]
            after = [
                i
                for i, m in enumerate(matches)
                if m.start >= c.end and m.start - c.end <= ALTERNATIVE_GAP_AFTER and clear(c.end, m.start)
            ]
            if before:
                last = first = before[-1]
                while (
                    first > 0
                    and matches[first - 1].end == matches[first].start
                    and _LIST_SEPARATOR.fullmatch(
                        text[toks[matches[first - 1].end - 1].end : toks[matches[first].start].start]
                    )
                ):
                    first -= 1
                for i in range(first, last + 1):
                    roles.setdefault(i, (c, i == first))
            if after:
                roles.setdefault(after[0], (c, False))
        return roles

    @staticmethod
    def _blocked(a: int, b: int, terminators: list[_Cue]) -> bool:
        return any(t.start >= a and t.end <= b for t in terminators)

    def _status(
        self,
        s: int,
        e: int,
        cues: list[_Cue],
        terminators: list[_Cue],
        anatomic: bool = False,
        alternative: tuple[_Cue, bool] | None = None,
        comma_between: Callable[[int, int], bool] | None = None,
        closers: list[_Cue] | None = None,
    ) -> tuple[str | None, str | None]:
        # An adjective cue ("normal") reaches only the next word or two of its own noun phrase:
        # "normal thoracic kyphosis", not "top normal limits, aortic calcification".
        closers = terminators if closers is None else closers
        before = [
            c
            for c in cues
            if c.end <= s
            and s - c.end <= PRE_WINDOW
            and not self._blocked(c.end, s, closers)
            and (
                anatomic
                or c.key not in self._adjectives
                or (s - c.end <= 1 and not (comma_between and comma_between(c.end, s)))
            )
        ]
        after = [
            c
            for c in cues
            if c.start >= e and c.start - e <= POST_WINDOW and not self._blocked(e, c.start, terminators)
        ]
        for c in before:
            if "history" in c.kinds:
                return None, c.text
        for c in before + after:
            if "uncertainty_first" in c.kinds:
                return UNCERTAIN, c.text
        # then, in this order: the nearest negation before, one after, the nearest uncertainty before, one after
        nearest_before = before[::-1]
        for candidates, kind, status in (
            (nearest_before, "negation_before", NEGATIVE),
            (after, "negation_after", NEGATIVE),
            (nearest_before, "uncertainty_before", UNCERTAIN),
            (after, "uncertainty_after", UNCERTAIN),
        ):
            for c in candidates:
                if kind in c.kinds:
                    return status, c.text
        if alternative is not None:
            connector, first = alternative
            if self.versus_policy == "all" or (self.versus_policy == "first" and first):
                return POSITIVE, connector.text
            return UNCERTAIN, connector.text
        return POSITIVE, None

    def _has_modifier(
        self, cid: str, norms: list[str], s: int, e: int, terminators: list[_Cue], owners: list[set[str]]
    ) -> bool:
        """Whether a modifier of ``cid`` lies near its organ word. A word in the phrase of a finding
        that is not ``cid`` or one of its ancestors is not free to modify it: "atherosclerotic
        calcification of the aorta" is atherosclerosis, "calcified granuloma near the aortic knob"
        a granuloma; "the aorta is calcified" (calcification, an ancestor) still counts."""
        own = self._lineage[cid]
        lo, hi = max(0, s - MODIFIER_WINDOW), min(len(norms), e + MODIFIER_WINDOW)
        for t in terminators:
            if t.end <= s:
                lo = max(lo, t.end)
            elif t.start >= e:
                hi = min(hi, t.start)
        window = " " + " ".join("_" if owners[i] and not owners[i] & own else norms[i] for i in range(lo, hi)) + " "
        return any(m in window for m in self._modifiers.get(cid, ()))


def _token_owners(matches: list[Match], n_tokens: int) -> list[set[str]]:
    """Per token: the concepts whose (non-anatomic) mention phrase covers it."""
    owners: list[set[str]] = [set() for _ in range(n_tokens)]
    for m in matches:
        for cid, kind in m.payloads:
            if kind == "mention":
                for i in range(m.start, m.end):
                    owners[i].add(cid)
    return owners


@cache
def _names_a_finding(payloads: tuple) -> bool:
    """Whether a phrase match names a finding (not only an exclusion such as "pericardial effusion")."""
    excluded = {cid for cid, kind in payloads if kind == "exclude"}
    return any(kind != "exclude" and cid not in excluded for cid, kind in payloads)
