"""A DICOM upload reaches the model as the cache would give it: VOI LUT kept, .dcm.gz checked like .dcm."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medclip.demo import UploadError, UploadLimits, read_upload
from medclip.io import read_dicom
from medclip.io.windowing import to_model_input
from medclip.model.preprocess import PreprocessConfig, preprocess

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _pydicom_data(name: str) -> Path:
    """A file of the pydicom-data package (never downloads); skips cleanly without it."""
    try:
        import data_store
    except ImportError:
        pytest.skip("pydicom-data not installed")
    path = Path(data_store.__file__).parent / "data" / name
    if not path.is_file():
        pytest.skip(f"pydicom-data file {name} not installed")
    return path


def test_an_image_read_as_modality_values_keeps_its_voi_lut_for_the_model() -> None:
    path = _pydicom_data("vlut_04.dcm")  # a real file with a VOI LUT Sequence
    auto = read_dicom(path)
    assert auto.metadata["window"] == "voi_lut"
    raw = read_dicom(path, window=None)
    assert raw.metadata["window"] is None and raw.voi_lut is not None
    np.testing.assert_array_equal(to_model_input(raw, 64), to_model_input(auto, 64))
    # the demo reads uploads as modality values; under "auto" the model sees what a cache built with "auto" holds
    cfg = PreprocessConfig(image_size=64, window="auto")
    np.testing.assert_array_equal(preprocess(read_upload(path).image, cfg), preprocess(auto, cfg))
    # a named window still wins over the file's LUT
    assert not np.array_equal(to_model_input(raw, 64, window=(128, 64)), to_model_input(auto, 64))
    # the kept LUT is a table, not the header
    assert not any(isinstance(v, pydicom.Dataset) for v in vars(raw.voi_lut).values())


def test_a_gzipped_dicom_upload_meets_the_pixel_limit_before_decoding(tmp_path: Path) -> None:
    source = PYDICOM_FILES / "CT_small.dcm"  # 128 x 128
    packed = tmp_path / "study.dcm.gz"
    with open(source, "rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert read_upload(packed).image.shape == (128, 128)  # within the default limits it reads
    with pytest.raises(UploadError, match="exceeds the limit"):
        read_upload(packed, limits=UploadLimits(max_pixels=100 * 100))
