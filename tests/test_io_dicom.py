"""DICOM reading on real files: pydicom's bundled test files, pydicom-data, and ../shared X-rays."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing

from medclip.deid import hash_identifier
from medclip.io import ImageReadError, load_image, read_dicom, safe_metadata

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
try:
    import data_store  # the pydicom-data package

    PYDICOM_DATA = Path(data_store.__file__).parent / "data"
except ImportError:  # pragma: no cover - optional test dependency
    PYDICOM_DATA = None


def bundled(name: str) -> Path:
    """A file shipped with pydicom itself (never downloads)."""
    path = PYDICOM_FILES / name
    assert path.is_file(), path
    return path


def extra(name: str) -> Path:
    """A file from the pydicom-data package; skips cleanly without it."""
    if PYDICOM_DATA is None or not (PYDICOM_DATA / name).is_file():
        pytest.skip(f"pydicom-data file {name} not installed")
    return PYDICOM_DATA / name


CR_ORIGINAL = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


# ----------------------------------------------------------------------------- modality LUT


def test_ct_rescale_gives_hounsfield_units() -> None:
    ds = pydicom.dcmread(bundled("CT_small.dcm"))
    expected = apply_modality_lut(ds.pixel_array, ds)
    image = read_dicom(bundled("CT_small.dcm"), window=None)
    assert image.array.dtype == np.float32 and image.shape == (128, 128)
    np.testing.assert_allclose(image.array, expected, atol=1e-3)
    assert float(ds.RescaleIntercept) == -1024.0
    assert image.array.min() < -100 and image.metadata["window"] is None
    assert image.metadata["modality"] == "CT"
    assert image.spacing == tuple(float(v) for v in ds.PixelSpacing)


def test_ct_presets_and_custom_window_use_hounsfield_units() -> None:
    hu = read_dicom(bundled("CT_small.dcm"), window=None).array
    lung = read_dicom(bundled("CT_small.dcm"), window="lung")
    assert lung.metadata["window"] == "lung"
    assert (lung.metadata["window_center"], lung.metadata["window_width"]) == (-600.0, 1500.0)
    # DICOM LINEAR: ((x - (c - 0.5)) / (w - 1) + 0.5) clipped to [0, 1]
    expected = np.clip((hu - (-600 - 0.5)) / (1500 - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(lung.array, expected, atol=1e-5)
    custom = read_dicom(bundled("CT_small.dcm"), window=(40, 400))
    assert custom.metadata["window"] == "custom"
    assert 0.0 <= custom.array.min() and custom.array.max() <= 1.0
    soft = read_dicom(bundled("CT_small.dcm"), window="Soft Tissue")
    assert soft.metadata["window"] == "soft_tissue"


def test_unknown_preset_is_a_value_error_before_reading() -> None:
    with pytest.raises(ValueError, match="unknown window preset"):
        read_dicom(bundled("CT_small.dcm"), window="kidney-ish")
    with pytest.raises(ValueError):
        load_image(bundled("CT_small.dcm"), window=(40, 0))


# ----------------------------------------------------------------------------- VOI


def test_file_window_matches_pydicom_apply_windowing() -> None:
    path = bundled("MR_small.dcm")
    ds = pydicom.dcmread(path)
    image = read_dicom(path)
    assert image.metadata["window"] == "file"
    assert image.metadata["window_center"] == float(ds.WindowCenter)
    # pydicom's windowing output spans [0, 2**BitsStored - 1] (unsigned); normalise it to [0, 1]
    reference = apply_windowing(apply_modality_lut(ds.pixel_array, ds), ds)
    bits = ds.BitsStored
    low = -(2 ** (bits - 1)) if ds.PixelRepresentation else 0
    reference = (reference - low) / (2**bits - 1)
    np.testing.assert_allclose(image.array, reference, atol=1e-5)


def test_voi_lut_sequence_is_applied_and_normalised() -> None:
    path = extra("vlut_04.dcm")
    ds = pydicom.dcmread(path)
    image = read_dicom(path)
    assert image.metadata["window"] == "voi_lut"
    mapped = apply_voi(apply_modality_lut(ds.pixel_array, ds).astype(np.int64), ds).astype(np.float64)
    lut = apply_voi(np.arange(0, 256), ds)
    expected = (mapped - lut.min()) / (lut.max() - lut.min())
    np.testing.assert_allclose(image.array, expected, atol=1e-5)
    assert image.array.min() >= 0.0 and image.array.max() <= 1.0
    # A user window overrides the file's VOI LUT.
    assert read_dicom(path, window=(128, 256)).metadata["window"] == "custom"


def test_no_window_in_file_falls_back_to_percentile(xray_dir: Path) -> None:
    image = read_dicom(xray_dir / CR_ORIGINAL)
    assert image.metadata["window"] == "percentile"
    assert image.array.min() == 0.0 and image.array.max() == 1.0
    # 0.5..99.5 percentile clipping leaves roughly 1 % of pixels saturated, not more.
    saturated = np.mean((image.array == 0) | (image.array == 1))
    assert saturated < 0.05


# ----------------------------------------------------------------------------- photometric


def test_monochrome1_is_the_inverse_of_its_monochrome2_original(xray_dir: Path) -> None:
    mono1 = read_dicom(xray_dir / "Fake_MONOHR1.dcm")
    mono2 = read_dicom(xray_dir / CR_ORIGINAL)
    assert mono1.metadata["photometric"] == "MONOCHROME1"
    assert mono2.metadata["photometric"] == "MONOCHROME2"
    np.testing.assert_allclose(mono1.array, 1.0 - mono2.array, atol=1e-6)
    # Modality values are not inverted: window=None gives the stored values of both files.
    np.testing.assert_array_equal(
        read_dicom(xray_dir / "Fake_MONOHR1.dcm", window=None).array,
        read_dicom(xray_dir / CR_ORIGINAL, window=None).array,
    )


def test_jpeg_baseline_cr_metadata(xray_dir: Path) -> None:
    image = load_image(xray_dir / CR_ORIGINAL)
    meta = image.metadata
    assert meta["transfer_syntax"].startswith("JPEG Baseline")
    assert (meta["modality"], meta["view_position"], meta["body_part"]) == ("CR", "PA", "CHEST")
    assert image.shape == (1024, 1024) and meta["rows"] == 1024 and meta["bits_stored"] == 8
    assert image.spacing == pytest.approx((0.168, 0.168))


def test_rgb_becomes_luminance() -> None:
    path = extra("SC_rgb.dcm")
    rgb = pydicom.dcmread(path).pixel_array.astype(np.float64)
    image = read_dicom(path, window=None)
    np.testing.assert_allclose(image.array, rgb @ [0.299, 0.587, 0.114], atol=1e-3)
    windowed = read_dicom(path)
    assert windowed.metadata["window"] == "full_range"
    np.testing.assert_allclose(windowed.array, image.array / 255.0, atol=1e-6)


def test_ybr_full_422_converted_like_rgb_original() -> None:
    ybr = read_dicom(bundled("SC_ybr_full_422_uncompressed.dcm"))
    rgb = read_dicom(bundled("SC_rgb_dcmtk_+eb+cr.dcm"))
    assert ybr.shape == rgb.shape == (100, 100)
    assert np.abs(ybr.array - rgb.array).mean() < 0.02  # chroma subsampling + YBR rounding only


def test_ybr_luminance_is_the_y_channel_and_equals_rgb_luma() -> None:
    for name in ("SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cy+s2.dcm", "examples_ybr_color.dcm"):
        path = bundled(name)
        ds = pydicom.dcmread(path)
        assert ds.PhotometricInterpretation.startswith("YBR_FULL")
        luma = ds.pixel_array.astype(np.float64) @ [0.299, 0.587, 0.114]  # pydicom's YBR -> RGB, then luma
        ours = read_dicom(path, window=None).array
        assert ours.shape == luma.shape
        assert np.abs(ours - luma).mean() < 0.5, name  # rounding and RGB clipping only


def test_palette_color_becomes_grayscale() -> None:
    image = read_dicom(extra("OBXXXX1A.dcm"))
    assert image.metadata["photometric"] == "PALETTE COLOR" and image.shape == (600, 800)
    assert 0.0 <= image.array.min() and image.array.max() <= 1.0 and image.array.std() > 0.05


# ----------------------------------------------------------------------------- transfer syntaxes


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_expb.dcm",
        "MR_small_implicit.dcm",
    ],
)
def test_lossless_transfer_syntaxes_decode_to_the_uncompressed_values(name: str) -> None:
    reference = read_dicom(bundled("MR_small.dcm"), window=None).array
    np.testing.assert_array_equal(read_dicom(bundled(name), window=None).array, reference)


@pytest.mark.parametrize(
    ("compressed", "uncompressed"),
    [
        ("693_J2KR.dcm", "693_UNCR.dcm"),
        ("RG1_J2KR.dcm", "RG1_UNCR.dcm"),
        ("MR2_J2KR.dcm", "MR2_UNCR.dcm"),
        ("US1_J2KR.dcm", "US1_UNCR.dcm"),
    ],
)
def test_jpeg2000_lossless_matches_uncompressed(compressed: str, uncompressed: str) -> None:
    a = read_dicom(extra(compressed), window=None).array
    b = read_dicom(extra(uncompressed), window=None).array
    np.testing.assert_array_equal(a, b)


def test_lossy_and_lossless_jpeg_variants_decode() -> None:
    files = [bundled(n) for n in ("JPEGLSNearLossless_16.dcm", "JPGExtended.dcm", "JPEG2000.dcm")]
    files.append(extra("JPGLosslessP14SV1_1s_1f_8b.dcm"))
    for path in files:
        image = read_dicom(path)
        assert np.isfinite(image.array).all() and 0 <= image.array.min() <= image.array.max() <= 1
        assert image.array.std() > 0.01, path.name


# ----------------------------------------------------------------------------- multi-frame


def test_multiframe_without_geometry_is_a_frame_stack_and_frame_selects_one() -> None:
    path = extra("emri_small.dcm")
    frames = pydicom.dcmread(path).pixel_array
    volume = read_dicom(path, window=None)
    assert volume.shape == (10, 64, 64) and volume.affine is None
    np.testing.assert_array_equal(volume.array, frames.astype(np.float32))
    one = read_dicom(path, window=None, frame=3)
    assert one.shape == (64, 64) and one.metadata["frame"] == 3
    np.testing.assert_array_equal(one.array, frames[3].astype(np.float32))
    assert one.metadata["image_id"] != volume.metadata["image_id"]
    with pytest.raises(ImageReadError, match="frame 10 out of range"):
        read_dicom(path, frame=10)


def test_enhanced_ct_uses_functional_groups_for_rescale_and_geometry() -> None:
    path = extra("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    assert "RescaleIntercept" not in ds  # only inside the functional groups
    volume = read_dicom(path, window=None)
    assert volume.shape == (2, 512, 512) and volume.affine is not None
    assert volume.array.min() == -1024.0  # HU: the intercept of the functional group was applied
    positions = [
        float(item.PlanePositionSequence[0].ImagePositionPatient[2]) for item in ds.PerFrameFunctionalGroupsSequence
    ]
    assert volume.spacing[0] == pytest.approx(abs(positions[1] - positions[0]))
    # voxel (d, 0, 0) sits at the frame's position (LPS -> RAS flips x and y)
    world = volume.affine @ np.array([0, 0, 0, 1.0])
    lowest = min(ds.PerFrameFunctionalGroupsSequence, key=lambda f: f.PlanePositionSequence[0].ImagePositionPatient[2])
    assert world[2] == pytest.approx(float(lowest.PlanePositionSequence[0].ImagePositionPatient[2]), abs=1e-3)


def test_rt_dose_is_scaled_to_gray() -> None:
    ds = pydicom.dcmread(bundled("rtdose.dcm"))
    dose = read_dicom(bundled("rtdose.dcm"), window=None)
    assert dose.shape == (15, 10, 10) and dose.affine is not None
    assert dose.array.max() == pytest.approx(ds.pixel_array.max() * float(ds.DoseGridScaling), rel=1e-5)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the very defects tested here
@pytest.mark.parametrize(
    ("path", "reason"),
    [
        (lambda: bundled("MR_truncated.dcm"), "pixel data truncated"),
        (lambda: bundled("rtplan.dcm"), "no pixel data"),
        (lambda: bundled("reportsi.dcm"), "no pixel data"),
        (lambda: bundled("README.txt"), "unrecognised format"),
        (lambda: bundled("badVR.dcm"), "could not be decoded"),
        (lambda: extra("liver.dcm"), "Segmentation"),
        (lambda: extra("emri_small_jpeg_2k_lossless_too_short.dcm"), "truncated"),
    ],
)
def test_bad_files_raise_image_read_error_naming_file_and_reason(path, reason: str) -> None:
    file = path()
    with pytest.raises(ImageReadError) as info:
        load_image(file)
    error = info.value
    assert isinstance(error, ValueError)
    assert error.path == str(file) and reason in error.reason
    assert str(file) in str(error) and reason in str(error)


def test_truncated_copy_of_a_good_file(tmp_path: Path) -> None:
    data = bundled("CT_small.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated"):
        load_image(cut)


def test_missing_file_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="not found"):
        load_image(tmp_path / "nope.dcm")
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty file"):
        load_image(empty)


def test_constant_image_is_an_error(tmp_path: Path) -> None:
    ds = pydicom.dcmread(bundled("CT_small.dcm"))
    ds.PixelData = np.full((128, 128), 7, dtype=np.int16).tobytes()
    path = tmp_path / "flat.dcm"
    ds.save_as(path)
    with pytest.raises(ImageReadError, match="constant image"):
        load_image(path, window=None)


def test_error_is_picklable_for_worker_processes() -> None:
    error = ImageReadError("/x/y.dcm", "no pixel data")
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.path, clone.reason, str(clone)) == (error.path, error.reason, str(error))


# ----------------------------------------------------------------------------- detection


def test_dicom_without_preamble_or_extension(tmp_path: Path) -> None:
    data = bundled("MR_small.dcm").read_bytes()
    assert data[128:132] == b"DICM"
    bare = tmp_path / "IMG0001"
    bare.write_bytes(data[132:])  # file meta group first, no preamble, no extension
    image = load_image(bare, window=None)
    np.testing.assert_array_equal(image.array, read_dicom(bundled("MR_small.dcm"), window=None).array)


def test_dicom_without_file_meta_uses_the_encoding_it_was_read_with() -> None:
    image = load_image(extra("OT-PAL-8-face.dcm"))
    assert image.shape == (480, 640) and image.metadata["transfer_syntax"] == "Implicit VR Little Endian"


# ----------------------------------------------------------------------------- metadata / PHI


def test_safe_metadata_works_on_header_only_reads_and_never_leaks_phi() -> None:
    path = bundled("CT_small.dcm")
    full = pydicom.dcmread(path)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    meta = safe_metadata(header, salt="site-salt")
    assert meta == safe_metadata(full, salt="site-salt")
    assert meta["study_id"] == hash_identifier(full.StudyInstanceUID, "site-salt")
    assert meta["image_id"] == hash_identifier(full.SOPInstanceUID, "site-salt")
    assert meta["patient_id"] == hash_identifier(full.PatientID, "site-salt")
    assert safe_metadata(header, salt="other")["study_id"] != meta["study_id"]
    image = load_image(path, salt="site-salt")
    text = json.dumps(image.metadata)  # metadata is JSON-serialisable
    for keyword in (
        "PatientName",
        "PatientID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "StudyDate",
        "AccessionNumber",
        "InstitutionName",
        "PatientBirthDate",
    ):
        value = str(full.get(keyword, "") or "")
        if len(value) >= 4:
            assert value not in text, keyword


def test_bits_stored_masks_unused_high_bits(tmp_path: Path) -> None:
    # 12-bit unsigned data with garbage (e.g. an old-style overlay plane) in bit 15
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    values = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4000).astype(np.uint16)
    dirty = values | np.uint16(0x8000) * (np.arange(64)[None, :] % 2 == 0).astype(np.uint16)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = dirty.astype(np.uint16).tobytes()
    for keyword in ("WindowCenter", "WindowWidth", "SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in ds:
            del ds[keyword]
    path = tmp_path / "overlay_bits.dcm"
    ds.save_as(path)
    image = read_dicom(path, window=None)
    np.testing.assert_array_equal(image.array, values.astype(np.float32))
    assert image.metadata["bits_stored"] == 12


def test_empty_modality_lut_sequence_falls_back_to_identity(tmp_path: Path) -> None:
    """An anonymiser's empty Modality LUT Sequence (LUT Descriptor None) no longer refuses the file (issue 11.7)."""
    source = extra("mlut_18.dcm")
    ds = pydicom.dcmread(source)
    stored = ds.pixel_array.astype(np.float32)
    ds.ModalityLUTSequence[0].LUTDescriptor = None
    ds.save_as(tmp_path / "empty_mlut.dcm")
    image = load_image(tmp_path / "empty_mlut.dcm", window=None)
    np.testing.assert_array_equal(image.array, stored)  # identity: no rescale in this file
    assert "identity" in image.metadata["modality_lut"]
    assert load_image(tmp_path / "empty_mlut.dcm").array.max() == 1.0  # windowing works too
    # the intact file still goes through its LUT, and says nothing about it
    original = pydicom.dcmread(source)
    intact = load_image(source, window=None)
    np.testing.assert_allclose(intact.array, apply_modality_lut(original.pixel_array, original))
    assert "modality_lut" not in intact.metadata


def test_12bit_jpeg_extended_through_gdcm() -> None:
    """JPEG-lossy.dcm (12-bit JPEG Extended) decodes through GDCM's reader to pydicom's reference values (11.8)."""
    pytest.importorskip("gdcm", reason="python-gdcm not installed")
    image = load_image(bundled("JPEG-lossy.dcm"), window=None)
    assert image.shape == (1024, 256)
    assert (image.array[420, 140], image.array[230, 120]) == (244.0, 95.0)  # pydicom's GDCM test values
    # the same image stored as conformant 12-bit JPEG Extended (decoded by pylibjpeg) agrees closely
    reference = pydicom.dcmread(bundled("JPGExtended.dcm")).pixel_array.astype(np.float32)
    assert np.abs(image.array - reference).mean() < 0.05


def test_gzip_compressed_dicom(tmp_path: Path, monkeypatch) -> None:
    """A .dcm.gz (pydicom's zipMR.gz is MR_small.dcm gzipped) reads, indexes and series like plain DICOM (11.8)."""
    import gzip
    import shutil

    from medclip.data.indexer import index_export
    from medclip.io import dicom_limits, read_dicom_series

    plain = load_image(bundled("MR_small.dcm"), window=None)
    zipped = load_image(bundled("zipMR.gz"), window=None)
    np.testing.assert_array_equal(zipped.array, plain.array)
    assert zipped.metadata["image_id"] == plain.metadata["image_id"]

    export = tmp_path / "export" / "study"
    export.mkdir(parents=True)
    shutil.copy(bundled("zipMR.gz"), export / "mr.dcm.gz")
    res = index_export(export.parent, tmp_path / "m.parquet", salt="s", workers=1, progress=False)
    assert len(res.manifest) == 1 and not res.skipped
    assert res.manifest.iloc[0]["rows"] == 64 and res.manifest.iloc[0]["modality"] == "MR"

    # a series of two gzipped slices (the same slice shifted by one spacing) assembles like plain files
    series = tmp_path / "series"
    series.mkdir()
    for k in range(2):
        ds = pydicom.dcmread(bundled("MR_small.dcm"))
        ds.ImagePositionPatient = [
            float(v) + (k * 5.0 if i == 2 else 0.0) for i, v in enumerate(ds.ImagePositionPatient)
        ]
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{k}"
        buffer = __import__("io").BytesIO()
        ds.save_as(buffer)
        (series / f"s{k}.dcm.gz").write_bytes(gzip.compress(buffer.getvalue()))
    assert read_dicom_series(series, window=None).shape[0] == 2

    # a gzip bomb is refused, not inflated
    monkeypatch.setattr(dicom_limits, "MAX_GZIP_DICOM_BYTES", 2_000)
    with pytest.raises(ImageReadError, match="inflates to more than"):
        load_image(bundled("zipMR.gz"))
