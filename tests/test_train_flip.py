"""FLIP patch dropout (``model.overrides.vision.patch_dropout``): a ViT tower drops that share of its patch tokens in
training and none in eval; towers without patch tokens refuse it; the exact accumulation (``optim.accum_freq``)
replays each micro-batch's patch mask; ``optim.unmasked_steps`` turns it off for the last steps of a fit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from test_train_accumulation import accumulated_grads, assert_same, grads_of, make_batch
from test_train_fit import _config, manifest, one_torch_thread  # noqa: F401 (fixtures)

from medclip.model import ModelLoadError, create_model
from medclip.train import fit
from medclip.train.module import DualEncoderModule, _micro_batch, micro_batch_slices

IMAGE_SIZE, PATCH = 32, 16
N_PATCHES = (IMAGE_SIZE // PATCH) ** 2
TINY_VIT = {
    "name": "vit_tiny_patch16_224",
    "image_size": IMAGE_SIZE,
    "model_kwargs": {"img_size": IMAGE_SIZE, "depth": 2},
    "pool": "token",
}


class WatchPatchDropout(L.Callback):
    """Records the tower's patch dropout share at each training step."""

    seen: list[float] = []

    def on_train_batch_end(self, trainer: Any, module: Any, *args: Any) -> None:  # after the module's batch start
        self.seen.append(module.model.visual.backbone.model.patch_drop.prob)


def tokens_seen(model: Any, images: torch.Tensor) -> int:
    """How many tokens (class token included) the first transformer block of the tower receives."""
    seen: list[int] = []
    block = model.visual.backbone.model.blocks[0]
    handle = block.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    try:
        model.visual(images)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("prob", [0.5, 0.75])
def test_patch_dropout_drops_tokens_in_training_only(prob: float) -> None:
    torch.manual_seed(0)
    model = create_model("tiny-test", vision={**TINY_VIT, "patch_dropout": prob})
    plain = create_model("tiny-test", vision=TINY_VIT)
    plain.load_state_dict(model.state_dict())
    images = torch.rand(2, 1, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
    model.train()
    assert tokens_seen(model, images) == 1 + round(N_PATCHES * (1 - prob))
    model.eval()
    plain.eval()
    assert tokens_seen(model, images) == 1 + N_PATCHES
    with torch.no_grad():  # eval: the same function as the tower without patch dropout
        torch.testing.assert_close(model.visual(images), plain.visual(images))


def test_set_patch_dropout_turns_it_off_and_on() -> None:
    model = create_model("tiny-test", vision={**TINY_VIT, "patch_dropout": 0.5}).train()
    images = torch.rand(2, 1, IMAGE_SIZE, IMAGE_SIZE)
    assert model.visual.set_patch_dropout(0.0) == 1
    assert tokens_seen(model, images) == 1 + N_PATCHES
    model.visual.set_patch_dropout(0.75)
    assert tokens_seen(model, images) == 1 + N_PATCHES // 4
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        model.visual.set_patch_dropout(1.0)


def test_towers_without_patch_tokens_refuse_it() -> None:
    with pytest.raises(ModelLoadError, match="no patch tokens to drop"):
        create_model("tiny-test", vision={"patch_dropout": 0.5})  # resnet10t
    with pytest.raises(ValueError, match=r"patch_dropout must be in \[0, 1\)"):
        create_model("tiny-test", vision={**TINY_VIT, "patch_dropout": 1.0})
    with pytest.raises(ValueError, match="needs a timm ViT tower"):
        create_model("ct-resnet3d-minilm", vision={"patch_dropout": 0.5}, pretrained=False)


def test_accumulation_replays_each_micro_batch_patch_mask() -> None:
    """With patch dropout in train mode, the accumulated gradients equal those of the micro-batches run once with
    gradients, in order, from the same RNG state, and one loss over all: the gradient pass drops the same patches
    as the feature pass (otherwise the cached features would belong to other masks)."""
    torch.manual_seed(0)
    module = DualEncoderModule(
        {"name": "tiny-test", "overrides": {"vision": {**TINY_VIT, "patch_dropout": 0.5}}, "lock_image": False},
        {"name": "infonce"},
        {"lr": 1e-3, "weight_decay": 0.0, "accum_freq": 4},
    ).train()
    batch = make_batch(module)
    torch.manual_seed(5)
    module.zero_grad(set_to_none=True)
    outs = [module._forward(_micro_batch(batch, i, t)) for i, t in micro_batch_slices(batch, 4)]
    joined = {
        **outs[0],
        "image_features": torch.cat([o["image_features"] for o in outs]),
        "text_features": torch.cat([o["text_features"] for o in outs]),
    }
    module._loss_from(joined, batch)[0].backward()
    expected = grads_of(module)
    torch.manual_seed(5)
    assert_same(accumulated_grads(module, batch)[1], expected)


def test_unmasked_steps_turn_patch_dropout_off_at_the_end(
    manifest: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    one_torch_thread: None,  # noqa: F811
) -> None:
    cfg = _config({"manifest": str(manifest)}, tmp_path / "run", max_steps=6)
    cfg["model"]["overrides"] = {"vision": {**TINY_VIT, "patch_dropout": 0.5}}
    cfg["optim"]["unmasked_steps"] = 2
    cfg["trainer"]["callbacks"] = [{"class_path": f"{__name__}.WatchPatchDropout"}]
    WatchPatchDropout.seen.clear()
    model_dir = fit(cfg)
    assert WatchPatchDropout.seen == [0.5, 0.5, 0.5, 0.5, 0.0, 0.0]
    assert "step 4: patch dropout off for the last 2 steps" in capsys.readouterr().out
    assert create_model(str(model_dir)).config.vision.patch_dropout == 0.5  # kept in the config; eval never drops


def test_unmasked_steps_need_patch_dropout() -> None:
    with pytest.raises(ValueError, match="needs model.overrides.vision.patch_dropout"):
        DualEncoderModule({"name": "tiny-test"}, {"name": "infonce"}, {"unmasked_steps": 2})
