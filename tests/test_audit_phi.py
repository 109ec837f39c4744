"""The package's PHI scanner (medclip.audit.phi): values and identifier shapes in a report's own files, never echoed."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, PngImagePlugin

from medclip.audit.phi import (
    DEFAULT_PATTERNS,
    PhiScanResult,
    identifier_values_from_manifest,
    planted_values_from_dicom,
    scan_files,
)
from medclip.deid import hash_identifier

PLANTED = ["Zzplanted0042", "Quixotica Brandwell", "MRN8837261", "Brandwell"]  # sorted: MRN.., Quixotica.., Zz..

#: What a clean report holds: salted ids (16 and 64 hex, one of them all digits), counts, decimals and CIs,
#: versions, a DICOM transfer syntax, a DOI, and its own ISO generation timestamp.
CLEAN = """# medclip report
Generated 2025-06-01T14:03:22+00:00 by medclip 0.1.0 (torch 2.14.1, Python 3.11.9)
Model fingerprint 3f6c2a9d0b7e41c58a9f2d6e1b0c7a4f9e8d2c1b0a9f8e7d6c5b4a3f2e1d0c9b
| split | images | patients | AUROC (95% CI) |
|---|---|---|---|
| train | 5216 | 1341 | 0.873 (0.842-0.901) |
| test | 427 | 234 | 0.91 [0.88, 0.94] |
Example patient 9c1e0f3a7b2d4e68, patient 4421378809931205, study 00ff13a7c2b94d11.
Transfer syntax 1.2.840.10008.1.2.4.50; threshold 0.5 +/- 0.05; 12.5% positives; 1,024 px; ratio 3/4.
COVID-19, H1N1 and T10-T12 findings; 1-1/2 weeks; dose 2.5 mg/kg; see doi 10.1056/NEJMc2001272.
"""


def _png_with_text(path: Path, **text: str) -> None:
    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_text(k, v)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path, pnginfo=info)


def _report_folder(tmp_path: Path) -> Path:
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.md").write_text(CLEAN + "\nSeen by Dr. Quixotica Brandwell.\n")
    (out / "report.html").write_text(f"<html><body><pre>{CLEAN}</pre><td>zzplanted0042</td></body></html>")
    (out / "report.json").write_text(json.dumps({"note": CLEAN, "id": "MRN8837261"}))
    _png_with_text(out / "roc.png", Software="matplotlib", Comment="patient Zzplanted0042")
    return out


def test_planted_values_are_found_in_html_md_json_and_png_metadata(tmp_path: Path) -> None:
    result = scan_files(_report_folder(tmp_path), PLANTED, patterns=())
    assert isinstance(result, PhiScanResult) and not result.ok
    assert result.files_scanned == 4 and result.values_checked == 4
    found = {(h.file, h.kind) for h in result.hits}
    # sorted(PLANTED) = Brandwell, MRN8837261, Quixotica Brandwell, Zzplanted0042 -> #1..#4
    assert ("report.md", "planted value #1") in found and ("report.md", "planted value #3") in found
    assert ("report.html", "planted value #4") in found
    assert ("report.json", "planted value #2") in found
    assert ("roc.png", "planted value #4") in found
    assert {h.location for h in result.hits if h.file == "report.md"} == {"line 12"}


def test_a_hit_record_never_holds_the_value(tmp_path: Path) -> None:
    folder = _report_folder(tmp_path)
    (folder / "extra.md").write_text("born 01/22/1961, call 555-123-4567, mail jane.doe@example.org, MRN A1234567\n")
    result = scan_files(folder, PLANTED)
    dumped = json.dumps(result.to_dict()) + result.summary() + repr(result.hits)
    for value in [*PLANTED, "01/22/1961", "555-123-4567", "jane.doe@example.org", "A1234567", "Quixotica"]:
        assert value.lower() not in dumped.lower()
    assert result.to_dict()["n_hits"] == len(result.hits) and result.to_dict()["ok"] is False


def test_identifier_shapes_are_found_by_kind(tmp_path: Path) -> None:
    (tmp_path / "out.md").write_text(
        "line one\n"
        "Study of 01/22/2020 and January 22, 2020 and 20200122.\n"
        "Call 555.123.4567 or write to j.doe@hospital.org.\n"
        "Accession ACC-20394857, UID 1.3.6.1.4.1.9590.100.1.2.123456789.\n"
    )
    result = scan_files(tmp_path, patterns=DEFAULT_PATTERNS)
    kinds = sorted((h.kind, h.location) for h in result.hits)
    assert kinds == [
        ("DICOM UID", "line 4"),
        ("ID-like number", "line 4"),
        ("date", "line 2"),
        ("e-mail address", "line 3"),
        ("phone number", "line 3"),
    ]
    assert result.values_checked == 0 and "date" in result.to_dict()["patterns"]


def test_a_clean_report_gives_no_hits(tmp_path: Path) -> None:
    folder = tmp_path / "report"
    folder.mkdir()
    (folder / "report.md").write_text(CLEAN)
    (folder / "report.json").write_text(json.dumps({"text": CLEAN, "auroc": 0.873, "n": 5216}))
    buf = io.BytesIO()
    _png_with_text(tmp_path / "plot.png", Software="Matplotlib version3.9.2, https://matplotlib.org/")
    buf.write((tmp_path / "plot.png").read_bytes())
    b64 = base64.b64encode(buf.getvalue()).decode()
    (folder / "report.html").write_text(f"<pre>{CLEAN}</pre><img src='data:image/png;base64,{b64}'>")
    result = scan_files(folder, PLANTED)
    assert result.ok, result.hits
    assert result.files_scanned == 3 and result.parts_scanned == 4  # the embedded PNG is a part of its own


def test_allow_list_and_dates_in_plain_form(tmp_path: Path) -> None:
    (tmp_path / "r.md").write_text("Generated on 2025-06-01. Contact: medclip-team@example.org\n")
    assert {h.kind for h in scan_files(tmp_path).hits} == {"date", "e-mail address"}
    assert scan_files(tmp_path, allow=["2025-06-01", "medclip-team@example.org"]).ok


def test_embedded_image_metadata_and_html_entities_are_decoded(tmp_path: Path) -> None:
    _png_with_text(tmp_path / "p.png", Author="Zzplanted0042")
    b64 = base64.b64encode((tmp_path / "p.png").read_bytes()).decode()
    (tmp_path / "p.png").unlink()
    (tmp_path / "page.html").write_text(f'<p>Quixotica&#32;Brandwell</p>\n<img src="data:image/png;base64,{b64}">')
    (tmp_path / "r.json").write_text(json.dumps({"name": "Müller-Lüdenscheid"}))  # escaped as \u00fc
    result = scan_files(tmp_path, [*PLANTED, "Müller-Lüdenscheid"], patterns=())
    found = {(h.file, h.location, h.kind) for h in result.hits}
    assert ("page.html", "line 1", "planted value #4") in found  # Quixotica Brandwell (sorted: Br, MRN, Mü, Q, Z)
    assert ("page.html", "embedded-1, line 1", "planted value #5") in found
    assert ("r.json", "line 1", "planted value #3") in found


def test_whole_values_only(tmp_path: Path) -> None:
    (tmp_path / "r.md").write_text("Smithson 120431 0.204315\n")
    result = scan_files(tmp_path, ["Smith", "20431", "Jo"], patterns=())
    assert result.ok and result.values_checked == 2 and result.values_skipped_short == 1


def test_salted_hash_matches(tmp_path: Path) -> None:
    salt = "site-secret"
    hashes = {hash_identifier("brandwell", salt), hash_identifier("mrn8837261", salt)}
    (tmp_path / "r.md").write_text("clean line\nseen by Brandwell\nclean again MRN8837261\n")
    result = scan_files(tmp_path, phi_hashes=hashes, salt=salt, patterns=())
    assert [(h.location, h.kind) for h in result.hits] == [
        ("line 2", "salted-hash match"),
        ("line 3", "salted-hash match"),
    ]
    assert result.hashes_checked == 2 and result.values_checked == 0


def test_parquet_hits_name_column_and_row(tmp_path: Path) -> None:
    pd.DataFrame({"report_text": ["clear", "seen by Zzplanted0042"]}).to_parquet(tmp_path / "m.parquet")
    [hit] = scan_files(tmp_path, PLANTED, patterns=()).hits
    assert (hit.file, hit.location, hit.kind) == ("m.parquet", "report_text, line 2", "planted value #4")


def test_identifier_values_from_manifest(tmp_path: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    src = Path(get_testdata_file("CT_small.dcm"))
    export = tmp_path / "export"
    rows = []
    for k, folder in enumerate(["Brandwell_Quixotica", "Zzplanted0042"]):
        ds = pydicom.dcmread(src)
        ds.PatientName = "BRANDWELL^QUIXOTICA" if k == 0 else "ZZPLANTED^OTHER"
        ds.StudyInstanceUID = f"1.2.3.4.5.6.{k}"
        (export / folder / "images").mkdir(parents=True)
        ds.save_as(export / folder / "images" / "slice1.dcm")
        rows.append(
            {"path": str(export / folder / "images" / "slice1.dcm"), "patient_id": f"p{k}", "study_id": f"s{k}"}
        )
    (export / "shared_site").mkdir()
    (export / "shared_site" / "broken.dcm").write_bytes(b"not a dicom at all")
    (export / "shared_site" / "photo1.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    rows += [
        {"path": str(export / "shared_site" / "broken.dcm"), "patient_id": "p2", "study_id": "s2"},
        {"path": str(export / "shared_site" / "photo1.png"), "patient_id": "p3", "study_id": "s3"},
    ]
    ids = identifier_values_from_manifest(pd.DataFrame(rows))
    assert ids.headers_read == 2 and ids.headers_unreadable == 1 and ids.headers_not_dicom == 1
    assert ids.values["Brandwell_Quixotica"] == "path component" and "Zzplanted0042" in ids.values
    assert ids.values["BRANDWELL"] == "DICOM PatientName" and ids.values["1.2.3.4.5.6.0"] == "DICOM StudyInstanceUID"
    # generic, short and shared parts are no identifiers
    assert not {"images", "slice1", "shared_site"} & set(ids.values)  # generic, shared by two patients, shared
    assert ids.values["photo1"] == "path component"  # one patient's file name
    assert set(ids.to_dict()) >= {"values", "headers_read", "headers_unreadable"}
    assert "BRANDWELL" not in json.dumps(ids.to_dict())
    assert identifier_values_from_manifest(pd.DataFrame(rows), limit=1).headers_over_limit == 3
    assert set(planted_values_from_dicom([rows[0]["path"]])) <= set(ids.values)

    report = tmp_path / "report"
    report.mkdir()
    (report / "report.md").write_text("Patient folder brandwell_quixotica had 1 image.\n")
    result = scan_files(report, ids.values, patterns=())
    kind = {v: f"{label} #{i}" for i, (v, label) in enumerate(sorted(ids.values.items()), 1)}
    assert {h.kind for h in result.hits} == {kind["Brandwell_Quixotica"], kind["BRANDWELL"], kind["QUIXOTICA"]}


def test_files_are_named_relative_to_root(tmp_path: Path) -> None:
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "notes.md").write_text("seen by Zzplanted0042\n")
    (tmp_path / "report.md").write_text("clean\n")
    files = [tmp_path / "report.md", tmp_path / "figures" / "notes.md"]
    result = scan_files(files, PLANTED, root=tmp_path)
    assert result.files == ["report.md", "figures/notes.md"]
    assert [h.file for h in result.hits] == ["figures/notes.md"]
    assert scan_files(files, PLANTED).files == ["report.md", "notes.md"]  # no root: names
