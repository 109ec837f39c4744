"""Training configuration: defaults, YAML loading, dotted ``key=value`` overrides and validation."""

from __future__ import annotations

import copy
import difflib
import inspect
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from medclip.model.config import deep_merge  # the one deep merge of medclip

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
        # several manifests / caches in one run: a list of {manifest | cache_dir, weight, name,
        # text: report | labels | mixed, mix_prob}; null: the single data.manifest / data.cache_dir
        "sources": None,
        # radiograph / CT-MR slice augmentation (training only), seeded per (seed, epoch, sample)
        "image_augmentation": {
            "enabled": False,
            "crop_scale": [0.8, 1.0],  # random resized crop: area fraction range
            "rotate_degrees": 7.0,  # uniform in [-d, d]
            "gamma": [0.8, 1.25],  # x ** gamma, gamma log-uniform in this range
            "contrast": 0.15,  # (x - mean) * (1 + u), u uniform in [-c, c]
            "noise_std": 0.01,  # Gaussian noise, sigma uniform in [0, noise_std]
            "hflip": False,  # laterality matters: off by default
        },
        # auto: image features are computed once and reused when the image tower is fully locked and
        # image augmentation is off (cached under <output_dir>/feature_cache, keyed by model + preprocessing)
        "feature_cache": "auto",
        # where the feature cache lives (null: <output_dir>/feature_cache); runs that share a folder reuse each
        # other's features when model and preprocessing match (the file name is their hash)
        "feature_cache_dir": None,
        # label-to-text (UniMed-CLIP): rows without a report get knowledge-graph sentences from their labels;
        # mix_prob: chance that a row WITH a report gets its label text instead (text mode "mixed");
        # exam_prob: chance that a row with acquisition attributes (modality, plane, body region) has its
        # text opened by the exam line a report starts with ("Axial CT of the chest.")
        "label_text": {"enabled": True, "mix_prob": 0.5, "exam_prob": 0.5},
        # MetaCLIP-style curation with knowledge-graph concepts: no concept (incl. "no finding") exceeds
        # max_share of the sampled pairs
        "concept_balance": {"enabled": False, "max_share": 0.25},
        # a cache sample that cannot be read (a member that does not decode, the rest of a truncated shard, a
        # shard deleted after the run started) is skipped with a warning and counted; more than this many in
        # one epoch of one data reader stop the run with a message naming the shard
        "max_bad_samples": 100,
    },
    "model": {
        "name": "offline-default",  # a named config or a saved model folder
        "overrides": {},  # keyword overrides for create_model
        "grad_checkpointing": False,
        # LiT (Zhai et al., 2022): a locked image tower (its projection stays trainable). Recommended for a few
        # thousand pairs (they cannot improve an ImageNet-pretrained backbone, only wreck it; a fully locked
        # backbone's features are cached, see data.feature_cache). On by default: the validation patients of
        # benchmarks/quality.py chose it (--quick, seed 0: validation score 0.506 locked vs 0.398 unlocked vs 0.420
        # with the last block + norms trainable). Set false to fine-tune the whole image tower on large data.
        "lock_image": True,
        "lock_image_unlocked_groups": 0,  # partial lock: this many last blocks stay trainable
        "lock_image_norms_trainable": False,  # partial lock: normalisation layers stay trainable
        "lock_image_freeze_bn_stats": True,  # BatchNorm running statistics stay as loaded when locked
        "lock_text": False,  # a locked text tower (its projection stays trainable)
        "lock_text_unlocked_layers": 0,  # partial lock: this many last transformer layers stay trainable
    },
    "loss": {
        # label_aware (default: pairs sharing findings are not pushed apart; plain InfoNCE when the data has
        # no labels) | infonce | siglip | multi_positive
        "name": "label_aware",
        "kwargs": {},
        # DreamLIP: each report sentence is its own positive of its image (needs name: multi_positive)
        "sub_captions": False,
        "max_sub_captions": 4,  # sentences per image kept (sampled) when sub_captions is on
    },
    "optim": {
        "optimizer": "adamw",  # adamw | sgd
        # torch's fused AdamW kernel: auto = where the parameters allow it (CPU, CUDA; not under fp16 mixed
        # precision, whose loss scaler clips unscaled gradients); true = required; false = torch's default loop
        "fused": "auto",
        "lr": 1e-4,
        "weight_decay": 0.05,
        "betas": [0.9, 0.98],
        "eps": 1e-6,
        "momentum": 0.9,  # sgd only
        "warmup_steps": 100,
        "schedule": "cosine",  # cosine | linear | constant (after the linear warmup)
        "min_lr_ratio": 0.0,  # final lr as a fraction of lr
        # per-tower lr by parameter-name prefix, e.g. {visual: 1e-4, text: 2e-5}; the default lets the new image
        # projection (all that trains of a LiT-locked image tower) learn 10x faster than the pretrained towers
        "tower_lr": {"visual.proj": 1e-3},
        # a step whose loss or gradients are NaN/Inf is skipped (no update) with a warning naming the step and
        # the batch's image ids; this many in a row stop the run with a message (the earlier checkpoints stay)
        "max_nonfinite_steps": 5,
        # exact big-batch contrastive accumulation (GradCache, open_clip's --accum-freq): each batch of
        # data.batch_size is split into this many micro-batches, and the loss sees every sample of the batch
        # as a negative; memory of one micro-batch plus the batch's features, one extra forward per micro-batch
        "accum_freq": 1,
        # FLIP's unmasked tuning: the last this-many steps train with model.overrides.vision.patch_dropout off
        "unmasked_steps": 0,
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
    # KAD-style text pre-stage: contrastive report <-> knowledge-graph label text, text tower only, run
    # before image-text training (not when resuming)
    "text_pretrain": {
        "enabled": False,
        "corpora": [],  # manifests (.parquet) or CSVs with report text; empty: the training manifest(s)
        "steps": 200,
        "lr": 5.0e-5,
        "batch_size": 32,
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
                raise ConfigError(f"override {text!r}: {'.'.join(keys[: depth + 1])} is a value, not a section")
            node = child
        node[keys[-1]] = value
    return result


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(value: Mapping[str, Any], default: Mapping[str, Any], where: str, source: str) -> None:
    """Unknown keys of a fixed-key section are errors; nested fixed-key sections are checked too."""
    for key, item in value.items():
        if key not in default:
            raise ConfigError(f"{source}: unknown key {where}.{key}{_suggest(str(key), list(default))}")
        nested = default[key]
        if isinstance(nested, dict) and nested:  # a fixed-key sub-section ({} ones are free-form kwargs)
            if not isinstance(item, Mapping):
                raise ConfigError(f"{source}: {where}.{key} must be a mapping, got {type(item).__name__}")
            _check_keys(item, nested, f"{where}.{key}", source)


_MISSING = object()


def _get(config: Mapping[str, Any], dotted: str, missing: Any = None) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return missing
        node = node[part]
    return node


def _is_number(value: Any, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    if integer:
        return isinstance(value, int)
    return isinstance(value, (int, float)) and math.isfinite(float(value))


#: Numeric options: key -> (integer?, lowest, highest, may be null). Bounds are inclusive; checked on load
#: so a bad value stops the run before anything is written.
_NUMERIC: dict[str, tuple[bool, float | None, float | None, bool]] = {
    "seed": (True, 0, None, False),
    "data.batch_size": (True, 1, None, False),
    "data.val_batch_size": (True, 1, None, True),
    "data.num_workers": (True, 0, None, False),
    "data.max_bad_samples": (True, 0, None, False),
    "data.image_size": (True, 8, 8192, True),
    "data.max_text_tokens": (True, 2, None, True),
    "data.image_augmentation.rotate_degrees": (False, 0, 180, False),
    "data.image_augmentation.contrast": (False, 0, 0.99, False),
    "data.image_augmentation.noise_std": (False, 0, 1, False),
    "data.label_text.mix_prob": (False, 0, 1, False),
    "data.label_text.exam_prob": (False, 0, 1, False),
    "data.concept_balance.max_share": (False, 1e-6, 1, False),
    "model.lock_image_unlocked_groups": (True, 0, None, False),
    "model.lock_text_unlocked_layers": (True, 0, None, False),
    "loss.max_sub_captions": (True, 1, None, False),
    "optim.lr": (False, 1e-12, None, False),
    "optim.weight_decay": (False, 0, None, False),
    "optim.eps": (False, 1e-30, None, False),
    "optim.momentum": (False, 0, 1, False),
    "optim.warmup_steps": (True, 0, None, False),
    "optim.min_lr_ratio": (False, 0, 1, False),
    "optim.max_nonfinite_steps": (True, 1, None, False),
    "optim.accum_freq": (True, 1, None, False),
    "optim.unmasked_steps": (True, 0, None, False),
    "trainer.max_steps": (True, -1, None, True),
    "trainer.min_steps": (True, -1, None, True),
    "trainer.max_epochs": (True, -1, None, True),
    "trainer.min_epochs": (True, 0, None, True),
    "trainer.num_nodes": (True, 1, None, False),
    "trainer.accumulate_grad_batches": (True, 1, None, False),
    "trainer.log_every_n_steps": (True, 1, None, True),
    "trainer.check_val_every_n_epoch": (True, 1, None, True),
    "trainer.num_sanity_val_steps": (True, -1, None, True),
    "trainer.gradient_clip_val": (False, 0, None, True),
    "checkpoint.every_n_steps": (True, 1, None, True),
    "checkpoint.save_top_k": (True, -1, None, False),
    "text_pretrain.steps": (True, 1, None, False),
    "text_pretrain.lr": (False, 1e-12, None, False),
    "text_pretrain.batch_size": (True, 2, None, False),
}

_BOOLEANS = (
    "data.pin_memory",
    "data.persistent_workers",
    "data.text_augmentation",
    "data.shuffle",
    "data.drop_last",
    "data.image_augmentation.enabled",
    "data.image_augmentation.hflip",
    "data.label_text.enabled",
    "data.concept_balance.enabled",
    "model.grad_checkpointing",
    "model.lock_image",
    "model.lock_image_norms_trainable",
    "model.lock_image_freeze_bn_stats",
    "model.lock_text",
    "loss.sub_captions",
    "text_pretrain.enabled",
    "checkpoint.save_last",
)

#: Numeric pairs [low, high]: key -> (lowest, highest) allowed for both ends.
_RANGES: dict[str, tuple[float, float]] = {
    "data.image_augmentation.crop_scale": (0.05, 1.0),
    "data.image_augmentation.gamma": (0.1, 10.0),
}

SOURCE_TEXT_MODES = ("report", "labels", "mixed")


def _number_error(source: str, key: str, value: Any, integer: bool, low: Any, high: Any, nullable: bool) -> ConfigError:
    kind = "an integer" if integer else "a number"
    bounds = (
        f" in [{low}, {high}]"
        if low is not None and high is not None
        else f" >= {low}"
        if low is not None
        else f" <= {high}"
        if high is not None
        else ""
    )
    return ConfigError(f"{source}: {key} must be {kind}{bounds}{' or null' if nullable else ''}, got {value!r}")


def _check_number(source: str, key: str, value: Any, spec: tuple[bool, float | None, float | None, bool]) -> None:
    integer, low, high, nullable = spec
    if value is None and nullable:
        return
    if not _is_number(value, integer) or (low is not None and value < low) or (high is not None and value > high):
        raise _number_error(source, key, value, integer, low, high, nullable)


def _check_values(config: Mapping[str, Any], source: str) -> None:
    """Every numeric, boolean and enumerated option has a usable value (the message names the key)."""
    for key, spec in _NUMERIC.items():
        value = _get(config, key, _MISSING)
        if value is not _MISSING:  # trainer options not set keep Lightning's defaults
            _check_number(source, key, value, spec)
    for key in _BOOLEANS:
        value = _get(config, key)
        if value is not None and not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
    for key, (low, high) in _RANGES.items():
        value = _get(config, key)
        ok = (
            isinstance(value, (list, tuple))
            and len(value) == 2
            and all(_is_number(v, False) for v in value)
            and low <= value[0] <= value[1] <= high
        )
        if not ok:
            raise ConfigError(f"{source}: {key} must be [low, high] with {low} <= low <= high <= {high}, got {value!r}")
    betas = _get(config, "optim.betas")
    if not (
        isinstance(betas, (list, tuple)) and len(betas) == 2 and all(_is_number(b, False) and 0 <= b < 1 for b in betas)
    ):
        raise ConfigError(f"{source}: optim.betas must be two numbers in [0, 1), got {betas!r}")
    for tower, lr in (_get(config, "optim.tower_lr") or {}).items():
        _check_number(source, f"optim.tower_lr.{tower}", lr, (False, 1e-12, None, False))
    trainer = config.get("trainer", {})
    for key in ("limit_train_batches", "limit_val_batches", "val_check_interval"):
        value = trainer.get(key)
        if value is None:
            continue
        if isinstance(value, float) and not (_is_number(value, False) and 0 <= value <= 1):
            raise ConfigError(f"{source}: trainer.{key} must be a fraction in [0, 1] or a count, got {value!r}")
        if not isinstance(value, float) and not (_is_number(value, True) and value >= 0):
            raise ConfigError(f"{source}: trainer.{key} must be a fraction in [0, 1] or a count >= 0, got {value!r}")
    _check_dataset_kwargs(_get(config, "data.dataset_kwargs") or {}, source)
    cache_dir = _get(config, "data.feature_cache_dir")
    if cache_dir is not None and not isinstance(cache_dir, (str, Path)):
        raise ConfigError(f"{source}: data.feature_cache_dir must be a folder path or null, got {cache_dir!r}")
    feature_cache = _get(config, "data.feature_cache")
    if feature_cache not in ("auto", True, False):
        raise ConfigError(f"{source}: data.feature_cache must be auto, true or false, got {feature_cache!r}")
    schedule = _get(config, "optim.schedule")
    if schedule not in ("cosine", "linear", "constant"):
        raise ConfigError(f"{source}: optim.schedule must be cosine, linear or constant, got {schedule!r}")
    optimizer = str(_get(config, "optim.optimizer")).lower()
    if optimizer not in ("adamw", "sgd"):
        raise ConfigError(f"{source}: optim.optimizer must be adamw or sgd, got {optimizer!r}")
    fused = _get(config, "optim.fused", "auto")
    if fused not in ("auto", True, False):
        raise ConfigError(f"{source}: optim.fused must be auto, true or false, got {fused!r}")
    corpora = _get(config, "text_pretrain.corpora")
    if not isinstance(corpora, (list, tuple)) or not all(isinstance(c, (str, Path)) for c in corpora):
        raise ConfigError(f"{source}: text_pretrain.corpora must be a list of file paths, got {corpora!r}")
    _check_sources(config, source)


def _check_dataset_kwargs(kwargs: Any, source: str) -> None:
    """``data.dataset_kwargs`` names only dataset options (checked now, not when the loaders start)."""
    from medclip.data.dataset import CacheDataset, ManifestDataset

    if not isinstance(kwargs, Mapping):
        raise ConfigError(f"{source}: data.dataset_kwargs must be a mapping, got {kwargs!r}")
    known = {name for cls in (ManifestDataset, CacheDataset) for name in inspect.signature(cls.__init__).parameters}
    known -= {"self", "manifest", "cache_dir", "split", "rank", "world_size", "with_images", "max_bad_samples"}
    for key in kwargs:
        if key not in known:
            raise ConfigError(f"{source}: unknown key data.dataset_kwargs.{key}{_suggest(str(key), sorted(known))}")
    if "buffer_size" in kwargs:
        _check_number(source, "data.dataset_kwargs.buffer_size", kwargs["buffer_size"], (True, 1, None, False))


def _check_sources(config: Mapping[str, Any], source: str) -> None:
    sources = _get(config, "data.sources")
    if sources is None:
        return
    if not isinstance(sources, (list, tuple)) or not sources:
        raise ConfigError(f"{source}: data.sources must be a non-empty list of sources or null, got {sources!r}")
    allowed = {"manifest", "cache_dir", "weight", "name", "text", "mix_prob"}
    names = set()
    for i, item in enumerate(sources):
        where = f"data.sources[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{source}: {where} must be a mapping with manifest or cache_dir, got {item!r}")
        for key in item:
            if key not in allowed:
                raise ConfigError(f"{source}: unknown key {where}.{key}{_suggest(str(key), sorted(allowed))}")
        if not item.get("manifest") and not item.get("cache_dir"):
            raise ConfigError(f"{source}: {where} needs a manifest or a cache_dir")
        _check_number(source, f"{where}.weight", item.get("weight", 1.0), (False, 1e-9, None, False))
        if "mix_prob" in item:
            _check_number(source, f"{where}.mix_prob", item["mix_prob"], (False, 0, 1, False))
        mode = item.get("text", "report")
        if mode not in SOURCE_TEXT_MODES:
            raise ConfigError(f"{source}: {where}.text must be one of {', '.join(SOURCE_TEXT_MODES)}, got {mode!r}")
        if mode == "labels" and not _get(config, "data.label_text.enabled"):
            raise ConfigError(f"{source}: {where}.text is labels but data.label_text.enabled is false")
        name = str(item.get("name") or f"source{i}")
        if name in names:
            raise ConfigError(f"{source}: {where}.name {name!r} is used twice")
        names.add(name)


def _check_loss(loss: Mapping[str, Any], source: str) -> None:
    """The loss name exists and its kwargs build it (checked on load, not when training starts)."""
    from medclip.model.losses import LOSS_NAMES, build_loss

    name = loss.get("name")
    if name not in LOSS_NAMES:
        raise ConfigError(f"{source}: loss.name must be one of {', '.join(LOSS_NAMES)}, got {name!r}")
    kwargs = loss.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ConfigError(f"{source}: loss.kwargs must be a mapping, got {kwargs!r}")
    for key, value in kwargs.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{source}: loss.kwargs.{key} must be a finite number, got {value!r}")
    try:
        build_loss(str(name), **dict(kwargs))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: loss.kwargs for {name}: {exc}") from None


def _check_accumulation(config: Mapping[str, Any], source: str) -> None:
    """``optim.accum_freq`` > 1 (exact contrastive accumulation) with the options it cannot share a run with."""
    k = _get(config, "optim.accum_freq", 1)
    if k == 1:
        return
    accumulate = _get(config, "trainer.accumulate_grad_batches", 1)
    if accumulate not in (None, 1):
        raise ConfigError(
            f"{source}: optim.accum_freq = {k} and trainer.accumulate_grad_batches = {accumulate} cannot be combined "
            "(Lightning's accumulation sums micro-batch losses, each with only its own negatives): use "
            "optim.accum_freq alone, with data.batch_size the whole (effective) batch"
        )
    batch_size = _get(config, "data.batch_size")
    if batch_size < k:
        raise ConfigError(
            f"{source}: data.batch_size = {batch_size} cannot be split into optim.accum_freq = {k} micro-batches "
            "(data.batch_size is the whole batch; each micro-batch is data.batch_size / optim.accum_freq)"
        )
    if _get(config, "data.drop_last") is False:
        raise ConfigError(
            f"{source}: optim.accum_freq = {k} needs data.drop_last true (a short last batch may not split into "
            f"{k} micro-batches on every rank)"
        )


def validate_config(config: Mapping[str, Any], source: str = "<config>") -> None:
    """Raise :class:`ConfigError` for unknown sections or keys, bad Trainer options, a missing dataset, or any
    option whose value is out of range (the message names the config and the key)."""
    for section, value in config.items():
        if section not in DEFAULTS:
            raise ConfigError(f"{source}: unknown section {section!r}{_suggest(section, list(DEFAULTS))}")
        default = DEFAULTS[section]
        if isinstance(default, dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: section {section!r} must be a mapping, got {type(value).__name__}")
            if section in ("trainer",):
                continue
            _check_keys(value, default, section, source)

    import lightning

    trainer_params = inspect.signature(lightning.Trainer.__init__).parameters
    for key in config.get("trainer", {}):
        if key in _TRAINER_OWNED:
            raise ConfigError(f"{source}: trainer.{key} is set by the {_TRAINER_OWNED[key]!r} section of the config")
        if key not in trainer_params or key == "self":
            raise ConfigError(
                f"{source}: trainer.{key} is not a lightning.Trainer option{_suggest(str(key), list(trainer_params))}"
            )

    data = config.get("data", {})
    if not data.get("manifest") and not data.get("cache_dir") and not data.get("sources"):
        raise ConfigError(f"{source}: set data.manifest or data.cache_dir (or data.sources)")
    batch_size = data.get("batch_size")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"{source}: data.batch_size must be a positive integer, got {batch_size!r}")
    every = config.get("checkpoint", {}).get("every_n_steps")
    if every is not None and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
        raise ConfigError(f"{source}: checkpoint.every_n_steps must be a positive integer or null, got {every!r}")
    _check_values(config, source)
    _check_accumulation(config, source)
    loss = config.get("loss", {})
    _check_loss(loss, source)
    if loss.get("sub_captions") and loss.get("name") != "multi_positive":
        raise ConfigError(
            f"{source}: loss.sub_captions needs loss.name=multi_positive (each sentence is a positive "
            f"of its image), got loss.name={loss.get('name')!r}"
        )


def load_config(path: str | Path | Mapping[str, Any] | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
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
