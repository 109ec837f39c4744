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


def test_zip_whose_members_inflate_beyond_their_headers_stops_at_the_budget(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
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
    with pytest.raises(UploadError, match=r"liar.zip: the zip expands beyond .* while extracting .* decompression bomb"):
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

