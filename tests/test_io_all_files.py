"""Every file of pydicom's test data, pydicom-data, nibabel's test data and the shared X-ray samples.

Each one either loads into a sane MedicalImage or raises ImageReadError; nothing else is allowed.
Files known to be unreadable are listed with the reason they must give, so a regression that turns a
good file into an error (or changes why a bad file fails) is caught too.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from nibabel.testing import data_path as NIBABEL_DATA

from medclip.io import ImageReadError, load_image

PYDICOM_ROOT = Path(pydicom.__file__).parent / "data" / "test_files"
try:
    import data_store

    PYDICOM_DATA_ROOT: Path | None = Path(data_store.__file__).parent / "data"
except ImportError:  # pragma: no cover - optional test dependency
    PYDICOM_DATA_ROOT = None

#: file (relative to its collection) -> a fragment its ImageReadError reason must contain.
EXPECTED_ERRORS: dict[str, str] = {
    # DICOM objects without pixels: plans, structures, reports, directories, waveforms
    **{
        f"pydicom/{name}": "no pixel data"
        for name in (
            "ExplVR_BigEndNoMeta.dcm",
            "ExplVR_LitEndNoMeta.dcm",
            "UN_sequence.dcm",
            "empty_charset_LEI.dcm",
            "no_meta_group_length.dcm",
            "priv_SQ.dcm",
            "reportsi.dcm",
            "reportsi_with_empty_number_tags.dcm",
            "rtplan.dcm",
            "rtplan_truncated.dcm",
            "rtstruct.dcm",
            "test-SR.dcm",
            "waveform_ecg.dcm",
        )
    },
    "pydicom/MR_truncated.dcm": "pixel data truncated",
    # a delimiter inside the codestream corrupts its SIZ segment: refused before any decoder allocates
    "pydicom/JPEG2000-embedded-sequence-delimiter.dcm": "refused before decoding",
    "pydicom/badVR.dcm": "could not be decoded",
    "pydicom/meta_missing_tsyntax.dcm": "without a valid Rows",
    "pydicom/nested_priv_SQ.dcm": "without a valid Rows",
    "pydicom/liver_1frame.dcm": "Segmentation",
    "pydicom/liver_expb_1frame.dcm": "Segmentation",
    "pydicom/no_meta.dcm": "unrecognised format",
    "pydicom-data/liver.dcm": "Segmentation",
    "pydicom-data/liver_expb.dcm": "Segmentation",
    "pydicom-data/emri_small_jpeg_2k_lossless_too_short.dcm": "truncated",
    "nibabel/row_major.dconn.nii": "not a NIfTI image (Cifti2Image)",
    # Siemens mosaics whose tiles do not fit the matrix (256^2 image, 48 tiles of a 128 matrix)
    "nibabel/0.dcm": "Siemens mosaic could not be unpacked",
    "nibabel/1.dcm": "Siemens mosaic could not be unpacked",
    "nibabel/nifti1.hdr": "pair is missing",  # header-only test files
    "nibabel/nifti2.hdr": "pair is missing",
    # folders of DICOM files that do not form one regular volume
    "pydicom-folder/dicomdirtests/98892003/MR700": "different orientations",
    "pydicom-folder/dicomdirtests/98892001/CT2N": "different orientations",
    "pydicom-folder/dicomdirtests/77654033/CT2": "slice spacing is not uniform",
    "pydicom-folder/dicomdirtests/TINY_ALPHA/PT000000": "no DICOM image files",
    # 4D data needs an explicit volume index
    "nibabel/example4d.nii.gz": "4D NIfTI",
    "nibabel/functional.nii": "4D NIfTI",
    "nibabel/example_nifti2.nii.gz": "4D NIfTI",
}
try:  # 12-bit JPEG Extended: only GDCM's own reader decodes it (python-gdcm, medclip.io.dicom_codecs._gdcm_decode)
    import gdcm  # noqa: F401
except ImportError:
    EXPECTED_ERRORS["pydicom/JPEG-lossy.dcm"] = "no installed decoder"

#: Non-image companions (text, JSON, dumps, ICC profiles, DICOMDIRs, other formats) are expected to
#: fail with one of these reasons; they are too many to list one by one.
GENERIC_REASONS = (
    "unrecognised format",
    "no pixel data",
    "not a readable NIfTI",
    "series found",
    "no DICOM image files",
    "gzip file that holds neither",
)


def collections(shared: Path | None) -> dict[str, Path]:
    roots = {"pydicom": PYDICOM_ROOT, "nibabel": Path(NIBABEL_DATA)}
    if PYDICOM_DATA_ROOT is not None:
        roots["pydicom-data"] = PYDICOM_DATA_ROOT
    if shared is not None:
        roots["xray_samples"] = shared / "data" / "xray_samples"
    files: dict[str, Path] = {}
    for name, root in roots.items():
        if root.is_dir():
            for path in sorted(root.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    files[f"{name}/{path.relative_to(root).as_posix()}"] = path
    return files


@pytest.fixture(scope="module")
def all_files() -> dict[str, Path]:
    env = os.environ.get("MEDCLIP_SHARED")
    shared = Path(env) if env else Path(__file__).resolve().parents[2] / "shared"
    files = collections(shared if (shared / "data").is_dir() else None)
    # every path pydicom itself knows locally (pydicom + pydicom-data) is part of the walk; its
    # folders (DICOMDIR trees) are loaded too, as would-be series
    known = [Path(p) for p in pydicom.data.get_testdata_files()]
    assert {p.resolve() for p in known if p.is_file()} <= {p.resolve() for p in files.values()}
    for folder in (p for p in known if p.is_dir()):
        files[f"pydicom-folder/{folder.relative_to(PYDICOM_ROOT).as_posix()}"] = folder
    return files


#: Metadata every reader provides (the indexer and cache rely on them whatever the format).
COMMON_KEYS = {
    "format",
    "modality",
    "view_position",
    "body_part",
    "photometric",
    "rows",
    "columns",
    "frames",
    "bits_stored",
    "pixel_spacing",
    "image_id",
    "window",
    "window_center",
    "window_width",
}


def _check_image(key: str, image, windowed: bool) -> None:
    assert COMMON_KEYS <= set(image.metadata), (key, COMMON_KEYS - set(image.metadata))
    assert image.source, key
    array = image.array
    assert array.dtype == np.float32, key
    assert array.ndim in (2, 3) and min(array.shape) >= 1, key
    assert np.isfinite(array).all(), key
    assert len(image.spacing) == array.ndim and all(s > 0 for s in image.spacing), key
    if windowed:
        assert 0.0 <= array.min() and array.max() <= 1.0, key
        assert image.metadata["window"] is not None, key
    else:
        assert image.metadata["window"] is None, key


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_every_file_loads_or_raises_image_read_error(all_files: dict[str, Path]) -> None:
    loaded, failed = [], {}
    for key, path in all_files.items():
        try:
            image = load_image(path)
        except ImageReadError as error:
            # the error names the input, or for a folder the offending file inside it
            assert error.path.startswith(str(path)) and error.path in str(error), key
            failed[key] = error.reason
            continue
        # any other exception propagates and fails the test, naming the file via the traceback
        _check_image(key, image, windowed=True)
        if path.is_dir() or path.stat().st_size < 2_000_000:  # the few multi-MB files only once: test time
            _check_image(key, load_image(path, window=None), windowed=False)
        loaded.append(key)

    for key, fragment in EXPECTED_ERRORS.items():
        if key in all_files:
            assert key in failed, f"{key} should fail with {fragment!r} but loaded"
            assert fragment in failed[key], f"{key}: {failed[key]!r} lacks {fragment!r}"
    unexpected = {
        key: reason
        for key, reason in failed.items()
        if key not in EXPECTED_ERRORS and not any(fragment in reason for fragment in GENERIC_REASONS)
    }
    assert not unexpected, f"files that should load but raised: {unexpected}"
    # no image file hides among the 'generic' failures
    image_suffixes = (".png", ".jpg", ".jpeg")
    assert not [k for k in failed if k.lower().endswith(image_suffixes)], failed
    assert len(loaded) >= 150, f"only {len(loaded)} files loaded"
