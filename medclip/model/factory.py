"""Model registry and factory: named JSON configs in ``medclip/model/configs/``, checkpoints, hub ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import DualEncoderConfig
from .dual_encoder import CONFIG_NAME, DualEncoder
from .open_clip_convert import OPEN_CLIP_PREFIX, is_open_clip_folder
from .resources import HF_HUB_PREFIX, ModelLoadError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def list_models() -> list[str]:
    """Names of the bundled model configs."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def get_model_config(name: str) -> DualEncoderConfig:
    """The bundled config ``name`` (see :func:`list_models`)."""
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        raise ModelLoadError(f"unknown model config {name!r}; bundled configs: {', '.join(list_models())}")
    config = DualEncoderConfig.from_json(path)
    config.name = name
    return config


def create_model(name_or_path: str | Path, pretrained: bool = True, **overrides: Any) -> DualEncoder:
    """A :class:`DualEncoder` from a bundled config name, a config ``.json`` file, a checkpoint
    folder (``save_pretrained``), ``"hf-hub:org/name"``, or an open_clip model to fine-tune
    (``"open_clip:<folder>"``, ``"open_clip:hf-hub:org/name"`` or a folder with ``open_clip_config.json``;
    see :mod:`medclip.model.open_clip_convert`).

    ``pretrained=False`` builds both towers with random weights (never downloads).
    ``overrides`` replace config fields; dicts merge into the towers, e.g.
    ``create_model("tiny-test", embed_dim=64, text={"pooling": "cls"})``. Checkpoints take no overrides.
    """
    name = str(name_or_path)
    path = Path(name)
    if name.startswith(OPEN_CLIP_PREFIX) or (is_open_clip_folder(path) and not (path / CONFIG_NAME).is_file()):
        from .open_clip_convert import load_open_clip

        return load_open_clip(name, pretrained=pretrained, **overrides)
    if name.startswith(HF_HUB_PREFIX) or (path.is_dir() and (path / CONFIG_NAME).is_file()):
        if overrides:
            raise ValueError(f"{name}: a saved checkpoint takes no config overrides (got {sorted(overrides)})")
        return DualEncoder.from_pretrained(name)
    if path.suffix == ".json" and path.is_file():
        config = DualEncoderConfig.from_json(path)
    elif path.is_dir():
        raise ModelLoadError(
            f"{path}: folder has no {CONFIG_NAME} (not a medclip checkpoint) and no open_clip_config.json"
        )
    else:
        config = get_model_config(name)
    if overrides:
        config = config.merged(overrides)
    return DualEncoder(config, load_pretrained=pretrained)


def parameter_counts(config: DualEncoderConfig) -> dict[str, int | None]:
    """Parameters of each tower (backbone + projection) and in all, counted on the ``meta`` device:
    no weights are read or allocated. A tower whose architecture cannot be read offline (a hub id that
    is not in the local Hugging Face cache) counts as None, and so does the total."""
    import torch

    from .text import TextTower
    from .tokenizer import load_tokenizer
    from .vision import VisionTower

    counts: dict[str, int | None] = {}
    with torch.device("meta"):
        try:
            counts["vision"] = sum(
                p.numel() for p in VisionTower(config.vision, config.embed_dim, load_pretrained=False).parameters()
            )
        except (ModelLoadError, ValueError, RuntimeError, ImportError):
            counts["vision"] = None
        try:
            vocab = len(load_tokenizer(config.text.vocab)) if config.text.vocab else None
            text = TextTower(config.text, config.embed_dim, vocab_size=vocab, load_pretrained=False)
            counts["text"] = sum(p.numel() for p in text.parameters())
        except (ModelLoadError, ValueError, RuntimeError, ImportError):
            counts["text"] = None
    scalars = 1 + (config.init_logit_bias is not None)  # temperature (and bias)
    known = [c for c in counts.values() if c is not None]
    counts["total"] = sum(known) + scalars if len(known) == 2 else None
    return counts


def describe_models(sizes: bool = True) -> dict[str, dict[str, Any]]:
    """For each bundled config: towers, embedding size, input kind and (``sizes``) parameter counts
    (:func:`parameter_counts`), for ``medclip models``."""
    out: dict[str, dict[str, Any]] = {}
    for name in list_models():
        config = get_model_config(name)
        vision, text = config.vision, config.text
        out[name] = {
            "vision": f"{vision.kind}:{vision.name}",
            "vision_weights": (
                vision.pretrained
                if isinstance(vision.pretrained, str)
                else "timm's own"
                if vision.pretrained
                else "random init"
            ),
            "text": text.name or f"random {(text.hf_config or {}).get('model_type', 'BERT')} (hf_config)",
            "text_weights": "pretrained" if text.pretrained and text.name else "random init",
            "embed_dim": config.embed_dim,
            "image_size": vision.image_size,
            "input": "volume (B,1,D,H,W)" if vision.is_volume else "image (B,1,H,W)",
        }
        if sizes:
            out[name]["params"] = parameter_counts(config)
    return out


def format_parameter_count(n: int | None) -> str:
    """``12.3M``-style count; ``n/a`` for an architecture that cannot be read offline."""
    if n is None:
        return "n/a"
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"
