"""Bring your own towers: a user's text model folder (weights + tokenizer) or timm folder replaces a
registry tower, a missing folder is named, and fit trains from the user's weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medclip.model import ModelLoadError, create_model
from medclip.model.tokenizer import build_wordpiece_vocab

WORDS = ["pleural effusion is present", "no pneumothorax", "the heart size is normal", "mild cardiomegaly"]


def save_tiny_bert(folder: Path, seed: int = 3) -> dict[str, torch.Tensor]:
    """A random tiny BERT and its own WordPiece tokenizer (vocabulary built from a few words), saved as
    ``save_pretrained`` writes them; returns the saved weights."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = build_wordpiece_vocab(WORDS, max_words=40)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(str(folder))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
    )
    bert = BertModel(config, add_pooling_layer=False)
    bert.save_pretrained(str(folder))
    return {k: v.detach().clone() for k, v in bert.state_dict().items()}


@pytest.fixture(scope="module")
def user_bert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    folder = tmp_path_factory.mktemp("user") / "my-bert"
    return folder, save_tiny_bert(folder)


def _assert_text_tower_is(model, folder: Path, saved: dict[str, torch.Tensor]) -> None:
    from transformers import AutoTokenizer

    state = model.text.encoder.state_dict()
    for key, value in saved.items():
        assert torch.equal(state[key], value), key
    assert model.text.encoder.config.hidden_size == 24
    user_tok = AutoTokenizer.from_pretrained(str(folder))
    assert model.tokenizer.get_vocab() == user_tok.get_vocab()
    text = ["Pleural effusion is present."]
    assert model.tokenize(text)["input_ids"][0].tolist() == user_tok(text)["input_ids"][0]


@pytest.mark.parametrize("pretrained", [None, True])
def test_text_override_loads_the_users_weights_and_tokenizer(user_bert, pretrained) -> None:
    """Regression (issue 12.6): a text.name override on tiny-test trained a random BERT with the
    bundled vocabulary; with pretrained=true it died in a transformers traceback."""
    folder, saved = user_bert
    text = {"name": str(folder)} if pretrained is None else {"name": str(folder), "pretrained": pretrained}
    model = create_model("tiny-test", text=text)
    _assert_text_tower_is(model, folder, saved)


def test_text_override_starts_fit_from_the_users_weights(user_bert) -> None:
    """The training module (what `medclip fit` builds) starts from the user's text weights and tokenizer."""
    from medclip.train import DualEncoderModule

    folder, saved = user_bert
    module = DualEncoderModule(
        {"name": "tiny-test", "overrides": {"text": {"name": str(folder)}}}, {"name": "infonce"}, {"lr": 1e-3}
    )
    _assert_text_tower_is(module.model, folder, saved)


def test_missing_text_folder_says_folder_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-bert"
    for base in ("tiny-test", "offline-default"):
        for pretrained in (True, False):
            with pytest.raises(ModelLoadError, match=r"text\.name: folder not found: .*no-such-bert"):
                create_model(base, pretrained=False, text={"name": str(missing), "pretrained": pretrained})


def test_text_folder_without_weights_says_what_to_do(user_bert, tmp_path: Path) -> None:
    import shutil

    folder, _ = user_bert
    partial = tmp_path / "no-weights"
    shutil.copytree(folder, partial)
    (partial / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="text.pretrained=false"):
        create_model("tiny-test", text={"name": str(partial)})
    # explicit random init from the user's architecture and tokenizer is allowed
    model = create_model("tiny-test", text={"name": str(partial), "pretrained": False})
    assert model.text.encoder.config.hidden_size == 24


def test_vision_name_change_asks_for_matching_weights() -> None:
    """offline-default's vision weight file belongs to EfficientNet-Lite0: another network must say which weights."""
    with pytest.raises(ValueError, match="set vision.pretrained"):
        create_model("offline-default", pretrained=False, vision={"name": "resnet18"})


def test_timm_folder_override_loads_the_users_weights(tmp_path: Path) -> None:
    """A timm model folder (timm's save layout: config.json + model.safetensors) as vision.name."""
    import json

    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model("resnet10t", pretrained=False, num_classes=0, in_chans=1)
    folder = tmp_path / "my-resnet"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(
            {
                "architecture": "resnet10t",
                "num_classes": 0,
                "num_features": net.num_features,
                "pretrained_cfg": {"num_classes": 0},
            }
        )
    )
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "model.safetensors"))
    model = create_model("tiny-test", vision={"name": str(folder), "pretrained": True})
    got = model.visual.backbone.model.state_dict()
    for key, value in net.state_dict().items():
        assert torch.equal(got[key], value), key
    with pytest.raises(ModelLoadError, match=r"vision\.name: folder not found: .*gone"):
        create_model("tiny-test", vision={"name": str(tmp_path / "gone"), "pretrained": True})
