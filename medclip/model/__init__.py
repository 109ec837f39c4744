"""The dual encoder: vision and text towers, losses, model configs, save/load.

>>> from medclip.model import create_model, build_loss
>>> model = create_model("tiny-test")
>>> batch = model.tokenize(["No acute findings."])
"""

from .config import DualEncoderConfig, TextConfig, VisionConfig
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

__all__ = [
    "DualEncoder",
    "DualEncoderConfig",
    "VisionConfig",
    "TextConfig",
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
