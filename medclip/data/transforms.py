"""Training-time image augmentation for radiographs and CT/MR slices, seeded per sample.

One random draw per sample, from the ``random.Random`` the caller seeds (the training data module seeds
it from ``(seed, epoch, sample)``, so a resumed run sees the same augmented images):

* random resized crop: a crop of ``crop_scale`` of the image area (aspect ratio 3/4..4/3), resized back
  to the input size; combined with
* a small rotation (uniform in +-``rotate_degrees``) in one resampling (bilinear, border padding);
* gamma (``x ** g``, ``g`` log-uniform in ``gamma``) and contrast (``(x - mean) * (1 + u) + mean``,
  ``u`` uniform in +-``contrast``): exposure and windowing vary between scanners;
* Gaussian noise with a standard deviation uniform in ``[0, noise_std]``;
* horizontal flip with probability 0.5 only when ``hflip`` is set: laterality matters (a left effusion
  is not a right one; situs, dextrocardia), so it is off by default.

Images are (1, H, W) and volumes (1, D, H, W) float tensors in [0, 1]; a volume's slices all get the
same in-plane transform. The output has the input's shape and stays in [0, 1].
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ImageAugmentation:
    """A seeded radiograph / slice augmentation: ``augment(image, rng) -> image``."""

    crop_scale: tuple[float, float] = (0.8, 1.0)
    rotate_degrees: float = 7.0
    gamma: tuple[float, float] = (0.8, 1.25)
    contrast: float = 0.15
    noise_std: float = 0.01
    hflip: bool = False
    aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if not 0 < self.gamma[0] <= self.gamma[1]:
            raise ValueError(f"gamma must satisfy 0 < low <= high, got {self.gamma}")
        if self.rotate_degrees < 0 or not 0 <= self.contrast < 1 or self.noise_std < 0:
            raise ValueError("rotate_degrees and noise_std must be >= 0 and contrast in [0, 1)")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ImageAugmentation:
        """From the training config's ``data.image_augmentation`` section (``enabled`` is ignored here)."""
        return cls(
            crop_scale=tuple(float(v) for v in cfg.get("crop_scale", cls.crop_scale)),  # type: ignore[arg-type]
            rotate_degrees=float(cfg.get("rotate_degrees", cls.rotate_degrees)),
            gamma=tuple(float(v) for v in cfg.get("gamma", cls.gamma)),  # type: ignore[arg-type]
            contrast=float(cfg.get("contrast", cls.contrast)),
            noise_std=float(cfg.get("noise_std", cls.noise_std)),
            hflip=bool(cfg.get("hflip", False)),
        )

    # ------------------------------------------------------------------ parameters
    def draw(self, rng: random.Random) -> dict[str, Any]:
        """The random parameters of one sample (the same ``rng`` state gives the same parameters)."""
        area = rng.uniform(*self.crop_scale)
        log_lo, log_hi = math.log(self.aspect_ratio[0]), math.log(self.aspect_ratio[1])
        ratio = math.exp(rng.uniform(log_lo, log_hi))
        width, height = math.sqrt(area * ratio), math.sqrt(area / ratio)
        if width > 1.0:  # keep the area when the aspect ratio does not fit
            width, height = 1.0, area
        elif height > 1.0:
            width, height = area, 1.0
        return {
            "width": width,  # crop size as a fraction of the image
            "height": height,
            "cx": rng.uniform(-(1 - width), 1 - width),  # crop centre, normalised coordinates
            "cy": rng.uniform(-(1 - height), 1 - height),
            "angle": math.radians(rng.uniform(-self.rotate_degrees, self.rotate_degrees)),
            "gamma": math.exp(rng.uniform(math.log(self.gamma[0]), math.log(self.gamma[1]))),
            "contrast": rng.uniform(-self.contrast, self.contrast),
            "noise": rng.uniform(0.0, self.noise_std),
            "noise_seed": rng.getrandbits(63),
            "flip": self.hflip and rng.random() < 0.5,
        }

    # ------------------------------------------------------------------ apply
    def __call__(self, image: torch.Tensor, rng: random.Random | int) -> torch.Tensor:
        """The augmented image (same shape, values in [0, 1])."""
        if not isinstance(rng, random.Random):
            rng = random.Random(int(rng))
        if image.ndim not in (3, 4):
            raise ValueError(f"expected a (C, H, W) image or (C, D, H, W) volume, got shape {tuple(image.shape)}")
        p = self.draw(rng)
        shape = image.shape
        x = image.float().reshape(-1, 1, shape[-2], shape[-1])  # channels (and slices) as a batch
        x = self._geometry(x, p)
        x = x.clamp(0.0, 1.0) ** p["gamma"]
        if p["contrast"]:
            mean = x.mean()
            x = (x - mean) * (1.0 + p["contrast"]) + mean
        if p["noise"] > 0:
            generator = torch.Generator().manual_seed(p["noise_seed"])
            x = x + p["noise"] * torch.randn(x.shape, generator=generator)
        if p["flip"]:
            x = x.flip(-1)
        return x.clamp(0.0, 1.0).reshape(shape).to(image.dtype)

    @staticmethod
    def _geometry(x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
        if p["width"] == 1.0 and p["height"] == 1.0 and p["angle"] == 0.0:
            return x  # nothing to resample (cx = cy = 0 then)
        cos, sin = math.cos(p["angle"]), math.sin(p["angle"])
        w, h = p["width"], p["height"]
        theta = torch.tensor([[w * cos, -h * sin, p["cx"]], [w * sin, h * cos, p["cy"]]], dtype=x.dtype)
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def image_augmentation_from_config(cfg: Mapping[str, Any] | None) -> ImageAugmentation | None:
    """The augmentation of a ``data.image_augmentation`` section, or None when it is disabled."""
    if not cfg or not cfg.get("enabled"):
        return None
    return ImageAugmentation.from_config(cfg)


__all__: Sequence[str] = ("ImageAugmentation", "image_augmentation_from_config")
