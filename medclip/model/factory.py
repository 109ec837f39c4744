"""Model registry and factory: named JSON configs in ``medclip/model/configs/``, checkpoints, hub ids."""

from __future__ import annotations

import json
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
        raise ModelLoadError(f"{path}: folder has no {CONFIG_NAME} (not a medclip checkpoint) and no open_clip_config.json")
    else:
        config = get_model_config(name)
    if overrides:
        config = config.merged(overrides)
    return DualEncoder(config, load_pretrained=pretrained)


def describe_models() -> dict[str, dict[str, Any]]:
    """For each bundled config: towers, embedding size, input kind (for ``medclip`` listings)."""
    out = {}
    for name in list_models():
        cfg = json.loads((CONFIG_DIR / f"{name}.json").read_text())
        vision, text = cfg.get("vision", {}), cfg.get("text", {})
        out[name] = {
            "vision": f"{vision.get('kind', 'timm')}:{vision.get('name')}",
            "text": text.get("name") or "random BERT (hf_config)",
            "embed_dim": cfg.get("embed_dim"),
            "input": "volume (B,1,D,H,W)" if vision.get("kind") in ("monai3d", "slices2d") else "image (B,1,H,W)",
        }
    return out
