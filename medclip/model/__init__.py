"""The dual encoder: vision and text towers, losses, model configs, save/load, what the model sees.

>>> from medclip.model import create_model, build_loss
>>> model = create_model("tiny-test")
>>> batch = model.tokenize(["No acute findings."])
>>> pixels = preprocess(image, model.config.preprocess_config())   # the array the model sees

The configs and :func:`preprocess` import without torch (the cache's worker processes use them); the
towers, the factory and the losses are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import DualEncoderConfig, TextConfig, VisionConfig
from .preprocess import PreprocessConfig, preprocess, text_length

if TYPE_CHECKING:
    from .dual_encoder import DualEncoder
    from .factory import create_model, get_model_config, list_models
    from .losses import (
        LOSS_NAMES,
        InfoNCELoss,
        LabelAwareLoss,
        MultiPositiveLoss,
        SigLIPLoss,
        build_loss,
        group_ids_from_keys,
        label_similarity,
        logit_init_for_loss,
    )
    from .resources import ModelLoadError

#: name -> submodule that defines it (imported when first asked for)
_LAZY = {
    "DualEncoder": "dual_encoder",
    "create_model": "factory",
    "get_model_config": "factory",
    "list_models": "factory",
    **{
        name: "losses"
        for name in (
            "LOSS_NAMES",
            "InfoNCELoss",
            "LabelAwareLoss",
            "MultiPositiveLoss",
            "SigLIPLoss",
            "build_loss",
            "group_ids_from_keys",
            "label_similarity",
            "logit_init_for_loss",
        )
    },
    "ModelLoadError": "resources",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DualEncoder",
    "DualEncoderConfig",
    "VisionConfig",
    "TextConfig",
    "PreprocessConfig",
    "preprocess",
    "text_length",
    "create_model",
    "get_model_config",
    "list_models",
    "build_loss",
    "LOSS_NAMES",
    "InfoNCELoss",
    "SigLIPLoss",
    "LabelAwareLoss",
    "MultiPositiveLoss",
    "group_ids_from_keys",
    "label_similarity",
    "logit_init_for_loss",
    "ModelLoadError",
]
