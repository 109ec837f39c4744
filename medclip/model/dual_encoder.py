"""The CLIP-style dual encoder: vision tower + text tower + learnable temperature; save/load."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BatchEncoding, PreTrainedTokenizerBase

from .config import DualEncoderConfig
from .resources import HF_HUB_PREFIX, ModelLoadError, resolve_hf_hub
from .text import TextTower
from .tokenizer import load_tokenizer
from .vision import VisionTower

#: Normalisation layers kept trainable by ``lock_image_tower(norms_trainable=True)``.
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: Marks a medclip checkpoint folder's config.json.
CHECKPOINT_FORMAT = "medclip.DualEncoder"


def read_checkpoint_config(directory: str | Path) -> DualEncoderConfig:
    """The model config of a checkpoint folder written by :meth:`DualEncoder.save_pretrained` (its ``config.json``),
    without building the model; :class:`ModelLoadError` when it is not one."""
    config_path = Path(directory) / CONFIG_NAME
    try:
        data = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{config_path}: cannot read: {err}") from err
    if not isinstance(data, dict) or data.pop("format", None) != CHECKPOINT_FORMAT:
        raise ModelLoadError(f"{config_path}: not a medclip checkpoint config (format != {CHECKPOINT_FORMAT!r})")
    try:
        return DualEncoderConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        raise ModelLoadError(f"{config_path}: invalid config: {err}") from err


class DualEncoder(nn.Module):
    """Images (B, 1, H, W) or volumes (B, 1, D, H, W), float in [0, 1], and report tokens -> joint embeddings.

    The model normalises images itself (config mean/std). ``forward`` returns normalised
    ``image_features`` and ``text_features``, ``logit_scale`` (exp'ed, at most
    ``max_logit_scale``) and ``logit_bias`` (None unless configured, e.g. for the sigmoid loss).
    """

    def __init__(
        self,
        config: DualEncoderConfig,
        tokenizer: PreTrainedTokenizerBase | None = None,
        load_pretrained: bool = True,
    ) -> None:
        super().__init__()
        #: submodules kept in eval mode while the model trains (locked towers, frozen BatchNorm statistics)
        self._frozen_eval: list[str] = []
        self.config = config
        text_cfg = config.text
        if tokenizer is None:
            source = text_cfg.vocab or text_cfg.tokenizer or text_cfg.name
            if source is None:
                raise ModelLoadError("text config names no tokenizer: set text.name, text.tokenizer or text.vocab")
            what = "text.vocab" if text_cfg.vocab else "text.tokenizer" if text_cfg.tokenizer else "text.name"
            tokenizer = load_tokenizer(source, model_max_length=text_cfg.context_length, what=what)
        self.tokenizer = tokenizer
        self.visual = VisionTower(config.vision, config.embed_dim, load_pretrained=load_pretrained)
        self.text = TextTower(text_cfg, config.embed_dim, vocab_size=len(tokenizer), load_pretrained=load_pretrained)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        self.logit_bias = (
            nn.Parameter(torch.tensor(float(config.init_logit_bias))) if config.init_logit_bias is not None else None
        )
        # Hugging Face's from_pretrained leaves the text tower in eval mode; a new module is in train mode
        # throughout, as torch modules are (call .eval() for inference)
        self.train()

    # ----------------------------------------------------------------- encoding
    @property
    def context_length(self) -> int:
        """Longest token sequence a text is truncated to: the model's preprocessing text length
        (:meth:`DualEncoderConfig.preprocess_config`, at most ``text.context_length``)."""
        return min(
            self.config.preprocess_config().context_length or self.config.text.context_length,
            self.config.text.context_length,
            self.text.max_positions,
        )

    def tokenize(self, texts: list[str] | tuple[str, ...], max_length: int | None = None) -> BatchEncoding:
        """Token ids and attention masks (torch), padded to the longest text of the batch and
        truncated at ``max_length`` (default: the config's ``context_length``)."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("tokenize takes a list of strings")
        limit = min(max_length or self.context_length, self.text.max_positions)
        enc = self.tokenizer(
            list(texts),
            padding="longest",
            truncation=True,
            max_length=limit,
            return_tensors="pt",
            return_token_type_ids=False,
        )
        return BatchEncoding({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, 1, H, W) images or (B, 1, D, H, W) volumes in [0, 1] -> (B, embed_dim)."""
        features = self.visual(images)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, normalize: bool = True
    ) -> torch.Tensor:
        """Token ids and attention mask (B, L) -> (B, embed_dim)."""
        features = self.text(input_ids, attention_mask)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> dict[str, torch.Tensor | None]:
        """Normalised features of both towers plus the temperature (and bias)."""
        return {
            "image_features": self.encode_image(images, normalize=True),
            "text_features": self.encode_text(input_ids, attention_mask, normalize=True),
            "logit_scale": self.logit_scale.exp().clamp(max=self.config.max_logit_scale),
            "logit_bias": self.logit_bias,
        }

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trade compute for memory in both towers."""
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    # ----------------------------------------------------------------- locking (LiT)
    def train(self, mode: bool = True) -> DualEncoder:
        """Set train/eval mode; submodules frozen by a tower lock stay in eval mode."""
        super().train(mode)
        if mode:
            for name in self._frozen_eval:
                self.get_submodule(name).eval()
        return self

    def _freeze_eval(self, names: list[str]) -> None:
        self._frozen_eval = sorted(set(self._frozen_eval) | set(names))
        if self.training:
            self.train(True)

    def image_blocks(self) -> list[list[str]]:
        """The vision backbone's parameter names in blocks, input to output (timm's group matcher for
        timm models, top-level children otherwise); what ``lock_image_tower(unlocked_groups=N)`` counts."""
        backbone = self.visual.backbone
        prefix = ""
        trunk: nn.Module = backbone
        module: nn.Module
        for name, module in backbone.named_modules():
            if callable(getattr(module, "group_matcher", None)):
                prefix, trunk = (name + "." if name else ""), module
                break
        if callable(getattr(trunk, "group_matcher", None)):
            from timm.models import group_parameters

            grouped = group_parameters(trunk, trunk.group_matcher())  # type: ignore[operator]
            blocks = [[prefix + n for n in grouped[k]] for k in sorted(grouped)]
        else:
            trunk = getattr(backbone, "model", backbone)
            prefix = "model." if trunk is not backbone else ""
            blocks = [
                [f"{prefix}{child}.{n}" for n, _ in module.named_parameters()]
                for child, module in trunk.named_children()
            ]
        blocks = [b for b in blocks if b]
        seen = {n for b in blocks for n in b}
        rest = [n for n, _ in backbone.named_parameters() if n not in seen]  # e.g. the slice attention pool
        return blocks + ([rest] if rest else [])

    def lock_image_tower(
        self, unlocked_groups: int = 0, *, norms_trainable: bool = False, freeze_bn_stats: bool = True
    ) -> dict[str, int]:
        """LiT: freeze the vision backbone except its last ``unlocked_groups`` blocks (and, with
        ``norms_trainable``, its normalisation layers); the projection stays trainable.

        With ``freeze_bn_stats`` the BatchNorm running statistics of the locked blocks are frozen too
        (those layers stay in eval mode); a fully locked backbone then runs in eval mode throughout
        (no dropout), so its features are a fixed function of the image. Returns parameter counts.
        """
        backbone = self.visual.backbone
        blocks = self.image_blocks()
        if unlocked_groups < 0:
            raise ValueError(f"unlocked_groups must be >= 0, got {unlocked_groups}")
        unlocked = {n for b in blocks[len(blocks) - unlocked_groups :] for n in b} if unlocked_groups else set()
        for name, param in backbone.named_parameters():
            param.requires_grad_(name in unlocked)
        locked_modules = []
        for name, module in backbone.named_modules():
            own = [f"{name}.{n}" if name else n for n, _ in module.named_parameters(recurse=False)]
            if isinstance(module, NORM_TYPES) and norms_trainable:
                for param in module.parameters(recurse=False):
                    param.requires_grad_(True)
            if isinstance(module, nn.modules.batchnorm._NormBase) and freeze_bn_stats and not (set(own) & unlocked):
                locked_modules.append(f"visual.backbone.{name}" if name else "visual.backbone")
        if freeze_bn_stats:
            fully = not any(p.requires_grad for p in backbone.parameters())
            self._freeze_eval(["visual.backbone"] if fully else locked_modules)
        return self._trainable_counts(backbone)

    def lock_text_tower(self, unlocked_layers: int = 0) -> dict[str, int]:
        """Freeze the text encoder except its last ``unlocked_layers`` transformer layers; the projection
        stays trainable. A fully locked encoder runs in eval mode (no dropout). Returns parameter counts."""
        encoder = self.text.encoder
        if unlocked_layers < 0:
            raise ValueError(f"unlocked_layers must be >= 0, got {unlocked_layers}")
        for param in encoder.parameters():
            param.requires_grad_(False)
        if unlocked_layers:
            n_layers = int(getattr(encoder.config, "num_hidden_layers", 0) or 0)
            layers = next((m for m in encoder.modules() if isinstance(m, nn.ModuleList) and len(m) == n_layers), None)
            if layers is None:
                raise ValueError(f"text encoder {type(encoder).__name__}: cannot find its {n_layers} layers to unlock")
            for layer in list(layers)[max(0, len(layers) - unlocked_layers) :]:
                for param in layer.parameters():
                    param.requires_grad_(True)
        else:
            self._freeze_eval(["text.encoder"])
        return self._trainable_counts(encoder)

    @property
    def image_backbone_frozen(self) -> bool:
        """True when the vision backbone is fully locked and runs in eval mode during training: its output
        for an image never changes, so it can be computed once (the training feature cache)."""
        return "visual.backbone" in self._frozen_eval and not any(
            p.requires_grad for p in self.visual.backbone.parameters()
        )

    @staticmethod
    def _trainable_counts(module: nn.Module) -> dict[str, int]:
        params = list(module.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        return {"trainable": trainable, "locked": sum(p.numel() for p in params) - trainable}

    # ----------------------------------------------------------------- save / load
    def checkpoint_config(self) -> DualEncoderConfig:
        """The config to rebuild this model with no download: towers un-pretrained, full text config."""
        text = dict(
            self.config.text.__dict__,
            pretrained=False,
            hf_config=self.text.hf_config_dict(),
            vocab=None,
            tokenizer=None,
        )
        vision = dict(self.config.vision.__dict__, pretrained=False)
        return DualEncoderConfig.from_dict(dict(self.config.to_dict(), text=text, vision=vision))

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json``, ``model.safetensors`` and the tokenizer files to ``directory``, all or nothing.

        Every file is first written to a staging folder inside ``directory`` and moved into place only when
        all are complete (renames need no space): a full disk (:class:`medclip.fsutil.DiskFullError`,
        naming the folder and the bytes needed) or any other failure leaves an earlier model there intact.
        """
        import os
        import secrets
        import shutil

        from safetensors.torch import save_file

        from medclip.fsutil import DiskFullError, disk_full_error, is_disk_full

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        needed = sum(v.nelement() * v.element_size() for v in state.values())
        staging = directory / f".staging-{secrets.token_hex(4)}"
        try:
            staging.mkdir()
            config = self.checkpoint_config().to_dict()
            (staging / CONFIG_NAME).write_text(json.dumps({"format": CHECKPOINT_FORMAT, **config}, indent=2) + "\n")
            self.tokenizer.save_pretrained(str(staging))
            save_file(state, str(staging / WEIGHTS_NAME), metadata={"format": "pt", "medclip": CHECKPOINT_FORMAT})
            names = sorted(p.name for p in staging.iterdir() if p.name != WEIGHTS_NAME) + [WEIGHTS_NAME]
            for name in names:  # the weights last: a reader that sees them sees their config
                os.replace(staging / name, directory / name)
        except Exception as exc:
            if is_disk_full(exc) and not isinstance(exc, DiskFullError):
                raise disk_full_error(directory / WEIGHTS_NAME, needed=needed) from exc
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return directory

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, map_location: str | torch.device = "cpu") -> DualEncoder:
        """Load a folder written by :meth:`save_pretrained`, or ``"hf-hub:org/name"`` (HF cache when offline)."""
        name = str(name_or_path)
        directory = resolve_hf_hub(name) if name.startswith(HF_HUB_PREFIX) else Path(name)
        config_path = directory / CONFIG_NAME
        weights_path = directory / WEIGHTS_NAME
        for needed in (config_path, weights_path):
            if not needed.is_file():
                raise ModelLoadError(f"{directory}: not a medclip checkpoint ({needed.name} missing)")
        config = read_checkpoint_config(directory)
        tokenizer = load_tokenizer(str(directory), model_max_length=config.text.context_length)
        model = cls(config, tokenizer=tokenizer, load_pretrained=False)
        from safetensors.torch import load_file

        try:
            state = load_file(str(weights_path), device=str(map_location))
        except Exception as err:  # safetensors raises its own error types
            raise ModelLoadError(f"{weights_path}: cannot read weights: {err}") from err
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ModelLoadError(
                f"{weights_path}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        return model.to(map_location)
