"""Volumes: DICOM series assembly (real GE fMRI series vs dcm2niix), NIfTI, the axis order, resampling."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.testing import data_path as NIBABEL_DATA

from medclip.io import ImageReadError, MedicalImage, find_dicom_series, load_image, read_dicom_series, read_nifti
from medclip.io.volume import canonical_volume, resample_volume

CT_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"


@pytest.fixture(scope="module")
def nih(shared_dir: Path) -> Path:
    path = shared_dir / "data" / "dicom_series_nih"
    if not (path / "In" / "20180918GE").is_dir():
        pytest.skip("dicom_series_nih not in shared data")
    return path


def ge_folders(nih: Path) -> dict[int, tuple[Path, Path]]:
    """SeriesNumber -> (DICOM folder, dcm2niix reference NIfTI), matched through the JSON sidecars."""
    refs = {}
    for sidecar in sorted((nih / "Ref").glob("*.json")):
        info = json.loads(sidecar.read_text())
        if info.get("Manufacturer") == "GE":
            refs[int(info["SeriesNumber"])] = sidecar.with_suffix(".nii")
    pairs = {}
    for folder in sorted((nih / "In" / "20180918GE").glob("mr_*")):
        first = next(folder.glob("*.dcm"))
        number = int(pydicom.dcmread(first, stop_before_pixels=True).SeriesNumber)
        if number in refs:
            pairs[number] = (folder, refs[number])
    return pairs


# ----------------------------------------------------------------------------- real series


def test_ge_fmri_series_assemble_to_the_dcm2niix_volumes(nih: Path) -> None:
    pairs = ge_folders(nih)
    assert sorted(pairs) == [4, 5, 6, 7]  # folder mr_000N holds SeriesNumber N
    for number, (folder, reference) in pairs.items():
        ref = nib.load(reference)
        assert ref.shape == (64, 64, 15, 10)
        canon = nib.as_closest_canonical(ref)
        for k in (0, 9):
            volume = read_dicom_series(folder, window=None, volume_index=k)
            expected = np.asarray(canon.dataobj[..., k], dtype=np.float32).transpose(2, 1, 0)
            assert volume.shape == (15, 64, 64), number
            np.testing.assert_array_equal(volume.array, expected)
            # (d, h, w) -> RAS equals the canonical reference affine applied to (w, h, d)
            index = np.array([[d, h, w, 1.0] for d, h, w in [(0, 0, 0), (14, 63, 0), (7, 10, 50)]])
            ours = index @ volume.affine.T
            theirs = index[:, [2, 1, 0, 3]] @ canon.affine.T
            np.testing.assert_allclose(ours, theirs, atol=1e-3)
            assert volume.spacing == pytest.approx((5.0, 3.75, 3.75))  # 5 mm from positions, not SliceThickness 3
            meta = volume.metadata
            assert (meta["volumes"], meta["volume_index"], meta["slices"], meta["files"]) == (10, k, 15, 150)
        # read_nifti of the reference agrees with the series, as the contract promises
        np.testing.assert_array_equal(read_nifti(reference, window=None, volume_index=9).array, volume.array)


def test_siemens_mosaic_series_match_dcm2niix(nih: Path) -> None:
    refs = {}
    for sidecar in sorted((nih / "Ref").glob("*.json")):
        info = json.loads(sidecar.read_text())
        if info.get("Manufacturer") == "Siemens":
            refs[int(info["SeriesNumber"])] = sidecar.with_suffix(".nii")
    folders = sorted((nih / "In" / "20180918Si").glob("mr_*"))
    assert len(folders) == 4
    for folder in folders:
        number = int(pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True).SeriesNumber)
        reference = refs[number]
        for k in (0, 1):  # each mosaic file is one time point of 5 slices
            volume = read_dicom_series(folder, window=None, volume_index=k)
            expected = read_nifti(reference, window=None, volume_index=k)
            assert volume.shape == (5, 72, 72) and volume.metadata["mosaic"]
            np.testing.assert_array_equal(volume.array, expected.array)
            np.testing.assert_allclose(volume.affine, expected.affine, atol=1e-4)
            assert volume.spacing == pytest.approx((12.0, 3.0, 3.0))
        with pytest.raises(ImageReadError, match="2 mosaic volumes"):
            load_image(folder)
    one_file = load_image(next(folders[0].glob("*.dcm")))  # a single mosaic file is a volume too
    assert one_file.shape == (5, 72, 72)


def test_4d_series_requires_a_volume_index(nih: Path) -> None:
    folder, _ = ge_folders(nih)[4]
    with pytest.raises(ImageReadError, match="10 volumes of 15 slices"):
        load_image(folder)
    image = load_image(folder, frame=2)  # load_image's frame picks the volume of 4D data
    assert image.shape == (15, 64, 64) and image.metadata["window"] == "percentile"
    assert 0.0 <= image.array.min() and image.array.max() <= 1.0
    with pytest.raises(ImageReadError, match="out of range"):
        read_dicom_series(folder, volume_index=10)


def test_series_from_a_file_list_and_its_errors(nih: Path) -> None:
    pairs = ge_folders(nih)
    folder = pairs[4][0]
    files = sorted(folder.glob("*.dcm"), key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber))
    first_volume = files[:15]  # instance numbers 1..15: the first time point
    volume = read_dicom_series(first_volume, window=None)
    np.testing.assert_array_equal(volume.array, read_dicom_series(folder, window=None, volume_index=0).array)
    assert volume.metadata["volumes"] == 1

    with pytest.raises(ImageReadError, match="not uniform"):
        read_dicom_series(first_volume[:7] + first_volume[8:])  # a missing slice
    with pytest.raises(ImageReadError, match="repeat unevenly"):
        read_dicom_series(files[:-1])  # 4D series missing one file
    mixed = first_volume + sorted(pairs[5][0].glob("*.dcm"))[:15]
    with pytest.raises(ImageReadError, match="2 series found"):
        read_dicom_series(mixed)
    groups = find_dicom_series(mixed)
    assert sorted(len(v) for v in groups.values()) == [15, 15]
    chosen = read_dicom_series(mixed, series_id=volume.metadata["series_id"], window=None)
    np.testing.assert_array_equal(chosen.array, volume.array)


def test_folder_with_non_dicom_files_is_read(nih: Path, tmp_path: Path) -> None:
    folder = ge_folders(nih)[4][0]
    copy = tmp_path / "series"
    copy.mkdir()
    for path in sorted(folder.glob("*.dcm"))[:3]:
        shutil.copy(path, copy / path.name)
    (copy / "notes.txt").write_text("not an image")
    assert read_dicom_series(copy, window=None).shape[1:] == (64, 64)


# ----------------------------------------------------------------------------- synthetic geometry


def _write_stack(folder: Path, positions: list[list[float]], orientation=(1, 0, 0, 0, 1, 0)) -> list[Path]:
    """Copies of CT_small placed at the given Image Position (Patient)s, each slice a distinct value ramp."""
    folder.mkdir(exist_ok=True)
    ds = pydicom.dcmread(CT_SMALL)
    paths = []
    for k, position in enumerate(positions):
        ds.ImagePositionPatient = position
        ds.ImageOrientationPatient = list(orientation)
        ds.InstanceNumber = k + 1
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[str(k)])
        pixels = ds.pixel_array.copy()
        pixels[0, 0] = 1000 + k  # marks which file a slice came from
        ds.PixelData = pixels.tobytes()
        path = folder / f"slice{k:03d}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths


def test_slices_are_sorted_by_position_not_by_file_order(tmp_path: Path) -> None:
    # written out of order, z = 4, 0, 2 mm
    paths = _write_stack(tmp_path / "s", [[0, 0, 4.0], [0, 0, 0.0], [0, 0, 2.0]])
    volume = read_dicom_series(paths, window=None)
    assert volume.shape == (3, 128, 128) and volume.spacing[0] == pytest.approx(2.0)
    # D runs inferior -> superior. The marker sits at DICOM (row 0, col 0): the most anterior row and the
    # most patient-right column of an axial slice. H runs posterior->anterior, so row 0 is the last H; W runs
    # left->right while DICOM columns run toward patient left (+x in LPS), so column 0 is the last W too.
    markers = volume.array[:, -1, -1]
    np.testing.assert_array_equal(markers, [1000 + 1 - 1024, 1000 + 2 - 1024, 1000 + 0 - 1024])
    world = volume.affine @ np.array([2, 0, 0, 1.0])
    assert world[2] == pytest.approx(4.0)


def test_localizer_in_the_series_is_skipped(tmp_path: Path) -> None:
    paths = _write_stack(tmp_path / "s", [[0, 0, 0.0], [0, 0, 2.0], [0, 0, 4.0]])
    scout = _write_stack(tmp_path / "l", [[0, 0, 9.0]], orientation=(0, 1, 0, 0, 0, -1))[0]
    ds = pydicom.dcmread(scout)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.save_as(scout)
    volume = read_dicom_series(paths + [scout], window=None)
    assert volume.shape == (3, 128, 128) and volume.metadata["skipped_localizers"] == 1


def test_inconsistent_orientation_is_an_error(tmp_path: Path) -> None:
    paths = _write_stack(tmp_path / "a", [[0, 0, 0.0], [0, 0, 2.0]])
    paths += _write_stack(tmp_path / "b", [[0, 0, 4.0]], orientation=(0, 1, 0, 0, 0, -1))
    with pytest.raises(ImageReadError, match="different orientations"):
        read_dicom_series(paths)


def test_tilted_stack_keeps_the_true_slice_step(tmp_path: Path) -> None:
    # gantry tilt: each slice shifted 0.5 mm in y per 2 mm in z
    paths = _write_stack(tmp_path / "t", [[0, 0.5 * k, 2.0 * k] for k in range(4)])
    volume = read_dicom_series(paths, window=None)
    # Image Position (Patient) of the last slice is LPS (0, 1.5, 6)
    corner = volume.affine @ np.array([3, volume.shape[1] - 1, volume.shape[2] - 1, 1.0])  # (row 0, col 0) of slice 3
    np.testing.assert_allclose(corner[:3], [0.0, -1.5, 6.0], atol=1e-6)  # RAS = (-x, -y, z) of LPS


def test_canonical_volume_matches_nibabel_as_closest_canonical() -> None:
    rng = np.random.default_rng(0)
    data = rng.random((5, 6, 7)).astype(np.float32)
    affine = np.array([[0, 0, -2.0, 10], [-1.5, 0, 0, 20], [0, 3.0, 0, -5], [0, 0, 0, 1]])
    array, out_affine, spacing = canonical_volume(data, affine)
    canon = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    np.testing.assert_array_equal(array, np.asarray(canon.dataobj).transpose(2, 1, 0))
    assert spacing == pytest.approx(canon.header.get_zooms()[::-1])
    assert nib.aff2axcodes(out_affine) == ("S", "A", "R")


# ----------------------------------------------------------------------------- NIfTI


@pytest.mark.parametrize("name", ["anatomical.nii", "standard.nii.gz", "example_nifti2.nii.gz"])
def test_nifti_is_canonical_ras_with_axes_reversed(name: str) -> None:
    path = Path(NIBABEL_DATA) / name
    canon = nib.as_closest_canonical(nib.load(path))
    is_4d = len(canon.shape) == 4
    expected = np.asarray(canon.dataobj[..., 0] if is_4d else canon.dataobj, dtype=np.float32)
    image = read_nifti(path, window=None, volume_index=0 if is_4d else None)
    assert image.is_volume
    np.testing.assert_allclose(image.array, expected.transpose(2, 1, 0))
    assert image.spacing == pytest.approx(tuple(canon.header.get_zooms()[:3])[::-1], rel=1e-5)
    assert nib.aff2axcodes(image.affine) == ("S", "A", "R")
    np.testing.assert_allclose(image.affine @ [1, 2, 3, 1], canon.affine @ [3, 2, 1, 1], atol=1e-5)


def test_nifti_4d_needs_a_volume_index() -> None:
    path = Path(NIBABEL_DATA) / "example4d.nii.gz"
    n = nib.load(path).shape[3]
    with pytest.raises(ImageReadError, match=f"4D NIfTI with {n} volumes"):
        load_image(path)
    last = load_image(path, frame=n - 1, window=None)
    canon = nib.as_closest_canonical(nib.load(path))
    np.testing.assert_allclose(last.array, np.asarray(canon.dataobj[..., n - 1], dtype=np.float32).transpose(2, 1, 0))
    assert last.metadata["volumes"] == n


def test_nifti_scaling_nan_handling_and_single_slice(tmp_path: Path) -> None:
    raw = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    img = nib.Nifti1Image(raw, np.diag([2.0, 2.0, 3.0, 1.0]))
    img.header.set_slope_inter(2.0, -5.0)
    path = tmp_path / "scaled.nii.gz"
    nib.save(img, path)
    image = load_image(path, window=None)
    np.testing.assert_allclose(image.array, (raw * 2.0 - 5.0).transpose(2, 1, 0))
    assert image.spacing == (3.0, 2.0, 2.0)

    data = np.random.default_rng(1).random((8, 8, 4)).astype(np.float32)
    data[0, :, :] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii")
    with_nan = load_image(tmp_path / "nan.nii")
    assert with_nan.metadata["nonfinite_voxels"] == 32 and np.isfinite(with_nan.array).all()
    nib.save(nib.Nifti1Image(np.full((4, 4, 2), np.nan, np.float32), np.eye(4)), tmp_path / "allnan.nii")
    with pytest.raises(ImageReadError, match="NaN"):
        load_image(tmp_path / "allnan.nii")

    nib.save(nib.Nifti1Image(data[:, :, :1].copy(), np.eye(4)), tmp_path / "slice.nii")
    flat = load_image(tmp_path / "slice.nii")
    assert flat.shape == (8, 8) and not flat.is_volume


def test_nifti_hdr_img_pair(tmp_path: Path) -> None:
    data = np.random.default_rng(2).random((6, 5, 4)).astype(np.float32)
    nib.save(nib.Nifti1Pair(data, np.eye(4)), tmp_path / "pair.hdr")
    assert (tmp_path / "pair.img").is_file()
    np.testing.assert_allclose(load_image(tmp_path / "pair.hdr", window=None).array, data.transpose(2, 1, 0))
    (tmp_path / "pair.img").unlink()
    with pytest.raises(ImageReadError, match="pair is missing"):
        load_image(tmp_path / "pair.hdr")


def test_truncated_nifti_is_an_image_read_error(tmp_path: Path) -> None:
    data = (Path(NIBABEL_DATA) / "anatomical.nii").read_bytes()
    cut = tmp_path / "cut.nii"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated|unreadable"):
        load_image(cut)


# ----------------------------------------------------------------------------- resampling


def test_resample_keeps_world_coordinates() -> None:
    data = np.zeros((20, 30, 40), dtype=np.float32)
    data[12, 9, 30] = 1000.0  # a bright point
    affine = np.array([[0, 0, 1.0, -20], [0, 2.0, 0, -30], [4.0, 0, 0, -40], [0, 0, 0, 1]])
    image = MedicalImage(array=data, spacing=(4.0, 2.0, 1.0), affine=affine, metadata={}, source="synthetic")
    point = affine @ np.array([12, 9, 30, 1.0])

    out = resample_volume(image, spacing=(2.0, 2.0, 2.0), shape=None)
    assert out.shape == (40, 30, 20) and out.spacing == pytest.approx((2.0, 2.0, 2.0))
    found = out.affine @ np.array([*np.unravel_index(out.array.argmax(), out.shape), 1.0])
    assert np.abs(found - point).max() <= 2.0

    cropped = resample_volume(image, spacing=(2.0, 2.0, 2.0), shape=(32, 32, 16))
    assert cropped.shape == (32, 32, 16) and cropped.metadata["resampled_from"] == [20, 30, 40]
    found = cropped.affine @ np.array([*np.unravel_index(cropped.array.argmax(), cropped.shape), 1.0])
    assert np.abs(found - point).max() <= 2.0
    assert cropped.array[:, 30:, :].max() == 0.0  # padding uses the volume minimum


def test_resample_antialiases_when_downsampling() -> None:
    stripes = np.zeros((8, 64, 96), dtype=np.float32)
    stripes[:, :, ::3] = 1.0  # one-voxel lines every 3 voxels along W: mean 1/3
    image = MedicalImage(array=stripes, spacing=(1.0, 1.0, 1.0), affine=np.eye(4), metadata={}, source="x")
    smooth = resample_volume(image, spacing=(1.0, 1.0, 4.0), shape=None)
    assert smooth.shape == (8, 64, 24)
    assert np.abs(smooth.array[:, :, 2:-2] - 1 / 3).max() < 0.05
    aliased = resample_volume(image, spacing=(1.0, 1.0, 4.0), shape=None, antialias=False)
    assert np.abs(aliased.array - 1 / 3).max() > 0.15  # beat pattern without the low-pass


def test_antialias_blur_equals_scipy_gaussian_filter() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    import torch

    from medclip.io.volume import _gaussian_blur

    x = np.random.default_rng(1).random((6, 7, 40)).astype(np.float32)
    ours = _gaussian_blur(torch.from_numpy(x), [0.0, 0.8, 1.3]).numpy()
    theirs = ndimage.gaussian_filter1d(x, 0.8, axis=1, mode="nearest", truncate=3.0)
    theirs = ndimage.gaussian_filter1d(theirs, 1.3, axis=2, mode="nearest", truncate=3.0)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_resample_rejects_2d_and_bad_arguments() -> None:
    flat = MedicalImage(array=np.zeros((4, 4), np.float32), spacing=(1, 1), affine=None, metadata={}, source="x")
    with pytest.raises(ValueError, match="volume"):
        resample_volume(flat)
    vol = MedicalImage(array=np.zeros((4, 4, 4), np.float32), spacing=(1, 1, 1), affine=None, metadata={}, source="x")
    with pytest.raises(ValueError, match="spacing"):
        resample_volume(vol, spacing=(0, 1, 1))
