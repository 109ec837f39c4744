"""The package runs without the repository around it: its data come through importlib.resources."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import medclip

REPO = Path(__file__).resolve().parents[1]
PACKAGE = Path(medclip.__file__).resolve().parent
DATA_FOLDERS = ("sample", "train/configs", "knowledge/data", "model/configs")


def test_package_data_globs_cover_every_bundled_data_file() -> None:
    """Every non-Python file of the package's data folders is listed in pyproject's package-data (else a wheel lacks it)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["medclip"]
    listed = {p for g in globs for p in PACKAGE.glob(g) if p.is_file()}
    data = {
        p
        for folder in DATA_FOLDERS
        for p in (PACKAGE / folder).rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc")
    }
    assert data and sorted(map(str, data - listed)) == []


def test_sample_lives_in_the_package_with_its_attribution() -> None:
    from medclip.sample import SAMPLE_DIR, SAMPLE_EXPORT, SAMPLE_KERMANY, SAMPLE_REPORTS

    assert SAMPLE_DIR.resolve().is_relative_to(PACKAGE)
    assert len(list(SAMPLE_EXPORT.rglob("*.dcm"))) == 67 and SAMPLE_REPORTS.is_file()
    assert (SAMPLE_DIR / "ATTRIBUTION.csv").is_file() and (SAMPLE_DIR / "README.md").is_file()
    assert (SAMPLE_KERMANY / "ATTRIBUTION.csv").is_file() and (SAMPLE_KERMANY / "labels.csv").is_file()
    assert "medclip/sample" in (REPO / "datasets" / "sample" / "README.md").read_text()


def test_bundled_config_by_name_or_by_path(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from medclip.cli import main
    from medclip.train.configs import CONFIG_DIR, bundled_configs, resolve_config

    assert bundled_configs() == ["quickstart", "small-data"]
    assert resolve_config("quickstart") == resolve_config("quickstart.yaml") == CONFIG_DIR / "quickstart.yaml"
    mine = tmp_path / "quickstart.yaml"  # a file of the user's wins over the bundled name
    mine.write_text("seed: 3\n")
    assert resolve_config(mine) == mine
    assert main(["fit", "--config", "quickstart", "--print-config", "trainer.max_steps=7"]) == 0
    assert re.search(r"max_steps: 7", capsys.readouterr().out)
    assert main(["fit", "--config", "no-such-config", "--print-config"]) == 2
    assert (
        "no-such-config: no such config file, nor a bundled config (quickstart, small-data)" in capsys.readouterr().err
    )


def test_knowledge_graph_is_read_from_the_package_only() -> None:
    """knowledge/graph.json is the build output; the package reads its copy in medclip/knowledge/data/, never the repo's."""
    import medclip.knowledge.graph as graph_module
    from medclip.knowledge import Graph

    assert not hasattr(graph_module, "REPO_GRAPH")
    assert graph_module.PACKAGED_GRAPH.resolve().is_relative_to(PACKAGE)
    assert Graph.load().origin == str(graph_module.PACKAGED_GRAPH)
    assert graph_module.PACKAGED_GRAPH.read_bytes() == (REPO / "knowledge" / "graph.json").read_bytes()


def test_no_module_reaches_for_the_repository() -> None:
    pattern = re.compile(r"parents\[[12]\]|REPO_ROOT")
    hits = [
        f"{p.relative_to(PACKAGE)}:{i}"
        for p in PACKAGE.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []
