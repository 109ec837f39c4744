"""CheckpointDir: the checkpoint folder's layout and the model fingerprint."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
from test_train_fit import _config, manifest, one_torch_thread  # noqa: F401 (fixtures)

from medclip.checkpoint import CheckpointDir, model_fingerprint
from medclip.model import ModelLoadError, create_model
from medclip.model.dual_encoder import CONFIG_NAME, WEIGHTS_NAME


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    model = create_model("tiny-test").eval()
    return model, CheckpointDir(model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "model"))


def test_layout_uses_the_model_file_names(saved) -> None:
    _, ckpt = saved
    assert ckpt.config.name == CONFIG_NAME and ckpt.weights.name == WEIGHTS_NAME and ckpt.is_model()
    assert [p.name for p in (ckpt.thresholds, ckpt.drafter, ckpt.gallery, ckpt.eval_dir)] == [
        "thresholds.json",
        "drafter",
        "gallery",
        "eval",
    ]
    assert ckpt.provenance.parent == ckpt.path
    # what the model sees lives in config.json ("preprocess"), not in a file of its own
    assert not hasattr(ckpt, "preprocess") and "preprocess" in json.loads(ckpt.config.read_text())
    assert ckpt.load_model().config.embed_dim == 32


def test_fingerprint_is_the_same_from_memory_and_file_and_cached(saved) -> None:
    model, ckpt = saved
    fp = ckpt.fingerprint()
    assert fp == model_fingerprint(model) == model_fingerprint(ckpt.load_model()) and len(fp) == 16
    cached = json.loads(ckpt.provenance.read_text())
    assert cached["model_fingerprint"] == fp and cached["weights"]["size"] == ckpt.weights.stat().st_size
    # the cached value is what is read back while the weights file is unchanged
    cached["model_fingerprint"] = "0" * 16
    ckpt.provenance.write_text(json.dumps(cached))
    assert ckpt.fingerprint() == "0" * 16
    os.utime(ckpt.weights)  # a touched (possibly rewritten) weights file is hashed again
    assert ckpt.fingerprint() == fp


def test_fingerprint_changes_with_any_weight(saved, tmp_path: Path) -> None:
    model, _ = saved
    other = create_model("tiny-test").eval()
    other.load_state_dict(model.state_dict())
    assert model_fingerprint(other) == model_fingerprint(model)
    with torch.no_grad():
        next(other.text.parameters()).view(-1)[0] += 1e-3  # a text-tower weight only
    assert model_fingerprint(other) != model_fingerprint(model)
    ckpt = CheckpointDir(tmp_path / "m")
    other.save_pretrained(ckpt.path)
    assert ckpt.fingerprint() == model_fingerprint(other)
    model.save_pretrained(ckpt.path)  # overwritten in place
    assert ckpt.fingerprint() == model_fingerprint(model)


def test_missing_folder_and_weights_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere: checkpoint folder not found"):
        CheckpointDir(tmp_path / "nowhere").load_model()
    with pytest.raises(ModelLoadError, match="model.safetensors missing"):
        CheckpointDir(tmp_path).fingerprint()
    assert not CheckpointDir(tmp_path).is_model()


def _derived_files(ckpt: CheckpointDir, manifest_path: str = "/data/manifest.parquet") -> None:
    """Thresholds, drafter, gallery and eval output as eval and the demo leave them beside a model."""
    from medclip.inference.thresholds import save_thresholds

    save_thresholds(ckpt.path, {"edema": 0.3}, validation={"manifest": manifest_path})
    for folder, name in (
        (ckpt.drafter, "drafter.json"),
        (ckpt.gallery, "gallery.json"),
        (ckpt.eval_dir, "metrics.json"),
    ):
        folder.mkdir()
        (folder / name).write_text(json.dumps({"source_path": "/data/cache"} if folder == ckpt.gallery else {}))


def test_a_replaced_model_sets_the_old_files_aside(saved, tmp_path: Path) -> None:
    model, _ = saved
    ckpt = CheckpointDir(model.save_pretrained(tmp_path / "model"))
    _derived_files(ckpt)
    old = ckpt.fingerprint()
    with ckpt.replacing_model():
        model.save_pretrained(ckpt.path)  # the same weights again: nothing is stale
    assert len(ckpt.derived()) == 4 and not ckpt.stale.exists()
    torch.manual_seed(3)
    with ckpt.replacing_model():
        create_model("tiny-test").save_pretrained(ckpt.path)
    assert ckpt.derived() == [] and ckpt.fingerprint() != old
    aside = ckpt.stale / old
    assert sorted(p.name for p in aside.iterdir()) == ["STALE.txt", "drafter", "eval", "gallery", "thresholds.json"]
    note = (aside / "STALE.txt").read_text()
    assert f"fingerprint {old}" in note and ckpt.fingerprint() in note
    assert f"medclip eval --checkpoint {ckpt.path} --manifest /data/manifest.parquet --save-to-checkpoint" in note
    assert f"medclip demo --checkpoint {ckpt.path} --build-gallery /data/cache" in note


@pytest.mark.slow
def test_fit_over_an_evaluated_model_marks_its_files_stale(tmp_path: Path, manifest: Path) -> None:  # noqa: F811
    """Regression (issue 12.5): after `medclip fit ... resume=last` overwrote a model, the old thresholds.json
    and eval/ stayed beside it unmarked (and the demo used them)."""
    from medclip.checkpoint import StaleFileError
    from medclip.inference.thresholds import load_operating_points
    from medclip.train import fit

    cfg = _config({"manifest": str(manifest)}, tmp_path / "run", max_steps=2)
    ckpt = CheckpointDir(fit(copy.deepcopy(cfg)))
    _derived_files(ckpt)
    first = ckpt.fingerprint()
    stale_thresholds = ckpt.thresholds.read_text()
    cfg.update(resume="last")
    cfg["trainer"]["max_steps"] = 4
    assert fit(cfg) == ckpt.path
    assert ckpt.derived() == [] and ckpt.fingerprint() != first
    assert (ckpt.stale / first / "thresholds.json").read_text() == stale_thresholds
    assert "replaced" in (ckpt.stale / first / "STALE.txt").read_text()
    # copied back by hand, the old operating points are still refused at load
    ckpt.thresholds.write_text(stale_thresholds)
    with pytest.raises(StaleFileError, match="another model"):
        load_operating_points(ckpt.path, ckpt.fingerprint())


def test_hub_ids_open_their_local_snapshot(saved, monkeypatch: pytest.MonkeyPatch) -> None:
    from medclip.model import resources

    _, ckpt = saved
    monkeypatch.setattr(resources, "resolve_hf_hub", lambda name: ckpt.path if name == "hf-hub:org/tiny" else None)
    opened = CheckpointDir.open("hf-hub:org/tiny")
    assert opened.path == ckpt.path and opened.fingerprint() == ckpt.fingerprint()
    assert CheckpointDir.open(ckpt.path).path == ckpt.path
