"""Image-only self-distillation (DINO, Caron et al. 2021) of a 2D vision tower on a medclip cache's images.

A student (the tower's backbone + a DINO projection head) learns to match, on every crop of an image, the
output of a teacher that sees only the two global crops; the teacher is the exponential moving average
(EMA) of the student, its outputs are centred (a running mean, against collapse) and sharpened (a low
temperature). The loss, projection head and EMA helpers are lightly's (extra ``pretrain``):
``lightly.loss.DINOLoss``, ``lightly.models.modules.DINOProjectionHead``,
``lightly.models.utils.update_momentum`` / ``deactivate_requires_grad`` / ``cosine_schedule``.

Multi-crop, radiograph-safe (:func:`multi_crop_views`, built on :class:`medclip.data.transforms.ImageAugmentation`):
random resized crops (2 global of 40-100 % of the image, ``n_local`` local of 5-40 %), a small rotation
(+-10 degrees), gamma and contrast (exposure and windowing vary between scanners) and faint Gaussian noise.
No colour jitter, grayscale conversion or solarisation (the images are one grey channel whose values mean
density), and no horizontal flip unless asked for (``hflip``): laterality matters (a left effusion is not a
right one; situs, dextrocardia). Every view of a sample is one seeded function of ``(seed, epoch, index)``,
so a resumed run sees the same crops.

Training runs under Lightning like ``medclip fit`` (``devices`` > 1: DDP; the centre is averaged across ranks
by lightly), with the same checkpoints (``<output>/checkpoints/last.ckpt``, written atomically; the data
position saved in each), resume and plain progress lines off a terminal. The result is a tower folder
(:func:`save_tower`) that the vision factory loads by name (timm's ``local-dir`` layout).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import random
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medclip.model.config import VisionConfig
from medclip.model.preprocess import PreprocessConfig
from medclip.model.resources import ModelLoadError

from .config import DEFAULT_TOWER, PretrainImageConfig  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

#: The optional extra that brings lightly.
EXTRA = "pretrain"
PURPOSE = "medclip pretrain-image (DINO self-distillation)"
#: ``config.json`` marker of a tower folder written by :func:`save_tower`.
TOWER_FORMAT = "medclip.vision_tower"
TOWER_FORMAT_VERSION = 1
TOWER_CONFIG = "config.json"
TOWER_WEIGHTS = "model.safetensors"
VOLUMES_LATER = "3D volumes are not supported by `medclip pretrain-image` yet (2D images only; they may come later)"


def lightly_modules() -> dict[str, Any]:
    """lightly's DINO pieces, or :class:`~medclip.optional.MissingExtraError` naming the extra ``pretrain``."""
    from medclip.optional import import_optional

    loss = import_optional("lightly.loss", EXTRA, PURPOSE)
    heads = import_optional("lightly.models.modules", EXTRA, PURPOSE)
    utils = import_optional("lightly.models.utils", EXTRA, PURPOSE)
    scheduler = import_optional("lightly.utils.scheduler", EXTRA, PURPOSE)
    return {
        "DINOLoss": loss.DINOLoss,
        "DINOProjectionHead": heads.DINOProjectionHead,
        "update_momentum": utils.update_momentum,
        "deactivate_requires_grad": utils.deactivate_requires_grad,
        "cosine_schedule": scheduler.cosine_schedule,
    }


# ---------------------------------------------------------------------------------------------- towers
class ImageBackbone(nn.Module):
    """A 2D tower's normalisation + timm backbone: (B, 1, H, W) in [0, 1] -> pooled features (B, F), exactly
    as :meth:`medclip.model.vision.VisionTower.features` computes them."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, cfg: VisionConfig, load_pretrained: bool = True) -> None:
        super().__init__()
        from medclip.model.vision import TimmBackbone

        if cfg.is_volume:
            raise ValueError(f"{VOLUMES_LATER}: the tower is a {cfg.kind} volume tower")
        self.cfg = cfg
        self.backbone = TimmBackbone(cfg, load_pretrained)
        self.num_features = self.backbone.num_features
        shape = (1, -1, 1, 1)
        self.register_buffer("mean", torch.tensor(cfg.mean, dtype=torch.float32).reshape(shape), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std, dtype=torch.float32).reshape(shape), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] != self.cfg.in_chans:
            images = images.expand(-1, self.cfg.in_chans, -1, -1)  # a grey image fed to an RGB stem
        features: torch.Tensor = self.backbone((images.float() - self.mean) / self.std)
        return features


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def resolve_tower(name: str, pretrained: bool = True) -> tuple[VisionConfig, tuple[Path, str] | None]:
    """The vision config to continue from, and (weight file, key prefix) to load after building it, if any.

    ``name``: a bundled model config (``offline-default``, ...) or a model config ``.json`` (its vision
    tower, with its weights), a medclip checkpoint folder (its trained vision backbone), a tower folder of
    ``medclip pretrain-image`` or any timm ``save_pretrained`` folder, or a timm model name or ``hf-hub:`` id
    (timm's own weights: from the local Hugging Face cache when offline). ``pretrained=False``: random init.
    """
    from medclip.model.config import DualEncoderConfig
    from medclip.model.factory import get_model_config, list_models
    from medclip.model.resources import looks_like_local_path

    path = Path(name).expanduser()
    weights: tuple[Path, str] | None = None
    if not path.exists() and name not in list_models() and looks_like_local_path(name):
        raise ModelLoadError(f"tower {name!r}: folder not found: {path}")
    if path.is_dir():
        data = _json(path / TOWER_CONFIG)
        if data is None:
            raise ModelLoadError(f"tower {name!r}: folder has no readable {TOWER_CONFIG}")
        if isinstance(data.get("medclip"), dict) and data["medclip"].get("format") == TOWER_FORMAT:
            saved = dict(data["medclip"]["vision"])
            cfg = VisionConfig(**{**saved, "name": str(path.resolve()), "pretrained": bool(pretrained)})
        elif "architecture" in data:  # a timm save_pretrained folder
            cfg = VisionConfig(name=str(path.resolve()), pretrained=bool(pretrained), in_chans=1)
        elif "vision" in data:  # a medclip checkpoint: its trained vision backbone
            from medclip.model.dual_encoder import read_checkpoint_config

            cfg = read_checkpoint_config(path).vision
            cfg = dataclasses.replace(cfg, pretrained=False)
            if pretrained:
                weights = (path / TOWER_WEIGHTS, "visual.backbone.")
        else:
            raise ModelLoadError(f"tower {name!r}: {path / TOWER_CONFIG} is neither a medclip checkpoint nor a tower")
    elif path.suffix == ".json" and path.is_file():
        cfg = DualEncoderConfig.from_json(path).vision
    elif name in list_models():
        cfg = get_model_config(name).vision
    else:
        import timm

        if not (timm.is_model(name) or name.startswith("hf-hub:")):
            raise ModelLoadError(
                f"unknown tower {name!r}: not a bundled model config ({', '.join(list_models())}), a model config "
                ".json, a medclip checkpoint or tower folder, nor a timm model name"
            )
        cfg = VisionConfig(name=name, pretrained=bool(pretrained), in_chans=1)
    if cfg.is_volume:
        raise ValueError(f"{VOLUMES_LATER}: tower {name!r} is a {cfg.kind} volume tower")
    if not pretrained:
        cfg = dataclasses.replace(cfg, pretrained=False)
    return cfg, weights


def build_backbone(cfg: VisionConfig, weights: tuple[Path, str] | None, load_pretrained: bool = True) -> ImageBackbone:
    """The backbone of ``cfg`` (its pretrained weights when ``load_pretrained``), then ``weights`` if given."""
    backbone = ImageBackbone(cfg, load_pretrained)
    if weights is not None and load_pretrained:
        from safetensors.torch import load_file

        file, prefix = weights
        state = {k[len(prefix) :]: v for k, v in load_file(str(file)).items() if k.startswith(prefix)}
        if not state:
            raise ModelLoadError(f"{file}: no {prefix}* tensors")
        backbone.backbone.load_state_dict(state)
    return backbone


def save_tower(
    backbone: ImageBackbone,
    folder: str | Path,
    *,
    preprocess: PreprocessConfig | None = None,
    record: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``backbone`` as a tower folder: timm's ``save_pretrained`` layout (``config.json`` with the timm
    architecture, its arguments and preprocessing, ``model.safetensors``; no pickles) plus, under the key
    ``medclip``, the medclip vision settings (normalisation, channels, pooling), what the images looked like
    (``preprocess``: the cache's window and size) and the pretraining record. All or nothing: written beside
    the target, then moved into place."""
    from timm.models import save_for_hf

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    cfg = backbone.cfg
    size = preprocess.image_size if preprocess is not None else cfg.image_size
    size = int(size) if isinstance(size, int) else int(max(size))
    model = backbone.backbone.model
    save_for_hf(model, str(staging), safe_serialization=True)  # the arguments every timm 1.0.x takes
    config_path = staging / TOWER_CONFIG
    data = json.loads(config_path.read_text())
    # what the weights expect (timm's own pretrained_cfg still describes the ImageNet RGB source): timm reads the
    # input channels from here when it loads the folder, and the arguments medclip builds the backbone with
    data.setdefault("pretrained_cfg", {}).update(
        input_size=[cfg.in_chans, size, size], mean=list(cfg.mean), std=list(cfg.std), num_classes=0
    )
    data["num_classes"] = 0
    data["model_args"] = {**dict(data.get("model_args") or {}), "in_chans": cfg.in_chans, "global_pool": cfg.pool}
    vision = {
        k: v
        for k, v in dataclasses.asdict(cfg).items()
        if k in ("kind", "in_chans", "mean", "std", "pool", "drop_path_rate", "model_kwargs", "channels_last")
    }
    vision["image_size"] = size
    data["medclip"] = {
        "format": TOWER_FORMAT,
        "version": TOWER_FORMAT_VERSION,
        "architecture": data.get("architecture"),
        "vision": vision,
        "preprocess": preprocess.to_dict() if preprocess is not None else None,
        "pretraining": dict(record or {}),
    }
    config_path.write_text(json.dumps(data, indent=2) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    return folder


# ---------------------------------------------------------------------------------------------- data
def multi_crop_views(image: torch.Tensor, rng: random.Random, cfg: PretrainImageConfig) -> list[torch.Tensor]:
    """2 global and ``cfg.n_local`` local views of a (1, H, W) image in [0, 1], each resized to its size."""
    from medclip.data.transforms import ImageAugmentation

    if image.ndim != 3:
        raise ValueError(f"{VOLUMES_LATER}: got a sample of shape {tuple(image.shape)}")

    def augmentation(scale: tuple[float, float]) -> ImageAugmentation:
        return ImageAugmentation(
            crop_scale=scale,
            rotate_degrees=cfg.rotate_degrees,
            gamma=cfg.gamma,
            contrast=cfg.contrast,
            noise_std=cfg.noise_std,
            hflip=cfg.hflip,
        )

    crops = [(augmentation(cfg.global_scale), cfg.global_size)] * 2
    crops += [(augmentation(cfg.local_scale), cfg.local_size)] * cfg.n_local
    views = []
    for augment, size in crops:
        view = augment(image, random.Random(rng.getrandbits(63)))
        view = F.interpolate(view[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        views.append(view.clamp(0.0, 1.0))
    return views


class MultiCropDataset(Dataset[dict[str, Any]]):
    """Items ``{"views": [...], "image_id"}`` of a cache split, keyed ``(index, epoch)`` (the resumable sampler's)."""

    def __init__(self, source: Any, cfg: PretrainImageConfig) -> None:
        self.source, self.cfg = source, cfg

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        from medclip.seeding import sample_seed

        index, epoch = key if isinstance(key, tuple) else (key, 0)
        item = self.source[index]
        rng = random.Random(sample_seed(self.cfg.seed, epoch, index))
        return {"views": multi_crop_views(item["image"], rng, self.cfg), "image_id": item["image_id"]}


def collate_views(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    views = [torch.stack([it["views"][v] for it in items]) for v in range(len(items[0]["views"]))]
    return {"views": views, "image": views[0], "image_id": [it["image_id"] for it in items]}


def open_cache(cache_dir: str, split: str) -> Any:
    """The cache split as a map-style dataset of images; clear errors for a missing or empty cache and for
    volumes."""
    from medclip.data.cache import CacheError, cache_shards, read_cache_index
    from medclip.data.dataset import CacheMapDataset

    index = read_cache_index(cache_dir)  # CacheError "not a medclip cache" when absent
    wanted = None if split == "all" else split
    shards = cache_shards(cache_dir, wanted)
    if not shards or sum(n for _, n in shards) == 0:
        splits = sorted({info.get("split") for info in index.get("shards", {}).values()} - {None})
        raise CacheError(
            f"{cache_dir}: the cache has no images for split {split!r} "
            f"(splits in it: {', '.join(map(str, splits)) or 'none'}); nothing to pretrain on"
        )
    dataset = CacheMapDataset(cache_dir, wanted, with_images=True)
    first = dataset[0]["image"]
    if first.ndim != 3:
        raise CacheError(f"{cache_dir}: holds volumes of shape {tuple(first.shape[1:])}. {VOLUMES_LATER}")
    return dataset


class DinoDataModule(L.LightningDataModule):
    """The cache split through the resumable sampler of ``medclip fit``; the data position is saved in every
    checkpoint and restored by :meth:`load_state_dict`, so a resumed run continues with the next batch."""

    def __init__(self, cfg: PretrainImageConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self._source: Any = None
        self._resume: dict[str, int] | None = None

    @property
    def source(self) -> Any:
        if self._source is None:
            self._source = open_cache(self.cfg.cache_dir, self.cfg.split)
        return self._source

    def preprocess(self) -> PreprocessConfig:
        """What the images look like (the cache's window and size)."""
        from medclip.data.cache import read_cache_index

        built = read_cache_index(self.cfg.cache_dir).get("config", {})
        return PreprocessConfig.from_dict(built, strict=False)

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is not None:
            return int(trainer.global_rank), int(trainer.world_size)
        from medclip.distributed import distributed_info

        return distributed_info()

    def train_dataloader(self) -> DataLoader[dict[str, Any]]:
        from medclip.train.sampler import ResumableSampler

        rank, world = self._rank_and_world()
        sampler = ResumableSampler(len(self.source), shuffle=True, seed=self.cfg.seed, rank=rank, world_size=world)
        if self._resume:
            sampler.resume_from(self._resume["epoch"], self._resume["samples_consumed"])
            sampler.set_epoch(self._resume["epoch"])
        if sampler.per_rank < self.cfg.batch_size:
            raise ValueError(
                f"{self.cfg.cache_dir}: split {self.cfg.split!r} has {len(self.source)} images, fewer than "
                f"batch_size={self.cfg.batch_size} per rank x {world} rank(s); lower --batch-size"
            )
        workers = int(self.cfg.num_workers)
        return DataLoader(
            MultiCropDataset(self.source, self.cfg),
            batch_size=self.cfg.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=workers,
            collate_fn=collate_views,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
            generator=torch.Generator().manual_seed(self.cfg.seed),
        )

    def state_dict(self) -> dict[str, Any]:
        trainer = self.trainer
        if trainer is None:
            return {}
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)
        _, world = self._rank_and_world()
        return {
            "epoch": int(trainer.current_epoch),
            "batches_done": done,
            "batch_size": self.cfg.batch_size,
            "world_size": world,
            "samples_consumed": done * self.cfg.batch_size * world,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self._resume = {k: int(state_dict[k]) for k in ("epoch", "batches_done", "samples_consumed")}


# ---------------------------------------------------------------------------------------------- module
class DinoModule(L.LightningModule):
    """Student (backbone + DINO head) trained by gradient, teacher = EMA of the student (lightly's helpers)."""

    def __init__(
        self,
        cfg: PretrainImageConfig,
        vision_cfg: VisionConfig,
        weights: tuple[Path, str] | None = None,
        load_pretrained: bool = True,
    ) -> None:
        super().__init__()
        lightly = lightly_modules()
        self.cfg = cfg
        self._cosine = lightly["cosine_schedule"]
        self._update_momentum = lightly["update_momentum"]
        self.student_backbone = build_backbone(vision_cfg, weights, load_pretrained)
        dim = self.student_backbone.num_features
        head = lightly["DINOProjectionHead"]
        with warnings.catch_warnings():  # lightly's head uses torch's older weight_norm (deprecated, still works)
            warnings.filterwarnings("ignore", message=".*weight_norm.* is deprecated.*", category=FutureWarning)
            self.student_head = head(dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.output_dim, batch_norm=False)
            self.teacher_head = head(dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.output_dim, batch_norm=False)
        self.teacher_backbone = copy.deepcopy(self.student_backbone)
        self.teacher_head.load_state_dict(self.student_head.state_dict())  # weight-normed heads: no deepcopy
        lightly["deactivate_requires_grad"](self.teacher_backbone)
        lightly["deactivate_requires_grad"](self.teacher_head)
        self.criterion = lightly["DINOLoss"](
            output_dim=cfg.output_dim,
            teacher_temp=cfg.teacher_temp,
            student_temp=cfg.student_temp,
            center_momentum=cfg.center_momentum,
        )
        self.last_momentum: float | None = None

    # the schedules, as functions of the optimizer step (0-based)
    def momentum_at(self, step: int) -> float:
        """Teacher momentum of optimizer step ``step``: cosine from ``momentum`` to ``momentum_end``."""
        return float(self._cosine(min(step, self.cfg.steps), self.cfg.steps, self.cfg.momentum, self.cfg.momentum_end))

    def teacher_temp_at(self, step: int) -> float:
        warm = self.cfg.warmup_teacher_temp_steps
        if warm <= 0 or step >= warm:
            return self.cfg.teacher_temp
        return self.cfg.warmup_teacher_temp + (self.cfg.teacher_temp - self.cfg.warmup_teacher_temp) * step / warm

    def lr_factor(self, step: int) -> float:
        """Linear warm-up over ``warmup_steps`` (at most a tenth of the run), then cosine to ``min_lr``."""
        warm = min(self.cfg.warmup_steps, self.cfg.steps // 10)
        if step < warm:
            return (step + 1) / warm
        span = max(self.cfg.steps - warm, 1)
        progress = min((step - warm) / span, 1.0)
        floor = self.cfg.min_lr / self.cfg.lr
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        views = list(batch["views"])
        with torch.no_grad():
            teacher_out = [self.teacher_head(self.teacher_backbone(v)) for v in views[:2]]
        student_out = [self.student_head(self.student_backbone(v)) for v in views]
        with torch.autocast(device_type=self.device.type, enabled=False):  # softmax at T = 0.04 in float32
            loss: torch.Tensor = self.criterion(
                [t.float() for t in teacher_out],
                [s.float() for s in student_out],
                teacher_temp=self.teacher_temp_at(self.global_step),
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=views[0].shape[0])
        return loss

    def on_after_backward(self) -> None:
        if self.global_step < self.cfg.freeze_last_layer_steps:  # DINO: the last layer waits a little
            for param in self.student_head.last_layer.parameters():
                param.grad = None

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer step, then the teacher's EMA update: teacher = m * teacher + (1 - m) * student (here, not
        in ``on_train_batch_end``, so that a checkpoint saved after this step holds the updated teacher)."""
        super().optimizer_step(*args, **kwargs)
        m = self.momentum_at(self.global_step)  # the index of this step (Lightning counts it after the hook)
        self._update_momentum(self.student_backbone, self.teacher_backbone, m)
        self._update_momentum(self.student_head, self.teacher_head, m)
        self.last_momentum = m

    def configure_optimizers(self) -> Any:
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for module in (self.student_backbone, self.student_head):
            for param in module.parameters():
                if param.requires_grad:
                    (no_decay if param.ndim <= 1 else decay).append(param)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.cfg.lr,
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def exported(self) -> ImageBackbone:
        """The backbone written as the tower: the teacher (DINO's choice) or the student."""
        return self.teacher_backbone if self.cfg.export == "teacher" else self.student_backbone


# ---------------------------------------------------------------------------------------------- run
def _trainer_config(cfg: PretrainImageConfig) -> dict[str, Any]:
    """A config of the shape :func:`medclip.train.fit.build_trainer` takes (so the Trainer, checkpoints,
    atomic checkpoint writes and progress lines are ``medclip fit``'s)."""
    devices = cfg.devices
    many = (isinstance(devices, int) and devices > 1) or (isinstance(devices, str) and devices not in ("1", "auto"))
    trainer: dict[str, Any] = {
        "max_steps": cfg.steps,
        "max_epochs": -1,
        "accelerator": cfg.accelerator,
        "devices": devices,
        "precision": cfg.precision,
        "log_every_n_steps": cfg.log_every_n_steps,
        "gradient_clip_val": cfg.gradient_clip or None,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
    }
    if many:
        trainer["strategy"] = "ddp"
    return {
        "trainer": trainer,
        "optim": {},
        "checkpoint": {"every_n_steps": cfg.every_n_steps, "save_top_k": 1, "save_last": True},
        "loggers": list(cfg.loggers),
        "resume": cfg.resume,
    }


def recompute_batchnorm_statistics(
    backbone: torch.nn.Module, dataset: Any, max_images: int, seed: int = 0, batch_size: int = 64
) -> int:
    """Re-estimate every BatchNorm layer's running statistics of ``backbone`` on up to ``max_images`` images of
    ``dataset`` (items with an ``"image"`` entry; a seeded random subset when it holds more), as an average
    over batches of ``batch_size`` without gradients ("precise BN"); the layers' momentum and the backbone's
    train / eval mode are put back. Returns the number of images used (0: no BatchNorm layer, nothing done)."""
    from medclip.inference.encoders import image_batches

    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    n = min(int(max_images), len(dataset))
    if not norms or n == 0:
        return 0
    rows = sorted(random.Random(seed).sample(range(len(dataset)), n)) if n < len(dataset) else list(range(n))
    device = next(backbone.parameters()).device
    was_training, momenta = backbone.training, [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    backbone.train()
    try:
        with torch.no_grad():
            for images in image_batches(
                torch.utils.data.Subset(dataset, rows), batch_size, desc="BatchNorm statistics"
            ):
                backbone(images.to(device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        backbone.train(was_training)
    return n


def pretrain_image(cfg: PretrainImageConfig) -> Path:
    """Run DINO on the cache's images; return the tower folder (``<output_dir>/tower``)."""
    import yaml

    from medclip.data.storage import exists as storage_exists
    from medclip.fsutil import atomic_write
    from medclip.train.data import resolve_path
    from medclip.train.fit import _resume_path, build_trainer

    lightly_modules()  # the missing extra is the first error, before anything is read or written
    cache_dir = resolve_path(cfg.cache_dir) or cfg.cache_dir
    if not storage_exists(cache_dir):
        raise FileNotFoundError(f"cache_dir: {cache_dir} does not exist (build it with `medclip cache`)")
    cfg = dataclasses.replace(cfg, cache_dir=cache_dir)
    vision_cfg, weights = resolve_tower(cfg.tower, cfg.pretrained)
    datamodule = DinoDataModule(cfg)
    _ = datamodule.source  # empty cache / volumes: a clear error before the model is built
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.output_dir).expanduser().resolve()
    checkpoint_dir = output_dir / "checkpoints"
    tcfg = _trainer_config(cfg)
    ckpt_path = _resume_path(tcfg, checkpoint_dir, output_dir)
    module = DinoModule(cfg, vision_cfg, weights)
    output_dir.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(tcfg, output_dir, checkpoint_dir)
    if trainer.is_global_zero:
        params = sum(p.numel() for p in module.student_backbone.parameters()) / 1e6
        print(
            f"pretrain-image: DINO on {len(datamodule.source)} images of {cfg.cache_dir} (split {cfg.split}), "
            f"tower {vision_cfg.name} ({params:.1f}M parameters), {cfg.steps} steps of {cfg.batch_size} x "
            f"(2 x {cfg.global_size} px + {cfg.n_local} x {cfg.local_size} px) crops",
            flush=True,
        )
        with atomic_write(output_dir / "pretrain.yaml") as tmp:
            tmp.write_text(yaml.safe_dump({**cfg.to_dict(), "resume": cfg.resume}, sort_keys=False), encoding="utf-8")
    started = time.time()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")  # a resume
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    tower_dir = output_dir / "tower"
    if trainer.is_global_zero:
        from importlib.metadata import version

        from medclip import __version__

        exported = module.exported()
        precise = recompute_batchnorm_statistics(exported, datamodule.source, cfg.precise_bn_images, seed=cfg.seed)
        if precise:
            print(
                f"pretrain-image: BatchNorm statistics of the exported tower re-estimated on {precise} images of "
                f"the cache as stored (--precise-bn-images {cfg.precise_bn_images})",
                flush=True,
            )
        record = {
            "method": "dino",
            "exported": cfg.export,
            "batchnorm_statistics": (
                f"re-estimated on {precise} cache images as stored" if precise else "as left by training"
            ),
            "started_from": cfg.tower if not Path(cfg.tower).expanduser().exists() else Path(cfg.tower).name,
            "images": len(datamodule.source),
            "split": cfg.split,
            "steps": int(trainer.global_step),
            "wall_time_s": round(time.time() - started, 1),
            "options": {k: v for k, v in cfg.to_dict().items() if k not in ("cache_dir", "output_dir", "tower")},
            "versions": {"medclip": __version__, "lightly": version("lightly"), "torch": torch.__version__},
        }
        save_tower(exported, tower_dir, preprocess=datamodule.preprocess(), record=record)
    trainer.strategy.barrier("medclip-pretrain-export")
    return tower_dir


__all__ = [
    "PretrainImageConfig",
    "ImageBackbone",
    "DinoModule",
    "DinoDataModule",
    "multi_crop_views",
    "resolve_tower",
    "save_tower",
    "recompute_batchnorm_statistics",
    "pretrain_image",
    "lightly_modules",
]
