"""Image-only pretraining of vision towers (``medclip pretrain-image``): DINO self-distillation on a cache's
images, no text; the result is a tower folder that ``medclip fit`` loads by name. See ``README.md`` here."""

from __future__ import annotations

from typing import Any

__all__ = ["PretrainImageConfig", "pretrain_image", "resolve_tower", "save_tower"]


def __getattr__(name: str) -> Any:  # lazy: `medclip --help` must not import torch / Lightning
    if name in __all__:
        from . import dino

        return getattr(dino, name)
    raise AttributeError(name)
