"""Encapsulated frames larger than their header are refused before any decoder runs (issue 12.10)."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate

from medclip.io import ImageReadError, load_image

HEADER = 320


def _pillow_jpeg(size: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    rgb = (rng.random((size // 16, size // 16, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(rgb).resize((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _with_sof_size(jpeg: bytes, rows: int, columns: int) -> bytes:
    """The same JPEG stream whose SOF0 marker claims another size (what a decoder allocates for)."""
    i = jpeg.index(b"\xff\xc0")
    return jpeg[: i + 5] + struct.pack(">HH", rows, columns) + jpeg[i + 9 :]


def _dicom_with_frame(tmp_path: Path, frame: bytes, name: str) -> Path:
    """pydicom's real JPEG-baseline test file, its header saying 320 x 320, holding ``frame``."""
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    ds.Rows = ds.Columns = HEADER
    ds.PixelData = encapsulate([frame])
    path = tmp_path / name
    ds.save_as(path)
    return path


@pytest.fixture
def no_decoder(monkeypatch):
    """Fail the test if any pixel decoder is reached."""
    calls = []

    def forbidden(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the decoder was called on a hostile frame")

    monkeypatch.setattr(pydicom.pixels, "pixel_array", forbidden)
    return calls


def test_matching_frame_decodes(tmp_path: Path) -> None:
    """Control: the same construction with a 320 x 320 frame is a valid, readable file."""
    image = load_image(_dicom_with_frame(tmp_path, _pillow_jpeg(HEADER), "ok.dcm"))
    assert image.shape == (HEADER, HEADER)


@pytest.mark.parametrize(
    "made_by, rows, columns", [("sof", 16000, 16000), ("pillow", 1600, 1600), ("sof", HEADER, 321)]
)
def test_oversized_jpeg_frame_is_refused_before_decoding(tmp_path: Path, no_decoder, made_by, rows, columns) -> None:
    """A frame whose JPEG header claims more than Rows x Columns (patched SOF, or a real larger Pillow JPEG)."""
    frame = _pillow_jpeg(rows) if made_by == "pillow" else _with_sof_size(_pillow_jpeg(HEADER), rows, columns)
    path = _dicom_with_frame(tmp_path, frame, "hostile.dcm")
    with pytest.raises(ImageReadError) as info:
        load_image(path)
    assert f"JPEG frame 0 is {rows} x {columns} pixels but the header says 320 x 320" in info.value.reason
    assert "refused before decoding" in info.value.reason
    assert no_decoder == []


def test_oversized_jpeg2000_and_jpegls_frames_are_refused(tmp_path: Path, no_decoder) -> None:
    # JPEG 2000: the SIZ segment's Xsiz/Ysiz grow to 16000
    ds = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))
    frame = pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=1)
    start = frame.index(b"\xff\x4f\xff\x51")
    frame = frame[: start + 8] + struct.pack(">II", 16000, 16000) + frame[start + 16 :]
    ds.PixelData = encapsulate([frame])
    ds.save_as(tmp_path / "j2k.dcm")
    with pytest.raises(
        ImageReadError, match=r"JPEG 2000 frame 0 is 16000 x 16000 pixels but the header says 1024 x 256"
    ):
        load_image(tmp_path / "j2k.dcm")
    # JPEG-LS: the SOF55 marker claims 16000 x 16000
    ds = pydicom.dcmread(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    frame = pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=1)
    i = frame.index(b"\xff\xf7")
    frame = frame[: i + 5] + struct.pack(">HH", 16000, 16000) + frame[i + 9 :]
    ds.PixelData = encapsulate([frame])
    ds.save_as(tmp_path / "jls.dcm")
    with pytest.raises(ImageReadError, match=r"JPEG frame 0 is 16000 x 16000 pixels but the header says 64 x 64"):
        load_image(tmp_path / "jls.dcm")
    assert no_decoder == []


def test_header_pixel_cap(tmp_path: Path, no_decoder) -> None:
    """A header announcing a gigantic image is refused whatever the pixel data hold."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows = ds.Columns = 60000
    ds.save_as(tmp_path / "huge.dcm")
    with pytest.raises(ImageReadError, match="over the limit"):
        load_image(tmp_path / "huge.dcm")
    assert no_decoder == []


def test_index_cache_and_demo_refuse_it(tmp_path: Path, no_decoder) -> None:
    """The indexer, the cache and the demo's upload path all refuse the hostile file through medclip.io."""
    from medclip.data.cache import CacheConfig, build_cache
    from medclip.data.indexer import index_export
    from medclip.demo.uploads import UploadError, read_upload

    export = tmp_path / "export"
    export.mkdir()
    path = _dicom_with_frame(export, _with_sof_size(_pillow_jpeg(HEADER), 16000, 16000), "hostile.dcm")
    res = index_export(export, tmp_path / "a" / "m.parquet", salt="s", workers=1, progress=False)
    assert res.skipped and "refused before decoding" in next(iter(res.skipped))
    unverified = index_export(
        export, tmp_path / "b" / "m.parquet", salt="s", workers=1, progress=False, verify_pixels=False
    )
    assert len(unverified.manifest) == 1
    cache = build_cache(
        tmp_path / "b" / "m.parquet", tmp_path / "cache", config=CacheConfig(image_size=32), workers=1, progress=False
    )
    assert cache.written == 0 and "refused before decoding" in " ".join(cache.skipped.values())
    with pytest.raises(UploadError, match="refused before decoding"):
        read_upload(path, name="upload.dcm")
    assert no_decoder == []
