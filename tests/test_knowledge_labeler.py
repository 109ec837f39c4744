"""Report labeler: negation, uncertainty, list scope, sections, XXXX redactions, synonyms, manifests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from medclip.knowledge import Graph, ReportLabeler, label_manifest


@pytest.fixture(scope="module")
def labeler() -> ReportLabeler:
    return ReportLabeler(Graph.load())


def status(labeler: ReportLabeler, report, cid: str) -> str:
    return labeler.label(report)[cid].status


@pytest.mark.parametrize("text", [
    "No pneumothorax.", "There is no evidence of pneumothorax.", "Negative for pneumothorax.",
    "Without pneumothorax.", "Pneumothorax is not seen.", "The pneumothorax has resolved.",
])
def test_negation(labeler: ReportLabeler, text: str) -> None:
    assert status(labeler, text, "pneumothorax") == "negative"


@pytest.mark.parametrize("text", [
    "Findings may represent pneumonia.", "Cannot exclude pneumonia.", "Pneumonia is not excluded.",
    "Possible pneumonia.", "Findings suspicious for pneumonia.", "Cannot rule out early pneumonia.",
])
def test_uncertainty(labeler: ReportLabeler, text: str) -> None:
    assert status(labeler, text, "pneumonia") == "uncertain"


def test_positive_and_evidence_span(labeler: ReportLabeler) -> None:
    text = "Small left pleural effusion."
    m = labeler.label(text)["pleural_effusion"]
    assert m.status == "positive" and m.value == 1.0
    assert text[m.evidence_span[0]:m.evidence_span[1]] == "pleural effusion"
    assert m.sentence == "Small left pleural effusion"
    neg = labeler.label("Heart size and mediastinal contours are within normal limits.")["cardiomegaly"]
    assert neg.status == "negative" and neg.cue == "are within normal limits"


def test_list_scope(labeler: ReportLabeler) -> None:
    r = labeler.label("No focal consolidation, pleural effusion or pneumothorax.")
    assert r["consolidation"].status == r["pleural_effusion"].status == r["pneumothorax"].status == "negative"
    r = labeler.label("No pneumothorax, but there is a small right pleural effusion.")
    assert r["pneumothorax"].status == "negative" and r["pleural_effusion"].status == "positive"


def test_sections(labeler: ReportLabeler) -> None:
    text = "INDICATION: History of pneumonia, cough. FINDINGS: Lungs are clear. IMPRESSION: Normal chest."
    r = labeler.label(text)
    assert r["pneumonia"].status == "not_mentioned"
    assert r["no_finding"].status == "positive"
    sections = {"indication": "pneumothorax follow-up", "findings": "Mild cardiomegaly.", "impression": None}
    r = labeler.label(sections)
    assert r["pneumothorax"].status == "not_mentioned"
    assert r["cardiomegaly"].status == "positive" and r["cardiomegaly"].section == "findings"
    assert r["no_finding"].status == "negative"
    assert labeler.split_sections("FINDINGS: a. IMPRESSION: b.") == {"findings": " a. ", "impression": " b."}


def test_history_within_findings(labeler: ReportLabeler) -> None:
    assert status(labeler, "Patient with a history of tuberculosis. Lungs clear.", "tuberculosis") == "not_mentioned"


def test_xxxx_redactions(labeler: ReportLabeler) -> None:
    r = labeler.label("There are no XXXX of a pleural effusion. XXXX cardiomegaly.")
    assert r["pleural_effusion"].status == "negative"
    assert r["cardiomegaly"].status == "positive"


@pytest.mark.parametrize("text, cid", [
    ("Enlarged heart.", "cardiomegaly"), ("Bilateral effusions.", "pleural_effusion"),
    ("Multiple calcified granulomas.", "calcified_granuloma"), ("Hyperexpanded lungs.", "hyperinflation"),
    ("Mild levoscoliosis.", "scoliosis"), ("Bibasilar air-space disease.", "airspace_disease"),
    ("Left basilar atelectatic change.", "atelectasis"), ("Right upper lobe nodules.", "nodule"),
    ("Elevated right hemidiaphragm.", "elevated_hemidiaphragm"), ("Hiatus hernia.", "hiatal_hernia"),
])
def test_synonyms_plurals_and_stems(labeler: ReportLabeler, text: str, cid: str) -> None:
    assert status(labeler, text, cid) == "positive"


def test_anatomic_mentions_need_a_modifier(labeler: ReportLabeler) -> None:
    assert status(labeler, "The heart is enlarged.", "cardiomegaly") == "positive"
    assert status(labeler, "Heart size is normal.", "cardiomegaly") == "negative"
    assert status(labeler, "The heart is not enlarged.", "cardiomegaly") == "negative"
    assert status(labeler, "Heart size is stable.", "cardiomegaly") == "not_mentioned"


def test_exclusions_and_propagation(labeler: ReportLabeler) -> None:
    r = labeler.label("Small pericardial effusion.")
    assert r["pericardial_effusion"].status == "positive" and r["pleural_effusion"].status == "not_mentioned"
    r = labeler.label("Right lower lobe nodule.")
    assert r["nodule"].status == r["lung_lesion"].status == r["lung_opacity"].status == "positive"
    r = labeler.label("Calcified granuloma in the right upper lobe.")
    assert r["granuloma"].status == "positive" and r["granuloma"].inferred_from == "calcified_granuloma"
    assert r["calcification"].inferred_from == "calcified_granuloma"
    assert r["lung_lesion"].status == "not_mentioned"  # CheXpert: calcified nodules are not lesions
    r = ReportLabeler(Graph.load(), propagate=False).label("Calcified granuloma in the right upper lobe.")
    assert r["granuloma"].status == "not_mentioned"


def test_no_finding_ignores_devices(labeler: ReportLabeler) -> None:
    r = labeler.label("Left subclavian central venous catheter. Lungs are clear.")
    assert r["support_devices"].status == "positive" and r["no_finding"].status == "positive"
    assert labeler.label("")["no_finding"].status == "not_mentioned"


def test_findings_subset_and_bad_input(labeler: ReportLabeler) -> None:
    small = ReportLabeler(labeler.graph, findings="chexpert14")
    assert list(small.label("No effusion.")) == labeler.graph.task_labels("chexpert14")
    with pytest.raises(TypeError, match="report must be"):
        labeler.label(42)  # type: ignore[arg-type]
    assert math.isnan(labeler.label("")["pneumothorax"].value)


def test_iu_example_sentences(labeler: ReportLabeler, shared_dir: Path) -> None:
    """Three real IU reports (read from ../shared, not bundled)."""
    import pandas as pd

    path = shared_dir / "data" / "iu_reports" / "indiana_reports.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    df = pd.read_csv(path).set_index("uid")
    first = labeler.label({"indication": df.loc[1, "indication"], "findings": df.loc[1, "findings"],
                           "impression": df.loc[1, "impression"]})
    assert first["no_finding"].status == "positive"
    assert first["pleural_effusion"].status == first["pneumothorax"].status == "negative"
    second = labeler.label({"findings": df.loc[2, "findings"], "impression": df.loc[2, "impression"]})
    assert second["cardiomegaly"].status == "positive"


def test_label_manifest(tmp_path: Path, labeler: ReportLabeler) -> None:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    df = pd.DataFrame({
        "image_id": ["a", "b", "c"],
        "report_indication": ["cough", "", None],
        "report_findings": ["No pleural effusion or pneumothorax.", "", None],
        "report_impression": ["Mild cardiomegaly.", "", None],
        "report_text": ["", "FINDINGS: Possible left lower lobe pneumonia.", None],
    })
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({**table.schema.metadata, b"medclip.root": b"/export"})
    path = tmp_path / "manifest.parquet"
    pq.write_table(table, path)
    out = label_manifest(path, findings="chexpert14", progress=False)
    assert out["label.cardiomegaly"].tolist() == [1.0, None, None] or out["label.cardiomegaly"].iloc[0] == 1.0
    back = pq.read_table(path)
    assert back.schema.metadata[b"medclip.root"] == b"/export"
    back = back.to_pandas()
    assert back["label.pleural_effusion"].dtype == "float32"
    assert back["label.pleural_effusion"][0] == 0.0
    assert back["label.pneumonia"][1] == -1.0
    assert math.isnan(back["label.pneumonia"][2]) and math.isnan(back["label.no_finding"][2])
    ev = json.loads(back["label_evidence"][0])
    assert ev["cardiomegaly"]["status"] == "positive" and ev["cardiomegaly"]["section"] == "impression"
    assert sum(c.startswith("label.") for c in back.columns) == 14
    # relabelling replaces, never duplicates, the label columns; output_path leaves the input alone
    other = tmp_path / "out" / "labelled.parquet"
    label_manifest(path, output_path=other, findings=["pneumothorax"], progress=False)
    assert [c for c in pq.read_table(other).column_names if c.startswith("label.")] == ["label.pneumothorax"]
    assert sum(c.startswith("label.") for c in pq.read_table(path).column_names) == 14


def test_label_manifest_errors(tmp_path: Path) -> None:
    import pandas as pd

    with pytest.raises(FileNotFoundError, match="nothing.parquet: manifest not found"):
        label_manifest(tmp_path / "nothing.parquet", progress=False)
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(ValueError, match="bad.parquet: not a readable Parquet"):
        label_manifest(bad, progress=False)
    noreport = tmp_path / "noreport.parquet"
    pd.DataFrame({"image_id": ["a"]}).to_parquet(noreport)
    with pytest.raises(ValueError, match="no report columns"):
        label_manifest(noreport, progress=False)


def test_cli_module(tmp_path: Path) -> None:
    import pandas as pd

    from medclip.knowledge.__main__ import main

    path = tmp_path / "m.parquet"
    pd.DataFrame({"report_text": ["IMPRESSION: Large right pleural effusion."]}).to_parquet(path)
    assert main([str(path), "--findings", "pleural_effusion,pneumothorax", "--no-progress"]) == 0
    out = pd.read_parquet(path)
    assert out["label.pleural_effusion"][0] == 1.0 and math.isnan(out["label.pneumothorax"][0])
    assert main([str(tmp_path / "missing.parquet")]) == 2


def test_redacted_word_inside_a_phrase(labeler: ReportLabeler) -> None:
    m = labeler.label("Aortic XXXX calcification.")["aortic_calcification"]
    assert m.status == "positive" and m.phrase == "Aortic XXXX calcification"


def test_label_manifest_accepts_another_labeler(tmp_path: Path) -> None:
    """A model-based labeler only has to implement ``findings`` and ``label()``."""
    import pandas as pd

    from medclip.knowledge import Mention

    class AlwaysUncertain:
        findings = ["pneumonia"]

        def label(self, report):
            return {"pneumonia": Mention("uncertain", section="model")}

    path = tmp_path / "m.parquet"
    pd.DataFrame({"report_text": ["anything"]}).to_parquet(path)
    out = label_manifest(path, progress=False, labeler=AlwaysUncertain())
    assert out["label.pneumonia"].tolist() == [-1.0]
