"""OpenClipAdapter: an open_clip model (random weights, nothing downloaded) behind medclip's interface."""

from __future__ import annotations

import json

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from medclip.inference import OpenClipAdapter, embed_images, embed_texts, is_open_clip, load_model  # noqa: E402
from medclip.inference.zeroshot import ZeroShotClassifier  # noqa: E402

TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def open_clip_folder(tmp_path_factory):
    """A local open_clip model folder (config + safetensors) with random weights, as the hub layout has."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CFG).eval()
    folder = tmp_path_factory.mktemp("open_clip_tiny")
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}})
    )
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder, model


def test_adapter_matches_open_clip_on_prepared_inputs(open_clip_folder):
    folder, reference = open_clip_folder
    assert is_open_clip(folder) and is_open_clip("open_clip:hf-hub:org/name") and not is_open_clip(folder.parent)
    adapter = load_model(folder)
    assert isinstance(adapter, OpenClipAdapter) and adapter.image_size == (32, 32)
    grey = torch.rand(3, 1, 48, 48)
    feats = adapter.encode_image(grey)
    assert feats.shape == (3, 16)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(3))
    # the adapter's preparation: three channels, resized to 32 px, normalised with the folder's mean/std
    x = torch.nn.functional.interpolate(
        grey.expand(-1, 3, -1, -1), size=(32, 32), mode="bicubic", align_corners=False, antialias=True
    ).clamp(0, 1)
    with torch.no_grad():
        expected = reference.encode_image((x - 0.5) / 0.25, normalize=True)
    torch.testing.assert_close(feats.detach(), expected, rtol=1e-4, atol=1e-5)
    tok = adapter.tokenize(["no pleural effusion.", "cardiomegaly"])
    assert tok["input_ids"].shape == (2, 77) and tok["attention_mask"][:, 0].eq(1).all()
    with torch.no_grad():
        torch.testing.assert_close(
            adapter.encode_text(tok["input_ids"], tok["attention_mask"]),
            reference.encode_text(tok["input_ids"], normalize=True),
        )
    with pytest.raises(TypeError):
        adapter.tokenize("one string")


def test_adapter_runs_the_evaluation_interfaces(open_clip_folder):
    folder, _ = open_clip_folder
    adapter = OpenClipAdapter.from_pretrained(f"open_clip:{folder}")
    clf = ZeroShotClassifier.from_model(adapter, ["pneumonia", "pleural_effusion"])
    feats = embed_images(adapter, torch.rand(5, 1, 32, 32), batch_size=2)
    assert clf.predict_proba(feats).shape == (5, 2)
    assert clf.logit_scale == pytest.approx(float(adapter.model.logit_scale.detach().exp()))
    assert embed_texts(adapter, ["a", "b c", "d e f"]).shape == (3, 16)


def test_missing_open_clip_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        OpenClipAdapter.from_pretrained(f"open_clip:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="weight file"):
        OpenClipAdapter.from_pretrained(f"open_clip:ViT-B-32@{tmp_path / 'missing.pt'}")
