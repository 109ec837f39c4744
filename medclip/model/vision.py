"""Vision towers: timm 2D encoders, MONAI 3D encoders and per-slice 2D encoders with attention pooling.

Every tower takes float images in [0, 1], (B, 1, H, W) or volumes (B, 1, D, H, W), applies its
own normalisation (config mean/std) and returns un-normalised embeddings (B, embed_dim).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import VisionConfig
from .resources import ModelLoadError, hub_hint, looks_like_local_path, note_hub_access, resolve_local

MONAI_RESNETS = ("resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet200")


def build_projection(kind: str, in_dim: int, out_dim: int, bias: bool = False) -> nn.Module:
    """Projection head: ``linear``, ``mlp`` (Linear-GELU-Linear) or ``none`` (needs equal dims)."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim, bias=bias)
    if kind == "mlp":
        hidden = (in_dim + out_dim) // 2
        return nn.Sequential(nn.Linear(in_dim, hidden, bias=bias), nn.GELU(), nn.Linear(hidden, out_dim, bias=bias))
    if kind == "none":
        if in_dim != out_dim:
            raise ValueError(f"projection 'none' needs features of size embed_dim={out_dim}, got {in_dim}")
        return nn.Identity()
    raise ValueError(f"unknown projection {kind!r}")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a ``.pth``/``.pt``/``.bin`` state dict (no code is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: weight file not found")
    state: Any  # torch.load returns whatever the file holds; checked below
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt files raise many types
        raise ModelLoadError(f"{path}: cannot read weights: {err}") from err
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path}: not a state dict of tensors")
    return dict(state)


def _fits(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """``source`` shaped like ``target``: as is, or an RGB stem kernel summed to one channel."""
    if source.shape == target.shape:
        return source
    if (
        source.ndim == target.ndim
        and source.ndim >= 4
        and target.shape[1] == 1
        and source.shape[1] == 3
        and source.shape[0] == target.shape[0]
        and source.shape[2:] == target.shape[2:]
    ):
        # Grayscale input x fed as RGB (x, x, x): conv(W, [x, x, x]) == conv(sum_c W_c, x).
        return source.sum(dim=1, keepdim=True)
    return None


def load_weights(module: nn.Module, path: str | Path, key_order: str = "name") -> None:
    """Load a weight file into ``module``; classifier heads the module lacks are dropped.

    ``key_order="order"`` pairs the file's tensors with the module's state dict in order
    (same network, other key names); every pair must have the same shape. RGB stem kernels are
    summed for one-channel modules.
    """
    source = read_state_dict(path)
    target = module.state_dict()
    adapted: dict[str, torch.Tensor] = {}
    if key_order == "order":
        src_items = list(source.items())
        tgt_items = list(target.items())
        if len(src_items) < len(tgt_items):
            raise ModelLoadError(f"{path}: has {len(src_items)} tensors, the model needs {len(tgt_items)}")
        for (src_key, src), (tgt_key, tgt) in zip(src_items, tgt_items):
            fitted = _fits(src, tgt)
            if fitted is None:
                raise ModelLoadError(
                    f"{path}: tensor {src_key} {tuple(src.shape)} does not fit {tgt_key} {tuple(tgt.shape)} (loading in order)"
                )
            adapted[tgt_key] = fitted
        leftover = [k for k, _ in src_items[len(tgt_items) :]]
        if len(leftover) > 2:  # a classifier weight and bias are all a headless model may leave
            raise ModelLoadError(f"{path}: {len(leftover)} tensors left after loading in order: {leftover[:5]}")
    else:
        for key, tgt in target.items():
            if key in source:
                fitted = _fits(source[key], tgt)
                if fitted is None:
                    raise ModelLoadError(
                        f"{path}: tensor {key} {tuple(source[key].shape)} does not fit {tuple(tgt.shape)}"
                    )
                adapted[key] = fitted
        missing = [k for k in target if k not in adapted and not k.endswith("num_batches_tracked")]
        if missing:
            raise ModelLoadError(f"{path}: {len(missing)} weights missing, e.g. {missing[:5]}")
    module.load_state_dict(adapted, strict=False)


def timm_model_name(name: str) -> str:
    """``name`` as ``timm.create_model`` takes it: a local folder (``timm`` ``save_pretrained`` layout:
    config.json + model.safetensors) becomes ``local-dir:<path>``; a missing one raises "folder not found"."""
    import timm

    if not name.startswith("local-dir:") and timm.is_model(name):  # a registry name, even if a folder shares it
        return name
    folder = (
        name[len("local-dir:") :] if name.startswith("local-dir:") else name if looks_like_local_path(name) else None
    )
    if folder is None:
        return name
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ModelLoadError(f"vision.name: folder not found: {path}")
    return f"local-dir:{path.resolve()}"


class TimmBackbone(nn.Module):
    """A headless timm 2D encoder with ``in_chans`` input channels; returns pooled features."""

    #: a timm model: ``num_features`` and ``set_grad_checkpointing`` are timm's API, not declared on nn.Module
    model: Any

    def __init__(self, cfg: VisionConfig, load_pretrained: bool = True) -> None:
        super().__init__()
        import timm

        kwargs: dict[str, Any] = dict(cfg.model_kwargs)
        if cfg.drop_path_rate is not None:
            kwargs["drop_path_rate"] = cfg.drop_path_rate
        if cfg.patch_dropout:
            kwargs["patch_drop_rate"] = cfg.patch_dropout  # timm's PatchDropout (ViT-family models)
        from_timm = load_pretrained and cfg.pretrained is True
        model_name = timm_model_name(cfg.name)
        if from_timm and not model_name.startswith("local-dir:"):
            note_hub_access(cfg.name)  # timm's own weights come from the hub
        try:
            self.model = timm.create_model(
                model_name, pretrained=from_timm, in_chans=cfg.in_chans, num_classes=0, global_pool=cfg.pool, **kwargs
            )
        except RuntimeError as err:
            if "Unknown model" in str(err) or "Unknown" in str(err):
                raise ModelLoadError(f"vision model {cfg.name!r}: {err}") from err
            hint = hub_hint(cfg.name.removeprefix("hf-hub:")) if from_timm else ""
            raise ModelLoadError(f"vision model {cfg.name!r}: cannot load pretrained weights: {err}{hint}") from err
        except TypeError as err:
            if cfg.patch_dropout and "patch_drop_rate" in str(err):
                raise ModelLoadError(
                    f"vision.patch_dropout: {cfg.name!r} has no patch tokens to drop (FLIP needs a ViT-family timm "
                    "model such as vit_base_patch16_224); set vision.patch_dropout to 0"
                ) from err
            raise ModelLoadError(f"vision model {cfg.name!r}: cannot create ({err})") from err
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"vision model {cfg.name!r}: cannot create ({err})") from err
        if load_pretrained and isinstance(cfg.pretrained, str) and cfg.pretrained:
            load_weights(self.model, resolve_local(cfg.pretrained), cfg.pretrained_key_order)
        self.num_features = int(self.model.num_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features: torch.Tensor = self.model(images)
        return features

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)


class Monai3DBackbone(nn.Module):
    """A MONAI 3D encoder (ResNet-10..200 or ViT) over (B, C, D, H, W); returns pooled features."""

    def __init__(self, cfg: VisionConfig, load_pretrained: bool = True) -> None:
        super().__init__()
        from medclip.optional import import_optional

        nets = import_optional("monai.networks.nets", "volumes", "a MONAI 3D volume tower")

        self.grad_checkpointing = False
        kwargs = dict(cfg.model_kwargs)
        if cfg.name in MONAI_RESNETS:
            kwargs.setdefault("n_input_channels", cfg.in_chans)
            self.model = getattr(nets, cfg.name)(spatial_dims=3, feed_forward=False, num_classes=1, **kwargs)
            self.num_features = int(self.model.in_planes)
            self.arch = "resnet"
        elif cfg.name == "vit":
            kwargs.setdefault("patch_size", 16)
            size = cfg.image_size if isinstance(cfg.image_size, (list, tuple)) else [cfg.image_size] * 3
            import_optional("einops", "volumes", "the monai3d 'vit' volume tower")
            self.model = nets.ViT(
                in_channels=cfg.in_chans, img_size=tuple(size), spatial_dims=3, classification=False, **kwargs
            )
            self.num_features = int(self.model.norm.normalized_shape[0])
            self.arch = "vit"
        else:
            raise ModelLoadError(f"monai3d vision model must be one of {MONAI_RESNETS + ('vit',)}, got {cfg.name!r}")
        if load_pretrained and cfg.pretrained is True:
            raise ModelLoadError("monai3d towers have no built-in weights: set vision.pretrained to a weight file")
        if load_pretrained and isinstance(cfg.pretrained, str) and cfg.pretrained:
            load_weights(self.model, resolve_local(cfg.pretrained), cfg.pretrained_key_order)

    def _run(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            out = checkpoint(layer, x, use_reentrant=False)
        else:
            out = layer(x)
        return out

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        m = self.model
        if self.arch == "resnet":
            x = m.act(m.bn1(m.conv1(volumes)))
            if not m.no_max_pool:
                x = m.maxpool(x)
            for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
                x = self._run(layer, x)
            return torch.flatten(m.avgpool(x), 1)
        x = m.patch_embedding(volumes)
        for block in m.blocks:
            x = self._run(block, x)
        pooled: torch.Tensor = m.norm(x).mean(dim=1)
        return pooled

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable


class GatedAttentionPool(nn.Module):
    """Attention-based MIL pooling (Ilse et al., 2018): a learned weighted mean over slices."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.value = nn.Linear(dim, hidden)
        self.gate = nn.Linear(dim, hidden)
        self.score = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, F) -> (B, F)."""
        scores = self.score(torch.tanh(self.value(x)) * torch.sigmoid(self.gate(x)))  # (B, S, 1)
        weights = torch.softmax(scores.float(), dim=1).to(x.dtype)
        return (weights * x).sum(dim=1)


class SliceBackbone(nn.Module):
    """A timm 2D encoder run on every slice of (B, C, D, H, W), then attention pooling over slices."""

    def __init__(self, cfg: VisionConfig, load_pretrained: bool = True) -> None:
        super().__init__()
        self.encoder = TimmBackbone(cfg, load_pretrained)
        self.channels_last = cfg.channels_last
        self.num_features = self.encoder.num_features
        self.pool = GatedAttentionPool(self.num_features, cfg.slice_attention_dim)

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = volumes.shape
        slices = volumes.permute(0, 2, 1, 3, 4).reshape(b * d, c, h, w)
        if self.channels_last:
            slices = slices.contiguous(memory_format=torch.channels_last)
        features = self.encoder(slices).reshape(b, d, -1)
        pooled: torch.Tensor = self.pool(features)
        return pooled

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)


class VisionTower(nn.Module):
    """Normalisation + backbone + projection: [0, 1] images or volumes -> (B, embed_dim)."""

    backbone: TimmBackbone | Monai3DBackbone | SliceBackbone
    mean: torch.Tensor  # registered buffers
    std: torch.Tensor

    def __init__(self, cfg: VisionConfig, embed_dim: int, load_pretrained: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        backbones: dict[str, type[TimmBackbone | Monai3DBackbone | SliceBackbone]] = {
            "timm": TimmBackbone,
            "monai3d": Monai3DBackbone,
            "slices2d": SliceBackbone,
        }
        backbone_cls = backbones[cfg.kind]
        self.backbone = backbone_cls(cfg, load_pretrained)
        self.proj = build_projection(cfg.proj, self.backbone.num_features, embed_dim, cfg.proj_bias)
        shape = (1, -1) + (1,) * (3 if cfg.is_volume else 2)
        self.register_buffer("mean", torch.tensor(cfg.mean, dtype=torch.float32).reshape(shape), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std, dtype=torch.float32).reshape(shape), persistent=False)
        if cfg.channels_last and cfg.kind in ("timm", "slices2d"):
            self.backbone.to(memory_format=torch.channels_last)

    def check_input(self, images: torch.Tensor) -> None:
        """Raise a clear error unless ``images`` is what this tower takes."""
        ndim = 5 if self.cfg.is_volume else 4
        layout = "(B, C, D, H, W)" if self.cfg.is_volume else "(B, C, H, W)"
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if not images.is_floating_point():
            raise TypeError(f"images must be float in [0, 1], got dtype {images.dtype}")
        if images.ndim != ndim or images.shape[1] != self.cfg.in_chans:
            raise ValueError(
                f"vision tower ({self.cfg.kind}) takes {layout} with C={self.cfg.in_chans}, got shape {tuple(images.shape)}"
            )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        projected: torch.Tensor = self.proj(self.features(images))
        return projected

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's pooled output (B, num_features) before the projection (what the training
        feature cache stores for a locked backbone)."""
        self.check_input(images)
        dtype = self.weight_dtype()
        x = ((images.float() - self.mean) / self.std).to(dtype)
        if self.cfg.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        features: torch.Tensor = self.backbone(x)
        return features

    def weight_dtype(self) -> torch.dtype:
        """The dtype of the tower's weights (inputs are cast to it)."""
        return next(self.backbone.parameters()).dtype

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def set_patch_dropout(self, prob: float) -> int:
        """Set the training-time patch dropout share of every timm ``PatchDropout`` in the tower (0 turns FLIP
        off, e.g. for the unmasked tuning steps at the end of training); returns how many were set."""
        from timm.layers import PatchDropout

        if not 0.0 <= prob < 1.0:
            raise ValueError(f"patch dropout must be in [0, 1), got {prob}")
        layers = [m for m in self.backbone.modules() if isinstance(m, PatchDropout)]
        for layer in layers:
            layer.prob = prob
        return len(layers)


__all__ = [
    "VisionTower",
    "TimmBackbone",
    "Monai3DBackbone",
    "SliceBackbone",
    "GatedAttentionPool",
    "build_projection",
    "load_weights",
    "read_state_dict",
]
