"""Report sections, sentences, identifier scrubbing, patient-level splits and de-identification helpers."""

from __future__ import annotations

import pandas as pd
import pytest

from medclip.data.reports import parse_sections, scrub_identifiers, sections_from_fields, split_sentences
from medclip.data.splits import assign_split, assign_splits, patients_in_several_splits
from medclip.deid import coarse_age, hash_identifier


def test_parse_sections_headers():
    s = parse_sections("EXAMINATION: CHEST PA AND LAT\nINDICATION: Cough, fever.\n"
                       "FINDINGS: No effusion. Heart size normal.\nIMPRESSION: No acute disease.")
    assert s.indication == "Cough, fever."
    assert s.findings == "No effusion. Heart size normal."
    assert s.impression == "No acute disease."
    assert s.technique == "CHEST PA AND LAT"
    assert s.body() == "No effusion. Heart size normal. No acute disease."


def test_parse_sections_without_headers_is_findings():
    s = parse_sections("Clear lungs. No pneumothorax.")
    assert s.findings == "Clear lungs. No pneumothorax." and s.impression == ""


def test_parse_sections_inline_headers_and_synonyms():
    s = parse_sections("History: prior pneumonia. Comparison: none. Findings: new right effusion. Conclusion: effusion.")
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
        "No pneumothorax.", "Dr. Smith reviewed.", "Small effusion.", "Edema"]
    assert split_sentences("") == []


def test_scrub_identifiers():
    text = "Seen by Jane DOE on 2020-01-02 (March 3, 2019), MRN 12345678, call 555-123-4567, jd@example.org."
    out = scrub_identifiers(text, ["DOE^JANE"])
    for leak in ("Jane", "DOE", "2020-01-02", "March 3, 2019", "12345678", "555-123-4567", "jd@example.org"):
        assert leak not in out
    assert out.startswith("Seen by XXXX XXXX on XXXX")
    # clinical words and short numbers survive
    assert scrub_identifiers("3 cm nodule at T10, 2 views.") == "3 cm nodule at T10, 2 views."
    assert scrub_identifiers("Findings consistent with COVID-19 or H1N1 pneumonia, T10-T12.") == \
        "Findings consistent with COVID-19 or H1N1 pneumonia, T10-T12."
    assert scrub_identifiers("Accession ACC0000123, MRN 00123456-7.") == "Accession XXXX, MRN XXXX."


def test_splits_are_stable_and_by_patient():
    patients = pd.Series([f"p{i}" for i in range(2000)])
    splits = assign_splits(patients, (0.7, 0.15, 0.15), seed=1)
    frac = splits.value_counts(normalize=True)
    assert abs(frac["train"] - 0.7) < 0.04 and abs(frac["test"] - 0.15) < 0.04
    # adding patients never moves existing ones
    more = assign_splits(pd.concat([patients, pd.Series(["new1", "new2"])]), (0.7, 0.15, 0.15), seed=1)
    assert (more.iloc[:2000].values == splits.values).all()
    assert assign_split("p1", seed=1) != assign_split("p1", seed=2) or assign_split("p2", seed=1) != assign_split("p2", seed=2) \
        or assign_split("p3", seed=1) != assign_split("p3", seed=2)
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
