"""Fine-tune open_clip checkpoints: convert a timm-vision + Hugging Face-text open_clip model
(BiomedCLIP's layout) into a :class:`~medclip.model.DualEncoder` with the same embeddings.

The input is open_clip's folder format (what ``hf-hub:`` repos hold): ``open_clip_config.json``
(``model_cfg`` with ``vision_cfg.timm_model_name`` and ``text_cfg.hf_model_name``, ``preprocess_cfg``),
the weights (``open_clip_model.safetensors``, ``open_clip_pytorch_model.bin``, ...) and tokenizer files.
The open_clip package itself is not needed: the weights are read and renamed.

Grey images: open_clip repeats a grey image to three channels and normalises each with its own
mean/std; the converted vision tower takes one channel and folds that into its first layer, which is
exact when the per-channel mean/std are equal, or when the first layer is a convolution with a bias
and no padding (ViT patch embeddings, BiomedCLIP's case).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .config import DualEncoderConfig
from .resources import HF_HUB_PREFIX, ModelLoadError, hf_offline, hub_hint, resolve_hf_hub, resolve_model_source
from .vision import TimmBackbone

if TYPE_CHECKING:
    from .dual_encoder import DualEncoder

#: Prefix of an open_clip model name (``open_clip:/path/to/folder`` or ``open_clip:hf-hub:org/name``).
OPEN_CLIP_PREFIX = "open_clip:"
#: The config file of open_clip's folder format.
OPEN_CLIP_CONFIG = "open_clip_config.json"
#: Weight file names open_clip looks for in a folder, preferred first.
OPEN_CLIP_WEIGHTS = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)
#: open_clip's default image normalisation (OPENAI_DATASET_MEAN / _STD), used when preprocess_cfg has none.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
#: open_clip text poolers medclip's text tower reproduces, and medclip's name for each.
_POOLERS = {"mean_pooler": "mean", "cls_last_hidden_state_pooler": "cls"}
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")


def is_open_clip_folder(path: str | Path) -> bool:
    """True for a folder in open_clip's format (it holds ``open_clip_config.json``)."""
    return Path(path).is_dir() and (Path(path) / OPEN_CLIP_CONFIG).is_file()


def open_clip_folder(name_or_path: str | Path) -> Path:
    """The local folder of ``open_clip:<folder>``, ``open_clip:hf-hub:org/name`` or a plain folder."""
    name = str(name_or_path)
    name = name[len(OPEN_CLIP_PREFIX) :] if name.startswith(OPEN_CLIP_PREFIX) else name
    if name.startswith(HF_HUB_PREFIX):
        folder = resolve_hf_hub(name)
    else:
        folder = Path(resolve_model_source(name, "open_clip model"))
        if not folder.is_dir():
            raise ModelLoadError(f"open_clip model: folder not found: {folder}")
    if not (folder / OPEN_CLIP_CONFIG).is_file():
        raise ModelLoadError(f"{folder}: no {OPEN_CLIP_CONFIG} (not an open_clip model folder)")
    return folder


def _read_config(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    path = folder / OPEN_CLIP_CONFIG
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{path}: cannot read: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("model_cfg"), dict):
        raise ModelLoadError(f"{path}: no 'model_cfg' object (not an open_clip config)")
    return data["model_cfg"], dict(data.get("preprocess_cfg") or {})


def _unsupported(folder: Path, what: str) -> ModelLoadError:
    return ModelLoadError(
        f"{folder}: {what}; medclip converts open_clip models with a timm vision tower (linear projection) and a "
        "Hugging Face text tower (mean or CLS-token pooling), as BiomedCLIP is. Evaluate other open_clip models "
        f"with `medclip eval --checkpoint {OPEN_CLIP_PREFIX}{folder}`"
    )


def _weights_file(folder: Path) -> Path:
    for name in OPEN_CLIP_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise ModelLoadError(f"{folder}: no open_clip weights (looked for {', '.join(OPEN_CLIP_WEIGHTS[:3])}, ...)")


def _text_hf_config(folder: Path, text_cfg: dict[str, Any]) -> Any:
    """The text tower's ``transformers`` config: from ``text_cfg.hf_model_name`` (a folder or a hub id
    in the local cache), as open_clip builds it."""
    from transformers import AutoConfig

    name = str(text_cfg["hf_model_name"])
    source = resolve_model_source(name, f"{folder / OPEN_CLIP_CONFIG} text_cfg.hf_model_name")
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=False, local_files_only=hf_offline())
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"{folder}: the text tower's config comes from text_cfg.hf_model_name {name!r} and cannot be read "
            f"({' '.join(str(err).split())[:300]}){hub_hint(name)}"
        ) from err


def _tokenizer_source(folder: Path, text_cfg: dict[str, Any]) -> str:
    if any((folder / f).is_file() for f in _TOKENIZER_FILES):
        return str(folder)
    return str(text_cfg.get("hf_tokenizer_name") or text_cfg["hf_model_name"])


def _default_pool(timm_name: str) -> str:
    """The global pooling timm gives ``timm_name`` by default (open_clip keeps it when ``timm_pool`` is empty)."""
    import timm

    with torch.device("meta"):
        net = timm.create_model(timm_name, pretrained=False)
    pool = getattr(net, "global_pool", "avg")
    return pool if isinstance(pool, str) else str(getattr(pool, "pool_type", "avg"))


def open_clip_config(name_or_path: str | Path) -> tuple[DualEncoderConfig, dict[str, Any]]:
    """The :class:`DualEncoderConfig` equivalent to an open_clip folder, and conversion facts
    (``folder``, ``weights``, ``rgb_mean``, ``rgb_std``, ``fold``, ``tokenizer``) for :func:`load_open_clip`."""
    folder = open_clip_folder(name_or_path)
    model_cfg, preprocess = _read_config(folder)
    vision_cfg = dict(model_cfg.get("vision_cfg") or {})
    text_cfg = dict(model_cfg.get("text_cfg") or {})
    if not vision_cfg.get("timm_model_name"):
        raise _unsupported(folder, "its vision tower is open_clip's own transformer, not a timm model")
    if not text_cfg.get("hf_model_name"):
        raise _unsupported(folder, "its text tower is open_clip's own transformer, not a Hugging Face model")
    pool = str(vision_cfg.get("timm_pool", "avg") or "")
    if pool in ("abs_attn", "rot_attn"):
        raise _unsupported(folder, f"its vision tower uses attention pooling ({pool})")
    proj = vision_cfg.get("timm_proj", "linear")
    if proj != "linear":
        raise _unsupported(folder, f"its vision projection is {proj!r}")
    pooler = text_cfg.get("hf_pooler_type", "mean_pooler")
    if pooler not in _POOLERS:
        raise _unsupported(folder, f"its text pooler is {pooler!r}")
    hf_config = _text_hf_config(folder, text_cfg)
    if getattr(hf_config, "is_encoder_decoder", False):
        raise _unsupported(folder, "its text tower is an encoder-decoder model")
    embed_dim = int(model_cfg["embed_dim"])
    width = int(getattr(hf_config, "hidden_size", 0) or getattr(hf_config, "d_model", 0))
    text_proj = text_cfg.get("hf_proj_type", "mlp")
    if text_proj in (None, "", "none"):
        if width != embed_dim:
            raise _unsupported(folder, f"its text tower has no projection but width {width} != embed_dim {embed_dim}")
        text_proj = "none"
    elif text_proj not in ("linear", "mlp"):
        raise _unsupported(folder, f"its text projection is {text_proj!r}")

    rgb_mean = [float(v) for v in (preprocess.get("mean") or OPENAI_MEAN)]
    rgb_std = [float(v) for v in (preprocess.get("std") or OPENAI_STD)]
    if len(rgb_mean) == 1:
        rgb_mean *= 3
    if len(rgb_std) == 1:
        rgb_std *= 3
    equal = len(set(rgb_mean)) == 1 and len(set(rgb_std)) == 1
    size = vision_cfg.get("image_size", 224)
    from .text import hf_config_to_dict

    tokenizer = _tokenizer_source(folder, text_cfg)
    config = DualEncoderConfig.from_dict(
        {
            "name": f"{OPEN_CLIP_PREFIX}{folder.name}",
            "embed_dim": embed_dim,
            "vision": {
                "kind": "timm",
                "name": vision_cfg["timm_model_name"],
                "pretrained": False,
                "image_size": list(size) if isinstance(size, (list, tuple)) else int(size),
                "in_chans": 1,
                # equal channels: open_clip's normalisation as is; else folded into the first layer (see fold_stem)
                "mean": [rgb_mean[0]] if equal else [0.0],
                "std": [rgb_std[0]] if equal else [1.0],
                "pool": pool or _default_pool(vision_cfg["timm_model_name"]),
                "proj": "linear",
                "proj_bias": bool(vision_cfg.get("timm_proj_bias", False)),
                "drop_path_rate": vision_cfg.get("timm_drop_path"),
            },
            "text": {
                "name": None,
                "pretrained": False,
                "hf_config": hf_config_to_dict(hf_config),
                "tokenizer": tokenizer if Path(tokenizer).is_dir() else None,
                "pooling": _POOLERS[pooler],
                "proj": text_proj,
                "proj_bias": False,
                "context_length": int(text_cfg.get("context_length", 77)),
            },
        }
    )
    facts = {
        "folder": folder,
        "rgb_mean": rgb_mean,
        "rgb_std": rgb_std,
        "fold": "sum" if equal else "affine",
        "tokenizer": tokenizer,
    }
    return config, facts


def _stem_name(visual_model: nn.Module) -> str:
    """The name of the timm model's first convolution (``pretrained_cfg['first_conv']``)."""
    first = (getattr(visual_model, "pretrained_cfg", None) or {}).get("first_conv")
    if isinstance(first, (list, tuple)):
        first = first[0]
    if first:
        return str(first)
    for name, module in visual_model.named_modules():
        if isinstance(module, nn.Conv2d):
            return str(name)
    raise ModelLoadError("the vision tower has no convolution to take the grey channel")


def fold_stem(
    weight: torch.Tensor, bias: torch.Tensor | None, mean: list[float], std: list[float], mode: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A first-layer kernel for one grey channel x equivalent to the RGB kernel on ((x - mean_c) / std_c)_c.

    ``mode="sum"`` (equal mean/std: the tower keeps them): W' = sum_c W_c. ``mode="affine"`` (the tower
    uses mean 0, std 1): W' = sum_c W_c / std_c and b' = b - sum_c mean_c / std_c * sum(W_c), exact for an
    unpadded convolution with a bias.
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ModelLoadError(f"the first layer's kernel has shape {tuple(weight.shape)}, not (out, 3, kh, kw)")
    if mode == "sum":
        return weight.sum(dim=1, keepdim=True), bias
    w = weight.double()
    s = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    m = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    folded = (w / s).sum(dim=1, keepdim=True)
    shift = (w * (m / s)).sum(dim=(1, 2, 3))
    if bias is None:
        raise ModelLoadError("the first layer has no bias to take the per-channel normalisation")
    return folded.to(weight.dtype), (bias.double() - shift).to(bias.dtype)


def convert_state_dict(
    state: dict[str, torch.Tensor], model: DualEncoder, facts: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """open_clip's ``CustomTextCLIP`` weights renamed (and the stem folded) for ``model`` (a DualEncoder)."""
    state = {re.sub(r"^(module\.|_orig_mod\.)", "", k): v for k, v in state.items()}
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("visual.trunk."):
            new = "visual.backbone.model." + key[len("visual.trunk.") :]
        elif key.startswith("visual.head.proj."):
            new = "visual.proj." + key[len("visual.head.proj.") :]
        elif key.startswith("text.transformer."):
            new = "text.encoder." + key[len("text.transformer.") :]
            if ".pooler." in f".{key[len('text.transformer.') :]}" or (
                new.endswith("position_ids") and new not in target
            ):
                continue  # BERT's pooler layer is not used by the CLS / mean poolers
        elif key.startswith("text.proj.") or key in ("logit_scale", "logit_bias"):
            new = key
        else:
            new = key
        out[new] = value
    backbone = model.visual.backbone
    if not isinstance(backbone, TimmBackbone):
        raise ModelLoadError(f"open_clip weights need a timm vision backbone, not {type(backbone).__name__}")
    stem = _stem_name(backbone.model)
    conv = backbone.model.get_submodule(stem)
    w_key, b_key = f"visual.backbone.model.{stem}.weight", f"visual.backbone.model.{stem}.bias"
    if w_key not in out:
        raise ModelLoadError(
            f"{facts['folder']}: the weights have no {w_key[len('visual.backbone.model.') :]} for the first layer"
        )
    if facts["fold"] == "affine":
        padding = getattr(conv, "padding", (0, 0))
        if (
            padding == "same"
            or any(int(p) for p in (padding if isinstance(padding, tuple) else (padding,)))
            or b_key not in out
        ):
            raise _unsupported(
                facts["folder"],
                "its per-channel image normalisation cannot be folded exactly into a grey first layer "
                "(that needs equal channel mean/std, or an unpadded first convolution with a bias)",
            )
    out[w_key], folded_bias = fold_stem(out[w_key], out.get(b_key), facts["rgb_mean"], facts["rgb_std"], facts["fold"])
    if folded_bias is not None:
        out[b_key] = folded_bias
    return out


def load_open_clip(name_or_path: str | Path, pretrained: bool = True, **overrides: Any) -> DualEncoder:
    """A :class:`DualEncoder` with an open_clip model's weights (see the module docstring).

    ``pretrained=False`` builds the same architecture with random weights. ``overrides`` change the
    converted config (e.g. ``text={"length_buckets": 1}``); they must keep the weights' shapes.
    """
    from .dual_encoder import DualEncoder
    from .tokenizer import load_tokenizer
    from .vision import read_state_dict

    config, facts = open_clip_config(name_or_path)
    if pretrained:
        weights = _weights_file(facts["folder"])
        state = read_state_dict(weights)
        # the temperature (and SigLIP bias) the model was trained with
        if "logit_scale" in state:
            config.init_logit_scale = float(state["logit_scale"].float().reshape(-1)[0])
        if "logit_bias" in state:
            config.init_logit_bias = float(state["logit_bias"].float().reshape(-1)[0])
    if overrides:
        config = config.merged(overrides)
    tokenizer = load_tokenizer(
        facts["tokenizer"],
        model_max_length=config.text.context_length,
        what=f"{facts['folder'] / OPEN_CLIP_CONFIG} tokenizer",
    )
    model = DualEncoder(config, tokenizer=tokenizer, load_pretrained=False)
    if not pretrained:
        return model
    converted = convert_state_dict(state, model, facts)
    target = model.state_dict()
    mismatched = [k for k, v in converted.items() if k in target and tuple(v.shape) != tuple(target[k].shape)]
    if mismatched:
        raise ModelLoadError(
            f"{weights}: {len(mismatched)} tensors do not fit the converted model (e.g. {mismatched[:3]}); "
            "config overrides must keep the architecture"
        )
    missing, unexpected = model.load_state_dict(converted, strict=False)
    missing = [k for k in missing if not k.endswith(("num_batches_tracked", "position_ids"))]
    if missing or unexpected:
        raise ModelLoadError(
            f"{weights}: weights do not match the converted model (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model.train()


__all__ = [
    "OPEN_CLIP_PREFIX",
    "OPEN_CLIP_CONFIG",
    "is_open_clip_folder",
    "open_clip_folder",
    "open_clip_config",
    "convert_state_dict",
    "fold_stem",
    "load_open_clip",
]
