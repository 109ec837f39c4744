"""CheckpointDir: the checkpoint folder's layout and the model fingerprint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

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
        "thresholds.json", "drafter", "gallery", "eval"]
    assert all(p.parent == ckpt.path for p in (ckpt.preprocess, ckpt.provenance))
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
