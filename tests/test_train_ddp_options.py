"""Two CPU processes (DDP, gloo) with the small-data options: mixed sources, concept balance, label text and a
locked image tower whose features each rank takes from the feature cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_train_fit import REPO_ROOT, _config
from test_train_sources import make_manifest


@pytest.mark.slow
def test_two_process_ddp_with_sources_and_feature_cache(tmp_path: Path) -> None:
    reports = make_manifest(
        tmp_path, "rep", [("pleural_effusion" if k % 2 else None, "There is a finding.") for k in range(20)]
    )
    labels = make_manifest(tmp_path, "lab", [(None if k % 3 else "pneumothorax", None) for k in range(20)])
    cfg = _config(
        {}, tmp_path / "ddp", max_steps=3, strategy="ddp", devices=2, val_check_interval=None, check_val_every_n_epoch=1
    )
    cfg["data"].update(
        image_size=16,
        batch_size=3,
        concept_balance={"enabled": True, "max_share": 0.5},
        sources=[
            {"manifest": str(reports), "weight": 1, "name": "rep"},
            {"manifest": str(labels), "weight": 1, "name": "lab", "text": "labels"},
        ],
    )
    cfg["model"] = {"name": "tiny-test", "overrides": {"vision": {"image_size": 16}}, "lock_image": True}
    cfg["checkpoint"]["every_n_steps"] = 3
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "medclip.train", "--config", str(config_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = torch.load(tmp_path / "ddp" / "checkpoints" / "step-00000003.ckpt", weights_only=False)
    assert ckpt["MedClipDataModule"]["world_size"] == 2 and ckpt["global_step"] == 3
    assert len(list((tmp_path / "ddp" / "feature_cache").glob("*.safetensors"))) == 1
    saved = yaml.safe_load((tmp_path / "ddp" / "config.yaml").read_text())
    assert saved["data"]["feature_cache"] is True
