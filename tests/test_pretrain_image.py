"""``medclip pretrain-image``: DINO self-distillation on a cache's images (tiny seeded runs on real radiographs
from the bundled Kermany sample, 64 px cache, 64 / 32 px crops, the tiny-test tower)."""

from __future__ import annotations

import builtins
import dataclasses
import math
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("lightly")

from medclip.data.cache import CacheConfig, CacheError, build_cache  # noqa: E402
from medclip.data.manifest import write_manifest  # noqa: E402
from medclip.optional import MissingExtraError  # noqa: E402
from medclip.pretrain.config import PretrainImageConfig  # noqa: E402
from medclip.pretrain.dino import (  # noqa: E402
    DinoDataModule,
    DinoModule,
    build_backbone,
    pretrain_image,
    resolve_tower,
)
from medclip.sample import SAMPLE_KERMANY  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 real pediatric chest X-rays of the bundled Kermany sample, cached at 64 px."""
    root = tmp_path_factory.mktemp("pretrain_cache")
    images = sorted((SAMPLE_KERMANY / "images").glob("*.jpeg"))[:16]
    rows = [
        {
            "image_id": f"k{i:02d}",
            "path": str(path),
            "kind": "image",
            "files": None,
            "patient_id": f"p{i:02d}",
            "study_id": f"s{i:02d}",
            "series_id": f"s{i:02d}",
            "modality": "CR",
            "report_text": "",
            "split": "train",
        }
        for i, path in enumerate(images)
    ]
    manifest = write_manifest(pd.DataFrame(rows), root / "manifest.parquet", root=SAMPLE_KERMANY)
    build_cache(manifest, root / "cache", config=CacheConfig(image_size=64, shard_size=8), workers=1, progress=False)
    return root / "cache"


def _cfg(cache: Path, out: Path, **kw) -> PretrainImageConfig:
    base = dict(
        cache_dir=str(cache),
        output_dir=str(out),
        tower="tiny-test",
        steps=4,
        batch_size=4,
        global_size=64,
        local_size=32,
        n_local=2,
        output_dim=64,
        hidden_dim=64,
        bottleneck_dim=32,
        lr=1e-3,
        warmup_steps=0,
        accelerator="cpu",
        log_every_n_steps=1,
        every_n_steps=2,
        seed=3,
        precise_bn_images=0,  # the exported tower is the trained backbone as is (precise BN: its own test)
    )
    base.update(kw)
    return PretrainImageConfig(**base)


class _Losses(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def test_teacher_is_the_ema_of_the_student_and_the_loss_is_finite(cache: Path, tmp_path: Path) -> None:
    cfg = _cfg(cache, tmp_path)  # a 4-step schedule, of which one step runs
    vision, weights = resolve_tower(cfg.tower)
    torch.manual_seed(0)
    module = DinoModule(cfg, vision, weights)
    teacher0 = {k: v.detach().clone() for k, v in module.teacher_backbone.named_parameters()}
    student0 = {k: v.detach().clone() for k, v in module.student_backbone.named_parameters()}
    assert all(torch.equal(teacher0[k], student0[k]) for k in teacher0)  # the teacher starts as the student
    assert not any(p.requires_grad for p in module.teacher_backbone.parameters())
    assert not any(p.requires_grad for p in module.teacher_head.parameters())
    losses = _Losses()
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[losses],
    )
    trainer.fit(module, datamodule=DinoDataModule(cfg))
    m = module.last_momentum
    assert m == pytest.approx(cfg.momentum)  # the cosine schedule starts at `momentum`
    changed = 0
    for name, teacher in module.teacher_backbone.named_parameters():
        student = dict(module.student_backbone.named_parameters())[name].detach()
        expected = m * teacher0[name] + (1 - m) * student
        torch.testing.assert_close(teacher.detach(), expected, atol=1e-6, rtol=0)
        changed += not torch.equal(student, student0[name])
    assert changed > 0  # the student trained
    heads = dict(module.student_head.named_parameters())
    for name, teacher in module.teacher_head.named_parameters():
        assert not torch.equal(teacher.detach(), heads[name].detach()) or not heads[name].requires_grad
    assert len(losses.losses) == 1 and all(math.isfinite(v) for v in losses.losses)


def _crash_after(step: int):
    def hook(self, outputs, batch, batch_idx):  # runs after the checkpoint callbacks of this step
        if self.global_step == step:
            raise RuntimeError("simulated crash")

    return hook


def test_run_tower_folder_loads_by_name_and_resume_is_exact(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    full = _cfg(cache, tmp_path / "full")
    tower = pretrain_image(full)
    out = capsys.readouterr().out
    losses = [float(line.split("loss ")[1].split()[0]) for line in out.splitlines() if line.startswith("step ")]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)  # progress lines off a terminal
    assert sorted(p.name for p in tower.iterdir()) == ["config.json", "model.safetensors"]
    from safetensors.torch import load_file

    teacher_weights = load_file(str(tower / "model.safetensors"))
    ckpt = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4

    # the tower folder: through the vision factory by name, the same features as the trained teacher backbone
    vision, _ = resolve_tower("tiny-test")
    trained = build_backbone(vision, None, load_pretrained=False).eval()
    prefix = "teacher_backbone."
    trained.load_state_dict({k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)})
    from medclip.model import create_model

    model = create_model("tiny-test", pretrained=True, vision={"name": str(tower), "pretrained": True}).eval()
    loaded, _ = resolve_tower(str(tower))
    again = build_backbone(loaded, None).eval()
    x = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = trained(x)
        torch.testing.assert_close(model.visual.features(x), expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(again(x), expected, atol=1e-6, rtol=0)
    # or the timm architecture + the weight file (a checkpoint of fit then names no folder)
    by_file = create_model(
        "tiny-test", vision={"name": "resnet10t", "pretrained": str(tower / "model.safetensors")}
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(by_file.visual.features(x), expected, atol=1e-6, rtol=0)
    # `medclip fit`'s config path: the bundled quickstart config (offline-default) with the folder as its tower
    from medclip.train import load_config
    from medclip.train.configs import resolve_config

    fit_cfg = load_config(
        resolve_config("quickstart"),
        [f"model.overrides.vision.name={tower}", "model.overrides.vision.pretrained=true"],
    )
    clip = create_model(fit_cfg["model"]["name"], **fit_cfg["model"]["overrides"])
    assert clip.config.vision.name == str(tower)
    for key, value in clip.visual.backbone.model.state_dict().items():
        torch.testing.assert_close(value, teacher_weights[key])
    import json

    saved = json.loads((tower / "config.json").read_text())
    assert saved["architecture"] == "resnet10t" and saved["medclip"]["preprocess"]["image_size"] == 64
    assert saved["medclip"]["vision"]["std"] == [0.25] and saved["medclip"]["pretraining"]["steps"] == 4

    # the student, when asked for
    student = pretrain_image(dataclasses.replace(full, export="student", resume="last"))  # nothing left to train
    prefix = "student_backbone."
    trained.load_state_dict({k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)})
    with torch.no_grad():
        torch.testing.assert_close(build_backbone(resolve_tower(str(student))[0], None).eval()(x), trained(x))

    # a run stopped after step 2 continues from its last checkpoint to the same weights
    monkeypatch.setattr(DinoModule, "on_train_batch_end", _crash_after(2), raising=False)
    part = _cfg(cache, tmp_path / "part")
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain_image(part)
    assert torch.load(tmp_path / "part" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
    monkeypatch.undo()
    resumed = pretrain_image(part)
    assert "training: step 2/4" in capsys.readouterr().out
    a, b = teacher_weights, load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)


def test_precise_bn_reestimates_only_the_batchnorm_statistics(cache: Path, tmp_path: Path) -> None:
    """The default export re-estimates the BatchNorm running statistics on the cache's images as stored (an
    average over batches, what `recompute_batchnorm_statistics` computes), weights untouched, and says so."""
    from safetensors.torch import load_file

    from medclip.pretrain.dino import open_cache, recompute_batchnorm_statistics

    tower = pretrain_image(_cfg(cache, tmp_path / "run", precise_bn_images=PretrainImageConfig.precise_bn_images))
    saved = load_file(str(tower / "model.safetensors"))
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    prefix = "teacher_backbone.backbone.model."
    teacher = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    stats = [k for k in saved if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert stats and saved.keys() == teacher.keys()
    for key in saved:
        if key in stats:
            continue
        torch.testing.assert_close(saved[key], teacher[key], rtol=0, atol=0, msg=key)  # weights as trained
    assert any(not torch.equal(saved[k], teacher[k]) for k in stats)  # statistics: no longer DINO's crops'
    vision, _ = resolve_tower("tiny-test")
    expected = build_backbone(vision, None, load_pretrained=False)
    expected.backbone.model.load_state_dict(teacher)
    dataset = open_cache(str(cache), "train")
    assert recompute_batchnorm_statistics(expected.eval(), dataset, 2048, seed=3) == len(dataset)
    assert not expected.training  # its mode put back
    for key in stats:
        torch.testing.assert_close(saved[key], expected.backbone.model.state_dict()[key], rtol=1e-5, atol=1e-6, msg=key)
    import json

    record = json.loads((tower / "config.json").read_text())["medclip"]["pretraining"]
    assert record["batchnorm_statistics"] == f"re-estimated on {len(dataset)} cache images as stored"


def test_precise_bn_statistics_are_the_batch_average() -> None:
    """On one BatchNorm layer: the running mean is the mean of the batches' means, the running variance the
    mean of their unbiased variances; a subset of max_images is used when the data holds more; momentum restored;
    a model without BatchNorm is left alone."""
    from medclip.pretrain.dino import recompute_batchnorm_statistics

    gen = torch.Generator().manual_seed(0)
    images = [{"image": torch.randn(1, 4, 4, generator=gen) * 3 + 1} for _ in range(8)]
    norm = torch.nn.BatchNorm2d(1, momentum=0.1)
    assert recompute_batchnorm_statistics(norm, images, 100, batch_size=4) == 8
    batches = torch.stack([it["image"] for it in images]).split(4)
    torch.testing.assert_close(norm.running_mean, torch.stack([b.mean() for b in batches]).mean().reshape(1))
    torch.testing.assert_close(norm.running_var, torch.stack([b.var() for b in batches]).mean().reshape(1))
    assert norm.momentum == 0.1 and norm.training
    assert recompute_batchnorm_statistics(norm, images, 4, batch_size=4) == 4
    plain = torch.nn.Conv2d(1, 1, 1)
    before = plain.weight.detach().clone()
    assert recompute_batchnorm_statistics(plain, images, 8) == 0 and torch.equal(plain.weight, before)


def test_clear_errors(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medclip.model.resources import ModelLoadError

    with pytest.raises(ModelLoadError, match="unknown tower 'no-such-net'"):
        resolve_tower("no-such-net")
    with pytest.raises(ModelLoadError, match="folder not found"):
        resolve_tower(str(tmp_path / "gone" / "tower"))
    with pytest.raises(ValueError, match="3D volumes .* may come later"):
        resolve_tower("ct-resnet3d-minilm")
    with pytest.raises(CacheError, match="no images for split 'val'"):
        pretrain_image(_cfg(cache, tmp_path / "x", split="val"))
    with pytest.raises(CacheError, match="not a medclip cache"):
        pretrain_image(_cfg(tmp_path, tmp_path / "x"))
    assert not (tmp_path / "x").exists()  # nothing written

    real_import = builtins.__import__

    def no_lightly(name, *args, **kwargs):
        if name == "lightly" or name.startswith("lightly."):
            raise ModuleNotFoundError(f"No module named {name!r}", name="lightly")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lightly)
    for key in [k for k in list(__import__("sys").modules) if k == "lightly" or k.startswith("lightly.")]:
        monkeypatch.delitem(__import__("sys").modules, key)
    with pytest.raises(MissingExtraError, match=r"pip install 'medclip-kit\[pretrain\]'"):
        pretrain_image(_cfg(cache, tmp_path / "y"))
    from medclip.cli import main

    assert main(["pretrain-image", "--cache", str(cache), "-o", str(tmp_path / "y")]) == 2
    assert not (tmp_path / "y").exists()


def test_volume_cache_is_refused(tmp_path: Path) -> None:
    nib = pytest.importorskip("nibabel")
    from medclip.data.indexer import index_export

    export = tmp_path / "export" / "patient1"
    export.mkdir(parents=True)
    volume = np.random.default_rng(0).random((16, 16, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), export / "ct.nii.gz")
    index_export(
        tmp_path / "export", tmp_path / "m.parquet", salt="s", workers=1, progress=False, fractions=(1.0, 0.0, 0.0)
    )
    config = CacheConfig(volume_shape=(4, 8, 8), volume_spacing=(2.0, 2.0, 2.0))
    build_cache(tmp_path / "m.parquet", tmp_path / "c", config=config, workers=1, progress=False)
    with pytest.raises(CacheError, match="holds volumes .* may come later"):
        pretrain_image(_cfg(tmp_path / "c", tmp_path / "out", batch_size=1))


def test_config_yaml_and_flags(tmp_path: Path) -> None:
    from medclip.cli import build_parser
    from medclip.pretrain.cli import config_from_args

    (tmp_path / "p.yaml").write_text("steps: 7\nbatch_size: 8\nglobal_size: 128\nlocal_size: 64\n")
    args = build_parser().parse_args(
        ["pretrain-image", "--cache", "c", "--config", str(tmp_path / "p.yaml"), "--steps", "9", "--resume", "none"]
    )
    cfg = config_from_args(args)
    assert (cfg.steps, cfg.batch_size, cfg.global_size, cfg.local_size, cfg.resume) == (9, 8, 128, 64, None)
    assert cfg.tower == "offline-default" and cfg.hflip is False and cfg.export == "teacher"
    (tmp_path / "bad.yaml").write_text("stepz: 7\n")
    with pytest.raises(ValueError, match="unknown pretrain-image keys \\['stepz'\\]"):
        config_from_args(
            build_parser().parse_args(["pretrain-image", "--cache", "c", "--config", str(tmp_path / "bad.yaml")])
        )


def test_offline_default_tower_loads_its_imagenet_weights() -> None:
    """The default tower: EfficientNet-Lite0 with the ImageNet weights of the efficientnet-lite0 package."""
    from medclip.model import get_model_config

    vision, weights = resolve_tower("offline-default")
    assert vision.name == "tf_efficientnet_lite0" and weights is None
    assert vision.pretrained == get_model_config("offline-default").vision.pretrained
    a = build_backbone(vision, None)
    b = build_backbone(vision, None, load_pretrained=False)
    stem = "backbone.model.conv_stem.weight"
    assert not torch.equal(a.state_dict()[stem], b.state_dict()[stem])


def test_a_medclip_checkpoint_as_the_tower(tmp_path: Path) -> None:
    """--tower <checkpoint folder>: its trained image backbone, with its normalisation."""
    from medclip.model import create_model

    torch.manual_seed(1)
    model = create_model("tiny-test").eval()
    model.save_pretrained(tmp_path / "model")
    vision, weights = resolve_tower(str(tmp_path / "model"))
    assert weights is not None and vision.std == [0.25]
    backbone = build_backbone(vision, weights).eval()
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), model.visual.features(x), atol=1e-6, rtol=0)
