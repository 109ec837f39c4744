"""Radiology report text: section parsing, sentence splitting and identifier scrubbing."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from medclip.deid import hash_identifier
from medclip.knowledge.matching import sentence_spans

#: What identifiers are replaced with in report text (the convention of de-identified IU / Open-i reports).
REDACTED = "XXXX"

#: Canonical section names and the headers that introduce them (case-insensitive).
SECTION_HEADERS: dict[str, tuple[str, ...]] = {
    "indication": (
        "indication",
        "indications",
        "clinical indication",
        "clinical history",
        "history",
        "clinical information",
        "clinical notes",
        "reason for exam",
        "reason for study",
        "reason for examination",
        "clinical data",
        "clinical details",
    ),
    "comparison": ("comparison", "comparisons", "prior", "priors", "prior studies"),
    "technique": ("technique", "examination", "exam", "procedure", "views"),
    "findings": ("findings", "finding", "report", "description", "body"),
    "impression": (
        "impression",
        "impressions",
        "conclusion",
        "conclusions",
        "summary",
        "opinion",
        "diagnosis",
        "interpretation",
        "assessment",
    ),
}

_HEADER_TO_SECTION = {h: s for s, hs in SECTION_HEADERS.items() for h in hs}
_HEADER_RE = re.compile(
    r"(?im)(?:^|(?<=[\n.;]))[ \t]*("
    + "|".join(sorted((re.escape(h) for h in _HEADER_TO_SECTION), key=len, reverse=True))
    + r")[ \t]*:[ \t]*"
)


@dataclass
class ReportSections:
    """A report split into its standard sections; ``text`` is the whole report."""

    indication: str = ""
    comparison: str = ""
    technique: str = ""
    findings: str = ""
    impression: str = ""
    text: str = ""
    other: list[str] = field(default_factory=list)

    def body(self) -> str:
        """The clinically descriptive part: findings then impression (falls back to the whole text)."""
        parts = [p for p in (self.findings, self.impression) if p]
        return " ".join(parts) if parts else self.text


def _clean(text: object) -> str:
    if text is None:
        return ""
    s = str(text)
    if s.strip().lower() in {"", "nan", "none", "null"}:
        return ""
    return re.sub(r"[ \t]+", " ", s.replace("\r\n", "\n").replace("\r", "\n")).strip()


def parse_sections(text: object) -> ReportSections:
    """Split free report text at headers like ``FINDINGS:`` / ``IMPRESSION:``; text before any header is findings."""
    clean = _clean(text)
    sections = ReportSections(text=clean)
    if not clean:
        return sections
    matches = list(_HEADER_RE.finditer(clean))
    if not matches:
        sections.findings = clean
        return sections
    lead = clean[: matches[0].start()].strip()
    if lead:
        sections.other.append(lead)
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(clean)
        body = clean[m.end() : end].strip()
        name = _HEADER_TO_SECTION[m.group(1).lower()]
        prev = getattr(sections, name)
        setattr(sections, name, f"{prev} {body}".strip() if prev else body)
    if not sections.findings and not sections.impression and sections.other:
        sections.findings = " ".join(sections.other)
    return sections


def sections_from_fields(
    findings: object = "", impression: object = "", indication: object = "", comparison: object = "", text: object = ""
) -> ReportSections:
    """Sections from already-separated fields (e.g. a reports CSV with one column per section)."""
    s = ReportSections(
        indication=_clean(indication),
        comparison=_clean(comparison),
        findings=_clean(findings),
        impression=_clean(impression),
    )
    if not (s.findings or s.impression) and _clean(text):
        parsed = parse_sections(text)
        parsed.indication = parsed.indication or s.indication
        parsed.comparison = parsed.comparison or s.comparison
        return parsed
    parts = []
    for name in ("indication", "comparison", "findings", "impression"):
        value = getattr(s, name)
        if value:
            parts.append(f"{name.upper()}: {value}")
    s.text = "\n".join(parts) if parts else _clean(text)
    return s


def split_sentences(text: str) -> list[str]:
    """Split report text into sentences (:func:`sentence_spans`), list numbers ("1.") removed."""
    text = _clean(text)
    out = [re.sub(r"^\d+[.)]\s+", "", text[a:b]).strip() for a, b in sentence_spans(text)]
    return [s for s in out if s.strip(" .")]


_DATE_RES = (
    re.compile(r"\b\d{1,4}([/.-])\d{1,2}\1\d{1,4}\b"),  # one separator throughout: "1-1/2 weeks" is no date
    re.compile(r"\b(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\b"),
    re.compile(
        r"\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?\s+\d{1,2}(?:st|nd|rd|th)?,?\s+(?:19|20)\d{2}\b",
        re.IGNORECASE,
    ),
    re.compile(
        r"\b\d{1,2}(?:st|nd|rd|th)?\s+(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?,?\s+(?:19|20)\d{2}\b",
        re.IGNORECASE,
    ),
)
#: ID-like tokens: 7+ characters of capitals, digits and dashes holding at least 5 digits (MRNs, accession
#: numbers), but not clinical names such as COVID-19, H1N1 or T10-T12.
_LONG_NUMBER = re.compile(r"\b(?=(?:[A-Z-]*\d){5})[A-Z0-9][A-Z0-9-]{6,}\b")
_PHONE = re.compile(r"\b\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}\b")
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.]+\b")
#: The identifier shapes :func:`scrub_identifiers` replaces, as (kind, pattern) in the order it applies them;
#: ``medclip.audit.phi`` looks for the same shapes in what a command wrote.
IDENTIFIER_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    *(("date", p) for p in _DATE_RES),
    ("phone number", _PHONE),
    ("e-mail address", _EMAIL),
    ("ID-like number", _LONG_NUMBER),
)


#: A title before a person's name: "Dr. Smith", "Dr Smith", "DR. SMITH", "doctor Jones", "Mrs. Lee".
#: Upper-case "MR."/"MS." are left alone (magnetic resonance, multiple sclerosis); "DR" needs its period.
_TITLE = r"(?:\b(?:Dr|Doctor|doctor|Mr|Mrs|Ms|Prof|Professor)\.?|\bDR\.)"
_NAME_TOKEN = r"(?:[A-Z][A-Za-z'\u2019-]+|[A-Z]\.?)"
_TITLED_NAME = re.compile(_TITLE + r"[ \t]+(" + _NAME_TOKEN + r"(?:[ \t]+" + _NAME_TOKEN + r"){0,2})(?![ \t]*:)")
#: Capitalised words that may follow a title-like abbreviation ("... lateral DR. Findings ...") but are no names.
_NOT_NAMES = frozenset(
    {h for hs in SECTION_HEADERS.values() for h in hs for h in h.split()}
    | {
        "no",
        "the",
        "there",
        "this",
        "these",
        "a",
        "an",
        "and",
        "or",
        "at",
        "on",
        "by",
        "via",
        "was",
        "were",
        "is",
        "are",
        "has",
        "had",
        "heart",
        "lung",
        "lungs",
        "chest",
        "normal",
        "stable",
        "unchanged",
        "cardiac",
        "mediastinal",
        "bony",
        "osseous",
        "left",
        "right",
        "bilateral",
        "mild",
        "moderate",
        "severe",
        "small",
        "large",
        "interval",
        "again",
        "otherwise",
        "clear",
        "please",
        "called",
        "notified",
        "pa",
        "ap",
        "lateral",
        "frontal",
        "portable",
        "xray",
        "x-ray",
        "ct",
        "mri",
        "mr",
        "dr",
        "cxr",
        "view",
        "views",
        "image",
        "images",
        "study",
        "status",
        "post",
        "new",
        "old",
        "prior",
        "previous",
        "today",
        "patient",
        "pt",
        "which",
        "who",
    }
)


def _scrub_titled_names(text: str) -> str:
    """Replace each name word after a title ("Dr. John Smith" -> "Dr. XXXX XXXX"); clinical words stay."""

    def repl(m: re.Match) -> str:
        words = m.group(1).split()
        kept: list[str] = []
        for word in words:
            initial = (len(word) == 2 and word.endswith(".")) or (len(word) == 1 and word != "I")
            if word == "I" or not initial and word.rstrip(".").lower() in _NOT_NAMES:
                break
            kept.append(word)
        if not kept:
            return m.group(0)
        start = m.start(1) - m.start(0)
        head = m.group(0)[:start]
        names = m.group(0)[start:]
        for word in kept:  # redact word by word, keeping the spacing and anything after the last name
            i = names.index(word)
            core = word.rstrip("-'\u2019.")  # trailing punctuation ("J.", "XXXX-") stays as it was
            head += names[:i] + REDACTED + word[len(core) :]
            names = names[i + len(word) :]
        return head + names

    return _TITLED_NAME.sub(repl, text)


def scrub_identifiers(text: str, known: list[str] | tuple[str, ...] = ()) -> str:
    """Replace known identifiers (names, IDs of this patient) and name/date/ID/phone/e-mail patterns by ``REDACTED``.

    Names after a title ("Dr. Smith", "Dr John A. Smith", "DR. JONES") are replaced word by word;
    a title followed by a lower-case or clinical word ("Dr. notified", "lateral DR. Findings") is kept.
    ``known`` holds the raw identifiers read from the image headers of the same study: a DICOM
    person name ``DOE^JANE`` contributes each of its name parts.
    """
    if not text:
        return text
    tokens: set[str] = set()
    for value in known:
        value = str(value or "").strip()
        if not value:
            continue
        tokens.add(value)
        for part in re.split(r"[\^ ,]+", value):
            if len(part) >= 2 and not part.isdigit() or len(part) >= 4:
                tokens.add(part)
    for token in sorted(tokens, key=len, reverse=True):
        text = re.sub(r"(?<!\w)" + re.escape(token) + r"(?!\w)", REDACTED, text, flags=re.IGNORECASE)
    text = _scrub_titled_names(text)
    for _, pattern in IDENTIFIER_PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


_TOKEN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]|[A-Za-z0-9]")


def identifier_tokens(values: Iterable[object]) -> set[str]:
    """Lower-cased tokens of raw identifiers (names split at ^ and spaces; IDs whole and split at -)."""
    out: set[str] = set()
    for value in values:
        text = str(value or "").strip()
        if not text or text.lower() in {"nan", "none", "anonymous", "unknown"}:
            continue
        out.add(text.lower())
        for part in re.split(r"[\^ ,]+", text):
            part = part.strip().lower()
            if len(part) >= 2:
                out.add(part)
                out.update(t.lower() for t in _TOKEN_RE.findall(part) if len(t) >= 3)
    return out


#: Words staff-name fields often hold that are roles or modalities, not names ("CT^TECH", "RADIOLOGY").
_ROLE_WORDS = frozenset(
    {
        "tech",
        "techs",
        "technologist",
        "radiographer",
        "radiologist",
        "radiology",
        "rad",
        "md",
        "do",
        "rn",
        "rt",
        "phd",
        "mba",
        "resident",
        "fellow",
        "attending",
        "staff",
        "physician",
        "doctor",
        "cr",
        "dx",
        "us",
        "nm",
        "pt",
        "xa",
        "mg",
        "department",
        "dept",
        "er",
        "ed",
    }
)


def staff_name_tokens(values: Iterable[object]) -> set[str]:
    """:func:`identifier_tokens` of staff person names, minus role, modality and common report words.

    Operator and physician fields often hold "CT^TECH" or "RADIOLOGY": scrubbing those words from every
    report of the study would remove clinical content, not identify anyone.
    """
    return {t for t in identifier_tokens(values) if t not in _NOT_NAMES and t not in _ROLE_WORDS}


def scrub_with_hashes(text: str, phi_hashes: set[str], salt: str) -> str:
    """Replace every token of ``text`` whose salted hash is a known identifier hash by ``XXXX``."""
    if not text or not phi_hashes:
        return text

    def repl(m: re.Match) -> str:
        tok = m.group(0)
        if hash_identifier(tok.lower(), salt) in phi_hashes:
            return REDACTED
        parts = tok.split("-")
        if len(parts) > 1 and any(hash_identifier(p.lower(), salt) in phi_hashes for p in parts if p):
            return REDACTED
        return tok

    return _TOKEN_RE.sub(repl, text)
