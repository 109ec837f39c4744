"""Anonymised series whose Series/Study/SOP Instance UIDs are blank become volumes again (issue 11.6)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from medclip.io import ImageReadError, load_image, read_dicom_series
from medclip.io.dicom import INFERRED_GROUPING, find_dicom_series, split_position_runs

BLANKED = ("SeriesInstanceUID", "StudyInstanceUID", "SOPInstanceUID")


@pytest.fixture(scope="module")
def nih_ge(shared_dir: Path) -> Path:
    path = shared_dir / "data" / "dicom_series_nih" / "In" / "20180918GE"
    if not path.is_dir():
        pytest.skip("dicom_series_nih not in shared data")
    return path


def _first_volume(series_dir: Path) -> list[Path]:
    """The 15 slices of the first time point of a real GE fMRI series (files 1..15)."""
    return sorted(series_dir.glob("*.dcm"))[:15]


def _blank(files: list[Path], out: Path, prefix: str, keep: slice = slice(None)) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, src in enumerate(files[keep]):
        ds = pydicom.dcmread(src)
        for keyword in BLANKED:
            setattr(ds, keyword, "")
        ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"  # the anonymiser's placeholder
        target = out / f"{prefix}_{i:03d}.dcm"
        ds.save_as(target)
        written.append(target)
    return written


def test_blank_uid_series_is_one_volume(nih_ge: Path, tmp_path: Path) -> None:
    files = _first_volume(nih_ge / "mr_0004")
    reference = read_dicom_series(files, window=None)
    _blank(files, tmp_path / "anon", "slice")
    image = load_image(tmp_path / "anon", window=None)
    assert image.shape == reference.shape == (15, 64, 64)
    np.testing.assert_array_equal(image.array, reference.array)
    np.testing.assert_allclose(image.affine, reference.affine)
    assert image.metadata["series_grouping"] == INFERRED_GROUPING
    assert "series_grouping" not in reference.metadata
    assert image.metadata["series_id"] and image.metadata["image_id"]


def test_two_anonymised_series_and_a_gap_are_told_apart(nih_ge: Path, tmp_path: Path) -> None:
    """Series numbers keep two series apart; a block of missing slices splits one series into two volumes."""
    folder = tmp_path / "mixed"
    _blank(_first_volume(nih_ge / "mr_0004"), folder, "a")
    gapped = _first_volume(nih_ge / "mr_0005")
    _blank(gapped[:5] + gapped[10:], folder, "b")
    groups = find_dicom_series(folder)
    assert sorted(len(v) for v in groups.values()) == [5, 5, 15]
    assert {p.name[0] for v in groups.values() for p in v if len(v) == 15} == {"a"}
    with pytest.raises(ImageReadError, match="3 series found"):
        read_dicom_series(folder)
    for series_id, members in groups.items():
        volume = read_dicom_series(folder, series_id=series_id, window=None)
        assert volume.shape[0] == len(members)
        assert volume.metadata["series_grouping"] == INFERRED_GROUPING


def test_indexer_makes_one_volume_row(nih_ge: Path, tmp_path: Path) -> None:
    from medclip.data.cache import CacheConfig, build_cache
    from medclip.data.indexer import index_export

    export = tmp_path / "export"
    _blank(_first_volume(nih_ge / "mr_0004"), export / "anon", "slice")
    res = index_export(export, tmp_path / "idx" / "m.parquet", salt="s", workers=1, progress=False)
    df = res.manifest
    assert len(df) == 1 and not res.skipped
    row = df.iloc[0]
    assert row["kind"] == "volume" and row["frames"] == 15 and len(row["files"]) == 15
    assert row["image_id"] and row["study_id"] and row["patient_id"]
    cache = build_cache(
        tmp_path / "idx" / "m.parquet",
        tmp_path / "cache",
        config=CacheConfig(volume_shape=(8, 16, 16)),
        workers=1,
        progress=False,
    )
    assert cache.written == 1 and not cache.skipped


def test_split_position_runs() -> None:
    assert split_position_runs([0.0, 5.0, 10.0, 15.0]) == [[0, 1, 2, 3]]
    assert split_position_runs([10.0, 0.0, 5.0, 40.0, 45.0, 50.0]) == [[1, 2, 0], [3, 4, 5]]
    assert split_position_runs([0.0, 0.0, 5.0, 5.0, 10.0, 10.0]) == [[0, 1, 2, 3, 4, 5]]  # 4D stays together
