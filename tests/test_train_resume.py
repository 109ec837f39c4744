"""Exact resume: a run killed mid-epoch and resumed reaches the uninterrupted run's weights (manifest and cache)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from test_train_fit import CRASH_AFTER, _config, _weights, manifest, one_torch_thread  # noqa: F401 (fixtures)

from medclip.train import fit


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(manifest: Path, tmp_path: Path) -> None:  # noqa: F811
    """Gradient accumulation 2, 6 batches (3 steps) an epoch, validation at each epoch end: killed at
    step 4 (in epoch 1), resumed from the step-2 checkpoint (mid-epoch 0)."""
    base = _config(
        {"manifest": str(manifest)},
        tmp_path / "full",
        accumulate_grad_batches=2,
        max_steps=5,
        val_check_interval=None,
        check_val_every_n_epoch=1,
    )
    base["checkpoint"]["every_n_steps"] = 2
    # the tiny BERT keeps its default dropout (0.1): the RNG state must be restored too
    full = fit(copy.deepcopy(base))

    killed = copy.deepcopy(base)
    killed["output_dir"] = str(tmp_path / "killed")
    killed["trainer"]["callbacks"] = [{"class_path": CRASH_AFTER, "init_args": {"step": 4}}]
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(killed)
    ckpt_dir = tmp_path / "killed" / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["last.ckpt", "step-00000002.ckpt"]
    position = torch.load(ckpt_dir / "last.ckpt", weights_only=False)["MedClipDataModule"]
    assert position["epoch"] == 0 and position["batches_done"] == 4

    resumed = copy.deepcopy(base)
    resumed["output_dir"] = str(tmp_path / "killed")
    resumed["resume"] = "last"
    model_dir = fit(resumed)

    a, b = _weights(full), _weights(model_dir)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)

    # the same resume without the data position would repeat batches: the weights then differ
    restart = copy.deepcopy(base)
    restart["output_dir"] = str(tmp_path / "restart")
    checkpoint = torch.load(ckpt_dir / "step-00000002.ckpt", weights_only=False)
    checkpoint["MedClipDataModule"] = {}
    torch.save(checkpoint, tmp_path / "no_position.ckpt")
    restart["resume"] = str(tmp_path / "no_position.ckpt")
    c = _weights(fit(restart))
    assert any(not torch.equal(a[name], c[name]) for name in a)


@pytest.mark.slow
def test_fit_from_cache_and_resume(manifest: Path, tmp_path: Path) -> None:  # noqa: F811
    from medclip.data.cache import CacheConfig, build_cache

    cache = tmp_path / "cache"
    build_cache(manifest, cache, config=CacheConfig(image_size=32, shard_size=8), workers=1, progress=False)
    full = _config({"cache_dir": str(cache)}, tmp_path / "full", max_steps=9)
    full["data"]["dataset_kwargs"] = {"buffer_size": 4}
    full["data"]["num_workers"] = 2  # batches alternate between the workers' streams: each must skip its share
    model_dir = fit(copy.deepcopy(full))
    assert (model_dir / "model.safetensors").is_file()
    ckpt = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 9  # saved after the final step although every_n_steps is 4
    # 24 train images / 4 = 6 batches an epoch
    assert ckpt["MedClipDataModule"] == {
        "epoch": 1,
        "batches_done": 3,
        "batch_size": 4,
        "world_size": 1,
        "samples_consumed": 12,
    }

    # killed at step 5, resumed mid-epoch from step 4: the same weights
    killed = copy.deepcopy(full)
    killed["output_dir"] = str(tmp_path / "killed")
    killed["trainer"]["callbacks"] = [{"class_path": CRASH_AFTER, "init_args": {"step": 5}}]
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(killed)
    resumed = copy.deepcopy(full)
    resumed["output_dir"] = str(tmp_path / "killed")
    resumed["resume"] = "last"
    a, b = _weights(model_dir), _weights(fit(resumed))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_training_further_from_the_final_checkpoint(manifest: Path, tmp_path: Path) -> None:  # noqa: F811
    """6 steps end exactly at an epoch boundary; ``resume=last`` with max_steps=9 equals a 9-step run."""
    longer = _config({"manifest": str(manifest)}, tmp_path / "long", max_steps=9)
    longer["optim"]["schedule"] = "constant"  # the cosine decay depends on max_steps
    short = copy.deepcopy(longer)
    short["output_dir"] = str(tmp_path / "short")
    short["trainer"]["max_steps"] = 6
    fit(copy.deepcopy(short))
    position = torch.load(tmp_path / "short" / "checkpoints" / "last.ckpt", weights_only=False)["MedClipDataModule"]
    assert position["epoch"] == 0 and position["batches_done"] == 6

    extended = copy.deepcopy(longer)
    extended["output_dir"] = str(tmp_path / "short")
    extended["resume"] = "last"
    a, b = _weights(fit(longer)), _weights(fit(extended))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
