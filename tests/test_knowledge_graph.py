"""Graph loading, name lookup, hierarchy, task label sets, provenance and extensions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medclip.knowledge import Graph, GraphError


@pytest.fixture(scope="module")
def graph() -> Graph:
    return Graph.load()


def test_chexpert14_task(graph: Graph) -> None:
    labels = graph.task_labels("chexpert14")
    assert len(labels) == 14
    assert {"no_finding", "pleural_effusion", "support_devices", "lung_opacity"} <= set(labels)
    common = graph.task_labels("chest_xray_common")
    assert set(labels) < set(common)
    assert {
        "nodule",
        "mass",
        "calcified_granuloma",
        "emphysema",
        "hiatal_hernia",
        "scoliosis",
        "interstitial_pattern",
        "pulmonary_congestion",
        "infiltrate",
        "scarring",
        "airspace_disease",
        "pneumoperitoneum",
        "covid19_pneumonia",
    } <= set(common)
    with pytest.raises(KeyError, match="unknown task"):
        graph.task_labels("nope")


@pytest.mark.parametrize(
    "name, cid",
    [
        ("Pleural Effusion", "pleural_effusion"),
        ("pleural-effusions", "pleural_effusion"),
        ("  PNEUMOTHORAX. ", "pneumothorax"),
        ("enlarged heart", "cardiomegaly"),
        ("COPD", "copd"),
        ("hiatus hernia", "hiatal_hernia"),
        ("Calcified granulomas", "calcified_granuloma"),
        ("pleural_effusion", "pleural_effusion"),
        ("COVID-19", "covid19_pneumonia"),
        ("opacities", "lung_opacity"),
    ],
)
def test_lookup_tolerates_case_plural_punctuation(graph: Graph, name: str, cid: str) -> None:
    assert graph.lookup(name).id == cid


def test_lookup_unknown(graph: Graph) -> None:
    assert graph.lookup("unicorn horn") is None


def test_hierarchy(graph: Graph) -> None:
    assert graph.ancestors("nodule") == ["lung_lesion", "lung_opacity"]
    assert {"nodule", "mass"} <= set(graph.descendants("lung_lesion"))
    assert "covid19_pneumonia" in graph.descendants("lung_opacity")
    assert set(graph["calcified_granuloma"].parents) == {"granuloma", "calcification"}


def test_every_fact_has_a_licensed_source(graph: Graph) -> None:
    used = set()
    for c in graph:
        for attr in ("definition", "synonym_facts", "mention_facts", "exclusion_facts", "location", "appearance"):
            used.update(f.source for f in getattr(c, attr))
        used.update(x["source"] for x in c.xrefs)
    assert used <= set(graph.sources)
    assert all("licence" in graph.sources[s] for s in used)
    assert graph.sources["hpo"]["version"].startswith("hp/releases/")
    assert {"hpo", "icd10cm", "chexpert-labeler", "negbio", "disease-ontology", "medclip-curated"} <= used


def test_cross_references(graph: Graph) -> None:
    c = graph["cardiomegaly"]
    assert c.xref_ids("HPO") == ["HP:0001640"]
    assert "I51.7" in c.xref_ids("ICD10CM")
    assert "Cardiomegaly" in c.xref_ids("MESH")
    assert graph["pneumothorax"].xref_ids("DOID") == ["DOID:1673"]
    assert graph["pleural_effusion"].definition[0].source == "hpo"
    assert graph["support_devices"].definition[0].source == "medclip-curated"


def test_extension_adds_and_enriches(tmp_path: Path, graph: Graph, monkeypatch: pytest.MonkeyPatch) -> None:
    ext = tmp_path / "radlex.yaml"
    ext.write_text(
        "source: {key: radlex, name: RadLex export, licence: RadLex licence}\n"
        "concepts:\n"
        "- id: azygos_lobe\n  name: azygos lobe\n  parents: []\n  mentions: [azygos fissure]\n"
        "  xrefs: [{db: RADLEX, id: RID1234}]\n"
        "- id: pneumothorax\n  synonyms: [PTX]\n  mentions: [ptx]\n"
    )
    g = Graph.load(extensions=[ext])
    assert g.lookup("PTX").id == "pneumothorax"
    assert g["azygos_lobe"].xref_ids("RADLEX") == ["RID1234"]
    assert g["azygos_lobe"].mention_facts[0].source == "radlex"
    assert "azygos_lobe" in g.task_labels("chest_xray_common")
    monkeypatch.setenv("MEDCLIP_KNOWLEDGE_EXTENSIONS", str(ext))
    assert "azygos_lobe" in Graph.load()
    assert "azygos_lobe" not in graph  # the shared graph is untouched


def test_bad_files_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(GraphError, match="missing.json: cannot read"):
        Graph.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(GraphError, match="bad.json: not valid JSON"):
        Graph.load(bad)
    bad.write_text(json.dumps({"concepts": [{"id": "a", "name": "a", "parents": ["b"]}]}))
    with pytest.raises(GraphError, match="unknown concept 'b'"):
        Graph.load(bad)
    bad.write_text(
        json.dumps(
            {"concepts": [{"id": "a", "name": "a", "parents": ["b"]}, {"id": "b", "name": "b", "parents": ["a"]}]}
        )
    )
    with pytest.raises(GraphError, match="cycle"):
        Graph.load(bad)


def test_roundtrip_to_dict(graph: Graph, tmp_path: Path) -> None:
    path = tmp_path / "g.json"
    path.write_text(json.dumps(graph.to_dict()))
    again = Graph.load(path)
    assert again["cardiomegaly"].to_dict() == graph["cardiomegaly"].to_dict()


def test_default_graph_is_package_data() -> None:
    from medclip.knowledge import graph as graph_module

    assert graph_module.PACKAGED_GRAPH.is_file()
    assert Graph.load().origin == str(graph_module.PACKAGED_GRAPH)
