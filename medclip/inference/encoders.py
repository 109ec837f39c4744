"""One embedding interface for every model the evaluation runs on.

A medclip :class:`~medclip.model.DualEncoder` already has it; :class:`OpenClipAdapter` gives any
open_clip model (e.g. BiomedCLIP, loaded from a local folder or the Hugging Face cache) the same
methods, so zero-shot, retrieval, drafting and few-shot code never branch on the model kind::

    image_size                      int or (H, W) the images are loaded at
    encode_image(images)            (B, 1, H, W) float in [0, 1] -> (B, E), L2-normalised
    tokenize(texts)                 -> {"input_ids", "attention_mask"} tensors
    encode_text(input_ids, attention_mask) -> (B, E), L2-normalised
    logit_scale_value               the model's softmax temperature (exp'ed)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

OPEN_CLIP_PREFIX = "open_clip:"
OPEN_CLIP_CONFIG = "open_clip_config.json"


class OpenClipAdapter(nn.Module):
    """An open_clip model behind medclip's encode_image / encode_text / tokenize interface.

    Grey images in [0, 1] are repeated to three channels, resized (bicubic, antialiased) to the
    model's input size and normalised with its mean/std, as open_clip's own preprocessing does
    after its centre crop (medclip images are already square-padded by the data pipeline).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, image_size: int | Sequence[int] | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, name: str = "open_clip") -> None:
        super().__init__()
        import open_clip

        cfg = open_clip.get_model_preprocess_cfg(model)
        size = image_size or cfg.get("size") or getattr(getattr(model, "visual", None), "image_size", 224)
        self.model = model
        self.open_clip_tokenizer = tokenizer
        self.image_size = (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
        mean = mean or cfg.get("mean") or open_clip.OPENAI_DATASET_MEAN
        std = std or cfg.get("std") or open_clip.OPENAI_DATASET_STD
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.name = name
        self.pad_id = int(getattr(tokenizer, "pad_token_id", 0) or 0)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | torch.device = "cpu") -> "OpenClipAdapter":
        """Load ``"hf-hub:org/name"`` (from the local Hugging Face cache when offline), a local folder
        with ``open_clip_config.json`` + weights, or ``"ARCH@/path/weights.pt"`` (an open_clip
        architecture name and a weight file). No download happens with ``HF_HUB_OFFLINE=1``."""
        import open_clip

        name = str(name_or_path).removeprefix(OPEN_CLIP_PREFIX)
        try:
            if "@" in name and not name.startswith(("hf-hub:", "local-dir:")):
                arch, weights = name.split("@", 1)
                if not Path(weights).is_file():
                    raise FileNotFoundError(f"{weights}: open_clip weight file not found")
                model, _, _ = open_clip.create_model_and_transforms(arch, pretrained=weights, device=device)
                tokenizer = open_clip.get_tokenizer(arch)
            else:
                if Path(name).is_dir():
                    if not (Path(name) / OPEN_CLIP_CONFIG).is_file():
                        raise FileNotFoundError(f"{name}: no {OPEN_CLIP_CONFIG} in this folder (not an open_clip model)")
                    name = f"local-dir:{Path(name).resolve()}"
                model, _ = open_clip.create_model_from_pretrained(name, device=device)
                tokenizer = open_clip.get_tokenizer(name)
        except (FileNotFoundError, ValueError):
            raise
        except Exception as exc:  # open_clip / hub errors come in many types
            raise ValueError(f"{name_or_path}: cannot load the open_clip model ({type(exc).__name__}: {exc})") from exc
        return cls(model.eval(), tokenizer, name=str(name_or_path))

    @property
    def logit_scale_value(self) -> float:
        """exp(logit_scale), the model's softmax temperature."""
        scale = getattr(self.model, "logit_scale", None)
        return float(scale.detach().exp()) if isinstance(scale, torch.Tensor) else 100.0

    def tokenize(self, texts: list[str] | tuple[str, ...], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Token ids (open_clip's tokenizer, its context length) and an attention mask of non-padding tokens."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("tokenize takes a list of strings")
        ids = self.open_clip_tokenizer(list(texts))
        return {"input_ids": ids, "attention_mask": (ids != self.pad_id).long()}

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, 1 or 3, H, W) in [0, 1] -> (B, E)."""
        if images.ndim != 4:
            raise ValueError(f"open_clip models take 2D images (B, C, H, W); got shape {tuple(images.shape)}")
        x = images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        x = (x - self.mean) / self.std
        return self.model.encode_image(x, normalize=normalize)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, normalize: bool = True) -> torch.Tensor:
        """Token ids (B, L) -> (B, E); the mask is implied by the padding id."""
        return self.model.encode_text(input_ids, normalize=normalize)


def is_open_clip(name_or_path: str | Path) -> bool:
    """True for ``open_clip:...`` names and folders holding an ``open_clip_config.json``."""
    name = str(name_or_path)
    return name.startswith(OPEN_CLIP_PREFIX) or (Path(name).is_dir() and (Path(name) / OPEN_CLIP_CONFIG).is_file())


def load_model(name_or_path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A medclip checkpoint folder (or ``hf-hub:`` id), or an open_clip model (see :func:`is_open_clip`), in eval mode."""
    if is_open_clip(name_or_path):
        return OpenClipAdapter.from_pretrained(name_or_path, device=device).eval()
    from medclip.model import DualEncoder

    name = str(name_or_path)
    if not name.startswith("hf-hub:") and not Path(name).exists():
        raise FileNotFoundError(f"{name}: checkpoint folder not found")
    return DualEncoder.from_pretrained(name, map_location=device).eval()


def model_image_size(model: nn.Module) -> int | tuple[int, int]:
    """The image size a model's inputs are prepared at."""
    if isinstance(model, OpenClipAdapter):
        return model.image_size
    size = model.config.vision.image_size  # DualEncoder
    return int(size) if isinstance(size, int) else tuple(size)  # type: ignore[return-value]


def logit_scale_of(model: nn.Module) -> float:
    """The model's learned softmax temperature (exp'ed and clamped as in training)."""
    if isinstance(model, OpenClipAdapter):
        return model.logit_scale_value
    scale = float(model.logit_scale.detach().exp())
    return min(scale, float(getattr(model.config, "max_logit_scale", math.inf)))


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameter-less model)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@torch.no_grad()
def embed_texts(model: nn.Module, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """L2-normalised text embeddings (N, E) on the CPU, in input order."""
    texts = list(texts)
    if not texts:
        raise ValueError("no texts to embed")
    device = model_device(model)
    out = []
    # sort by length so each batch pads little; restore the order afterwards
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(texts), batch_size):
        chunk = [texts[i] for i in order[start:start + batch_size]]
        tok = model.tokenize(chunk)
        feats = model.encode_text(tok["input_ids"].to(device), tok["attention_mask"].to(device), normalize=True)
        out.append(feats.float().cpu())
    emb = torch.cat(out)
    result = torch.empty_like(emb)
    result[torch.tensor(order)] = emb
    return result


@torch.no_grad()
def embed_images(model: nn.Module, images: Iterable[torch.Tensor] | torch.utils.data.Dataset, batch_size: int = 32,
                 num_workers: int = 0) -> torch.Tensor:
    """L2-normalised image embeddings (N, E) on the CPU from a tensor (N, 1, H, W) or a dataset of items
    with an ``"image"`` entry (e.g. :class:`medclip.data.ManifestDataset`)."""
    device = model_device(model)
    if isinstance(images, torch.Tensor):
        batches: Iterable[torch.Tensor] = images.split(batch_size)
    else:
        loader = torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                             collate_fn=lambda items: torch.stack([it["image"] for it in items]))
        batches = loader
    out = [model.encode_image(b.to(device), normalize=True).float().cpu() for b in batches]
    if not out:
        raise ValueError("no images to embed")
    return torch.cat(out)


def describe_model(model: nn.Module) -> dict[str, Any]:
    """A short JSON-able description of the model for the metrics file."""
    if isinstance(model, OpenClipAdapter):
        return {"kind": "open_clip", "name": model.name, "image_size": list(model.image_size)}
    cfg = model.config
    return {"kind": "medclip", "name": cfg.name, "vision": cfg.vision.name, "text": cfg.text.name or cfg.text.hf_config.get("model_type"),
            "embed_dim": cfg.embed_dim, "image_size": cfg.vision.image_size}
