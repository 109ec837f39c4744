"""Numerical faults in training: a NaN/Inf loss or gradient skips the update (counted, named), too many in a row stop
the run with the step, the batch's image ids and a hint while the last good checkpoint stays; logit_scale is
clamped to ln(100) after every step, as CLIP does."""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from test_train_fit import _config, _weights, manifest, one_torch_thread  # noqa: F401 (fixtures)

from medclip.train import fit
from medclip.train.config import ConfigError, load_config
from medclip.train.module import NonFiniteLossError, clamp_logit_scale

POISON = f"{__name__}.PoisonImages"
#: what the poisoning callback saw: (step, names of the weights and buffers that step changed)
SEEN: list[tuple[int, list[str]]] = []


class PoisonImages(L.Callback):
    """Puts a NaN pixel (or an Inf) into the first image of the batches of the given steps (1-based), as a
    corrupted image would, and records whether the poisoned step changed any weight."""

    def __init__(self, steps: list[int], value: str = "nan", rank: int | None = None) -> None:
        self.steps, self.value, self.rank = set(steps), float(value), rank
        self._before: dict[str, torch.Tensor] | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._before = None
        if trainer.global_step + 1 in self.steps and self.rank in (None, trainer.global_rank):
            batch["images"][0, 0, 0, 0] = self.value
            self._before = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        if self._before is not None:
            after = pl_module.model.state_dict()
            SEEN.append((trainer.global_step, [k for k, v in self._before.items() if not torch.equal(v, after[k])]))


def _base(manifest: Path, out: Path, **trainer: Any) -> dict[str, Any]:  # noqa: F811
    cfg = _config({"manifest": str(manifest)}, out, val_check_interval=None, check_val_every_n_epoch=None, **trainer)
    cfg["trainer"]["limit_val_batches"] = 0
    cfg["checkpoint"]["every_n_steps"] = 2
    return cfg


def test_nan_and_inf_steps_are_skipped_counted_and_named_and_the_run_finishes(
    manifest: Path,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    SEEN.clear()
    cfg = _base(manifest, tmp_path / "run", max_steps=5)
    cfg["trainer"]["callbacks"] = [
        {"class_path": POISON, "init_args": {"steps": [2]}},
        {"class_path": POISON, "init_args": {"steps": [4], "value": "inf"}},
    ]
    with caplog.at_level(logging.WARNING, logger="medclip.train.module"):
        model_dir = fit(cfg)
    skipped = [r.getMessage() for r in caplog.records if "update skipped" in r.getMessage()]
    assert len(skipped) == 2, skipped
    assert skipped[0].startswith("step 2: loss nan not finite: update skipped (1 in a row, 1 in this run")
    assert skipped[1].startswith("step 4: loss ") and "(1 in a row, 2 in this run" in skipped[1]
    assert all("batch images (salted ids): img" in m and "/" not in m for m in skipped)  # ids, never paths
    assert SEEN == [(2, []), (4, [])]  # the poisoned steps changed no weight, nor BatchNorm's running statistics
    weights = _weights(model_dir)
    assert all(bool(torch.isfinite(w).all()) for w in weights.values())
    record = json.loads((model_dir / "config.json").read_text())["extra"]["training"]
    assert record["nonfinite_steps_skipped"] == 2  # the model card's record counts them
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 5  # skipped steps still count as steps (the lr schedule advances)


def test_nan_steps_in_a_row_stop_the_run_naming_step_and_images_and_keep_the_last_good_checkpoint(
    manifest: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    cfg = _base(manifest, tmp_path / "run", max_steps=8)
    cfg["optim"]["max_nonfinite_steps"] = 2
    cfg["trainer"]["callbacks"] = [{"class_path": POISON, "init_args": {"steps": [3, 5, 6, 7, 8]}}]
    with pytest.raises(NonFiniteLossError) as info:
        fit(cfg)
    message = str(info.value)
    assert message.startswith("training stopped at step 6: the loss or gradients were NaN/Inf in 2 steps in a row")
    assert "optim.max_nonfinite_steps = 2" in message and "(salted ids): img" in message
    assert "lower optim.lr" in message and "try 32-true" in message
    checkpoints = tmp_path / "run" / "checkpoints"
    assert str(checkpoints) in message
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt", "step-00000002.ckpt", "step-00000004.ckpt"]
    last = torch.load(checkpoints / "last.ckpt", weights_only=False)
    assert last["global_step"] == 4
    assert all(bool(torch.isfinite(v).all()) for v in last["state_dict"].values() if v.is_floating_point())
    assert not (tmp_path / "run" / "model").exists()  # no model exported from a stopped run

    # the kept checkpoint resumes (with the bad data gone) to the end
    resumed = copy.deepcopy(cfg)
    resumed["trainer"]["callbacks"] = []
    resumed["resume"] = "last"
    assert (fit(resumed) / "model.safetensors").is_file()


def test_logit_scale_is_clamped_to_ln_100_after_every_step(manifest: Path, tmp_path: Path) -> None:  # noqa: F811
    from medclip.model import create_model

    model = create_model("tiny-test")
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))
    clamp_logit_scale(model)
    assert model.logit_scale.item() == pytest.approx(math.log(100.0))
    with torch.no_grad():
        model.logit_scale.fill_(-3.0)
    clamp_logit_scale(model)
    assert model.logit_scale.item() == 0.0  # scale at least 1

    # in training: a temperature that starts above the cap is brought to it by the first step and stays there
    # (forward's clamp alone would leave it above the cap with no gradient, forever)
    cfg = _base(manifest, tmp_path / "run", max_steps=2)
    cfg["model"]["overrides"]["init_logit_scale"] = math.log(500.0)
    scale = _weights(fit(cfg))["logit_scale"].item()
    assert math.log(100.0) - 0.05 < scale <= math.log(100.0) + 1e-6


def test_max_nonfinite_steps_is_validated(tmp_path: Path) -> None:
    data = {"data": {"manifest": str(tmp_path / "m.parquet")}}
    assert load_config(data)["optim"]["max_nonfinite_steps"] == 5
    with pytest.raises(ConfigError, match="optim.max_nonfinite_steps must be an integer >= 1"):
        load_config({**data, "optim": {"max_nonfinite_steps": 0}})


def test_a_nan_on_one_rank_makes_every_rank_skip_and_stop_together(manifest: Path, tmp_path: Path) -> None:  # noqa: F811
    """Two DDP processes (gloo); rank 1 alone meets NaN batches: both skip the same steps, and when too many come
    in a row both stop with the message (no rank is left waiting in a collective)."""
    import os
    import subprocess
    import sys

    import yaml
    from test_train_fit import REPO_ROOT

    cfg = _base(manifest, tmp_path / "ddp", max_steps=4, strategy="ddp", devices=2)
    cfg["data"]["batch_size"] = 3
    cfg["optim"]["max_nonfinite_steps"] = 2
    cfg["trainer"]["callbacks"] = [{"class_path": POISON, "init_args": {"steps": [2, 3], "rank": 1}}]
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(cfg))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "medclip.train", "--config", str(tmp_path / "ddp.yaml")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    # the loss gathers features across ranks, so rank 0's loss is NaN too; either way both skip step 2 and stop at 3
    assert done.stderr.count("step 2: loss nan not finite: update skipped (1 in a row") == 2
    assert done.stderr.count("error: training stopped at step 3: the loss or gradients were NaN/Inf in 2 steps") == 2
    last = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 2 and not (tmp_path / "ddp" / "model").exists()
