"""End-to-end training on CPU: fit from a manifest, 2-process DDP, bad paths.

The fixture and helpers here are reused by tests/test_train_resume.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from medclip.data.manifest import write_manifest
from medclip.train import fit

REPO_ROOT = Path(__file__).resolve().parents[1]
FINDINGS = ["pleural effusion", "cardiomegaly", "pneumothorax", "consolidation"]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models on a shared CPU: one thread avoids contention that makes each step many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny export of 32 px PNGs (24 train, 6 val) with reports of varied length, and its manifest."""
    root = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(0)
    rows = []
    for k in range(30):
        finding = FINDINGS[k % len(FINDINGS)]
        pixels = (rng.random((32, 32)) * 60).astype(np.uint8)
        pixels[4 + 6 * (k % 4) : 10 + 6 * (k % 4), 8:24] += 150  # the finding's "signature"
        path = root / f"study{k // 2:02d}" / f"img{k:02d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(path)
        rows.append(
            {
                "image_id": f"img{k:02d}",
                "path": str(path),
                "kind": "image",
                "files": None,
                "patient_id": f"pat{k // 4:02d}",
                "study_id": f"study{k // 2:02d}",
                "series_id": f"ser{k // 2:02d}",
                "modality": "CR",
                "report_indication": "cough.",
                "report_findings": f"There is {finding}. " + "Lungs otherwise clear. " * (k % 5),
                "report_impression": f"{finding.capitalize()}.",
                "report_text": f"Findings: {finding}.",
                "split": "val" if k >= 24 else "train",
                f"label.{finding.replace(' ', '_')}": 1.0,
            }
        )
    df = pd.DataFrame(rows)
    for finding in FINDINGS:
        column = f"label.{finding.replace(' ', '_')}"
        df[column] = df[column].astype("float32")  # NaN where not mentioned
    return write_manifest(df, root / "manifest.parquet", root=root)


def _config(source: dict[str, Any], out: Path, **trainer: Any) -> dict[str, Any]:
    return {
        "seed": 11,
        "output_dir": str(out),
        "data": {
            **source,
            "batch_size": 4,
            "num_workers": 0,
            "image_size": 32,
            "text_augmentation": False,
            "max_text_tokens": 48,
        },
        # the image tower trains (the default locks it, LiT): these tests are about the full training mechanics
        "model": {"name": "tiny-test", "overrides": {"vision": {"image_size": 32}}, "lock_image": False},
        "loss": {"name": "infonce"},
        "optim": {"lr": 3e-3, "warmup_steps": 2, "weight_decay": 0.01},
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 9,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "val_check_interval": 3,
            "check_val_every_n_epoch": None,
            **trainer,
        },
        "checkpoint": {"every_n_steps": 4},
    }


CRASH_AFTER = f"{__name__}.CrashAfter"


class CrashAfter(L.Callback):
    """Kills a run (raises) at the end of training step ``step``, as a node failure would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError("simulated crash")


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def test_fit_from_manifest_writes_checkpoints_logs_and_model(manifest: Path, tmp_path: Path) -> None:
    cfg = _config({"manifest": str(manifest)}, tmp_path / "run", max_steps=8)
    cfg["model"]["grad_checkpointing"] = True
    cfg["loss"] = {"name": "multi_positive"}
    model_dir = fit(cfg)
    assert model_dir == tmp_path / "run" / "model"
    assert {"config.json", "model.safetensors"} <= {p.name for p in model_dir.iterdir()}
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["last.ckpt", "step-00000004.ckpt", "step-00000008.ckpt"]  # no leftover temporary files

    from medclip.model import DualEncoder

    reloaded = DualEncoder.from_pretrained(model_dir)
    with torch.no_grad():
        features = reloaded.encode_image(torch.rand(2, 1, 32, 32))
    assert features.shape == (2, 32) and torch.isfinite(features).all()

    from medclip.train import DualEncoderModule

    restored = DualEncoderModule.load_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert restored.loss_name == "multi_positive"
    torch.testing.assert_close(restored.model.logit_scale.detach(), reloaded.logit_scale.detach())

    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 8 and ckpt["optimizer_states"] and ckpt["lr_schedulers"]
    position = ckpt["MedClipDataModule"]
    assert position == {"epoch": 1, "batches_done": 2, "batch_size": 4, "world_size": 1, "samples_consumed": 8}
    # no PHI or paths in a Lightning checkpoint: nothing of the manifest but the data position
    blob = repr({k: v for k, v in ckpt.items() if k != "state_dict"})
    assert str(manifest.parent) not in blob and "pat0" not in blob and "Lungs otherwise" not in blob

    metrics = pd.read_csv(next((tmp_path / "run" / "csv_logs").rglob("metrics.csv")))
    assert {"train/loss", "train/acc_i2t", "val/loss"} <= set(metrics.columns)
    lr_columns = [c for c in metrics.columns if c.startswith("lr-AdamW")]  # one per parameter group
    assert lr_columns
    lrs = metrics[lr_columns[0]].dropna().tolist()
    assert lrs[0] < lrs[1] and lrs[-1] < max(lrs)  # warmup, then cosine decay
    assert list((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["trainer"]["max_steps"] == 8


@pytest.mark.slow
def test_two_process_ddp_fit_on_cpu(manifest: Path, tmp_path: Path) -> None:
    """``python -m medclip.train`` with strategy=ddp on 2 CPU processes (gloo), as torchrun/SLURM would run it."""
    cfg = _config({"manifest": str(manifest)}, tmp_path / "ddp", max_steps=3, strategy="ddp", devices=2)
    cfg["data"]["batch_size"] = 3
    cfg["checkpoint"]["every_n_steps"] = 3
    cfg["loss"] = {"name": "multi_positive"}
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "medclip.train",
            "--config",
            str(config_path),
            "trainer.max_steps=4",
            "checkpoint.every_n_steps=2",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == str(tmp_path / "ddp" / "model")
    ckpt = torch.load(tmp_path / "ddp" / "checkpoints" / "step-00000004.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4
    # 24 train images dealt to 2 ranks in batches of 3: step 4 ends epoch 0 having used every image once
    assert ckpt["MedClipDataModule"] == {
        "epoch": 0,
        "batches_done": 4,
        "batch_size": 3,
        "world_size": 2,
        "samples_consumed": 24,
    }
    assert (tmp_path / "ddp" / "model" / "model.safetensors").is_file()


def test_bad_data_paths_are_named(tmp_path: Path) -> None:
    from medclip.train import ConfigError

    cfg = _config({"manifest": str(tmp_path / "nope.parquet")}, tmp_path / "run")
    with pytest.raises(ConfigError, match="nope.parquet does not exist"):
        fit(cfg)
    cfg["resume"] = str(tmp_path / "missing.ckpt")
    cfg["data"]["manifest"] = str(tmp_path)
    with pytest.raises(ConfigError, match="missing.ckpt not found"):
        fit(cfg)
