"""The PACS-export indexer on a realistic export built from the real covid chest X-rays."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from phi import assert_no_phi

from medclip.data.indexer import index_export, skipped_path
from medclip.data.manifest import read_manifest
from medclip.deid import hash_identifier

REPO = Path(__file__).resolve().parents[1]
SALT = "test-salt"


def _load_export_module():
    from medclip.recipes import pacs_export

    return pacs_export


@pytest.fixture(scope="module")
def covid_export(shared_dir, tmp_path_factory):
    """A PACS-like export of 90 real covid-chestxray images (all licences: test-only copy) with planted PHI."""
    mod = _load_export_module()
    out = tmp_path_factory.mktemp("export")
    info = mod.make_pacs_export(shared_dir / "data" / "covid_cxr", out, licences=None, max_images=90, max_size=256)
    planted = []
    for phi in info["patients"].values():
        planted += [phi.patient_id, phi.birth_date, *phi.name.split("^")]
    import csv

    accessions = [r["accession_number"] for r in csv.DictReader(open(info["reports"]))]
    planted += accessions + ["Zzplanted General Hospital"]
    return out, info, planted


@pytest.fixture(scope="module")
def indexed(covid_export, tmp_path_factory):
    export, info, planted = covid_export
    out = tmp_path_factory.mktemp("index") / "manifest.parquet"
    res = index_export(export, out, reports=export / "reports.csv", salt=SALT, workers=2, progress=False)
    return res, out


def test_links_reports_and_counts(indexed, covid_export):
    res, out = indexed
    _, info, _ = covid_export
    df = res.manifest
    assert len(df) == info["n_images"]
    assert set(df["kind"]) == {"image"}
    assert set(df["modality"]) == {"DX"}
    assert res.reports_linked > 0 and res.reports_unlinked == 0
    with_text = df[df["report_text"].str.len() > 0]
    assert len(with_text) >= 0.7 * len(df)
    # real clinical content survives scrubbing
    assert with_text["report_text"].str.contains("pneumonia|opacit|infiltrat|consolidat", case=False).any()
    assert with_text["report_text"].str.contains("COVID-19").any()  # clinical names are not mistaken for IDs
    assert not res.skipped
    assert "rows: 90" in res.summary()


def test_no_phi_anywhere(indexed, covid_export):
    res, out = indexed
    export, _, planted = covid_export
    assert_no_phi(out.parent, planted)
    df = read_manifest(out)
    raw_ids = {pydicom.dcmread(p, stop_before_pixels=True).PatientID for p in list(export.rglob("*.dcm"))[:5]}
    assert not raw_ids & set(df["patient_id"])
    assert set(df["patient_id"]) >= {hash_identifier(x, SALT) for x in raw_ids}


def test_split_by_patient(indexed):
    res, _ = indexed
    df = res.manifest
    assert res.leaked_patients == []
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()
    assert set(df["split"]) <= {"train", "val", "test"}
    assert (df["split"] == "train").mean() > 0.5


def test_manifest_paths_resolve(indexed):
    _, out = indexed
    df = read_manifest(out)
    assert all(Path(p).is_file() for p in df["path"])
    assert not any(Path(p).is_absolute() for p in pd.read_parquet(out)["path"])


def test_incremental_and_bad_files(covid_export, tmp_path):
    export_src, _, _ = covid_export
    export = tmp_path / "export"
    shutil.copytree(export_src, export)
    out = tmp_path / "m.parquet"
    first = index_export(export, out, reports=export / "reports.csv", salt=SALT, workers=1, progress=False)
    again = index_export(export, out, reports=export / "reports.csv", salt=SALT, workers=1, progress=False)
    assert again.files_read == 0 and again.files_reused == first.files_seen
    pd.testing.assert_frame_equal(first.manifest, again.manifest)

    # broken inputs: a truncated DICOM, a text file named .dcm, an empty file, a DICOM without pixels
    good = next(export.rglob("*.dcm"))
    bad = export / "broken"
    bad.mkdir()
    (bad / "truncated.dcm").write_bytes(good.read_bytes()[:2000])
    (bad / "notes.dcm").write_text("this is not a DICOM file\n")
    (bad / "empty.dcm").write_bytes(b"")
    ds = pydicom.dcmread(good)
    del ds.PixelData
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(bad / "nopixels.dcm")
    third = index_export(export, out, reports=export / "reports.csv", salt=SALT, workers=1, progress=False)
    assert third.files_read == 4
    assert len(third.manifest) == len(first.manifest)
    assert sum(third.skipped.values()) == 4
    listed = pd.read_csv(skipped_path(out))
    assert sorted(Path(p).name for p in listed["path"]) == ["empty.dcm", "nopixels.dcm", "notes.dcm", "truncated.dcm"]
    reasons = dict(zip(listed["path"].map(lambda p: Path(p).name), listed["reason"]))
    assert reasons["empty.dcm"] == "empty file"
    assert reasons["nopixels.dcm"] == "no pixel data"
    assert reasons["notes.dcm"] == "not DICOM"

    # a changed file is re-read, the others (readable or not) are not; skipped files stay counted
    os.utime(good, (1_000_000_000, 1_000_000_000))
    fourth = index_export(export, out, reports=export / "reports.csv", salt=SALT, workers=1, progress=False)
    assert fourth.files_read == 1
    assert sum(fourth.skipped.values()) == 4


def test_salt_changes_every_hash(covid_export, tmp_path):
    export, _, _ = covid_export
    a = index_export(export, tmp_path / "a.parquet", salt="one", workers=1, progress=False).manifest
    b = index_export(export, tmp_path / "b.parquet", salt="two", workers=1, progress=False).manifest
    assert not set(a["patient_id"]) & set(b["patient_id"])
    assert not set(a["image_id"]) & set(b["image_id"])


def test_dicom_sr_report_and_mixed_formats(tmp_path, shared_dir):
    """Reports as DICOM SR link by study; PNG/JPEG/NIfTI take identity from the folder layout."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    export = tmp_path / "export"
    src = shared_dir / "data" / "xray_samples"
    dcm = src / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
    (export / "dicom").mkdir(parents=True)
    shutil.copy(dcm, export / "dicom" / "img.dcm")
    study_uid = pydicom.dcmread(dcm, stop_before_pixels=True).StudyInstanceUID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr = Dataset()
    sr.file_meta = meta
    sr.SOPClassUID, sr.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    sr.Modality, sr.StudyInstanceUID, sr.SeriesInstanceUID = "SR", study_uid, generate_uid()
    sr.PatientName, sr.PatientID = "Srplanted^Person", "SRMRN001"

    def text_item(name: str, value: str) -> Dataset:
        item = Dataset()
        item.ValueType = "TEXT"
        code = Dataset()
        code.CodeMeaning = name
        item.ConceptNameCodeSequence = Sequence([code])
        item.TextValue = value
        return item

    sr.ValueType = "CONTAINER"
    sr.ContentSequence = Sequence(
        [text_item("Findings", "Small left pleural effusion. Seen by Srplanted."), text_item("Impression", "Effusion.")]
    )
    sr.save_as(export / "dicom" / "report.dcm", enforce_file_format=True)

    (export / "patient_a" / "study_1").mkdir(parents=True)
    shutil.copy(src / "00000001_000.png", export / "patient_a" / "study_1" / "frontal.png")
    shutil.copy(src / "16747_3_1.jpg", export / "patient_a" / "study_1" / "lateral.jpg")
    import nibabel as nib

    (export / "patient_b" / "mr").mkdir(parents=True)
    nib.save(
        nib.Nifti1Image(np.random.default_rng(0).random((8, 9, 5)).astype(np.float32), np.diag([2, 2, 3, 1])),
        export / "patient_b" / "mr" / "vol.nii.gz",
    )
    res = index_export(export, tmp_path / "m.parquet", salt=SALT, workers=1, progress=False)
    df = res.manifest.set_index(res.manifest["path"].map(lambda p: Path(p).name))
    assert set(df.index) == {"img.dcm", "frontal.png", "lateral.jpg", "vol.nii.gz"}
    assert df.loc["img.dcm", "report_findings"].startswith("Small left pleural effusion")
    assert "Srplanted" not in df.loc["img.dcm", "report_findings"]
    assert df.loc["img.dcm", "report_impression"] == "Effusion."
    assert df.loc["frontal.png", "patient_id"] == df.loc["lateral.jpg", "patient_id"]
    assert df.loc["frontal.png", "study_id"] == df.loc["lateral.jpg", "study_id"]
    assert df.loc["vol.nii.gz", "kind"] == "volume"
    assert df.loc["vol.nii.gz", "patient_id"] != df.loc["frontal.png", "patient_id"]


def test_mr_series_become_volumes(shared_dir, tmp_path):
    export = shared_dir / "data" / "dicom_series_nih" / "In"
    res = index_export(export, tmp_path / "m.parquet", salt=SALT, workers=2, progress=False)
    df = res.manifest
    n_series = len({p.parent for p in export.rglob("*.dcm")})
    assert len(df) == n_series
    assert (df["kind"] == "volume").all() and (df["modality"] == "MR").all()
    assert df["files"].map(len).sum() == len(list(export.rglob("*.dcm")))
    assert df["patient_id"].nunique() == 1
    assert not res.skipped  # README-Series.txt files are not images: ignored, not "unreadable"
