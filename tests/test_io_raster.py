"""PNG/JPEG reading (8/16-bit, colour, EXIF) and content-based dispatch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medclip.io import ImageReadError, detect_format, load_image, read_raster


def test_real_png_and_jpeg_xrays(xray_dir: Path) -> None:
    for name in ("00000001_000.png", "16747_3_1.jpg", "covid-19-pneumonia-58-prior.jpg"):
        path = xray_dir / name
        reference = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
        image = load_image(path)
        assert image.shape == reference.shape and image.array.dtype == np.float32
        assert image.metadata["window"] == "full_range"  # 8-bit data are display values already
        np.testing.assert_allclose(image.array, reference / 255.0, atol=1e-6)
        np.testing.assert_array_equal(load_image(path, window=None).array, reference)
        assert image.metadata["format"] in ("png", "jpeg") and image.affine is None


def test_sixteen_bit_png_keeps_its_depth_and_gets_a_percentile_window(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    values = rng.integers(0, 4096, size=(64, 48), dtype=np.uint16)  # 12-bit data in a 16-bit PNG
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    raw = load_image(path, window=None)
    np.testing.assert_array_equal(raw.array, values.astype(np.float32))
    assert raw.metadata["bits_stored"] == 16
    shown = load_image(path)
    assert shown.metadata["window"] == "percentile"
    assert shown.array.min() == 0.0 and shown.array.max() == 1.0
    assert shown.array.mean() == pytest.approx(0.5, abs=0.05)  # not crushed into the dark 1/16 of the range


def test_colour_and_exif_orientation(tmp_path: Path) -> None:
    rgb = np.zeros((20, 30, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    rgb[:10, :, 1] = 100
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "photo.jpg"
    img.save(path, exif=exif, quality=95)
    image = load_image(path, window=None)
    assert image.shape == (30, 20)  # EXIF rotation applied
    expected_top = 0.299 * 200 + 0.587 * 100
    assert image.array[:, -5:].mean() == pytest.approx(expected_top, abs=3)


def test_bad_raster_inputs(tmp_path: Path) -> None:
    flat = tmp_path / "flat.png"
    Image.fromarray(np.full((8, 8), 9, dtype=np.uint8)).save(flat)
    with pytest.raises(ImageReadError, match="constant image"):
        load_image(flat)
    good = tmp_path / "good.png"
    noise = np.random.default_rng(0).integers(0, 65535, size=(64, 64), dtype=np.uint16)  # incompressible
    Image.fromarray(noise).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(ImageReadError, match="corrupt or truncated") as info:
        load_image(cut)
    assert info.value.path == str(cut)
    text = tmp_path / "notes.png"  # the extension lies; the content decides
    text.write_text("findings: none\n")
    with pytest.raises(ImageReadError, match="unrecognised format"):
        load_image(text)
    with pytest.raises(ImageReadError, match="single-frame"):
        load_image(good, frame=2)


def test_detect_format_reads_content_not_extension(tmp_path: Path, xray_dir: Path) -> None:
    disguised = tmp_path / "image.dat"
    disguised.write_bytes((xray_dir / "00000001_000.png").read_bytes())
    assert detect_format(disguised) == "raster"
    dicom_named_png = tmp_path / "scan.png"
    dicom_named_png.write_bytes((xray_dir / "Fake_MONOHR1.dcm").read_bytes())
    assert detect_format(dicom_named_png) == "dicom"
    assert detect_format(tmp_path) == "dicom_series"
    assert read_raster(disguised).shape == (512, 512)
