"""The open_clip adapter: any open_clip model behind medclip's embedding interface.

:class:`OpenClipAdapter` gives an open_clip model (e.g. BiomedCLIP, loaded from a local folder or the
Hugging Face cache) the methods a :class:`~medclip.model.DualEncoder` has, so zero-shot, retrieval,
drafting and few-shot code never branch on the model kind::

    image_size                      int or (H, W) the images are loaded at
    encode_image(images)            (B, 1, H, W) float in [0, 1] -> (B, E), L2-normalised
    tokenize(texts)                 -> {"input_ids", "attention_mask"} tensors
    encode_text(input_ids, attention_mask) -> (B, E), L2-normalised
    logit_scale_value               the model's softmax temperature (exp'ed)

open_clip is optional (the ``bench`` extra): a missing package is one line naming the extra
(:class:`medclip.optional.MissingExtraError`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medclip.optional import import_optional

OPEN_CLIP_PREFIX = "open_clip:"
OPEN_CLIP_CONFIG = "open_clip_config.json"


def _open_clip() -> ModuleType:
    return import_optional("open_clip", "bench", "an open_clip model")


class OpenClipAdapter(nn.Module):
    """An open_clip model behind medclip's encode_image / encode_text / tokenize interface.

    Grey images in [0, 1] are repeated to three channels, resized (bicubic, antialiased) to the
    model's input size and normalised with its mean/std, as open_clip's own preprocessing does
    after its centre crop (medclip images are already square-padded by the data pipeline).
    """

    #: an open_clip CLIP model (open_clip is optional and untyped: its encode_* methods are not nn.Module's)
    model: Any
    mean: torch.Tensor  # registered buffers
    std: torch.Tensor

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        image_size: int | Sequence[int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        name: str = "open_clip",
    ) -> None:
        super().__init__()
        open_clip = _open_clip()

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
    def from_pretrained(cls, name_or_path: str | Path, device: str | torch.device = "cpu") -> OpenClipAdapter:
        """Load ``"hf-hub:org/name"`` (from the local Hugging Face cache when offline), a local folder
        with ``open_clip_config.json`` + weights, or ``"ARCH@/path/weights.pt"`` (an open_clip
        architecture name and a weight file). No download happens with ``HF_HUB_OFFLINE=1``."""
        open_clip = _open_clip()

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
                        raise FileNotFoundError(
                            f"{name}: no {OPEN_CLIP_CONFIG} in this folder (not an open_clip model)"
                        )
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

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, normalize: bool = True
    ) -> torch.Tensor:
        """Token ids (B, L) -> (B, E); the mask is implied by the padding id."""
        return self.model.encode_text(input_ids, normalize=normalize)


def is_open_clip(name_or_path: str | Path) -> bool:
    """True for ``open_clip:...`` names and folders holding an ``open_clip_config.json``."""
    name = str(name_or_path)
    return name.startswith(OPEN_CLIP_PREFIX) or (Path(name).is_dir() and (Path(name) / OPEN_CLIP_CONFIG).is_file())
