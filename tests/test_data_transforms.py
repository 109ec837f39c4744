"""Radiograph / slice augmentation: seeded, shape- and range-preserving, no horizontal flip unless asked."""

from __future__ import annotations

import random

import pytest
import torch

from medclip.data.transforms import ImageAugmentation, image_augmentation_from_config
from medclip.train import DEFAULTS
from medclip.train.data import AugmentedDataset


def _left_bright(h: int = 48, w: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, h, w, generator=g) * 0.2
    image[..., : w // 3] += 0.7  # a bright left third: a flip would move it right
    return image.clamp(0, 1)


def test_defaults_from_the_training_config() -> None:
    cfg = DEFAULTS["data"]["image_augmentation"]
    assert cfg["enabled"] is False and cfg["hflip"] is False
    assert image_augmentation_from_config(cfg) is None
    aug = image_augmentation_from_config({**cfg, "enabled": True})
    assert aug == ImageAugmentation(
        crop_scale=(0.8, 1.0), rotate_degrees=7.0, gamma=(0.8, 1.25), contrast=0.15, noise_std=0.01, hflip=False
    )


def test_same_seed_same_output_other_seed_other_output() -> None:
    aug = ImageAugmentation()
    image = _left_bright()
    a = aug(image, random.Random(5))
    b = aug(image, random.Random(5))
    c = aug(image, 6)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, image)


@pytest.mark.parametrize("shape", [(1, 48, 40), (1, 6, 32, 36)])
def test_shape_kept_and_values_stay_in_unit_range(shape: tuple[int, ...]) -> None:
    strong = ImageAugmentation(crop_scale=(0.3, 1.0), rotate_degrees=30, gamma=(0.5, 2.0), contrast=0.5, noise_std=0.2)
    g = torch.Generator().manual_seed(1)
    image = torch.rand(shape, generator=g)
    for seed in range(20):
        out = strong(image, seed)
        assert out.shape == image.shape and out.dtype == image.dtype
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_volume_slices_share_one_transform() -> None:
    slice_ = _left_bright(32, 32)[0]
    volume = torch.stack([slice_] * 4)[None]  # (1, D, H, W), identical slices
    out = ImageAugmentation(noise_std=0.0)(volume, 3)
    for d in range(1, 4):
        assert torch.equal(out[0, d], out[0, 0])


def test_horizontal_flip_is_never_applied_by_default() -> None:
    image = _left_bright()
    third = image.shape[-1] // 3
    for seed in range(200):
        out = ImageAugmentation()(image, seed)
        assert out[..., :third].mean() > out[..., -third:].mean() + 0.3, seed  # the bright side stays left
    identity = ImageAugmentation(crop_scale=(1.0, 1.0), rotate_degrees=0, gamma=(1.0, 1.0), contrast=0, noise_std=0)
    assert all(torch.equal(identity(image, seed), image) for seed in range(50))
    flipping = ImageAugmentation(
        crop_scale=(1.0, 1.0), rotate_degrees=0, gamma=(1.0, 1.0), contrast=0, noise_std=0, hflip=True
    )
    flipped = sum(torch.equal(flipping(image, seed), image.flip(-1)) for seed in range(50))
    assert 10 < flipped < 40  # about half, and only when asked for


def test_training_dataset_augments_per_sample_and_epoch() -> None:
    items = [{"text": "x", "image": _left_bright(), "image_id": f"i{k}"} for k in range(3)]
    data = AugmentedDataset(items, None, seed=1, image_transform=ImageAugmentation())
    assert torch.equal(data[(1, 2)]["image"], data[(1, 2)]["image"])  # reproducible: resume sees the same
    assert not torch.equal(data[(1, 2)]["image"], data[(1, 3)]["image"])  # a new draw each epoch
    assert not torch.equal(data[(0, 2)]["image"], data[(1, 2)]["image"])  # and each sample
    assert torch.equal(items[1]["image"], _left_bright())  # the source is not modified


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="crop_scale"):
        ImageAugmentation(crop_scale=(0.9, 0.5))
    with pytest.raises(ValueError, match="expected"):
        ImageAugmentation()(torch.zeros(4, 4), 0)
