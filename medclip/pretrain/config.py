"""Options of ``medclip pretrain-image`` (no heavy imports: the command line reads its defaults here)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: The tower medclip's offline default model starts from (ImageNet EfficientNet-Lite0 from a PyPI package).
DEFAULT_TOWER = "offline-default"


@dataclass
class PretrainImageConfig:
    """Options of ``medclip pretrain-image`` (CLI flags or a YAML file of these keys).

    Sizes: 224 px global / 96 px local crops are DINO's; on a CPU use e.g. 128 / 64 (``global_size`` /
    ``local_size``). ``lr`` is lower than DINO's from-scratch 5e-4 x batch/256: training continues from
    ImageNet weights. The teacher momentum follows a cosine from ``momentum`` to ``momentum_end`` over
    ``steps``; the teacher temperature rises linearly from ``warmup_teacher_temp`` to ``teacher_temp`` over
    ``warmup_teacher_temp_steps``. ``precise_bn_images``: the exported tower's BatchNorm running statistics
    are re-estimated on up to this many of the cache's images as stored (as ``medclip fit`` feeds them), since
    during DINO they follow the augmented crops; 0 keeps the statistics from training.
    """

    cache_dir: str = ""
    output_dir: str = "runs/pretrain-image"
    tower: str = DEFAULT_TOWER
    pretrained: bool = True
    split: str = "train"
    seed: int = 0
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-4
    min_lr: float = 1e-6
    warmup_steps: int = 100
    weight_decay: float = 0.04
    gradient_clip: float = 3.0
    global_size: int = 224
    local_size: int = 96
    n_local: int = 6
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    rotate_degrees: float = 10.0
    gamma: tuple[float, float] = (0.8, 1.25)
    contrast: float = 0.15
    noise_std: float = 0.01
    hflip: bool = False
    output_dim: int = 4096
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    momentum: float = 0.996
    momentum_end: float = 1.0
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_steps: int = 0
    student_temp: float = 0.1
    center_momentum: float = 0.9
    freeze_last_layer_steps: int = 0
    export: str = "teacher"
    precise_bn_images: int = 2048
    devices: int | str = 1
    accelerator: str = "auto"
    precision: str = "32-true"
    num_workers: int = 0
    log_every_n_steps: int = 50
    every_n_steps: int | None = 500
    resume: str | None = "last"
    loggers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.global_scale = tuple(float(v) for v in self.global_scale)  # type: ignore[assignment]
        self.local_scale = tuple(float(v) for v in self.local_scale)  # type: ignore[assignment]
        self.gamma = tuple(float(v) for v in self.gamma)  # type: ignore[assignment]
        checks = [
            (self.steps >= 1, "steps must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.global_size >= 16 and self.local_size >= 16, "global_size and local_size must be >= 16 px"),
            (self.n_local >= 0, "n_local must be >= 0"),
            (0.0 <= self.momentum <= self.momentum_end <= 1.0, "need 0 <= momentum <= momentum_end <= 1"),
            (
                self.teacher_temp > 0 and self.warmup_teacher_temp > 0 and self.student_temp > 0,
                "temperatures must be > 0",
            ),
            (0.0 <= self.center_momentum < 1.0, "center_momentum must be in [0, 1)"),
            (self.output_dim >= 2 and self.hidden_dim >= 1 and self.bottleneck_dim >= 1, "head sizes must be positive"),
            (self.export in ("teacher", "student"), "export must be 'teacher' or 'student'"),
            (self.precise_bn_images >= 0, "precise_bn_images must be >= 0 (0: keep the statistics from training)"),
            (self.cache_dir != "", "cache_dir is required (a `medclip cache` folder)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"pretrain-image: {message}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "config") -> PretrainImageConfig:
        """From a dict (a YAML file's); unknown keys are an error naming the allowed ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{where}: unknown pretrain-image keys {unknown}; allowed: {sorted(names)}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("global_scale", "local_scale", "gamma"):
            data[key] = list(data[key])
        return data
