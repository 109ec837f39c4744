"""LiT tower locks: frozen parameters stay bit-identical, unlocked ones train, BatchNorm statistics stay
frozen, and the optimizer holds only trainable parameters."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import pytest
import torch
from test_train_fit import _config, _weights, manifest, one_torch_thread  # noqa: F401 (fixtures)

from medclip.train import DEFAULTS, DualEncoderModule, fit

MODEL = {"name": "tiny-test", "overrides": {"vision": {"image_size": 32}}}


def _batch(module: DualEncoderModule, n: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    texts = [f"finding number {i} with effusion" if i % 2 else f"clear lungs {i}" for i in range(n)]
    enc = module.model.tokenize(texts)
    return {
        "images": torch.rand(n, 1, 32, 32, generator=g),
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "labels": torch.zeros(n, 0),
    }


def _train_steps(module: DualEncoderModule, steps: int = 3) -> torch.optim.Optimizer:
    module.train()
    optimizer = torch.optim.AdamW(module._param_groups(), lr=1e-2)
    for step in range(steps):
        loss, _ = module._loss(_batch(module, seed=step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return optimizer


def _state(module: DualEncoderModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


def test_partial_image_and_text_lock_trains_only_the_unlocked_parts() -> None:
    torch.manual_seed(0)
    module = DualEncoderModule(
        {
            **MODEL,
            "lock_image": True,
            "lock_image_unlocked_groups": 1,
            "lock_image_norms_trainable": True,
            "lock_text": True,
            "lock_text_unlocked_layers": 1,
        },
        {"name": "infonce"},
        DEFAULTS["optim"],
    )
    blocks = module.model.image_blocks()
    last_modules = {f"visual.backbone.{n}".rsplit(".", 1)[0] for n in blocks[-1]}
    assert len(blocks) >= 3 and all(n.startswith("model.layer4") for n in blocks[-1])
    before = _state(module)
    optimizer = _train_steps(module)
    after = _state(module)
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in module.model.parameters() if p.requires_grad}  # no frozen param
    for name in before:
        changed = not torch.equal(before[name], after[name])
        if name.startswith("visual.backbone."):
            if name.rsplit(".", 1)[0] in last_modules:
                assert changed, name  # the unlocked last block trains, its BatchNorm statistics update
            elif name.endswith(("running_mean", "running_var", "num_batches_tracked")):
                assert not changed, f"{name}: BatchNorm statistics of a locked block moved"
            elif name in trainable:
                assert changed, f"{name}: a norm layer should train with norms_trainable"
            else:
                assert not changed, f"{name}: a locked weight changed"
        elif name.startswith("text.encoder."):
            assert changed == (".layer.1." in name), name  # only the last of 2 layers trains
        elif name.startswith(("visual.proj", "text.proj")):
            assert changed, name  # projections always train
    # norms of locked blocks are trainable, their convolutions are not
    assert "visual.backbone.model.bn1.weight" in trainable and "visual.backbone.model.conv1.0.weight" not in trainable


def test_full_lock_keeps_the_backbone_in_eval_mode_and_its_output_fixed() -> None:
    torch.manual_seed(0)
    module = DualEncoderModule({**MODEL, "lock_image": True}, {"name": "infonce"}, DEFAULTS["optim"])
    module.train()
    assert module.model.image_backbone_frozen
    assert not module.model.visual.backbone.training and module.model.visual.proj.training
    assert module.model.text.encoder.training  # the text tower is not locked
    images = torch.rand(3, 1, 32, 32)
    first = module.model.visual.backbone(images)
    _train_steps(module, 2)
    torch.testing.assert_close(module.model.visual.backbone(images), first, rtol=0, atol=0)
    module.eval()
    module.train()  # Lightning switches modes around validation: the lock survives it
    assert not module.model.visual.backbone.training
    unlocked_bn = DualEncoderModule(
        {**MODEL, "lock_image": True, "lock_image_freeze_bn_stats": False}, {"name": "infonce"}, DEFAULTS["optim"]
    )
    unlocked_bn.train()
    assert not unlocked_bn.model.image_backbone_frozen and unlocked_bn.model.visual.backbone.training


def test_locked_fit_end_to_end(manifest: Path, tmp_path: Path) -> None:  # noqa: F811
    """A real fit with both towers locked: exported backbone and text encoder equal the initial weights bit for
    bit (BatchNorm statistics included); the checkpoint's optimizer holds only the trainable parameters."""
    cfg = _config({"manifest": str(manifest)}, tmp_path / "run", max_steps=3, val_check_interval=None)
    cfg["model"].update({"lock_image": True, "lock_text": True})
    L.seed_everything(cfg["seed"])
    initial = DualEncoderModule(cfg["model"], cfg["loss"], {**DEFAULTS["optim"], **cfg["optim"]})
    start = _state(initial)
    trained = _weights(fit(copy.deepcopy(cfg)))
    for name, value in start.items():
        if name not in trained:
            continue
        same = torch.equal(value, trained[name])
        if name.startswith(("visual.backbone.", "text.encoder.")):
            assert same, name
        elif name.startswith(("visual.proj", "text.proj")):
            assert not same, name
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    in_optimizer = sum(len(g["params"]) for g in ckpt["optimizer_states"][0]["param_groups"])
    assert in_optimizer == sum(1 for p in initial.model.parameters() if p.requires_grad)
    assert in_optimizer < len(list(initial.model.parameters()))


def test_lock_rejects_negative_counts() -> None:
    from medclip.model import create_model

    model = create_model("tiny-test")
    with pytest.raises(ValueError, match="unlocked_groups"):
        model.lock_image_tower(-1)
    with pytest.raises(ValueError, match="unlocked_layers"):
        model.lock_text_tower(-2)
