"""Every numeric training option is checked when the config loads, naming the key (issue 12, item 14)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medclip.train import ConfigError, fit, load_config


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.image_size=-1", "data.image_size"),
        ("data.image_size=abc", "data.image_size"),
        ("data.num_workers=-2", "data.num_workers"),
        ("data.val_batch_size=0", "data.val_batch_size"),
        ("data.max_text_tokens=1", "data.max_text_tokens"),
        ("data.batch_size=true", "data.batch_size"),
        ("optim.lr=0", "optim.lr"),
        ("optim.lr=.nan", "optim.lr"),
        ("optim.weight_decay=-0.1", "optim.weight_decay"),
        ("optim.warmup_steps=2.5", "optim.warmup_steps"),
        ("optim.min_lr_ratio=1.5", "optim.min_lr_ratio"),
        ("optim.betas=[0.9]", "optim.betas"),
        ("optim.tower_lr={text: -1}", "optim.tower_lr.text"),
        ("optim.fused=sometimes", "optim.fused"),
        ("trainer.max_steps=-5", "trainer.max_steps"),
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches"),
        ("trainer.limit_train_batches=1.5", "trainer.limit_train_batches"),
        ("checkpoint.save_top_k=-3", "checkpoint.save_top_k"),
        ("seed=-1", "seed"),
        ("model.lock_image_unlocked_groups=-1", "model.lock_image_unlocked_groups"),
        ("model.lock_image=yes please", "model.lock_image"),
        ("data.image_augmentation.crop_scale=[0.9, 0.5]", "data.image_augmentation.crop_scale"),
        ("data.image_augmentation.rotate_degrees=400", "data.image_augmentation.rotate_degrees"),
        ("data.label_text.mix_prob=2", "data.label_text.mix_prob"),
        ("data.label_text.exam_prob=1.5", "data.label_text.exam_prob"),
        ("data.concept_balance.max_share=0", "data.concept_balance.max_share"),
        ("data.feature_cache=sometimes", "data.feature_cache"),
        ("data.image_augmentation.typo=1", "data.image_augmentation.typo"),
        ("loss.max_sub_captions=0", "loss.max_sub_captions"),
        ("data.dataset_kwargs={buffer_size: 0}", "data.dataset_kwargs.buffer_size"),
        ("data.dataset_kwargs={windw: lung}", "data.dataset_kwargs.windw"),
        ("text_pretrain.steps=0", "text_pretrain.steps"),
        ("data.sources=[{weight: 1}]", "data.sources[0]"),
        ("data.sources=[{manifest: a.parquet, weight: -1}]", "data.sources[0].weight"),
        ("data.sources=[{manifest: a.parquet, text: captions}]", "data.sources[0].text"),
    ],
)
def test_bad_numeric_option_is_refused_on_load_naming_the_key(tmp_path: Path, override: str, key: str) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("data:\n  manifest: m.parquet\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    message = str(info.value)
    assert str(path) in message and key in message


def test_negative_image_size_leaves_no_partial_run_folder(tmp_path: Path) -> None:
    """Regression: ``data.image_size=-1`` passed validation and failed in training after the run folder existed."""
    manifest = tmp_path / "m.parquet"
    manifest.write_bytes(b"not read: the config is refused first")
    out = tmp_path / "run"
    config = {
        "output_dir": str(out),
        "data": {"manifest": str(manifest), "image_size": -1},
        "model": {"name": "tiny-test"},
    }
    with pytest.raises(ConfigError, match=r"data\.image_size must be an integer in \[8, 8192\] or null, got -1"):
        fit(config)
    assert not out.exists()


def test_valid_values_and_nulls_still_load(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("data:\n  manifest: m.parquet\n")
    cfg = load_config(
        path,
        [
            "data.image_size=null",
            "data.val_batch_size=null",
            "trainer.max_steps=-1",
            "trainer.limit_train_batches=0.5",
            "trainer.limit_val_batches=3",
            "optim.lr=1",
            "trainer.gradient_clip_val=null",
        ],
    )
    assert cfg["data"]["image_size"] is None and cfg["trainer"]["limit_val_batches"] == 3


def test_small_data_config_is_valid() -> None:
    from medclip.train.configs import resolve_config

    cfg = load_config(resolve_config("small-data"))
    assert [s["name"] for s in cfg["data"]["sources"]] == ["covid", "kermany", "medpix"]
    assert cfg["model"]["lock_image"] is True and cfg["data"]["feature_cache"] == "auto"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("loss.name=clip", "loss.name must be one of"),
        ("loss.kwargs={soft_weigth: 1.0}", "loss.kwargs for label_aware"),
        ("loss.kwargs={soft_weight: .inf}", "loss.kwargs.soft_weight must be a finite number"),
    ],
)
def test_bad_loss_is_refused_on_load(tmp_path: Path, override: str, message: str) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("data:\n  manifest: m.parquet\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path, [override])


def test_unknown_model_leaves_no_run_folder(tmp_path: Path) -> None:
    manifest = tmp_path / "m.parquet"
    manifest.write_bytes(b"x")
    out = tmp_path / "run"
    with pytest.raises(Exception, match="no-such-model"):
        fit({"output_dir": str(out), "data": {"manifest": str(manifest)}, "model": {"name": "no-such-model"}})
    assert not out.exists()
