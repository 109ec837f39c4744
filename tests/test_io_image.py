"""The MedicalImage contract and the ImageReadError type."""

from __future__ import annotations

import numpy as np
import pytest

from medclip.io import ImageReadError, MedicalImage


def test_medical_image_normalises_and_validates() -> None:
    image = MedicalImage(array=np.arange(12, dtype=np.int16).reshape(3, 4), spacing=(0.5, 2), source="a.dcm")
    assert image.array.dtype == np.float32 and image.spacing == (0.5, 2.0)
    assert not image.is_volume and image.shape == (3, 4) and image.affine is None and image.metadata == {}
    assert "shape=(3, 4)" in repr(image) and "a.dcm" in repr(image)
    volume = MedicalImage(array=np.zeros((2, 3, 4), np.float32), spacing=(1, 1, 1), affine=np.eye(4))
    assert volume.is_volume and volume.affine.dtype == np.float64
    with pytest.raises(ValueError, match="2D"):
        MedicalImage(array=np.zeros(5), spacing=(1,))
    with pytest.raises(ValueError, match="spacing"):
        MedicalImage(array=np.zeros((2, 2)), spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="4x4"):
        MedicalImage(array=np.zeros((2, 2)), spacing=(1, 1), affine=np.eye(3))


def test_image_read_error_is_a_value_error_with_path_and_reason() -> None:
    error = ImageReadError("/data/x.dcm", "no pixel data")
    assert isinstance(error, ValueError)
    assert (error.path, error.reason) == ("/data/x.dcm", "no pixel data")
    assert str(error) == "cannot read image '/data/x.dcm': no pixel data"
