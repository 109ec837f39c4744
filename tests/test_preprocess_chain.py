"""What the model sees travels with it (issue 9.1): fit saves the cache's (or the data config's) preprocessing in
config.json, eval and the demo read it back, and the train config's text length cannot exceed the model's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_train_fit import one_torch_thread  # noqa: F401 (autouse fixture: one CPU thread)

pydicom = pytest.importorskip("pydicom")


def _ct_file() -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    if path is None:
        pytest.skip("pydicom's CT_small.dcm is not available")
    return Path(path)


@pytest.fixture(scope="module")
def ct_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CT export (pydicom's CT_small.dcm, HU values, no window in the file): 12 train and 4 val images."""
    from medclip.data.manifest import write_manifest

    root = tmp_path_factory.mktemp("ct_export")
    rows = []
    for k in range(16):
        path = root / f"study{k:02d}" / "slice.dcm"
        path.parent.mkdir()
        shutil.copy(_ct_file(), path)
        rows.append(
            {
                "image_id": f"img{k:02d}",
                "path": str(path),
                "kind": "image",
                "files": None,
                "patient_id": f"pat{k // 2:02d}",
                "study_id": f"study{k:02d}",
                "series_id": f"ser{k:02d}",
                "modality": "CT",
                "report_indication": "cough.",
                "report_findings": "There is a nodule. " * (1 + k % 3),
                "report_impression": "Nodule.",
                "report_text": "Findings: nodule.",
                "split": "val" if k >= 12 else "train",
                "label.nodule": 1.0 if k % 2 else 0.0,
            }
        )
    df = pd.DataFrame(rows)
    df["label.nodule"] = df["label.nodule"].astype("float32")
    return write_manifest(df, root / "manifest.parquet", root=root)


def _fit_config(source: dict, out: Path, **data) -> dict:
    return {
        "seed": 3,
        "output_dir": str(out),
        "data": {**source, "batch_size": 4, "num_workers": 0, "text_augmentation": False, **data},
        "model": {"name": "tiny-test", "overrides": {"vision": {"image_size": 32}}},
        "loss": {"name": "infonce"},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 2,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "limit_val_batches": 0,
        },
        "checkpoint": {"every_n_steps": None, "save_last": False},
    }


@pytest.mark.slow
def test_a_model_trained_on_a_lung_window_cache_is_evaluated_and_served_on_the_cache_pixels(
    ct_manifest: Path, tmp_path: Path
) -> None:
    from medclip.data.cache import CacheConfig, build_cache, iter_cache
    from medclip.data.manifest import read_manifest
    from medclip.demo.engine import TriageEngine
    from medclip.demo.uploads import read_upload
    from medclip.eval.runner import Evaluator
    from medclip.inference import load_model
    from medclip.train import fit

    cache = tmp_path / "cache"
    build_cache(
        ct_manifest, cache, config=CacheConfig(image_size=32, window="lung", shard_size=8), workers=1, progress=False
    )
    model_dir = fit(_fit_config({"cache_dir": str(cache)}, tmp_path / "run", max_text_tokens=48))

    saved = json.loads((model_dir / "config.json").read_text())["preprocess"]
    assert saved["window"] == "lung" and saved["image_size"] == 32 and saved["context_length"] == 48
    model = load_model(model_dir)
    assert model.context_length == 48  # eval and the demo tokenize as training did

    cached = {s["__key__"]: s["image"] for s in iter_cache(cache, "val")}
    frame = read_manifest(ct_manifest)
    frame = frame[frame["split"] == "val"].reset_index(drop=True)
    dataset = Evaluator(model, ct_manifest).dataset(frame)
    engine = TriageEngine.load(model_dir)
    for k, row in frame.iterrows():
        expected = torch.from_numpy(cached[row["image_id"]]).float().div(255.0)
        assert torch.equal(dataset[k]["image"][0], expected)
        view = engine.model_view(read_upload(row["path"]))
        assert np.array_equal(view, cached[row["image_id"]])
    # the file's own window ("auto", what eval and the demo used before) gives other pixels
    auto = engine.model_view(read_upload(frame.loc[0, "path"]), window="auto")
    assert not np.array_equal(auto, cached[frame.loc[0, "image_id"]])


@pytest.mark.slow
def test_a_manifest_run_records_the_data_configs_window_and_size(ct_manifest: Path, tmp_path: Path) -> None:
    from medclip.train import fit

    model_dir = fit(
        _fit_config(
            {"manifest": str(ct_manifest)}, tmp_path / "run", image_size=32, dataset_kwargs={"window": "-600,1500"}
        )
    )
    saved = json.loads((model_dir / "config.json").read_text())["preprocess"]
    assert saved["window"] == "-600,1500" and saved["image_size"] == 32 and saved["context_length"] == 128


def test_fit_refuses_more_text_tokens_than_the_model_takes(ct_manifest: Path, tmp_path: Path) -> None:
    from medclip.train import fit
    from medclip.train.config import ConfigError

    with pytest.raises(ConfigError, match="data.max_text_tokens = 512 is more than the model's text context length"):
        fit(_fit_config({"manifest": str(ct_manifest)}, tmp_path / "run", max_text_tokens=512))
    assert not (tmp_path / "run").exists()


def test_the_gallery_embeds_the_pixels_the_model_was_trained_on(
    ct_manifest: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from safetensors.torch import load_file

    from medclip.data.cache import CacheConfig, build_cache, preprocess_row
    from medclip.data.manifest import read_manifest
    from medclip.demo.gallery import GALLERY_EMBEDDINGS, GALLERY_TABLE, build_gallery
    from medclip.model import PreprocessConfig, create_model

    torch.manual_seed(0)
    model = create_model("tiny-test", vision={"image_size": 32}).eval()
    model.config.preprocess = PreprocessConfig(image_size=32, window="lung")
    out = build_gallery(model, ct_manifest, tmp_path / "gallery", split="val")
    ids = pd.read_parquet(out / GALLERY_TABLE)["image_id"].tolist()
    rows = read_manifest(ct_manifest).set_index("image_id")
    pixels = np.stack(
        [
            preprocess_row({**rows.loc[i].to_dict(), "image_id": i}, PreprocessConfig(image_size=32, window="lung"))
            for i in ids
        ]
    )
    with torch.no_grad():
        expected = model.encode_image(torch.from_numpy(pixels).float().div(255.0)[:, None], normalize=True)
    torch.testing.assert_close(load_file(str(out / GALLERY_EMBEDDINGS))["image"], expected)

    # a cache windowed otherwise than the model: built, with a warning that names both windows
    cache = tmp_path / "cache"
    build_cache(ct_manifest, cache, config=CacheConfig(image_size=32, shard_size=8), workers=1, progress=False)
    with caplog.at_level("WARNING", logger="medclip.demo.gallery"):
        build_gallery(model, cache, tmp_path / "gallery2", split="val")
    assert "windowed with 'auto', the model was trained with 'lung'" in caplog.text
