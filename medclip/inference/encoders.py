"""Embedding helpers shared by evaluation and the demo: one interface for every model.

A medclip :class:`~medclip.model.DualEncoder` and an open_clip model behind
:class:`~medclip.inference.openclip.OpenClipAdapter` both offer ``tokenize``, ``encode_image``,
``encode_text``; the functions here embed texts and images with either, in batches, on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import torch
import torch.nn.functional as F
from torch import nn

from medclip.model.preprocess import PreprocessConfig

from .openclip import OpenClipAdapter, is_open_clip

if TYPE_CHECKING:
    from medclip.model.dual_encoder import DualEncoder

#: What the embedding helpers take: a medclip DualEncoder or an open_clip model behind its adapter.
EmbeddingModel: TypeAlias = "DualEncoder | OpenClipAdapter"


def load_model(name_or_path: str | Path, device: str | torch.device = "cpu") -> EmbeddingModel:
    """A medclip checkpoint folder (or ``hf-hub:`` id), or an open_clip model (see :func:`is_open_clip`), in eval mode."""
    if is_open_clip(name_or_path):
        return OpenClipAdapter.from_pretrained(name_or_path, device=device).eval()
    from medclip.checkpoint import CheckpointDir

    return CheckpointDir.open(name_or_path).load_model(map_location=device)


def model_image_size(model: EmbeddingModel) -> int | tuple[int, ...]:
    """The image size a model's inputs are prepared at."""
    if isinstance(model, OpenClipAdapter):
        return model.image_size
    size = model.config.vision.image_size  # DualEncoder
    return int(size) if isinstance(size, int) else tuple(size)


def model_preprocess(model: EmbeddingModel) -> PreprocessConfig:
    """What the model sees: a medclip checkpoint's saved :class:`PreprocessConfig` (its ``config.json``),
    for an open_clip model the defaults at its input size (its own resize and mean/std follow in the adapter)."""
    if isinstance(model, OpenClipAdapter):
        return PreprocessConfig(image_size=max(model.image_size))
    config: Any = model.config  # a DualEncoder's DualEncoderConfig
    return config.preprocess_config()


def logit_scale_of(model: EmbeddingModel) -> float:
    """The model's learned softmax temperature (exp'ed and clamped as in training)."""
    if isinstance(model, OpenClipAdapter):
        return model.logit_scale_value
    scale = float(model.logit_scale.detach().exp())
    return min(scale, float(getattr(model.config, "max_logit_scale", math.inf)))


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameter-less model)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@torch.no_grad()
def embed_texts(model: EmbeddingModel, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """L2-normalised text embeddings (N, E) on the CPU, in input order."""
    texts = list(texts)
    if not texts:
        raise ValueError("no texts to embed")
    device = model_device(model)
    out = []
    # sort by length so each batch pads little; restore the order afterwards
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(texts), batch_size):
        chunk = [texts[i] for i in order[start : start + batch_size]]
        tok = model.tokenize(chunk)
        feats = model.encode_text(tok["input_ids"].to(device), tok["attention_mask"].to(device), normalize=True)
        out.append(feats.float().cpu())
    emb = torch.cat(out)
    result = torch.empty_like(emb)
    result[torch.tensor(order)] = emb
    return result


def image_batches(
    images: Iterable[torch.Tensor] | torch.utils.data.Dataset,
    batch_size: int,
    num_workers: int = 0,
    desc: str = "embedding images",
) -> Iterable[torch.Tensor]:
    """Batches (B, 1, ...) of a tensor, or of a dataset of items with an ``"image"`` entry (decoded by a
    DataLoader, with a progress bar named ``desc`` when there is more than one batch: decoding is the long part)."""
    if isinstance(images, torch.Tensor):
        return images.split(batch_size)
    from tqdm.auto import tqdm

    # any indexable collection of items works as a map-style dataset
    loader = torch.utils.data.DataLoader(
        cast(torch.utils.data.Dataset, images),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=lambda items: torch.stack([it["image"] for it in items]),
    )
    total = len(loader)
    return tqdm(loader, total=total, desc=desc, unit="batch", disable=total <= 1, leave=False)


@torch.no_grad()
def embed_images(
    model: EmbeddingModel,
    images: Iterable[torch.Tensor] | torch.utils.data.Dataset,
    batch_size: int = 32,
    num_workers: int = 0,
) -> torch.Tensor:
    """L2-normalised image embeddings (N, E) on the CPU from a tensor (N, 1, H, W) or a dataset of items
    with an ``"image"`` entry (e.g. :class:`medclip.data.ManifestDataset`)."""
    device = model_device(model)
    batches = image_batches(images, batch_size, num_workers)
    out = [model.encode_image(b.to(device), normalize=True).float().cpu() for b in batches]
    if not out:
        raise ValueError("no images to embed")
    return torch.cat(out)


#: Image features a few-shot method can use: the backbone's pooled output before the projection (CLIP's own
#: linear probes use these) or the model's L2-normalised joint embedding (what zero-shot scores).
FEATURE_KINDS = ("backbone", "embedding")


def has_backbone_features(model: EmbeddingModel) -> bool:
    """True when the model exposes pre-projection image features (medclip models; not open_clip ones)."""
    return not isinstance(model, OpenClipAdapter) and hasattr(getattr(model, "visual", None), "features")


@torch.no_grad()
def embed_images_and_backbone(
    model: EmbeddingModel,
    images: Iterable[torch.Tensor] | torch.utils.data.Dataset,
    batch_size: int = 32,
    num_workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(embeddings, backbone features)`` in one pass: the L2-normalised embeddings (N, E) of
    :func:`embed_images` and the backbone's pooled output before the projection (N, num_features), or
    None for a model without one (open_clip). The embedding is the projection of those features, so
    both come from one forward pass."""
    if not has_backbone_features(model):
        return embed_images(model, images, batch_size, num_workers), None
    visual: Any = cast(Any, model).visual
    device = model_device(model)
    emb, back = [], []
    for b in image_batches(images, batch_size, num_workers):
        feats = visual.features(b.to(device))
        emb.append(F.normalize(visual.proj(feats), dim=-1).float().cpu())
        back.append(feats.float().cpu())
    if not emb:
        raise ValueError("no images to embed")
    return torch.cat(emb), torch.cat(back)


def describe_model(model: EmbeddingModel) -> dict[str, Any]:
    """A short JSON-able description of the model for the metrics file."""
    if isinstance(model, OpenClipAdapter):
        return {"kind": "open_clip", "name": model.name, "image_size": list(model.image_size)}
    cfg = model.config
    return {
        "kind": "medclip",
        "name": cfg.name,
        "vision": cfg.vision.name,
        "text": cfg.text.name or (cfg.text.hf_config or {}).get("model_type"),
        "embed_dim": cfg.embed_dim,
        "image_size": cfg.vision.image_size,
        "preprocess": cfg.preprocess_config().to_dict(),
    }
