"""Fine-tuning open_clip checkpoints: a tiny random BiomedCLIP-style model (timm ViT + HF BERT) saved in
open_clip's folder format converts into a DualEncoder with the same embeddings, and `medclip fit` trains it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_model_bring_your_own import save_tiny_bert
from test_train_fit import _config, manifest, one_torch_thread  # noqa: F401 (fixtures)

from medclip.model import ModelLoadError, create_model

open_clip = pytest.importorskip("open_clip")

TEXTS = ["Pleural effusion is present.", "No pneumothorax.", "The heart size is normal and there is mild cardiomegaly."]


def save_tiny_open_clip(
    folder: Path,
    bert_dir: Path,
    mean: list[float],
    std: list[float],
    pooler: str = "cls_last_hidden_state_pooler",
    weights: str = "open_clip_pytorch_model.bin",
) -> torch.nn.Module:
    """A random open_clip CustomTextCLIP (timm test_vit + the tiny BERT in ``bert_dir``) in the folder
    format BiomedCLIP uses on the hub: open_clip_config.json, weights, tokenizer files."""
    folder.mkdir(parents=True)
    for name in ("tokenizer_config.json", "vocab.txt", "tokenizer.json", "special_tokens_map.json"):
        if (bert_dir / name).is_file():
            shutil.copy(bert_dir / name, folder / name)
    config = {
        "model_cfg": {
            "embed_dim": 16,
            "vision_cfg": {
                "timm_model_name": "test_vit",
                "timm_model_pretrained": False,
                "timm_pool": "",
                "timm_proj": "linear",
                "image_size": 160,
            },
            "text_cfg": {
                "hf_model_name": str(bert_dir),
                "hf_tokenizer_name": str(bert_dir),
                "hf_proj_type": "mlp",
                "hf_pooler_type": pooler,
                "context_length": 64,
            },
        },
        "preprocess_cfg": {"mean": mean, "std": std},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(5)
    model = open_clip.create_model(f"local-dir:{folder}")  # no weights in the folder yet: timm random + the BERT
    with torch.no_grad():
        for param in model.parameters():  # every weight random and non-trivial (the BERT too)
            param.add_(torch.randn_like(param) * 0.05)
        model.logit_scale.fill_(2.5)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if weights.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(state, str(folder / weights))
    else:
        torch.save(state, folder / weights)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("openclip")
    save_tiny_bert(root / "bert")
    folder = root / "tiny-biomedclip"
    save_tiny_open_clip(
        folder, root / "bert", mean=[0.48145466, 0.4578275, 0.40821073], std=[0.26862954, 0.26130258, 0.27577711]
    )
    return folder


def _reference(folder: Path, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """open_clip's own embeddings: grey repeated to RGB, normalised per channel with its preprocess mean/std."""
    model, _ = open_clip.create_model_from_pretrained(f"local-dir:{folder}")
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    cfg = json.loads((folder / "open_clip_config.json").read_text())["preprocess_cfg"]
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        image = model.encode_image((images.expand(-1, 3, -1, -1) - mean) / std, normalize=True)
        text = model.encode_text(tokenizer(TEXTS), normalize=True)
    return image, text, float(model.logit_scale.detach().exp())


def _assert_same_embeddings(folder: Path, name: str) -> None:
    torch.manual_seed(0)
    images = torch.rand(3, 1, 160, 160)
    ref_image, ref_text, ref_scale = _reference(folder, images)
    model = create_model(name).eval()
    with torch.no_grad():
        tok = model.tokenize(TEXTS)
        ours_text = model.encode_text(tok["input_ids"], tok["attention_mask"])
        ours_image = model.encode_image(images)
    torch.testing.assert_close(ours_image, ref_image, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(ours_text, ref_text, atol=2e-5, rtol=1e-4)
    assert float(model.logit_scale.exp()) == pytest.approx(ref_scale, rel=1e-6)


def test_open_clip_checkpoint_converts_to_the_same_embeddings(tiny_open_clip: Path) -> None:
    """Regression (issue 12.7): open_clip models could only be evaluated; now they convert into a DualEncoder."""
    _assert_same_embeddings(tiny_open_clip, f"open_clip:{tiny_open_clip}")


def test_open_clip_folder_with_equal_channel_stats_and_mean_pooling_converts(
    tmp_path: Path, tiny_open_clip: Path
) -> None:
    """The other stem fold (equal mean/std: kernels summed, normalisation kept), mean pooling, safetensors weights,
    and a plain folder path (no prefix)."""
    bert = tiny_open_clip.parent / "bert"
    folder = tmp_path / "oc-equal"
    save_tiny_open_clip(
        folder,
        bert,
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
        pooler="mean_pooler",
        weights="open_clip_model.safetensors",
    )
    _assert_same_embeddings(folder, str(folder))


def test_fit_fine_tunes_an_open_clip_checkpoint(tiny_open_clip: Path, manifest: Path, tmp_path: Path) -> None:  # noqa: F811
    """`medclip fit model.name=open_clip:<folder>`: two steps from the converted weights, exported as a medclip folder."""
    from medclip.model import DualEncoder
    from medclip.train import fit

    cfg = _config({"manifest": str(manifest)}, tmp_path / "run", max_steps=2, val_check_interval=None)
    cfg["data"]["image_size"] = 160
    cfg["model"] = {"name": f"open_clip:{tiny_open_clip}", "lock_image": False}  # fine-tune the image tower too
    cfg["checkpoint"]["every_n_steps"] = None
    start = create_model(f"open_clip:{tiny_open_clip}")
    model_dir = fit(cfg)
    tuned = DualEncoder.from_pretrained(model_dir)
    assert tuned.config.vision.name == "test_vit" and tuned.config.embed_dim == 16
    assert tuned.tokenizer.get_vocab() == start.tokenizer.get_vocab()
    before, after = start.state_dict(), tuned.state_dict()
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "two training steps changed no weight"
    assert "visual.backbone.model.patch_embed.proj.weight" in changed


def test_open_clip_errors_name_the_problem(tmp_path: Path, tiny_open_clip: Path) -> None:
    with pytest.raises(ModelLoadError, match="folder not found"):
        create_model(f"open_clip:{tmp_path / 'nothing-here'}")
    other = tmp_path / "native"
    other.mkdir()
    (other / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": {"embed_dim": 8, "vision_cfg": {"layers": 2}, "text_cfg": {"layers": 2}}})
    )
    with pytest.raises(ModelLoadError, match="medclip eval --checkpoint open_clip:"):
        create_model(f"open_clip:{other}")
    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_open_clip, no_weights)
    (no_weights / "open_clip_pytorch_model.bin").unlink()
    with pytest.raises(ModelLoadError, match="no open_clip weights"):
        create_model(str(no_weights))
    # the text config must be found: a hub id absent from the local cache says how to get it
    cfg = json.loads((tiny_open_clip / "open_clip_config.json").read_text())
    cfg["model_cfg"]["text_cfg"]["hf_model_name"] = "medclip-test-org/not-cached-bert"
    (no_weights / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="hf_model_name"):
        create_model(str(no_weights), pretrained=False)
