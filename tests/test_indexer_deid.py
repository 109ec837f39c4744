"""De-identification at the indexer's seams (issue 12): salts for every format, staff names, odd file names."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from nibabel.testing import data_path as NIBABEL_DATA
import pytest

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
    default_ids = {hash_identifier(x, DEFAULT_SALT) for x in [*rel, "MRN0012345", "MRN0067890",
                                                             "MRN0012345/study_1", "MRN0067890/mr"]}
    for column in ("patient_id", "study_id", "image_id"):
        ids = [set(m.manifest[column]) for m in (a, b, c)]
        assert not ids[0] & ids[1] and not ids[0] & ids[2] and not ids[1] & ids[2], column
        for values in ids:
            assert not values & default_ids, f"{column} hashed with the public default salt"
    assert set(a.manifest["patient_id"]) == {hash_identifier("MRN0012345", "site-secret-one"),
                                             hash_identifier("MRN0067890", "site-secret-one")}


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
