"""Report sections, sentences, identifier scrubbing, patient-level splits and de-identification helpers."""

from __future__ import annotations

import pandas as pd
import pytest

from medclip.data.reports import parse_sections, scrub_identifiers, sections_from_fields, split_sentences
from medclip.data.splits import assign_split, assign_splits, patients_in_several_splits
from medclip.deid import coarse_age, hash_identifier


def test_parse_sections_headers():
    s = parse_sections(
        "EXAMINATION: CHEST PA AND LAT\nINDICATION: Cough, fever.\n"
        "FINDINGS: No effusion. Heart size normal.\nIMPRESSION: No acute disease."
    )
    assert s.indication == "Cough, fever."
    assert s.findings == "No effusion. Heart size normal."
    assert s.impression == "No acute disease."
    assert s.technique == "CHEST PA AND LAT"
    assert s.body() == "No effusion. Heart size normal. No acute disease."


def test_parse_sections_without_headers_is_findings():
    s = parse_sections("Clear lungs. No pneumothorax.")
    assert s.findings == "Clear lungs. No pneumothorax." and s.impression == ""


def test_parse_sections_inline_headers_and_synonyms():
    s = parse_sections(
        "History: prior pneumonia. Comparison: none. Findings: new right effusion. Conclusion: effusion."
    )
    assert s.indication == "prior pneumonia."
    assert s.comparison == "none."
    assert s.findings == "new right effusion."
    assert s.impression == "effusion."


def test_sections_from_fields_builds_text():
    s = sections_from_fields(findings="Normal heart.", impression="Normal chest.", indication="nan")
    assert s.indication == ""
    assert s.text == "FINDINGS: Normal heart.\nIMPRESSION: Normal chest."


def test_split_sentences():
    assert split_sentences("No pneumothorax. Dr. Smith reviewed. 1. Small effusion. 2. Edema") == [
        "No pneumothorax.",
        "Dr. Smith reviewed.",
        "Small effusion.",
        "Edema",
    ]
    assert split_sentences("") == []


def test_scrub_identifiers():
    text = "Seen by Jane DOE on 2020-01-02 (March 3, 2019), MRN 12345678, call 555-123-4567, jd@example.org."
    out = scrub_identifiers(text, ["DOE^JANE"])
    for leak in ("Jane", "DOE", "2020-01-02", "March 3, 2019", "12345678", "555-123-4567", "jd@example.org"):
        assert leak not in out
    assert out.startswith("Seen by XXXX XXXX on XXXX")
    # clinical words and short numbers survive
    assert scrub_identifiers("3 cm nodule at T10, 2 views.") == "3 cm nodule at T10, 2 views."
    assert (
        scrub_identifiers("Findings consistent with COVID-19 or H1N1 pneumonia, T10-T12.")
        == "Findings consistent with COVID-19 or H1N1 pneumonia, T10-T12."
    )
    assert scrub_identifiers("Accession ACC0000123, MRN 00123456-7.") == "Accession XXXX, MRN XXXX."


def test_scrub_titled_names():
    """ "Dr. <Name>" and similar are scrubbed word by word; titles before lower-case or clinical words are kept."""
    assert scrub_identifiers("Dr. Zqxdoctor referring.") == "Dr. XXXX referring."
    assert scrub_identifiers("Discussed with Dr John A. Smith at 3 pm.") == "Discussed with Dr XXXX XXXX. XXXX at 3 pm."
    assert scrub_identifiers("DISCUSSED WITH DR. JONES. NO EFFUSION.") == "DISCUSSED WITH DR. XXXX. NO EFFUSION."
    assert scrub_identifiers("Mrs. O'Brien was informed.") == "Mrs. XXXX was informed."
    for kept in (
        "Dr. notified of findings.",
        "PA and lateral DR. Findings: clear lungs.",
        "Prior MR. No change.",
        "Known MS. Brain MRI unchanged.",
        "Dr. XXXX XXXX I discussed the findings.",
        "Dr. XXXX- XXXX was called.",
    ):
        assert scrub_identifiers(kept) == kept


def test_scrubbing_keeps_real_iu_reports(shared_dir):
    """Every real (already de-identified) IU report passes the scrubber unchanged; a planted name after "Dr." does not."""
    df = pd.read_csv(shared_dir / "data" / "iu_reports" / "indiana_reports.csv", dtype=str, keep_default_na=False)
    texts = [t for col in ("indication", "comparison", "findings", "impression") for t in df[col] if t]
    assert len(texts) > 5000
    changed = [t for t in texts if scrub_identifiers(t) != t]
    assert changed == []
    with_dr = [t for t in texts if "Dr. XXXX" in t]
    assert with_dr  # the real reports name physicians this way; the pattern must leave them as they are
    planted = [t.replace("Dr. XXXX", "Dr. Zqxname", 1) for t in with_dr]
    assert [scrub_identifiers(t) for t in planted] == with_dr


def test_splits_are_stable_and_by_patient():
    patients = pd.Series([f"p{i}" for i in range(2000)])
    splits = assign_splits(patients, (0.7, 0.15, 0.15), seed=1)
    frac = splits.value_counts(normalize=True)
    assert abs(frac["train"] - 0.7) < 0.04 and abs(frac["test"] - 0.15) < 0.04
    # adding patients never moves existing ones
    more = assign_splits(pd.concat([patients, pd.Series(["new1", "new2"])]), (0.7, 0.15, 0.15), seed=1)
    assert (more.iloc[:2000].values == splits.values).all()
    assert (
        assign_split("p1", seed=1) != assign_split("p1", seed=2)
        or assign_split("p2", seed=1) != assign_split("p2", seed=2)
        or assign_split("p3", seed=1) != assign_split("p3", seed=2)
    )
    with pytest.raises(ValueError):
        assign_split("p", (0.5, 0.5, 0.5))


def test_leak_detection():
    df = pd.DataFrame({"patient_id": ["a", "a", "b"], "split": ["train", "test", "val"]})
    assert patients_in_several_splits(df) == ["a"]


def test_hash_and_age():
    assert hash_identifier("MRN1", "s1") != hash_identifier("MRN1", "s2")
    assert hash_identifier("MRN1", "s1") == hash_identifier(" MRN1 ", "s1")
    assert hash_identifier("", "s1") == ""
    assert coarse_age("048Y") == "40-49" and coarse_age("006M") == "0" and coarse_age(93) == "90+"
    assert coarse_age("abc") == "" and coarse_age(None) == ""
