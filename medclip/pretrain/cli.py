"""The ``medclip pretrain-image`` subcommand: its arguments (``add_pretrain_image_arguments``, defined once) and
handler."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

PRETRAIN_IMAGE_HELP = "image-only self-distillation (DINO) of a vision tower on a cache's images, no text"
PRETRAIN_IMAGE_DESCRIPTION = (
    "Continue a 2D vision tower (default: the offline ImageNet EfficientNet-Lite0 of `offline-default`) with "
    "DINO self-distillation on the images of a `medclip cache` folder (reports are not read): student and EMA "
    "teacher, multi-crop with radiograph-safe augmentations (crops, small rotations, gamma/contrast, noise; no "
    "colour jitter or solarisation; no flips unless --hflip). Needs the extra `pretrain` (lightly). Writes "
    "<output>/tower (config.json + model.safetensors), which `medclip fit` loads with "
    "model.overrides.vision.name=<output>/tower model.overrides.vision.pretrained=true. Resumes from "
    "<output>/checkpoints/last.ckpt by default. Options may also come from a YAML file (--config) of the same "
    "names (underscores); flags given on the command line win."
)


def _pair(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two comma-separated numbers, got {text!r}") from None
    return low, high


def _devices(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def add_pretrain_image_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``medclip pretrain-image`` (the one definition). Defaults are
    :class:`~medclip.pretrain.dino.PretrainImageConfig`'s; a flag left out keeps the YAML's or the default."""
    import dataclasses

    from .config import PretrainImageConfig

    defaults = {f.name: f.default for f in dataclasses.fields(PretrainImageConfig)}

    def default(name: str) -> Any:
        return defaults[name]

    S = argparse.SUPPRESS
    p.add_argument("--cache", dest="cache_dir", default=S, help="a `medclip cache` folder (its images only)")
    p.add_argument(
        "-o", "--output", dest="output_dir", default=S, help=f"run folder (default: {default('output_dir')})"
    )
    p.add_argument("--config", default=None, help="YAML file of options (keys as below, with underscores)")
    p.add_argument(
        "--tower",
        default=S,
        help="vision tower to continue: a bundled model config (its vision tower and weights), a config .json, a "
        f"medclip checkpoint or tower folder, or a timm model name (default: {default('tower')})",
    )
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false", default=S, help="random init")
    p.add_argument("--split", default=S, help="cache split to read, or 'all' (default: train)")
    p.add_argument("--seed", type=int, default=S)
    p.add_argument("--steps", type=int, default=S, help=f"optimizer steps (default: {default('steps')})")
    p.add_argument(
        "--batch-size", type=int, default=S, help=f"images per step and process (default: {default('batch_size')})"
    )
    p.add_argument("--lr", type=float, default=S, help=f"peak AdamW learning rate (default: {default('lr')})")
    p.add_argument("--warmup-steps", type=int, default=S, help="linear lr warm-up (at most a tenth of the steps)")
    p.add_argument("--weight-decay", type=float, default=S)
    p.add_argument("--global-size", type=int, default=S, help="global crop size in px (default 224; on a CPU e.g. 128)")
    p.add_argument("--local-size", type=int, default=S, help="local crop size in px (default 96; on a CPU e.g. 64)")
    p.add_argument("--n-local", type=int, default=S, help=f"local crops per image (default: {default('n_local')})")
    p.add_argument("--global-scale", type=_pair, default=S, help="global crop area range (default 0.4,1.0)")
    p.add_argument("--local-scale", type=_pair, default=S, help="local crop area range (default 0.05,0.4)")
    p.add_argument("--rotate-degrees", type=float, default=S, help="rotation range +- (default 10)")
    p.add_argument(
        "--hflip",
        action="store_true",
        default=S,
        help="also flip left-right (off by default: laterality matters on radiographs)",
    )
    p.add_argument(
        "--output-dim", type=int, default=S, help=f"DINO head output size (default: {default('output_dim')})"
    )
    p.add_argument(
        "--momentum", type=float, default=S, help="teacher EMA momentum at the start (default 0.996, cosine to 1)"
    )
    p.add_argument("--teacher-temp", type=float, default=S, help="teacher temperature (default 0.04)")
    p.add_argument("--warmup-teacher-temp", type=float, default=S, help="teacher temperature at step 0")
    p.add_argument("--warmup-teacher-temp-steps", type=int, default=S, help="steps of the teacher temperature warm-up")
    p.add_argument("--student-temp", type=float, default=S, help="student temperature (default 0.1)")
    p.add_argument("--center-momentum", type=float, default=S, help="momentum of the teacher centre (default 0.9)")
    p.add_argument(
        "--export", choices=["teacher", "student"], default=S, help="backbone written as the tower (default teacher)"
    )
    p.add_argument(
        "--precise-bn-images",
        type=int,
        default=S,
        help="re-estimate the exported tower's BatchNorm statistics on up to N of the cache's images as stored "
        "(default 2048; 0 keeps DINO's, which follow the augmented crops)",
    )
    p.add_argument("--devices", type=_devices, default=S, help="devices (processes); > 1 trains with DDP")
    p.add_argument("--accelerator", default=S, help="auto (default), cpu, gpu")
    p.add_argument("--precision", default=S, help="Lightning precision (default 32-true; e.g. bf16-mixed on a GPU)")
    p.add_argument("--num-workers", type=int, default=S, help="data loader workers (default 0)")
    p.add_argument("--log-every-n-steps", type=int, default=S, help="a progress line every N steps off a terminal")
    p.add_argument("--every-n-steps", type=int, default=S, help="a checkpoint every N steps (default 500)")
    p.add_argument(
        "--resume",
        default=S,
        help="checkpoint to resume from; 'last' (default) continues <output>/checkpoints/last.ckpt when there is "
        "one; 'none' starts over",
    )
    return p


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~medclip.pretrain.dino.PretrainImageConfig` of the YAML file (if any) and the flags given."""
    from .config import PretrainImageConfig

    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        import yaml

        path = Path(args.config).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--config: {path} not found")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of pretrain-image options")
        values.update(loaded)
        where = str(path)
    else:
        where = "command line"
    fields = PretrainImageConfig.__dataclass_fields__
    values.update({k: v for k, v in vars(args).items() if k in fields})
    if str(values.get("resume", "last")).lower() in ("none", "no", "false"):
        values["resume"] = None
    if not values.get("cache_dir"):
        raise ValueError("pretrain-image: --cache is required (a `medclip cache` folder)")
    return PretrainImageConfig.from_mapping(values, where)


def run_pretrain_image_command(args: argparse.Namespace) -> int:
    """Handler of ``medclip pretrain-image``."""
    from lightning.pytorch.utilities import rank_zero_only

    from .dino import lightly_modules, pretrain_image

    lightly_modules()  # one line naming the extra, before anything else
    cfg = config_from_args(args)
    tower = pretrain_image(cfg)
    if getattr(rank_zero_only, "rank", 0) == 0:
        print(f"tower saved to {tower}")
        print(
            "train a CLIP model from it: medclip fit --config quickstart "
            f"model.overrides.vision.name={tower} model.overrides.vision.pretrained=true"
        )
    return 0


def add_pretrain_image_parser(subparsers: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Register ``pretrain-image`` (arguments and handler) on the ``medclip`` command's subparsers."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "pretrain-image", help=PRETRAIN_IMAGE_HELP, description=PRETRAIN_IMAGE_DESCRIPTION
    )
    add_pretrain_image_arguments(p)
    p.set_defaults(func=run_pretrain_image_command)
    return p
