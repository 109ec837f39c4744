"""Windowing (against pydicom's reference implementation), presets, and the model input."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import apply_windowing

from medclip.io import WINDOW_PRESETS, MedicalImage, apply_window, to_model_input
from medclip.io.windowing import check_window, percentile_window, resize_to_square, window_image


def _reference(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """pydicom's windowing for 16-bit signed data, rescaled from its output range to [0, 1]."""
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsStored, ds.PixelRepresentation = 16, 1
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, width, function
    out = apply_windowing(values.astype(np.float64), ds)
    return (out + 2**15) / (2**16 - 1)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # pydicom's reference
@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize(("center", "width"), [(40.0, 400.0), (-600.0, 1500.0), (0.5, 2.0), (100.0, 1.0)])
def test_apply_window_matches_pydicom(function: str, center: float, width: float) -> None:
    if function != "LINEAR" and width == 1.0:
        width = 0.5
    values = np.linspace(-1200, 1200, 4801, dtype=np.float32)
    ours = apply_window(values, center, width, function=function)
    assert ours.dtype == np.float32 and ours.min() >= 0 and ours.max() <= 1
    np.testing.assert_allclose(ours, _reference(values, center, width, function), atol=2e-5)


def test_presets_and_window_validation() -> None:
    assert {"lung", "mediastinum", "bone", "brain", "abdomen", "soft_tissue"} <= set(WINDOW_PRESETS)
    for spec in ("auto", "lung", "Soft Tissue", (40, 400), None):
        check_window(spec)
    for bad in ("kidney", (40, 0), (np.nan, 10), "40,400", (1, 2, 3)):
        with pytest.raises(ValueError):
            check_window(bad)
    with pytest.raises(ValueError, match="width"):
        apply_window(np.zeros(3), 0, 0.5)


def test_window_image_order_of_precedence_and_monochrome1() -> None:
    values = np.arange(100, dtype=np.float32).reshape(10, 10)
    lut = lambda v: v / 99.0  # noqa: E731 - a stand-in VOI LUT
    out, used = window_image(values, "auto", voi_lut=lut, file_window=(50, 20, "LINEAR"))
    assert used["window"] == "voi_lut"
    np.testing.assert_allclose(out, values / 99.0)
    out, used = window_image(values, "auto", file_window=(50, 20, "LINEAR"))
    assert used == {"window": "file", "window_center": 50.0, "window_width": 20.0}
    out, used = window_image(values, "lung", file_window=(50, 20, "LINEAR"))
    assert used["window"] == "lung"  # an explicit window wins over the file
    out, used = window_image(values, "auto")
    assert used["window"] == "percentile"
    inverted, _ = window_image(values, "auto", monochrome1=True)
    np.testing.assert_allclose(inverted, 1.0 - out)
    unchanged, used = window_image(values, None, monochrome1=True)
    assert used["window"] is None and np.array_equal(unchanged, values)


def test_percentile_window_is_robust_to_hot_pixels() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(100, 10, size=(256, 256)).astype(np.float32)
    values[0, :50] = 60000  # dead/hot pixels and burned-in text
    center, width = percentile_window(values)
    assert 50 < center - width / 2 and center + width / 2 < 160
    assert percentile_window(np.full((4, 4), 3.0)) is None


def _image(array: np.ndarray, **metadata) -> MedicalImage:
    return MedicalImage(array=array, spacing=(1.0,) * array.ndim, metadata=metadata, source="test")


def test_to_model_input_letterboxes_without_cropping() -> None:
    wide = np.ones((100, 300), dtype=np.float32)
    out = to_model_input(_image(wide, window="file"), size=224)
    assert out.shape == (224, 224) and out.dtype == np.uint8
    rows = np.flatnonzero(out.max(axis=1))
    assert out[:, 0].max() == 255 and out[:, -1].max() == 255  # full width kept
    assert len(rows) in (74, 75) and rows[0] == (224 - len(rows)) // 2  # centred, black bars above/below
    tall = np.ones((300, 150), dtype=np.float32)
    assert to_model_input(_image(tall, window="file"), size=64)[:, :16].max() == 0


def test_to_model_input_windows_modality_values() -> None:
    hu = np.linspace(-1000, 1000, 64 * 64, dtype=np.float32).reshape(64, 64)
    image = _image(hu, window=None, file_window_center=0.0, file_window_width=2000.0, photometric="MONOCHROME2")
    out = to_model_input(image, size=64)
    assert out[0, 0] < 5 and out[-1, -1] > 250
    lung = to_model_input(image, size=64, window="lung")
    assert (lung == 255).mean() > (out == 255).mean()
    mono1 = _image(hu, window=None, photometric="MONOCHROME1")
    assert to_model_input(mono1, size=64)[0, 0] > 250  # inverted
    with pytest.raises(ValueError, match="needs a window"):
        to_model_input(image, window=None)
    with pytest.raises(ValueError, match="resample_volume"):
        to_model_input(_image(np.zeros((2, 4, 4), np.float32), window="file"))


def test_resize_is_antialiased() -> None:
    stripes = np.zeros((512, 512), dtype=np.float32)
    stripes[:, ::2] = 1.0  # one-pixel stripes alias to solid black or white without a low-pass
    small = resize_to_square(stripes, 64)
    assert np.abs(small - 0.5).max() < 0.05


def test_real_ct_through_the_model_input() -> None:
    from medclip.io import load_image

    path = pydicom.data.get_testdata_file("CT_small.dcm")  # bundled with pydicom, no download
    out = to_model_input(load_image(path, window="abdomen"), size=96)
    assert out.shape == (96, 96) and out.dtype == np.uint8 and out.std() > 10
