"""The feature cache: a fully locked image backbone encodes each image once, reused across epochs, with the
same loss and gradients as the full forward pass; a change of preprocessing or model starts a new cache."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from test_train_fit import _config, manifest, one_torch_thread  # noqa: F401 (fixtures)

from medclip.model.vision import TimmBackbone
from medclip.train import DEFAULTS, ConfigError, DualEncoderModule, MedClipDataModule, fit
from medclip.train.features import BackboneFeatures, FeatureStore

MODEL = {"name": "tiny-test", "overrides": {"vision": {"image_size": 32}}, "lock_image": True}


@pytest.fixture
def backbone_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Images passed through any timm backbone's forward, call by call."""
    calls: list[int] = []
    original = TimmBackbone.forward

    def counting(self, images):
        calls.append(int(images.shape[0]))
        return original(self, images)

    monkeypatch.setattr(TimmBackbone, "forward", counting)
    return calls


def test_backbone_runs_once_per_image_over_three_epochs(manifest: Path, tmp_path: Path, backbone_calls) -> None:  # noqa: F811
    cfg = _config(
        {"manifest": str(manifest)},
        tmp_path / "run",
        max_steps=-1,
        max_epochs=3,
        val_check_interval=None,
        check_val_every_n_epoch=1,
    )
    cfg["model"] = dict(MODEL)
    fit(copy.deepcopy(cfg))
    # 24 train + 6 val images, encoded once each in setup; 3 epochs of training and validation reuse them
    assert sum(backbone_calls) == 30
    assert len(list((tmp_path / "run" / "feature_cache").glob("*.safetensors"))) == 1
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["feature_cache"] is True  # the resolved config records that it was used

    backbone_calls.clear()
    again = copy.deepcopy(cfg)
    again["trainer"]["max_epochs"] = 1
    fit(again)  # the same model and preprocessing: the cache file is reused, nothing encoded
    assert sum(backbone_calls) == 0

    # runs in other folders share features through data.feature_cache_dir
    shared = tmp_path / "shared_features"
    for k in range(2):
        other = copy.deepcopy(again)
        other["output_dir"] = str(tmp_path / f"arm{k}")
        other["data"]["feature_cache_dir"] = str(shared)
        backbone_calls.clear()
        fit(other)
        assert sum(backbone_calls) == (30 if k == 0 else 0)
        assert not (tmp_path / f"arm{k}" / "feature_cache").exists()


def test_cached_features_give_the_uncached_loss_and_gradients() -> None:
    torch.manual_seed(0)
    module = DualEncoderModule(
        {**MODEL, "overrides": {"vision": {"image_size": 32}}}, {"name": "infonce"}, DEFAULTS["optim"]
    )
    module.train()
    texts = ["left pleural effusion", "clear lungs", "cardiomegaly is present", "no pneumothorax"]
    enc = module.model.tokenize(texts)
    images = torch.rand(4, 1, 32, 32)
    common = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": torch.zeros(4, 0)}
    module.model.text.encoder.eval()  # dropout off: both passes see the same text features

    def loss_and_grads(batch):
        module.zero_grad()
        loss, _ = module._loss(batch)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None}

    full_loss, full_grads = loss_and_grads({**common, "images": images})
    features = BackboneFeatures(module.model)(images)
    cached_loss, cached_grads = loss_and_grads({**common, "image_features": features})
    torch.testing.assert_close(cached_loss, full_loss, rtol=1e-6, atol=1e-6)
    assert full_grads.keys() == cached_grads.keys() and "visual.proj.weight" in full_grads
    assert not any(n.startswith("visual.backbone") for n in full_grads)
    for name in full_grads:
        torch.testing.assert_close(cached_grads[name], full_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_changed_preprocessing_or_model_recomputes(manifest: Path, tmp_path: Path, backbone_calls) -> None:  # noqa: F811
    module = DualEncoderModule(MODEL, {"name": "infonce"}, DEFAULTS["optim"])
    data = {**DEFAULTS["data"], "manifest": str(manifest), "image_size": 32, "batch_size": 4, "num_workers": 0}

    def setup(data_cfg, model=module.model):
        dm = MedClipDataModule(
            data_cfg,
            model.tokenize,
            text_transform=None,
            feature_extractor=BackboneFeatures(model),
            feature_dir=tmp_path / "fc",
        )
        dm.setup("fit")
        return dm

    first = setup(data)
    assert first.features_computed == 30 and sum(backbone_calls) == 30
    item = first.train_dataloader().dataset[(0, 0)]
    assert "image" not in item and item["image_features"].shape == (module.model.visual.backbone.num_features,)
    assert setup(data).features_computed == 0  # same key: reused
    assert setup({**data, "image_size": 48}).features_computed == 30  # new preprocessing: recomputed
    other = DualEncoderModule(MODEL, {"name": "infonce"}, DEFAULTS["optim"])
    with torch.no_grad():
        next(other.model.visual.backbone.parameters()).add_(0.01)
    assert setup(data, other.model).features_computed == 30  # other backbone weights: recomputed
    assert len(list((tmp_path / "fc").glob("*.safetensors"))) == 3
    assert not list((tmp_path / "fc").glob("*.tmp"))


def test_feature_cache_only_for_a_fixed_backbone(manifest: Path, tmp_path: Path) -> None:  # noqa: F811
    from medclip.train.fit import use_feature_cache

    locked = DualEncoderModule(MODEL, {"name": "infonce"}, DEFAULTS["optim"]).model
    partial = DualEncoderModule(
        {**MODEL, "lock_image_unlocked_groups": 1}, {"name": "infonce"}, DEFAULTS["optim"]
    ).model
    cfg = {"data": {"feature_cache": "auto", "image_augmentation": {"enabled": False}}}
    assert use_feature_cache(cfg, locked) and not use_feature_cache(cfg, partial)
    augmented = {"data": {"feature_cache": "auto", "image_augmentation": {"enabled": True}}}
    assert not use_feature_cache(augmented, locked)
    assert not use_feature_cache({"data": {"feature_cache": False}}, locked)
    with pytest.raises(ConfigError, match="not fully locked"):
        use_feature_cache({"data": {"feature_cache": True}}, partial)
    cfg = _config({"manifest": str(manifest)}, tmp_path / "run")
    cfg["data"]["feature_cache"] = True  # the tower is not locked: refused before the run folder exists
    with pytest.raises(ConfigError, match="data.feature_cache: true needs fixed image features"):
        fit(cfg)
    assert not (tmp_path / "run").exists()


def test_damaged_cache_file_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"garbage")
    store = FeatureStore(path)
    assert len(store) == 0
    store.add(["a", "b"], torch.ones(2, 3))
    store.save()
    again = FeatureStore(path)
    assert "a" in again and torch.equal(again.get("b"), torch.ones(3))
    with pytest.raises(KeyError, match="not in the feature cache"):
        again.get("c")


def test_cache_stream_with_feature_cache(manifest: Path, tmp_path: Path, backbone_calls) -> None:  # noqa: F811
    from medclip.data.cache import CacheConfig, build_cache

    cache = tmp_path / "cache"
    build_cache(manifest, cache, config=CacheConfig(image_size=32, shard_size=8), workers=1, progress=False)
    cfg = _config(
        {"cache_dir": str(cache)},
        tmp_path / "run",
        max_steps=-1,
        max_epochs=2,
        val_check_interval=None,
        check_val_every_n_epoch=1,
    )
    cfg["model"] = dict(MODEL)
    cfg["data"]["num_workers"] = 1
    fit(cfg)
    assert sum(backbone_calls) == 30


@pytest.mark.slow
def test_locked_run_with_feature_cache_resumes_exactly_and_records_its_options(manifest: Path, tmp_path: Path) -> None:  # noqa: F811
    import json

    from test_train_fit import CRASH_AFTER, _weights

    base = _config(
        {"manifest": str(manifest)}, tmp_path / "full", max_steps=7, val_check_interval=None, check_val_every_n_epoch=1
    )
    base["model"] = dict(MODEL)
    base["checkpoint"]["every_n_steps"] = 2
    full = fit(copy.deepcopy(base))
    killed = copy.deepcopy(base)
    killed["output_dir"] = str(tmp_path / "killed")
    killed["trainer"]["callbacks"] = [{"class_path": CRASH_AFTER, "init_args": {"step": 5}}]
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(killed)
    resumed = copy.deepcopy(base)
    resumed["output_dir"] = str(tmp_path / "killed")
    resumed["resume"] = str(tmp_path / "killed" / "checkpoints" / "step-00000004.ckpt")
    a, b = _weights(full), _weights(fit(resumed))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    record = json.loads((full / "config.json").read_text())["extra"]["training"]
    assert record["lock_image"]["lock_image"] is True and record["feature_cache"] is True
    assert record["label_text"] == {"enabled": True, "mix_prob": 0.5, "exam_prob": 0.5}
    assert record["loss"]["sub_captions"] is False
    assert str(manifest) not in json.dumps(record)
