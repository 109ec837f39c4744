"""De-identification at the indexer's seams (issue 12): salts for every format, staff names, odd file names."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from nibabel.testing import data_path as NIBABEL_DATA

from medclip import deid
from medclip.data.indexer import index_export
from medclip.deid import DEFAULT_SALT, hash_identifier


@pytest.fixture
def raster_nifti_export(xray_dir: Path, tmp_path: Path) -> Path:
    """An export of PNG/JPEG/NIfTI files whose folder names are MRN-like identifiers."""
    export = tmp_path / "export"
    (export / "MRN0012345" / "study_1").mkdir(parents=True)
    shutil.copy(xray_dir / "00000001_000.png", export / "MRN0012345" / "study_1" / "frontal.png")
    shutil.copy(xray_dir / "16747_3_1.jpg", export / "MRN0012345" / "study_1" / "lateral.jpg")
    (export / "MRN0067890" / "mr").mkdir(parents=True)
    shutil.copy(Path(NIBABEL_DATA) / "example_nifti2.nii.gz", export / "MRN0067890" / "mr" / "vol.nii.gz")
    return export


def test_salt_keys_raster_and_nifti_ids(raster_nifti_export: Path, tmp_path: Path, monkeypatch) -> None:
    """--salt (and $MEDCLIP_SALT) key the ids of PNG/JPEG/NIfTI rows, not the public default salt."""
    monkeypatch.delenv(deid.SALT_ENV, raising=False)
    a = index_export(raster_nifti_export, tmp_path / "a.parquet", salt="site-secret-one", workers=1, progress=False)
    b = index_export(raster_nifti_export, tmp_path / "b.parquet", salt="site-secret-two", workers=1, progress=False)
    monkeypatch.setenv(deid.SALT_ENV, "site-secret-env")
    c = index_export(raster_nifti_export, tmp_path / "c.parquet", workers=1, progress=False)
    assert len(a.manifest) == 3 and not a.skipped
    rel = [Path(p).relative_to(raster_nifti_export).as_posix() for p in a.manifest["path"]]
    default_ids = {
        hash_identifier(x, DEFAULT_SALT)
        for x in [*rel, "MRN0012345", "MRN0067890", "MRN0012345/study_1", "MRN0067890/mr"]
    }
    for column in ("patient_id", "study_id", "image_id"):
        ids = [set(m.manifest[column]) for m in (a, b, c)]
        assert not ids[0] & ids[1] and not ids[0] & ids[2] and not ids[1] & ids[2], column
        for values in ids:
            assert not values & default_ids, f"{column} hashed with the public default salt"
    assert set(a.manifest["patient_id"]) == {
        hash_identifier("MRN0012345", "site-secret-one"),
        hash_identifier("MRN0067890", "site-secret-one"),
    }


def test_default_salt_warns_once(raster_nifti_export: Path, tmp_path: Path, monkeypatch, caplog) -> None:
    """Indexing with the public default salt warns once per process; a real salt or the demo opt-out does not."""
    monkeypatch.delenv(deid.SALT_ENV, raising=False)
    monkeypatch.setattr(deid, "_warned_default_salt", False)
    caplog.set_level(logging.WARNING)
    index_export(raster_nifti_export, tmp_path / "s.parquet", salt="secret", workers=1, progress=False)
    index_export(raster_nifti_export, tmp_path / "q.parquet", workers=1, progress=False, default_salt_ok=True)
    assert not [r for r in caplog.records if "default salt" in r.getMessage()]
    index_export(raster_nifti_export, tmp_path / "d1.parquet", workers=1, progress=False)
    index_export(raster_nifti_export, tmp_path / "d2.parquet", workers=1, progress=False)
    warned = [r for r in caplog.records if "default salt" in r.getMessage()]
    assert len(warned) == 1
    assert "--salt" in warned[0].getMessage() and deid.SALT_ENV in warned[0].getMessage()


STAFF = {
    "ReferringPhysicianName": "Zqxdoctor^Alan",
    "OperatorsName": "Qqoperator^Bea",
    "NameOfPhysiciansReadingStudy": "Rrreader^Carl",
    "PerformingPhysicianName": "Ppperformer^Dana",
}


def test_staff_names_never_reach_manifest_or_cache(xray_dir: Path, tmp_path: Path) -> None:
    """Referring/reading/performing physicians' and operators' names in report text are scrubbed like the patient's."""
    import pydicom
    from phi import assert_no_phi
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from medclip.data.cache import CacheConfig, build_cache

    export = tmp_path / "export"
    export.mkdir()
    ds = pydicom.dcmread(xray_dir / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm")
    for keyword, value in STAFF.items():
        setattr(ds, keyword, value)
    request = Dataset()  # a person name nested in a sequence is found too
    request.ScheduledPerformingPhysicianName = "Sssched^Erin"
    ds.ScheduledProcedureStepSequence = Sequence([request])
    ds.AccessionNumber = "ACC7654321"
    ds.save_as(export / "img.dcm")
    (export / "reports.csv").write_text(
        "accession_number,findings,impression\n"
        'ACC7654321,"Dr. Zqxdoctor referring. Images by Qqoperator, read with Rrreader. Ppperformer and Sssched '
        'were present. The lungs are clear. No pleural effusion.","Discussed with Dr. Quentin Vvvoice. Normal chest."\n'
    )
    out = tmp_path / "index" / "manifest.parquet"
    res = index_export(export, out, reports=export / "reports.csv", salt="s3cret", workers=1, progress=False)
    row = res.manifest.iloc[0]
    assert row["report_findings"].startswith("Dr. XXXX referring. Images by XXXX, read with XXXX. XXXX and XXXX")
    assert "The lungs are clear. No pleural effusion." in row["report_findings"]
    assert row["report_impression"] == "Discussed with Dr. XXXX XXXX. Normal chest."
    build_cache(out, tmp_path / "cache", config=CacheConfig(image_size=32, shard_size=8), workers=1, progress=False)
    planted = [value.split("^")[0] for value in STAFF.values()] + ["Sssched", "Vvvoice", "Quentin"]
    assert_no_phi([out.parent, tmp_path / "cache"], planted)


def test_staff_role_words_are_not_scrubbed() -> None:
    """Operator fields that hold roles or modalities ("CT^TECH") do not remove those words from reports."""
    from medclip.data.reports import identifier_tokens, staff_name_tokens

    tokens = staff_name_tokens(["CT^TECH", "RADIOLOGY", "Zqxdoctor^Alan"])
    assert not tokens & {"ct", "tech", "radiology"}
    assert tokens >= identifier_tokens(["Zqxdoctor^Alan"])


def test_person_names_reads_nested_names_not_pixels() -> None:
    """Every PN value is found (top level and in sequences); deferred pixel data is never read."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.OperatorsName = ["Oone^Op", "Otwo^Op"]
    item = Dataset()
    item.VerifyingObserverName = "Vverify^Obs"
    ds.VerifyingObserverSequence = Sequence([item])
    buf = __import__("io").BytesIO()
    ds.save_as(buf)
    buf.seek(0)
    lazy = pydicom.dcmread(buf, defer_size="1 KB")
    names = deid.person_names(lazy)
    assert {"Oone^Op", "Otwo^Op", "Vverify^Obs", str(ds.PatientName)} <= set(names)
    raw = lazy.get_item(0x7FE00010, keep_deferred=True)
    assert raw.value is None  # still deferred


def test_non_utf8_file_names_do_not_abort_indexing(xray_dir: Path, tmp_path: Path, capsys) -> None:
    """A file name that is not valid UTF-8 is skipped with its reason and counted; the run writes its manifest."""
    import os

    import pandas as pd

    from medclip.cli import main
    from medclip.data.indexer import skipped_path

    export = tmp_path / "export"
    (export / "p1").mkdir(parents=True)
    shutil.copy(xray_dir / "00000001_000.png", export / "p1" / "ok.png")
    odd_folder = export / os.fsdecode(b"d\xffir")  # Latin-1 / raw bytes: not UTF-8
    try:
        shutil.copy(xray_dir / "00027426_000.png", export / "p1" / os.fsdecode(b"caf\xe9.png"))
        odd_folder.mkdir()
        shutil.copy(xray_dir / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm", odd_folder / "img.dcm")
    except OSError:
        pytest.skip("this file system does not store file names that are not UTF-8")
    res = index_export(export, tmp_path / "a" / "m.parquet", salt="s", workers=1, progress=False)
    assert len(res.manifest) == 1 and res.files_seen == 3
    assert sum(res.skipped.values()) == 2
    listed = pd.read_csv(skipped_path(res.manifest_path))
    assert sorted(listed["path"]) == ["d\\xffir/img.dcm", "p1/caf\\xe9.png"]
    assert listed["reason"].str.contains("not valid UTF-8").all()
    again = index_export(export, tmp_path / "a" / "m.parquet", salt="s", workers=1, progress=False)
    assert sum(again.skipped.values()) == 2 and len(again.manifest) == 1

    rc = main(["-q", "index", str(export), "-o", str(tmp_path / "cli"), "--salt", "s"])
    out = capsys.readouterr().out
    assert rc == 0 and (tmp_path / "cli" / "manifest.parquet").is_file()
    assert "skipped 2 files: file name is not valid UTF-8" in out
