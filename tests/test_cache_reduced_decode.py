"""Reduced-resolution decoding for the cache: JPEG DCT scaling and JPEG 2000 resolution levels give the
same cached image as a full decode, within about one grey level, on a real chest X-ray."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medclip.data.cache import CacheConfig, preprocess_row, reduced_decode_image
from medclip.io import ImageReadError

JPEG_BASELINE, J2K_LOSSLESS = "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90"


def make_dicom(
    path: Path, pixels: np.ndarray, syntax: str, *, photometric: str = "MONOCHROME2", frame: bytes | None = None, **tags
) -> Path:
    """A single-frame grayscale DICOM whose pixel data is ``pixels`` encoded with ``syntax``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "DX", "bench"
    ds.Rows, ds.Columns = pixels.shape
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits if bits == 8 else 12, (7 if bits == 8 else 11)
    ds.SamplesPerPixel, ds.PixelRepresentation, ds.PhotometricInterpretation = 1, 0, photometric
    for k, v in tags.items():
        setattr(ds, k, v)
    if syntax == ExplicitVRLittleEndian:
        ds.PixelData = pixels.tobytes()
    else:
        if frame is None:
            buf = io.BytesIO()
            if syntax == JPEG_BASELINE:
                Image.fromarray(pixels).save(buf, "JPEG", quality=95)
            else:
                Image.fromarray(pixels).save(buf, "JPEG2000", no_jp2=True, irreversible=False)
            frame = buf.getvalue()
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def xray(xray_dir) -> np.ndarray:
    return np.asarray(Image.open(xray_dir / "00000001_000.png").convert("L"))  # a real 512 x 512 chest X-ray


def _both(path: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    row = {"path": str(path), "kind": "image", "image_id": "x"}
    fast = preprocess_row(row, CacheConfig(image_size=size))
    full = preprocess_row(row, CacheConfig(image_size=size, reduced_decode=False))
    return fast.astype(np.float32), full.astype(np.float32)


@pytest.mark.parametrize("size,factor", [(32, 8), (64, 4), (128, 2)])
def test_jpeg_dct_scaling_matches_the_full_decode(tmp_path, xray, size, factor):
    path = make_dicom(tmp_path / "cxr.dcm", xray, JPEG_BASELINE)
    image = reduced_decode_image(path, "auto", size)
    assert image is not None and image.metadata["decoded_at"] == f"1/{factor}"
    assert image.array.shape == (512 // factor, 512 // factor)
    fast, full = _both(path, size)
    assert np.abs(fast - full).mean() <= 1.0 and np.percentile(np.abs(fast - full), 99) <= 6  # of 255 grey levels


def test_jpeg2000_resolution_levels_match_the_full_decode(tmp_path, xray):
    big = np.asarray(Image.fromarray(xray).resize((2048, 2500), Image.Resampling.BICUBIC))  # radiograph size
    ct_like = big.astype(np.uint16) * 16  # 12-bit values
    path = make_dicom(tmp_path / "j2k.dcm", ct_like, J2K_LOSSLESS, RescaleSlope=1, RescaleIntercept=-1024)
    image = reduced_decode_image(path, "auto", 224)
    assert image is not None and image.metadata["decoded_at"] == "1/4" and image.array.shape == (625, 512)
    fast, full = _both(path, 224)
    assert np.abs(fast - full).mean() < 1.0 and np.percentile(np.abs(fast - full), 99) <= 6


def test_window_and_monochrome1_are_those_of_the_full_path(tmp_path, xray):
    path = make_dicom(
        tmp_path / "m1.dcm", xray, JPEG_BASELINE, photometric="MONOCHROME1", WindowCenter=100, WindowWidth=120
    )
    fast, full = _both(path, 64)
    assert np.abs(fast - full).mean() < 1.0
    plain = make_dicom(tmp_path / "m2.dcm", xray, JPEG_BASELINE)
    assert np.abs(_both(plain, 64)[0] - (255 - fast)).mean() > 20  # really inverted and windowed


def test_not_reducible_files_take_the_full_path(tmp_path, xray):
    raw = make_dicom(tmp_path / "raw.dcm", xray, ExplicitVRLittleEndian)
    assert reduced_decode_image(raw, "auto", 64) is None  # uncompressed: nothing to gain in the codec
    jpeg = make_dicom(tmp_path / "small.dcm", xray, JPEG_BASELINE)
    assert reduced_decode_image(jpeg, "auto", 200) is None  # 512 // 2 < 2 x 200: no reduction leaves the margin
    png = tmp_path / "x.png"
    Image.fromarray(xray).save(png)
    assert reduced_decode_image(png, "auto", 64) is None
    rgb = pydicom.examples.get_path("rgb_color") if hasattr(pydicom, "examples") else None
    if rgb is not None:
        assert reduced_decode_image(rgb, "auto", 16) is None


def test_a_frame_larger_than_its_header_is_refused_before_decoding(tmp_path, xray):
    big = io.BytesIO()
    Image.fromarray(np.tile(xray, (4, 4))).save(big, "JPEG", quality=50)  # 2048 x 2048 frame
    path = make_dicom(tmp_path / "lie.dcm", xray, JPEG_BASELINE, frame=big.getvalue())  # header says 512 x 512
    with pytest.raises(ImageReadError, match="refused before decoding"):
        reduced_decode_image(path, "auto", 64)
