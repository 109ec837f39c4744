"""Volume towers (MONAI 3D ResNet / ViT, per-slice 2D + attention pooling) on synthetic and real MR volumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medclip.model import create_model, get_model_config
from medclip.model.vision import GatedAttentionPool

TINY_TEXT = {
    "name": None,
    "vocab": "bundled",
    "pretrained": False,
    "hf_config": {
        "model_type": "bert",
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
    },
}

VOLUME_TOWERS = {
    "monai-resnet10": {
        "kind": "monai3d",
        "name": "resnet10",
        "image_size": [8, 32, 32],
        "model_kwargs": {"conv1_t_stride": 2, "widen_factor": 0.25},
    },
    "monai-vit": {
        "kind": "monai3d",
        "name": "vit",
        "image_size": [8, 32, 32],
        "model_kwargs": {"patch_size": [4, 16, 16], "hidden_size": 48, "mlp_dim": 96, "num_layers": 2, "num_heads": 4},
    },
    "slices2d-resnet10t": {
        "kind": "slices2d",
        "name": "resnet10t",
        "image_size": [8, 32, 32],
        "slice_attention_dim": 16,
    },
}


def volume_model(tower: str):
    if tower == "monai-vit":
        pytest.importorskip("einops", reason="MONAI's ViT needs einops")
    torch.manual_seed(0)
    return create_model("tiny-test", vision={**VOLUME_TOWERS[tower], "pretrained": False}, text=TINY_TEXT).eval()


def real_volume(shared_dir: Path, size: tuple[int, int, int] = (8, 32, 32)) -> torch.Tensor:
    """The first MR volume of the NIH reference NIfTI as (1, 1, D, H, W) in [0, 1], resampled small."""
    nib = pytest.importorskip("nibabel")
    paths = sorted((shared_dir / "data" / "dicom_series_nih" / "Ref").glob("*.nii*"))
    if not paths:
        pytest.skip("no reference NIfTI in shared data")
    data = np.asarray(nib.load(str(paths[0])).dataobj, dtype=np.float32)
    if data.ndim == 4:  # a time series of volumes: take the first
        data = data[..., 0]
    volume = torch.from_numpy(np.ascontiguousarray(data.transpose(2, 1, 0)))  # (x, y, z) -> (D, H, W)
    lo, hi = np.percentile(data, [1, 99])
    volume = ((volume - float(lo)) / max(float(hi - lo), 1e-6)).clamp(0, 1)
    return F.interpolate(volume[None, None], size=size, mode="trilinear", align_corners=False)


@pytest.mark.parametrize("tower", sorted(VOLUME_TOWERS))
def test_volume_towers_embed_real_mr_volume(tower: str, shared_dir: Path) -> None:
    model = volume_model(tower)
    volume = real_volume(shared_dir)
    assert volume.shape == (1, 1, 8, 32, 32) and 0 <= volume.min() and volume.max() <= 1 and volume.std() > 0.05
    batch = torch.cat([volume, volume.flip(-1)])
    with torch.no_grad():
        emb = model.encode_image(batch)
    assert emb.shape == (2, 32) and torch.isfinite(emb).all()
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(emb[0], emb[1])  # the tower looks at the content


@pytest.mark.parametrize("tower", sorted(VOLUME_TOWERS))
def test_volume_towers_train_with_grad_checkpointing(tower: str) -> None:
    grads = []
    for enable in (False, True):
        model = volume_model(tower).train()
        model.set_grad_checkpointing(enable)
        volumes = torch.rand(2, 1, 8, 32, 32, generator=torch.Generator().manual_seed(3))
        model.encode_image(volumes, normalize=False).square().sum().backward()
        grads.append({k: p.grad.clone() for k, p in model.visual.named_parameters() if p.grad is not None})
    assert len(grads[0]) == len(grads[1]) > 5
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], rtol=1e-4, atol=1e-6)


def test_volume_tower_rejects_2d_images() -> None:
    model = volume_model("monai-resnet10")
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\) with C=1"):
        model.encode_image(torch.rand(2, 1, 32, 32))


def test_attention_pool_is_a_weighted_mean_over_slices() -> None:
    torch.manual_seed(0)
    pool = GatedAttentionPool(dim=6, hidden=4)
    same = torch.randn(1, 1, 6).expand(2, 5, 6)  # every slice identical: the mean is that slice
    torch.testing.assert_close(pool(same), same[:, 0])
    x = torch.randn(2, 5, 6)
    assert torch.allclose(pool(x)[0], pool(x[:1].flip(1))[0], atol=1e-6)  # slice order does not matter


def test_bundled_volume_config_declares_a_3d_tower() -> None:
    config = get_model_config("ct-resnet3d-minilm")
    assert config.vision.kind == "monai3d" and config.vision.is_volume and len(config.vision.image_size) == 3
