"""Report labeler: negation, uncertainty, list scope, sections, XXXX redactions, synonyms, manifests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from medclip.data.labels import label_manifest
from medclip.knowledge import Graph, ReportLabeler


@pytest.fixture(scope="module")
def labeler() -> ReportLabeler:
    return ReportLabeler(Graph.load())


def status(labeler: ReportLabeler, report, cid: str) -> str:
    return labeler.label(report)[cid].status


@pytest.mark.parametrize(
    "text",
    [
        "No pneumothorax.",
        "There is no evidence of pneumothorax.",
        "Negative for pneumothorax.",
        "Without pneumothorax.",
        "Pneumothorax is not seen.",
        "The pneumothorax has resolved.",
    ],
)
def test_negation(labeler: ReportLabeler, text: str) -> None:
    assert status(labeler, text, "pneumothorax") == "negative"


@pytest.mark.parametrize(
    "text",
    [
        "Findings may represent pneumonia.",
        "Cannot exclude pneumonia.",
        "Pneumonia is not excluded.",
        "Possible pneumonia.",
        "Findings suspicious for pneumonia.",
        "Cannot rule out early pneumonia.",
        "Basilar opacity, favoring pneumonia.",
    ],
)
def test_uncertainty(labeler: ReportLabeler, text: str) -> None:
    assert status(labeler, text, "pneumonia") == "uncertain"


def test_positive_and_evidence_span(labeler: ReportLabeler) -> None:
    text = "Small left pleural effusion."
    m = labeler.label(text)["pleural_effusion"]
    assert m.status == "positive" and m.value == 1.0
    assert text[m.evidence_span[0] : m.evidence_span[1]] == "pleural effusion"
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


@pytest.mark.parametrize(
    "text, cid",
    [
        ("Enlarged heart.", "cardiomegaly"),
        ("Bilateral effusions.", "pleural_effusion"),
        ("Multiple calcified granulomas.", "calcified_granuloma"),
        ("Hyperexpanded lungs.", "hyperinflation"),
        ("Mild levoscoliosis.", "scoliosis"),
        ("Bibasilar air-space disease.", "airspace_disease"),
        ("Left basilar atelectatic change.", "atelectasis"),
        ("Right upper lobe nodules.", "nodule"),
        ("Elevated right hemidiaphragm.", "elevated_hemidiaphragm"),
        ("Hiatus hernia.", "hiatal_hernia"),
    ],
)
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
    first = labeler.label(
        {
            "indication": df.loc[1, "indication"],
            "findings": df.loc[1, "findings"],
            "impression": df.loc[1, "impression"],
        }
    )
    assert first["no_finding"].status == "positive"
    assert first["pleural_effusion"].status == first["pneumothorax"].status == "negative"
    second = labeler.label({"findings": df.loc[2, "findings"], "impression": df.loc[2, "impression"]})
    assert second["cardiomegaly"].status == "positive"


def test_label_manifest(tmp_path: Path, labeler: ReportLabeler) -> None:
    import pandas as pd
    import pyarrow.parquet as pq

    from medclip.data.manifest import manifest_metadata, write_manifest

    df = pd.DataFrame(
        {
            "image_id": ["a", "b", "c"],
            "path": ["/export/a.png", "/export/b.png", "/export/c.png"],
            "report_indication": ["cough", "", None],
            "report_findings": ["No pleural effusion or pneumothorax.", "", None],
            "report_impression": ["Mild cardiomegaly.", "", None],
            "report_text": ["", "FINDINGS: Possible left lower lobe pneumonia.", None],
        }
    )
    path = tmp_path / "manifest.parquet"
    write_manifest(df, path, root="/export", extra={"salt_check": "abc"})
    out = label_manifest(path, findings="chexpert14", progress=False)
    assert out["label.cardiomegaly"].tolist() == [1.0, None, None] or out["label.cardiomegaly"].iloc[0] == 1.0
    # the manifest's metadata (export root, salt check) is kept and paths stay relative to the root
    assert manifest_metadata(path) == {"salt_check": "abc", "root": str(Path("/export").resolve())}
    back = pq.read_table(path).to_pandas()
    assert back["path"].tolist() == ["a.png", "b.png", "c.png"]
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


# ---------------------------------------------------------------- differentials ("A versus B")


def _statuses(labeler: ReportLabeler, text: str, *cids: str) -> tuple[str, ...]:
    r = labeler.label(text)
    return tuple(r[c].status for c in cids)


@pytest.mark.parametrize(
    "text",
    [
        "Small right pleural effusion versus pleural thickening.",
        "Right pleural effusion vs. pleural thickening.",  # "vs." does not end the sentence
        "Right pleural effusion vs pleural thickening.",
        "Right pleural effusion or pleural thickening.",
        "Right pleural effusion and/or pleural thickening.",
        "Pleural effusion versus minimal pleural thickening.",
    ],
)
def test_differential_policies(text: str) -> None:
    graph = Graph.load()
    cids = ("pleural_effusion", "pleural_thickening")
    assert _statuses(ReportLabeler(graph), text, *cids) == ("uncertain", "uncertain")  # CheXpert default
    assert _statuses(ReportLabeler(graph, versus_policy="first"), text, *cids) == ("positive", "uncertain")
    assert _statuses(ReportLabeler(graph, versus_policy="all"), text, *cids) == ("positive", "positive")
    m = ReportLabeler(graph).label(text)["pleural_effusion"]
    assert m.cue is not None and m.cue.lower() in {"versus", "vs", "or", "and/or"}


def test_differential_scope() -> None:
    first = ReportLabeler(Graph.load(), versus_policy="first")
    # a list before "or" shares the differential; the first listed is the first alternative
    assert _statuses(first, "Atelectasis, scarring, or pneumonia.", "atelectasis", "scarring", "pneumonia") == (
        "positive",
        "uncertain",
        "uncertain",
    )
    # a negation or an explicit hedge wins over the policy
    assert _statuses(first, "No pleural effusion or pneumothorax.", "pleural_effusion", "pneumothorax") == (
        "negative",
        "negative",
    )
    assert _statuses(first, "May represent atelectasis or scarring.", "atelectasis", "scarring") == (
        "uncertain",
        "uncertain",
    )
    uncertain = ReportLabeler(Graph.load())
    # the connector reaches only the adjacent noun phrases: not across a comma, not over another cue
    assert _statuses(uncertain, "Mild hyperinflation, air trapping versus expiratory film.", "hyperinflation") == (
        "positive",
    )
    assert _statuses(
        uncertain, "Bibasilar atelectasis with or without small effusions.", "atelectasis", "pleural_effusion"
    ) == ("positive", "negative")
    assert _statuses(uncertain, "Cardiomegaly. Heart size 10.5 cm. Small effusion or thickening.", "cardiomegaly") == (
        "positive",
    )
    with pytest.raises(ValueError, match="versus_policy must be one of"):
        ReportLabeler(Graph.load(), versus_policy="second")


# ---------------------------------------------------------------- other scope rules


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Straightening of the normal thoracic kyphosis.", "positive"),
        ("Mild exaggeration of normal thoracic kyphosis.", "positive"),
        ("Accentuated normal kyphosis.", "positive"),
        ("Normal thoracic kyphosis.", "negative"),
    ],
)
def test_change_of_a_normal_state_is_not_a_negation(labeler: ReportLabeler, text: str, expected: str) -> None:
    assert status(labeler, text, "kyphosis") == expected


def test_adjective_cue_does_not_cross_a_comma(labeler: ReportLabeler) -> None:
    text = "Heart size near top normal limits, aortic calcifications and ectasia."
    assert status(labeler, text, "aortic_calcification") == "positive"
    assert status(labeler, "Normal aortic calcification.", "aortic_calcification") == "negative"


def test_scope_closer_ends_a_negation(labeler: ReportLabeler) -> None:
    r = labeler.label("No definite pleural effusion seen, left bronchovascular crowding.")
    assert r["pleural_effusion"].status == "negative" and r["bronchovascular_crowding"].status == "positive"
    # it ends the scope of cues before it, not after it
    text = "Pneumonia seen on CT is not seen on this radiograph."
    assert status(labeler, text, "pneumonia") == "negative"


def test_no_other_negates_further_findings(labeler: ReportLabeler) -> None:
    r = labeler.label("Calcified granuloma in the right midlung. No other nodules or masses.")
    assert r["nodule"].status == r["mass"].status == "negative"
    assert r["calcified_granuloma"].status == "positive"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Right lower lobe pneumonia.", "positive"),
        ("Patchy opacities, likely infectious infiltrate.", "not_mentioned"),  # a cause, not the finding
        ("Atypical infectious process.", "not_mentioned"),
        ("Pneumonia is in the differential.", "uncertain"),
        ("In the appropriate clinical setting, this is compatible with pneumonia.", "uncertain"),
        ("Please correlate clinically for pneumonia.", "uncertain"),
        ("Superimposed pneumonia cannot be entirely excluded.", "uncertain"),
        ("Differential considerations include pneumonia.", "uncertain"),
        ("Right lower lobe opacity consistent with pneumonia.", "positive"),
    ],
)
def test_pneumonia_cues(labeler: ReportLabeler, text: str, expected: str) -> None:
    assert status(labeler, text, "pneumonia") == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Calcified tortuous aorta.", "positive"),
        ("The thoracic aorta is tortuous and calcified.", "positive"),
        ("Calcified aortic XXXX.", "positive"),  # a redacted "arch" / "knob"
        ("Calcific aorta.", "positive"),
        ("Note is made of calcifications in the aortic XXXX.", "positive"),
        ("Calcified aortic valve.", "not_mentioned"),
        ("Atherosclerotic calcifications of the aorta.", "not_mentioned"),  # atherosclerosis, see below
        ("Calcified granuloma near the aortic knob.", "not_mentioned"),
    ],
)
def test_aortic_calcification(labeler: ReportLabeler, text: str, expected: str) -> None:
    assert status(labeler, text, "aortic_calcification") == expected


def test_calcified_and_tortuous_aorta_are_both_labelled(labeler: ReportLabeler) -> None:
    r = labeler.label("Calcified tortuous aorta.")
    assert r["aortic_calcification"].status == r["tortuous_aorta"].status == "positive"
    r = labeler.label("Mildly tortuous thoracic aorta.")
    assert r["tortuous_aorta"].status == "positive" and r["aortic_calcification"].status == "not_mentioned"


def test_atherosclerotic_calcification_is_atherosclerosis(labeler: ReportLabeler) -> None:
    r = labeler.label("There is aortic atherosclerotic vascular calcification.")
    assert r["aortic_atherosclerosis"].status == "positive"
    assert r["aortic_calcification"].status == "not_mentioned"


@pytest.mark.parametrize(
    "text, cid",
    [
        ("Mild thickening of the minor fissure.", "pleural_thickening"),
        ("Crowded bronchovascular and interstitial markings.", "bronchovascular_crowding"),
    ],
)
def test_new_phrases(labeler: ReportLabeler, text: str, cid: str) -> None:
    assert status(labeler, text, cid) == "positive"


def test_bare_crowding_is_not_bronchovascular_crowding(labeler: ReportLabeler) -> None:
    assert status(labeler, "Lung volumes are decreased, with crowding.", "bronchovascular_crowding") == "not_mentioned"


def test_cli_versus_policy(tmp_path: Path) -> None:
    import pandas as pd

    from medclip.knowledge.__main__ import main

    path = tmp_path / "m.parquet"
    pd.DataFrame({"report_text": ["IMPRESSION: Atelectasis versus pneumonia."]}).to_parquet(path)
    assert main([str(path), "--findings", "atelectasis,pneumonia", "--no-progress"]) == 0
    out = pd.read_parquet(path)
    assert out["label.atelectasis"][0] == out["label.pneumonia"][0] == -1.0
    assert main([str(path), "--findings", "atelectasis,pneumonia", "--versus-policy", "first", "--no-progress"]) == 0
    out = pd.read_parquet(path)
    assert out["label.atelectasis"][0] == 1.0 and out["label.pneumonia"][0] == -1.0
