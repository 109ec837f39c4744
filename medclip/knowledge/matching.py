"""Token-level phrase matching shared by the labeler and the augmenter, and the one sentence splitter
(:func:`sentence_spans`, also behind :func:`medclip.data.reports.split_sentences`).

Text is lower-cased and split into alphanumeric tokens; every token is reduced to a crude
singular, so phrases match plurals, hyphenation ("air-space" = "air space") and punctuation
variants. A phrase ending in ``*`` matches any token that starts with its last word
("atelecta*" -> atelectasis, atelectatic). Matching is longest-first, left to right.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Generic, TypeVar

from .graph import singular

P = TypeVar("P", bound=Hashable)

_TOKEN = re.compile(r"[a-z0-9]+")
_MIN_STEM = 4


@dataclass(frozen=True)
class Token:
    """One normalised token and its character span in the original text."""

    norm: str
    start: int
    end: int


_singular = lru_cache(maxsize=65536)(singular)


def tokenize(text: str) -> list[Token]:
    """Lower-case alphanumeric tokens of ``text`` with their spans, singularised."""
    return [Token(_singular(m.group()), m.start(), m.end()) for m in _TOKEN.finditer(text.lower())]


def phrase_tokens(phrase: str) -> tuple[tuple[str, ...], bool]:
    """(normalised tokens, last-token-is-a-prefix) of a phrase such as "consolidat*"."""
    stem = phrase.rstrip().endswith("*")
    words = _TOKEN.findall(phrase.lower())
    if not words:
        return (), False
    tokens = tuple(singular(w) for w in words[:-1]) + ((words[-1] if stem else singular(words[-1])),)
    return tokens, stem


@dataclass(frozen=True)
class Match(Generic[P]):
    """A phrase occurrence: token range [start, end) and the payloads of the matched phrase."""

    start: int
    end: int
    payloads: tuple[P, ...]
    phrase: tuple[str, ...]


class PhraseMatcher(Generic[P]):
    """Longest-first phrase matcher over token lists; each phrase carries one or more payloads."""

    def __init__(self, phrases: Iterable[tuple[str, P]]):
        entries: dict[tuple[tuple[str, ...], bool], list[P]] = {}
        for text, payload in phrases:
            key = phrase_tokens(text)
            if not key[0]:
                continue
            bucket = entries.setdefault(key, [])
            if payload not in bucket:
                bucket.append(payload)
        self._exact: dict[str, list[tuple[tuple[str, ...], bool, tuple[P, ...]]]] = {}
        self._stems: dict[str, list[tuple[tuple[str, ...], bool, tuple[P, ...]]]] = {}
        for (tokens, stem), payloads in entries.items():
            item = (tokens, stem, tuple(payloads))
            if stem and len(tokens) == 1:
                if len(tokens[0]) < _MIN_STEM:
                    raise ValueError(f"stem phrase {tokens[0]!r}* is shorter than {_MIN_STEM} letters")
                self._stems.setdefault(tokens[0], []).append(item)
            else:
                self._exact.setdefault(tokens[0], []).append(item)
        for candidates in (*self._exact.values(), *self._stems.values()):
            candidates.sort(key=lambda it: -len(it[0]))
        self._stem_lengths = sorted({len(k) for k in self._stems})
        self._cache: dict[str, tuple] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._exact.values()) + sum(len(v) for v in self._stems.values())

    def _candidates(self, token: str) -> tuple:
        """Phrases that can start at ``token``, longest first, each as (phrase, stem, payloads,
        inner tokens as a list, last token); the first token is known to match."""
        found = self._cache.get(token)
        if found is None:
            items = list(self._exact.get(token, ()))
            for k in self._stem_lengths:
                if k > len(token):
                    break
                items.extend(self._stems.get(token[:k], ()))
            items.sort(key=lambda it: -len(it[0]))  # stable: exact before stem forms of one length
            found = tuple((phrase, stem, payloads, list(phrase[1:-1]), phrase[-1]) for phrase, stem, payloads in items)
            if len(self._cache) < 200_000:
                self._cache[token] = found
        return found

    def find(self, tokens: list[str]) -> list[Match[P]]:
        """Non-overlapping matches, longest phrase first at each position, left to right."""
        out: list[Match[P]] = []
        i, n = 0, len(tokens)
        while i < n:
            best = None
            candidates = self._candidates(tokens[i])
            if not candidates:
                i += 1
                continue
            for phrase, stem, payloads, inner, last in candidates:
                m = len(phrase)
                if best is not None and m < len(best[0]):
                    break
                if i + m > n:
                    continue
                if m > 1:
                    end = tokens[i + m - 1]
                    if not (end == last or (stem and end.startswith(last))) or (
                        m > 2 and tokens[i + 1 : i + m - 1] != inner
                    ):
                        continue
                if best is not None and m == len(best[0]):  # same length: exact and stem forms agree
                    best = (best[0], best[1] + tuple(p for p in payloads if p not in best[1]))
                else:
                    best = (phrase, payloads)
            if best is None:
                i += 1
                continue
            out.append(Match(i, i + len(best[0]), best[1], best[0]))
            i += len(best[0])
        return out


#: Where a sentence may end: after . ! ? followed by white space (closing quotes / brackets kept with the
#: sentence), at a line break, or at a full stop glued to the next sentence ("effusion.Heart"). A decimal
#: point ("2.5 cm") is never followed by white space, so it never ends a sentence.
_SENT_BREAK = re.compile(r"(?<=[.!?])[\"')\]]*[ \t]+|[ \t]*\n\s*|(?<=[a-z]{2}\.)(?=[A-Z][a-z])")
#: Abbreviations whose full stop ends no sentence; "no." only before a number ("No. 2"), since
#: "Pneumothorax: no. Effusion: yes." has two sentences.
_ABBREV = re.compile(r"\b(?:Dr|Mr|Mrs|Ms|vs|approx|e\.g|i\.e|cf|fig)\.$", re.IGNORECASE)
_NUMBER_ABBREV = re.compile(r"\bno\.$", re.IGNORECASE)
_LIST_MARKER = re.compile(r"\d+[.)]")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` offsets into ``text`` of its sentences: the one sentence splitter of medclip.

    A sentence ends at . ! ? followed by white space, at a line break, or at a full stop glued to a
    capitalised word; not after an abbreviation ("Dr.", "vs.", "e.g.", "No. 2") or a list number
    ("1."), and never at a decimal point. Spans exclude surrounding white space; empty ones are dropped.
    """
    spans: list[tuple[int, int]] = []
    start = 0
    for m in [*_SENT_BREAK.finditer(text), None]:
        cut, resume = (m.start(), m.end()) if m is not None else (len(text), len(text))
        if m is not None:
            cut += len(m.group()) - len(m.group().lstrip("\"')]"))  # closing quotes stay with the sentence
        if m is not None and "\n" not in m.group():
            head = text[start:cut].rstrip()
            rest = text[resume : resume + 1]
            if (
                _ABBREV.search(head)
                or (_NUMBER_ABBREV.search(head) and rest.isdigit())
                or _LIST_MARKER.fullmatch(head.strip())
            ):
                continue  # not a sentence end: keep going
        piece = text[start:cut]
        lead = len(piece) - len(piece.lstrip())
        body = piece.strip()
        if body:
            spans.append((start + lead, start + lead + len(body)))
        start = resume
    return spans
