"""Hostile uploads to the demo: whole-archive zip bombs, oversized uploads, stale work folders, 4D input."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from medclip.demo import UploadError, UploadLimits, extract_zip, read_upload
from medclip.demo.uploads import expansion_budget


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def _bytes_under(root: Path) -> int:
    return sum(p.stat().st_size for p in _files_under(root))


def test_zip_bomb_of_many_small_members_is_refused_as_a_whole(tmp_path: Path) -> None:
    """Issue 12.11, scaled down: 1,990 members of 1 MiB zeros (each just at the per-member ratio floor,
    the total under max_unzipped_bytes) wrote 1.99 GB; the archive as a whole must be refused first."""
    member = 64 * 1024
    limits = UploadLimits(min_ratio_check_bytes=member, max_unzipped_bytes=64 * 1024**2)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(200):
            zf.writestr(f"part{i:04d}.dcm", bytes(member))
    declared = 200 * member
    assert declared <= limits.max_unzipped_bytes  # under the old whole-size limit: only the ratio can catch it
    assert declared > expansion_budget(bomb.stat().st_size, limits)
    dest = tmp_path / "out"
    with pytest.raises(UploadError) as info:
        extract_zip(bomb, dest, limits)
    message = str(info.value)
    assert message.startswith("bomb.zip: the zip's 200 files would expand")
    assert "decompression bomb" in message and "nothing was extracted" in message
    assert _files_under(dest) == [], "nothing may be written before the whole archive is checked"
    # through the upload path too: the same message, and the work folder is gone
    with pytest.raises(UploadError, match="refused as a decompression bomb"):
        read_upload(bomb, limits=limits, workdir=tmp_path)
    assert not list(tmp_path.glob("medclip-upload-*"))


def test_zip_whose_members_inflate_beyond_their_headers_stops_at_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Headers can lie: the bytes actually inflated are counted against the whole-archive budget."""
    archive = tmp_path / "liar.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(40):
            zf.writestr(f"part{i:02d}.dcm", bytes(1024))  # declares 1 KiB each
    limits = UploadLimits(max_compression_ratio=20.0, min_ratio_check_bytes=256 * 1024)
    budget = expansion_budget(archive.stat().st_size, limits)
    assert 40 * 1024 < budget < 40 * 64 * 1024

    def inflate_more_than_declared(self: zipfile.ZipFile, info: zipfile.ZipInfo, *args, **kwargs) -> io.BytesIO:
        return io.BytesIO(bytes(64 * 1024))  # what a lying header hides: 64 KiB per member

    monkeypatch.setattr(zipfile.ZipFile, "open", inflate_more_than_declared)
    dest = tmp_path / "out"
    with pytest.raises(
        UploadError, match=r"liar.zip: the zip expands beyond .* while extracting .* decompression bomb"
    ):
        extract_zip(archive, dest, limits)
    assert 0 < _bytes_under(dest) <= budget


def test_honest_zip_within_the_ratio_still_extracts(tmp_path: Path) -> None:
    rng_bytes = np.random.default_rng(0).bytes(1024**2)  # deflate cannot shrink noise: ratio about 1
    archive = tmp_path / "ok.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(3):
            zf.writestr(f"s/{i}.bin", rng_bytes)
    files = extract_zip(archive, tmp_path / "out")
    assert sorted(f.name for f in files) == ["0.bin", "1.bin", "2.bin"]
    assert _bytes_under(tmp_path / "out") == 3 * len(rng_bytes)


GE_4D_SERIES = ("data", "dicom_series_nih", "In", "20180918GE", "mr_0004")  # 150 files: 15 slices x 10 volumes


def _ge_series(shared_dir: Path) -> list[Path]:
    folder = shared_dir.joinpath(*GE_4D_SERIES)
    files = sorted(folder.glob("*.dcm")) if folder.is_dir() else []
    if not files:
        pytest.skip(f"{folder} not found")
    return files


def test_4d_series_raises_a_typed_multivolume_error_with_its_volume_count(shared_dir: Path) -> None:
    import pickle

    from medclip.io import ImageReadError, MultiVolumeError, read_dicom_series

    files = _ge_series(shared_dir)
    with pytest.raises(MultiVolumeError) as info:
        read_dicom_series(files, window=None)
    exc = info.value
    assert isinstance(exc, ImageReadError) and exc.n_volumes == 10 and len(files) == 150
    again = pickle.loads(pickle.dumps(exc))  # DataLoader workers pickle errors
    assert type(again) is MultiVolumeError and again.n_volumes == 10 and str(again) == str(exc)


def test_upload_of_a_4d_series_takes_the_volume_count_from_the_exception(
    tmp_path: Path, shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 9.5: the upload path used to parse "(\\d+) volumes" out of the message; the mosaic wording
    ("10 mosaic volumes") broke it. With the reason reworded and the reader's own count removed, the
    header must still say 10 volumes: it comes from ``MultiVolumeError.n_volumes``."""
    from medclip.demo import uploads
    from medclip.io import MultiVolumeError

    files = _ge_series(shared_dir)
    real = uploads.read_dicom_series

    def reader(members, *, window=None, volume_index=None):
        try:
            image = real(members, window=window, volume_index=volume_index)
        except MultiVolumeError as exc:
            raise MultiVolumeError(
                exc.path, f"4D data: {exc.n_volumes} mosaic volumes; choose one", exc.n_volumes
            ) from None
        image.metadata.pop("volumes", None)
        return image

    monkeypatch.setattr(uploads, "read_dicom_series", reader)
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f, f"series/{f.name}")
    study = read_upload(archive, workdir=tmp_path)
    assert study.kind == "dicom_series" and study.image.is_volume and study.n_slices == 15
    assert study.header["volumes"] == 10
    assert not list(tmp_path.glob("medclip-upload-*"))
