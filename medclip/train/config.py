"""Training configuration: defaults, YAML loading, dotted ``key=value`` overrides and validation."""

from __future__ import annotations

import copy
import difflib
import inspect
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

#: Every section a training config may have, with its defaults. ``trainer`` is passed to
#: ``lightning.Trainer`` as keyword arguments, so any Trainer option can be set there.
DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "output_dir": "runs/medclip",
    "data": {
        "manifest": None,  # Parquet manifest (``medclip index``/``medclip label``), decoded on the fly ...
        "cache_dir": None,  # ... or a WebDataset cache (``medclip cache``), used when both are set
        "train_split": "train",
        "val_split": "val",  # null: no validation
        "batch_size": 32,
        "val_batch_size": None,  # null: same as batch_size
        "num_workers": 2,
        "pin_memory": True,
        "persistent_workers": False,
        "image_size": None,  # null: the model's vision.image_size (2D), else 224
        "text_field": None,  # null: the dataset's default report text
        "text_augmentation": True,  # knowledge-graph report augmentation (training only)
        "max_text_tokens": None,  # null: the text tower's maximum
        "shuffle": True,
        "drop_last": True,  # contrastive losses want full batches
        "dataset_kwargs": {},  # passed to ManifestDataset / CacheDataset as is
    },
    "model": {
        "name": "offline-default",  # a named config or a saved model folder
        "overrides": {},  # keyword overrides for create_model
        "grad_checkpointing": False,
    },
    "loss": {
        # label_aware (default: pairs sharing findings are not pushed apart; plain InfoNCE when the data has
        # no labels) | infonce | siglip | multi_positive
        "name": "label_aware",
        "kwargs": {},
    },
    "optim": {
        "optimizer": "adamw",  # adamw | sgd
        "lr": 1e-4,
        "weight_decay": 0.05,
        "betas": [0.9, 0.98],
        "eps": 1e-6,
        "momentum": 0.9,  # sgd only
        "warmup_steps": 100,
        "schedule": "cosine",  # cosine | linear | constant (after the linear warmup)
        "min_lr_ratio": 0.0,  # final lr as a fraction of lr
        "tower_lr": {},  # optional per-tower lr, e.g. {vision: 1e-4, text: 2e-5}
    },
    "trainer": {
        "max_steps": 1000,
        "accelerator": "auto",
        "devices": "auto",
        "precision": "32-true",
        "log_every_n_steps": 10,
        "gradient_clip_val": 1.0,
    },
    "checkpoint": {
        "dir": None,  # null: <output_dir>/checkpoints
        "every_n_steps": 500,
        "save_top_k": -1,  # -1: keep every periodic checkpoint; k: keep the k most recent
        "save_last": True,
    },
    "resume": None,  # null | "last" (the newest checkpoint in checkpoint.dir, if any) | a .ckpt path
    "loggers": ["csv", "tensorboard"],
}

class _Loader(yaml.SafeLoader):
    """YAML 1.2 floats: ``3e-4`` and ``1e5`` are numbers (PyYAML's YAML 1.1 reads them as strings)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


#: Trainer keywords that the ``checkpoint`` and ``loggers`` sections own.
_TRAINER_OWNED = {"enable_checkpointing": "checkpoint", "logger": "loggers"}


class ConfigError(ValueError):
    """A training configuration that cannot be used; the message names the file and the key."""


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``update`` merged in, recursing into nested mappings."""
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"trainer.max_steps=10"`` -> (["trainer", "max_steps"], 10); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    try:
        value = _yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({exc})") from None
    return key.split("."), value


def apply_overrides(config: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``config`` with each dotted ``key=value`` override set (creating sections as needed)."""
    result = copy.deepcopy(dict(config))
    for text in overrides:
        keys, value = parse_override(text)
        node = result
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                raise ConfigError(
                    f"override {text!r}: {'.'.join(keys[: depth + 1])} is a value, not a section"
                )
            node = child
        node[keys[-1]] = value
    return result


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def validate_config(config: Mapping[str, Any], source: str = "<config>") -> None:
    """Raise :class:`ConfigError` for unknown sections or keys, bad Trainer options, or a missing dataset."""
    for section, value in config.items():
        if section not in DEFAULTS:
            raise ConfigError(f"{source}: unknown section {section!r}{_suggest(section, list(DEFAULTS))}")
        default = DEFAULTS[section]
        if isinstance(default, dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: section {section!r} must be a mapping, got {type(value).__name__}")
            if section in ("trainer",):
                continue
            for key in value:
                if key not in default:
                    raise ConfigError(
                        f"{source}: unknown key {section}.{key}{_suggest(str(key), list(default))}"
                    )

    import lightning

    trainer_params = inspect.signature(lightning.Trainer.__init__).parameters
    for key in config.get("trainer", {}):
        if key in _TRAINER_OWNED:
            raise ConfigError(
                f"{source}: trainer.{key} is set by the {_TRAINER_OWNED[key]!r} section of the config"
            )
        if key not in trainer_params or key == "self":
            raise ConfigError(
                f"{source}: trainer.{key} is not a lightning.Trainer option{_suggest(str(key), list(trainer_params))}"
            )

    data = config.get("data", {})
    if not data.get("manifest") and not data.get("cache_dir"):
        raise ConfigError(f"{source}: set data.manifest or data.cache_dir")
    batch_size = data.get("batch_size")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"{source}: data.batch_size must be a positive integer, got {batch_size!r}")
    every = config.get("checkpoint", {}).get("every_n_steps")
    if every is not None and (not isinstance(every, int) or every < 1):
        raise ConfigError(f"{source}: checkpoint.every_n_steps must be a positive integer or null, got {every!r}")
    schedule = config.get("optim", {}).get("schedule")
    if schedule not in ("cosine", "linear", "constant"):
        raise ConfigError(f"{source}: optim.schedule must be cosine, linear or constant, got {schedule!r}")


def load_config(
    path: str | Path | Mapping[str, Any] | None, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """The full training config: defaults <- YAML file (or mapping) <- dotted ``key=value`` overrides."""
    if path is None:
        source, user = "<defaults>", {}
    elif isinstance(path, Mapping):
        source, user = "<config dict>", dict(path)
    else:
        file = Path(path)
        source = str(file)
        if not file.is_file():
            raise ConfigError(f"{file}: config file not found")
        try:
            user = _yaml_load(file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML ({exc})") from None
        if not isinstance(user, Mapping):
            raise ConfigError(f"{file}: the top level must be a mapping of sections, got {type(user).__name__}")
    config = deep_merge(DEFAULTS, apply_overrides(user, overrides))
    validate_config(config, source)
    return config
