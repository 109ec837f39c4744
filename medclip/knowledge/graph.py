"""The medical knowledge graph: concepts, names, hierarchy, cross references and cue lexicon.

The graph is data (``graph.json``, built by ``knowledge/build_graph.py`` from open sources and
``knowledge/curated.yaml``). ``knowledge/graph.json`` is that build's output, which the build also copies
into the package (``medclip/knowledge/data/graph.json``); ``Graph.load()`` reads only the package copy
(through ``importlib.resources``), so an installed wheel needs no repository around it.
Users add concepts or licensed vocabularies (UMLS, RadLex) with extension files, never by
editing code: ``Graph.load(extensions=[...])`` or ``$MEDCLIP_KNOWLEDGE_EXTENSIONS``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

#: Environment variable: extension files (YAML or JSON) merged into every loaded graph,
#: separated by the OS path separator.
EXTENSIONS_ENV = "MEDCLIP_KNOWLEDGE_EXTENSIONS"

#: The graph shipped in the package (``knowledge/build_graph.py`` writes it beside ``knowledge/graph.json``).
PACKAGED_GRAPH = Path(str(files("medclip.knowledge") / "data" / "graph.json"))

_NON_WORD = re.compile(r"[^a-z0-9]+")


class GraphError(ValueError):
    """A graph or extension file is unreadable or inconsistent; the message names the file."""


def singular(token: str) -> str:
    """Crude English singular of one lower-case token (effusions -> effusion, opacities -> opacity)."""
    if len(token) <= 3:
        return token
    if token.endswith("ies"):
        return token[:-3] + "y"
    if token.endswith(("ches", "shes", "xes", "sses")):
        return token[:-2]
    if token.endswith("s") and not token.endswith(("ss", "us", "is", "as", "os", "ys")):
        return token[:-1]
    return token


def normalize_name(text: str) -> str:
    """Case-, punctuation- and plural-insensitive key for a name ("Pleural-Effusions" -> "pleural effusion")."""
    return " ".join(singular(t) for t in _NON_WORD.split(text.lower()) if t)


@dataclass(frozen=True)
class Fact:
    """One sourced statement: its text (or target id) and the key of its source."""

    text: str
    source: str
    anatomic: bool = False


@dataclass
class Concept:
    """One finding: names, hierarchy, description, matching phrases and cross references."""

    id: str
    name: str
    tasks: list[str] = field(default_factory=list)
    definition: list[Fact] = field(default_factory=list)
    synonym_facts: list[Fact] = field(default_factory=list)
    parent_facts: list[Fact] = field(default_factory=list)
    related_facts: list[Fact] = field(default_factory=list)
    location: list[Fact] = field(default_factory=list)
    appearance: list[Fact] = field(default_factory=list)
    mention_facts: list[Fact] = field(default_factory=list)
    modifier_facts: list[Fact] = field(default_factory=list)
    exclusion_facts: list[Fact] = field(default_factory=list)
    xrefs: list[dict[str, str]] = field(default_factory=list)

    @property
    def synonyms(self) -> list[str]:
        return [f.text for f in self.synonym_facts]

    @property
    def parents(self) -> list[str]:
        return [f.text for f in self.parent_facts]

    @property
    def related(self) -> list[str]:
        return [f.text for f in self.related_facts]

    @property
    def mentions(self) -> list[str]:
        return [f.text for f in self.mention_facts]

    @property
    def exclusions(self) -> list[str]:
        return [f.text for f in self.exclusion_facts]

    @property
    def modifiers(self) -> list[str]:
        return [f.text for f in self.modifier_facts]

    @property
    def names(self) -> list[str]:
        """Preferred name first, then synonyms (no duplicates)."""
        seen: set[str] = set()
        out = []
        for n in [self.name, *self.synonyms]:
            key = normalize_name(n)
            if key and key not in seen:
                seen.add(key)
                out.append(n)
        return out

    def xref_ids(self, db: str) -> list[str]:
        """Cross-reference ids in one database ("HPO", "ICD10CM", "DOID", "MESH", "OPENI", "UMLS")."""
        return [x["id"] for x in self.xrefs if x["db"] == db.upper()]

    def to_dict(self) -> dict[str, Any]:
        def facts(items: list[Fact], key: str = "text") -> list[dict]:
            return [{key: f.text, "source": f.source, **({"anatomic": True} if f.anatomic else {})} for f in items]

        return {
            "id": self.id,
            "name": self.name,
            "tasks": self.tasks,
            "definition": facts(self.definition),
            "synonyms": facts(self.synonym_facts),
            "parents": facts(self.parent_facts, "id"),
            "related": facts(self.related_facts, "id"),
            "location": facts(self.location),
            "appearance": facts(self.appearance),
            "mentions": facts(self.mention_facts),
            "modifiers": facts(self.modifier_facts),
            "exclusions": facts(self.exclusion_facts),
            "xrefs": self.xrefs,
        }


def _facts(items: Iterable[Any] | None, source: str, key: str = "text") -> list[Fact]:
    out = []
    for item in items or []:
        if isinstance(item, str):
            out.append(Fact(item, source))
        elif isinstance(item, dict) and key in item:
            out.append(Fact(str(item[key]), str(item.get("source", source)), bool(item.get("anatomic"))))
        else:
            raise GraphError(f"expected a string or a mapping with {key!r}, got {item!r}")
    return out


def _concept_from_dict(d: dict[str, Any], source: str) -> Concept:
    if "id" not in d:
        raise GraphError(f"concept without 'id': {str(d)[:80]}")
    xrefs = []
    for x in d.get("xrefs") or []:
        if isinstance(x, dict) and "db" in x and "id" in x:
            xrefs.append(
                {
                    **{k: str(v) for k, v in x.items()},
                    "db": str(x["db"]).upper(),
                    "source": str(x.get("source", source)),
                }
            )
        else:
            raise GraphError(f"concept {d['id']}: xref must be a mapping with 'db' and 'id', got {x!r}")
    return Concept(
        id=str(d["id"]),
        name=str(d.get("name", "")),
        tasks=list(d.get("tasks") or []),
        definition=_facts(d.get("definition"), source)
        if not isinstance(d.get("definition"), str)
        else [Fact(d["definition"], source)],
        synonym_facts=_facts(d.get("synonyms"), source),
        parent_facts=_facts(d.get("parents"), source, "id"),
        related_facts=_facts(d.get("related"), source, "id"),
        location=_facts([d["location"]] if isinstance(d.get("location"), str) else d.get("location"), source),
        appearance=_facts([d["appearance"]] if isinstance(d.get("appearance"), str) else d.get("appearance"), source),
        mention_facts=_facts(d.get("mentions"), source),
        modifier_facts=_facts(d.get("modifiers"), source),
        exclusion_facts=_facts(d.get("exclusions"), source),
        xrefs=xrefs,
    )


class Graph:
    """Concepts by id with name lookup, is-a hierarchy, task label sets and the cue lexicon."""

    def __init__(self, data: dict[str, Any], origin: str = "<memory>"):
        if not isinstance(data, dict) or not isinstance(data.get("concepts"), list):
            raise GraphError(f"{origin}: not a medclip knowledge graph (no 'concepts' list)")
        self.origin = origin
        self.version: str = str(data.get("version", ""))
        self.sources: dict[str, dict] = dict(data.get("sources") or {})
        self.tasks: dict[str, dict] = dict(data.get("tasks") or {})
        self.cues: dict[str, list[Fact]] = {k: _facts(v, "graph") for k, v in (data.get("cues") or {}).items()}
        self.concepts: dict[str, Concept] = {}
        for d in data["concepts"]:
            c = _concept_from_dict(d, "graph")
            if c.id in self.concepts:
                raise GraphError(f"{origin}: duplicate concept id {c.id!r}")
            self.concepts[c.id] = c
        self._reindex()

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path | None = None, extensions: Iterable[str | Path] | None = None) -> Graph:
        """Load a graph (default: the one shipped in the package) and merge extension files.

        Extensions come from ``extensions`` and from ``$MEDCLIP_KNOWLEDGE_EXTENSIONS``.
        """
        if path is None:
            path = PACKAGED_GRAPH
        path = Path(path)
        graph = cls(_read_data(path), origin=str(path))
        env = [p for p in os.environ.get(EXTENSIONS_ENV, "").split(os.pathsep) if p.strip()]
        for ext in [*(extensions or []), *env]:
            graph.extend(Path(ext))
        return graph

    def extend(self, source: str | Path | dict[str, Any]) -> Graph:
        """Merge an extension (file path or dict): new concepts are added, existing ones enriched.

        Format: ``{"source": {"name":..., "licence":...}, "concepts": [{"id":..., "name":...,
        "synonyms": [...], "mentions": [...], "parents": [...], "xrefs": [{"db":..., "id":...}],
        ...}]}``. Facts without their own ``source`` are attributed to the extension; ``"sources":
        {key: {...}}`` registers further sources that facts cite by key; ``"add_to_common": false``
        keeps new concepts out of the ``chest_xray_common`` label set (attributes, not findings).
        """
        if isinstance(source, dict):
            data, origin = source, "<extension>"
        else:
            data, origin = _read_data(Path(source)), str(source)
        if not isinstance(data.get("concepts"), list):
            raise GraphError(f"{origin}: an extension needs a 'concepts' list")
        key = str((data.get("source") or {}).get("key") or f"extension:{Path(origin).name}")
        self.sources[key] = {"name": origin, **(data.get("source") or {})}
        for other, info in (data.get("sources") or {}).items():  # further sources its facts cite by key
            self.sources[str(other)] = dict(info or {})
        common = bool(data.get("add_to_common", True))  # false: attribute concepts, not chest findings
        for d in data["concepts"]:
            if not isinstance(d, dict) or "id" not in d:
                raise GraphError(f"{origin}: every concept needs an 'id' ({str(d)[:60]})")
            if d["id"] in self.concepts:
                self._merge(self.concepts[d["id"]], _concept_from_dict(d, key))
            else:
                if "name" not in d:
                    raise GraphError(f"{origin}: new concept {d['id']!r} needs a 'name'")
                self.concepts[d["id"]] = _concept_from_dict(d, key)
                all_task = self.tasks.get("chest_xray_common")
                if all_task is not None and common:
                    all_task["concepts"].append(d["id"])
        for name, task in (data.get("tasks") or {}).items():
            self.tasks[name] = {"description": task.get("description", ""), "concepts": list(task["concepts"])}
        self._reindex()
        return self

    @staticmethod
    def _merge(into: Concept, new: Concept) -> None:
        for attr in (
            "definition",
            "synonym_facts",
            "parent_facts",
            "related_facts",
            "location",
            "appearance",
            "mention_facts",
            "modifier_facts",
            "exclusion_facts",
        ):
            have = {f.text.lower() for f in getattr(into, attr)}
            getattr(into, attr).extend(f for f in getattr(new, attr) if f.text.lower() not in have)
        into.xrefs.extend(x for x in new.xrefs if x not in into.xrefs)
        into.tasks.extend(t for t in new.tasks if t not in into.tasks)

    def _reindex(self) -> None:
        for c in self.concepts.values():
            for p in c.parents + c.related:
                if p not in self.concepts:
                    raise GraphError(f"{self.origin}: concept {c.id!r} refers to unknown concept {p!r}")
        for name, task in self.tasks.items():
            unknown = [cid for cid in task["concepts"] if cid not in self.concepts]
            if unknown:
                raise GraphError(f"{self.origin}: task {name!r} lists unknown concepts {unknown}")
        self._children: dict[str, list[str]] = {cid: [] for cid in self.concepts}
        for c in self.concepts.values():
            for p in c.parents:
                self._children[p].append(c.id)
        self._by_name: dict[str, str] = {}
        for c in self.concepts.values():  # ids and preferred names win over synonyms
            self._by_name.setdefault(normalize_name(c.id), c.id)
            self._by_name.setdefault(normalize_name(c.name), c.id)
        for c in self.concepts.values():
            for n in c.synonyms:
                self._by_name.setdefault(normalize_name(n), c.id)
        for cid in self.concepts:  # detect is-a cycles early
            self.ancestors(cid)

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self.concepts)

    def __iter__(self) -> Iterator[Concept]:
        return iter(self.concepts.values())

    def __contains__(self, concept_id: object) -> bool:
        return concept_id in self.concepts

    def __getitem__(self, concept_id: str) -> Concept:
        try:
            return self.concepts[concept_id]
        except KeyError:
            raise KeyError(f"unknown concept id {concept_id!r}") from None

    def lookup(self, name: str) -> Concept | None:
        """Concept by id, preferred name or synonym (case, plural and punctuation tolerant)."""
        cid = self._by_name.get(normalize_name(name))
        return self.concepts[cid] if cid else None

    def children(self, concept_id: str) -> list[str]:
        return list(self._children[self[concept_id].id])

    def ancestors(self, concept_id: str) -> list[str]:
        """All is-a ancestors, nearest first."""
        out: list[str] = []
        frontier = list(self[concept_id].parents)
        while frontier:
            p = frontier.pop(0)
            if p == concept_id:
                raise GraphError(f"{self.origin}: is-a cycle through {concept_id!r}")
            if p not in out:
                out.append(p)
                frontier.extend(self.concepts[p].parents)
        return out

    def descendants(self, concept_id: str) -> list[str]:
        """All is-a descendants, nearest first."""
        out: list[str] = []
        frontier = list(self._children[self[concept_id].id])
        while frontier:
            c = frontier.pop(0)
            if c not in out:
                out.append(c)
                frontier.extend(self._children[c])
        return out

    def task_labels(self, task: str) -> list[str]:
        """Concept ids of a label set ("chexpert14", "chest_xray_common", or one from an extension)."""
        if task not in self.tasks:
            raise KeyError(f"unknown task {task!r}; known: {sorted(self.tasks)}")
        return list(self.tasks[task]["concepts"])

    def resolve(self, findings: str | Iterable[str] | None) -> list[str]:
        """A task name, a list of ids/names, or None (all concepts) -> concept ids."""
        if findings is None:
            return list(self.concepts)
        if isinstance(findings, str):
            if findings in self.tasks:
                return self.task_labels(findings)
            findings = [findings]
        out = []
        for f in findings:
            c = self.concepts.get(f) or self.lookup(f)
            if c is None:
                raise KeyError(f"unknown finding {f!r}")
            out.append(c.id)
        return out

    def cue_phrases(self, category: str) -> list[str]:
        return [f.text for f in self.cues.get(category, [])]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "medclip-knowledge-graph/1",
            "version": self.version,
            "sources": self.sources,
            "tasks": self.tasks,
            "cues": {k: [{"text": f.text, "source": f.source} for f in v] for k, v in self.cues.items()},
            "concepts": [c.to_dict() for c in self.concepts.values()],
        }

    def __repr__(self) -> str:
        return f"Graph({len(self)} concepts, version {self.version!r}, from {self.origin})"


def _read_data(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise GraphError(f"{path}: cannot read knowledge file ({exc.strerror or exc})") from exc
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise GraphError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'} ({exc})") from exc
    if not isinstance(data, dict):
        raise GraphError(f"{path}: expected a mapping at the top level")
    return data
