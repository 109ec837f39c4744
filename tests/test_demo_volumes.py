"""The demo serves 3D checkpoints: a CT/MR series (zip) or NIfTI upload -> the volume model, on real MR data.

Models are the bundled CT configs built tiny (random weights, pretrained false): a MONAI 3D ResNet and the
per-slice EfficientNet-Lite0 + attention pooling tower, with a tiny text tower.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_model_volumes import TINY_TEXT  # the tiny BERT text tower of the volume-tower tests

from medclip.demo.engine import TriageEngine
from medclip.demo.uploads import read_upload
from medclip.model import create_model

TINY_VISION = {
    "ct-resnet3d-minilm": {
        "image_size": [8, 32, 32],
        "name": "resnet10",
        "pretrained": False,
        "model_kwargs": {"conv1_t_stride": 2, "widen_factor": 0.25},
    },
    "ct-slices2d-lite0-minilm": {
        "image_size": [8, 32, 32],
        "name": "resnet10t",
        "pretrained": False,
        "slice_attention_dim": 16,
        "channels_last": False,
    },
}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def engine_for(config: str) -> TriageEngine:
    torch.manual_seed(0)
    model = create_model(config, pretrained=False, vision=TINY_VISION[config], text=TINY_TEXT).eval()
    assert model.config.vision.is_volume
    return TriageEngine(model, findings=["pleural_effusion", "pneumothorax", "cardiomegaly"])


@pytest.fixture(scope="module")
def nifti(shared_dir) -> Path:
    path = shared_dir / "data" / "dicom_series_nih" / "Ref" / "DCM2NIIX_regression_test_4.nii"
    if not path.is_file():
        pytest.skip("reference NIfTI not in shared data")
    return path


@pytest.fixture(scope="module")
def series_zip(shared_dir, tmp_path_factory) -> Path:
    """A real 4D GE MR series zipped as a user uploads it (the demo takes its first volume)."""
    folder = shared_dir / "data" / "dicom_series_nih" / "In" / "20180918GE" / "mr_0004"
    out = tmp_path_factory.mktemp("upload") / "series.zip"
    with zipfile.ZipFile(out, "w") as zf:
        for f in sorted(folder.glob("*.dcm")):
            zf.write(f, f"series/{f.name}")
    return out


@pytest.mark.parametrize("config", sorted(TINY_VISION))
def test_a_3d_checkpoint_triages_a_nifti_upload(config, nifti):
    engine = engine_for(config)
    study = read_upload(nifti)
    assert study.image.is_volume
    volume = engine.model_volume(study)
    assert volume.shape == (8, 32, 32) and volume.dtype == np.float16 and 0 <= volume.min() < volume.max() <= 1
    view, result = engine.triage(study)
    assert view.dtype == np.uint8 and view.shape == (32, 32)
    np.testing.assert_array_equal(view, np.round(volume[4].astype(np.float32) * 255).astype(np.uint8))
    assert [f.concept_id for f in result.findings] and all(np.isfinite(f.probability) for f in result.findings)
    # the embedding is the volume's: another window gives other features
    a = engine.encode(volume)
    b = engine.encode(engine.model_volume(study, window=(0.0, 50.0)))
    assert a.shape == (1, engine.model.config.embed_dim) and not torch.allclose(a, b)
    # the slider picks a slice of the upload, shown on the model's grid; prediction stays the whole volume
    last, again = engine.triage(study, slice_index=study.n_slices - 1)
    np.testing.assert_array_equal(last, np.round(volume[-1].astype(np.float32) * 255).astype(np.uint8))
    assert [f.probability for f in again.findings] == pytest.approx([f.probability for f in result.findings])


def test_a_3d_checkpoint_triages_a_zipped_dicom_series(series_zip):
    engine = engine_for("ct-resnet3d-minilm")
    study = read_upload(series_zip)
    assert study.kind == "dicom_series" and study.image.is_volume
    view, result = engine.triage(study, window="auto")
    assert view.shape == (32, 32) and view.std() > 0 and result.findings


def test_a_2d_upload_to_a_3d_checkpoint_says_what_to_upload(tmp_path):
    engine = engine_for("ct-resnet3d-minilm")
    png = tmp_path / "xray.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(png)
    with pytest.raises(ValueError, match="reads CT/MR volumes: upload a series"):
        engine.triage(read_upload(png))


def test_2d_checkpoints_are_served_as_before():
    torch.manual_seed(0)
    model = create_model("tiny-test", pretrained=False).eval()
    engine = TriageEngine(model, findings=["pleural_effusion"])
    assert not engine.is_volume
    from medclip.io import MedicalImage

    image = MedicalImage(
        array=np.random.default_rng(0).random((40, 50)).astype(np.float32),
        spacing=(1.0, 1.0),
        affine=None,
        metadata={"window": "custom"},
        source="x",
    )
    view, result = engine.triage(image)
    assert view.dtype == np.uint8 and view.ndim == 2 and result.findings
