"""The IU labeler benchmark's reference mapping and tie notes (benchmarks/labeler_eval.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from medclip.knowledge import Graph

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "labeler_eval.py"


@pytest.fixture(scope="module")
def labeler_eval():
    spec = importlib.util.spec_from_file_location("labeler_eval", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "mesh, cid, expected",
    [
        ("Calcinosis/aorta, thoracic;Aorta, Thoracic/tortuous", "aortic_calcification", True),
        ("Calcinosis/aorta/severe", "aortic_calcification", True),
        ("Calcinosis/lung/hilum/lymph nodes", "aortic_calcification", False),
        ("Cicatrix/pleura/apex/left", "pleural_other", True),
        ("Calcinosis/pleura/multiple", "pleural_other", True),
        ("Thickening/pleura/right", "pleural_other", True),  # through pleural_thickening, a child
        ("Cicatrix/lung/apex/right", "pleural_other", False),
    ],
)
def test_reference_terms(labeler_eval, mesh: str, cid: str, expected: bool) -> None:
    terms = labeler_eval.reference_terms(Graph.load())
    assert labeler_eval.is_positive(labeler_eval.parse_index_terms(mesh), terms[cid]) is expected


def test_tie_reason(labeler_eval) -> None:
    assert labeler_eval.tie_reason(1.0, 1.0, 0) == "keyword already perfect (F1 1.000)"
    assert "no negated or hedged mentions" in labeler_eval.tie_reason(0.97, 0.97, 0)
    assert labeler_eval.tie_reason(0.95, 0.97, 3) is None  # a real loss, not a tie
    assert labeler_eval.tie_reason(0.97, 0.97, 2) is None  # hedged mentions exist: could have won
