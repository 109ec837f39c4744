"""``fit``: build the module, data, callbacks, loggers and Trainer from a config, train, export the model."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import shutil
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.fabric.plugins import CheckpointIO, TorchCheckpointIO
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from medclip.checkpoint import CheckpointDir
from medclip.fsutil import atomic_write, disk_full_error
from medclip.model.preprocess import PreprocessConfig
from medclip.train.config import ConfigError, load_config
from medclip.train.data import MedClipDataModule, resolve_path
from medclip.train.features import BackboneFeatures
from medclip.train.module import DualEncoderModule

log = logging.getLogger(__name__)

#: Trainer options that may be given as ``{class_path: ..., init_args: {...}}`` in YAML.
_OBJECT_OPTIONS = ("callbacks", "plugins", "strategy", "profiler", "accelerator")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside its target, then renames it into place.

    A run killed while saving leaves the previous checkpoint intact and never a truncated file
    (a rename within one directory is atomic on POSIX file systems, shared ones included).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            # object stores (s3://, gs://, ...): fsspec's transactional write
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        needed = _checkpoint_bytes(checkpoint)
        try:
            with atomic_write(path, fsync=True, expected_bytes=needed) as tmp:
                torch.save(checkpoint, tmp)
        except RuntimeError as exc:
            # torch's zip writer reports a full disk as "file write failed" with no errno: judge by free space
            free = shutil.disk_usage(Path(path).parent).free
            if "PytorchStreamWriter" in str(exc) or "inline_container" in str(exc):
                if free < needed:
                    raise disk_full_error(path, needed=needed) from exc
            raise


def _checkpoint_bytes(obj: Any) -> int:
    """The bytes of every tensor in a checkpoint (the size torch.save writes, to within its small index)."""
    if isinstance(obj, torch.Tensor):
        return int(obj.nelement() * obj.element_size())
    if isinstance(obj, Mapping):
        return sum(_checkpoint_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_checkpoint_bytes(v) for v in obj)
    return 0


class FinalCheckpoint(L.Callback):
    """Saves ``last.ckpt`` after the final training batch, which periodic checkpoints miss unless
    ``max_steps`` is a multiple of ``every_n_steps``; saved mid-loop, so a resume continues exactly."""

    def __init__(self, path: Path, every_n_steps: int | None) -> None:
        self.path = path
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        step = trainer.global_step
        by_steps = trainer.max_steps is not None and 0 < trainer.max_steps <= step
        max_epochs = trainer.max_epochs
        by_epochs = (
            max_epochs is not None
            and max_epochs > 0
            and trainer.current_epoch >= max_epochs - 1
            and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        )
        every = self.every_n_steps or 0
        periodic = every != 0 and step % int(every) == 0  # ModelCheckpoint saves it
        if (by_steps or by_epochs) and not periodic:
            trainer.save_checkpoint(self.path)


def _instantiate(spec: Any, where: str) -> Any:
    """``{class_path, init_args}`` -> an object; anything else is returned unchanged."""
    if isinstance(spec, list):
        return [_instantiate(item, where) for item in spec]
    if not (isinstance(spec, Mapping) and "class_path" in spec):
        return spec
    module_name, _, class_name = str(spec["class_path"]).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot import {spec['class_path']!r} ({exc})") from None
    return cls(**dict(spec.get("init_args") or {}))


def _checkpoint_dir(cfg: Mapping[str, Any], output_dir: Path) -> Path:
    return Path(cfg["checkpoint"].get("dir") or output_dir / "checkpoints").expanduser().resolve()


def _resume_path(cfg: Mapping[str, Any], checkpoint_dir: Path, output_dir: Path) -> str | None:
    """The checkpoint to resume from: ``resume`` as a path, or for ``last`` the newest of
    ``last.ckpt`` and Lightning's SLURM requeue checkpoints (``<output_dir>/hpc_ckpt_N.ckpt``)."""
    resume = cfg.get("resume")
    if resume in (None, "", False):
        return None
    if resume == "last":
        candidates = [p for p in [checkpoint_dir / "last.ckpt", *output_dir.glob("hpc_ckpt_*.ckpt")] if p.is_file()]
        if candidates:
            return str(max(candidates, key=lambda p: p.stat().st_mtime))
        log.info("resume=last: no checkpoint in %s yet, starting from scratch", checkpoint_dir)
        return None
    path = Path(str(resume)).expanduser()
    if not path.is_file():
        raise ConfigError(f"resume: checkpoint {path} not found")
    return str(path)


def _callbacks(cfg: Mapping[str, Any], checkpoint_dir: Path, with_loggers: bool) -> list[L.Callback]:
    ckpt = cfg["checkpoint"]
    keep = int(ckpt.get("save_top_k", -1))
    callbacks: list[L.Callback] = [
        ModelCheckpoint(
            dirpath=str(checkpoint_dir),
            filename="step-{step:08d}",
            auto_insert_metric_name=False,
            every_n_train_steps=ckpt.get("every_n_steps"),
            save_top_k=keep,
            # "step" as the monitor keeps the most recent ``keep`` checkpoints
            monitor="step" if keep > 0 else None,
            mode="max",
            save_last=bool(ckpt.get("save_last", True)),
            save_on_train_epoch_end=False,
            # step-N names never collide; overwrite last.ckpt rather than write last-v1.ckpt after a resume
            enable_version_counter=False,
        )
    ]
    if ckpt.get("save_last", True):
        callbacks.append(FinalCheckpoint(checkpoint_dir / "last.ckpt", ckpt.get("every_n_steps")))
    if with_loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    return callbacks


def _loggers(cfg: Mapping[str, Any], output_dir: Path) -> list[Any]:
    loggers: list[Logger] = []
    for name in cfg.get("loggers") or []:
        if name == "csv":
            loggers.append(CSVLogger(output_dir, name="csv_logs"))
        elif name == "tensorboard":
            if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
                log.warning("TensorBoard is not installed (pip install 'medclip-kit[train]'): CSV logs only")
                continue
            loggers.append(TensorBoardLogger(output_dir, name="tensorboard"))
        else:
            loggers.append(_instantiate(name, "loggers"))
    return loggers


def build_trainer(cfg: Mapping[str, Any], output_dir: Path, checkpoint_dir: Path) -> L.Trainer:
    """The ``lightning.Trainer`` for a training config (every ``trainer`` key passed through)."""
    kwargs = {
        key: _instantiate(value, f"trainer.{key}") if key in _OBJECT_OPTIONS else value
        for key, value in cfg["trainer"].items()
    }
    if kwargs.get("use_distributed_sampler"):
        log.warning("trainer.use_distributed_sampler is ignored: medclip's resumable sampler splits data by rank")
    kwargs["use_distributed_sampler"] = False
    if int(cfg["optim"].get("accum_freq", 1) or 1) > 1:
        # manual optimization (exact contrastive accumulation): Lightning refuses Trainer clipping there, the
        # module clips itself (DualEncoderModule.manual_gradient_clip, set by fit)
        kwargs.pop("gradient_clip_val", None)
        kwargs.pop("gradient_clip_algorithm", None)
    kwargs.setdefault("default_root_dir", str(output_dir))
    # one line of our own (model_summary_line) instead of Lightning's table, whose FLOPs column reads 0 here
    kwargs.setdefault("enable_model_summary", False)
    loggers = _loggers(cfg, output_dir)
    kwargs["logger"] = loggers or False
    kwargs["callbacks"] = _callbacks(cfg, checkpoint_dir, bool(loggers)) + list(kwargs.get("callbacks") or [])
    from medclip.train.progress import progress_setup  # off a terminal: a plain line every log_every_n_steps

    progress_kwargs, progress_callbacks = progress_setup(cfg["trainer"])
    kwargs.update(progress_kwargs)
    kwargs["callbacks"] += progress_callbacks
    plugins = kwargs.get("plugins") or []
    plugins = plugins if isinstance(plugins, list) else [plugins]
    if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
        plugins.append(AtomicCheckpointIO())
    kwargs["plugins"] = plugins
    return L.Trainer(**kwargs)


def _export(trainer: L.Trainer, module: DualEncoderModule, model_dir: Path) -> None:
    """Save the trained DualEncoder as a Hugging Face-style folder (rank 0; gathers sharded weights)."""
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    if isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy)):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # every rank takes part in gathering the full, unsharded weights; rank 0 receives and writes them
        if trainer.model is None:
            raise RuntimeError("the trainer holds no model to export")
        state = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if trainer.is_global_zero:
            from medclip.model import create_model

            model_cfg = module.hparams["model_cfg"]
            fresh = create_model(model_cfg["name"], pretrained=False, **dict(model_cfg.get("overrides") or {}))
            fresh.config.extra.update(module.model.config.extra)  # the training record
            fresh.config.preprocess = module.model.config.preprocess  # what the model sees
            prefix = "model."
            fresh.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
            fresh.save_pretrained(model_dir)
    elif trainer.is_global_zero:
        module.model.save_pretrained(model_dir)
    trainer.strategy.barrier("medclip-export")


def _text_prestage(
    cfg: Mapping[str, Any], data_cfg: Mapping[str, Any], module: DualEncoderModule, output_dir: Path, seed: int
) -> None:
    """KAD-style text pre-stage before image-text training; its summary goes to <output_dir>/text_pretrain.json."""
    import json

    from medclip.train.pretrain import run_text_pretrain

    pre = cfg["text_pretrain"]
    candidates = [data_cfg.get("manifest")] + [s.get("manifest") for s in data_cfg.get("sources") or []]
    defaults = [str(d) for d in candidates if d]
    if not pre.get("corpora") and not defaults:
        raise ConfigError("text_pretrain.corpora is empty and the training data has no manifest to read reports from")
    accelerator = str(cfg["trainer"].get("accelerator", "auto"))
    device = "cuda" if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else None
    try:
        summary = run_text_pretrain(
            module.model,
            pre,
            seed=seed,
            default_corpora=defaults,
            max_length=data_cfg.get("max_text_tokens"),
            device=device,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"text_pretrain: {exc}") from None
    log.info(
        "text pre-stage: loss %.4f -> %.4f over %d steps", summary["loss_first"], summary["loss_last"], summary["steps"]
    )
    from lightning.pytorch.utilities import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0:
        with atomic_write(output_dir / "text_pretrain.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")


def training_record(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The small-data training options a model was trained with (stored in its config.json under
    ``extra.training`` for eval and benchmarks; source names and weights, never paths)."""
    model, data, loss = cfg["model"], cfg["data"], cfg["loss"]
    sources = [
        {
            "name": str(s.get("name") or f"source{i}"),
            "weight": float(s.get("weight", 1.0)),
            "text": s.get("text", "report"),
        }
        for i, s in enumerate(data.get("sources") or [])
    ]
    pre = cfg.get("text_pretrain") or {}
    return {
        "lock_image": {
            k: model.get(k)
            for k in (
                "lock_image",
                "lock_image_unlocked_groups",
                "lock_image_norms_trainable",
                "lock_image_freeze_bn_stats",
            )
        },
        "lock_text": {k: model.get(k) for k in ("lock_text", "lock_text_unlocked_layers")},
        "sources": sources or None,
        "image_augmentation": dict(data.get("image_augmentation") or {}),
        "feature_cache": data.get("feature_cache"),
        "label_text": dict(data.get("label_text") or {}),
        "concept_balance": dict(data.get("concept_balance") or {}),
        "text_augmentation": data.get("text_augmentation"),
        "loss": {
            "name": loss.get("name"),
            "sub_captions": loss.get("sub_captions"),
            "max_sub_captions": loss.get("max_sub_captions"),
        },
        "text_pretrain": {
            "enabled": bool(pre.get("enabled")),
            "steps": pre.get("steps"),
            "lr": pre.get("lr"),
            "corpora": len(pre.get("corpora") or []),
        },
        "seed": cfg.get("seed"),
        "max_steps": cfg["trainer"].get("max_steps"),
    }


def model_summary_line(model: Any) -> str:
    """One line for the log: the model's name, its towers, and its trainable and frozen parameters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    cfg = model.config
    text = cfg.text.name or f"{(cfg.text.hf_config or {}).get('model_type', 'BERT')} (hf_config)"
    return (
        f"model {cfg.name}: image tower {cfg.vision.kind}:{cfg.vision.name}, text tower {text}; "
        f"{trainable / 1e6:.1f}M trainable, {frozen / 1e6:.1f}M frozen parameters"
    )


def run_record(data_cfg: Mapping[str, Any], *, steps: int, wall_time_s: float) -> dict[str, Any]:
    """What a model card needs beyond the options: steps run, wall time of this fit call, the data's fingerprints
    (SHA-256 of each manifest, never its path) and the versions of the libraries that trained it."""
    import platform

    from medclip import __version__
    from medclip.data.storage import content_fingerprint, exists

    specs = list(data_cfg.get("sources") or [{"name": "data", "manifest": data_cfg.get("manifest")}])
    data = []
    for i, spec in enumerate(specs):
        manifest = spec.get("manifest")
        entry: dict[str, Any] = {"name": str(spec.get("name") or f"source{i}")}
        if manifest and exists(manifest):
            entry["manifest_sha256"] = content_fingerprint(manifest)
        data.append(entry)
    versions = {"medclip": __version__, "torch": torch.__version__, "lightning": L.__version__}
    for name in ("timm", "transformers"):
        try:
            versions[name] = importlib.import_module(name).__version__
        except ImportError:  # pragma: no cover - both are dependencies
            pass
    return {
        "steps": steps,
        "wall_time_s": round(wall_time_s, 1),
        "data": data,
        "versions": versions,
        "python": platform.python_version(),
        "finished": time.strftime("%Y-%m-%d", time.gmtime()),
    }


def use_feature_cache(cfg: Mapping[str, Any], model: Any) -> bool:
    """Whether training reuses cached image features: ``data.feature_cache`` auto -> when the image backbone is
    fully locked (and in eval mode) and image augmentation is off; true -> required (an error if impossible)."""
    wanted = cfg["data"].get("feature_cache", "auto")
    augment = bool((cfg["data"].get("image_augmentation") or {}).get("enabled"))
    frozen = bool(getattr(model, "image_backbone_frozen", False))
    if wanted is True and (augment or not frozen):
        why = (
            "data.image_augmentation.enabled is true"
            if augment
            else "the image backbone is not fully locked (set model.lock_image: true with no unlocked groups, "
            "lock_image_norms_trainable: false and lock_image_freeze_bn_stats: true)"
        )
        raise ConfigError(f"data.feature_cache: true needs fixed image features, but {why}")
    return bool(wanted) and frozen and not augment


def training_preprocess(data_cfg: Mapping[str, Any], model_config: Any) -> PreprocessConfig:
    """What the model sees, as its training data was made (saved in its config.json, read by eval and the demo).

    From the cache it trains on (the cache's ``CacheConfig``: window, size, volume grid), else from the data
    config (``data.image_size``, ``data.dataset_kwargs.window``) for a manifest; with ``data.sources`` the first
    source's (a warning when the sources differ). The text length is the model's ``text.context_length``, or
    a smaller ``data.max_text_tokens``; a larger one is a ConfigError (the two used to clip each other silently).
    """
    from medclip.data.cache import read_cache_index
    from medclip.model.preprocess import text_length

    try:
        tokens = text_length(model_config.text.context_length, data_cfg.get("max_text_tokens"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    window = (data_cfg.get("dataset_kwargs") or {}).get("window", "auto")
    found = []
    for spec in data_cfg.get("sources") or [data_cfg]:
        if spec.get("cache_dir"):
            built = read_cache_index(spec["cache_dir"]).get("config", {})
            found.append(PreprocessConfig.from_dict(built, strict=False))
        else:
            found.append(PreprocessConfig(image_size=int(data_cfg.get("image_size") or 224), window=window))
    if len(set(found)) > 1:
        log.warning(
            "data.sources were preprocessed differently (%s); the model records the first source's",
            "; ".join(f"window {p.window}, {p.image_size} px" for p in found),
        )
    return found[0].with_(context_length=tokens)


def resolve_data_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The run's ``data`` section with its manifest / cache paths resolved and checked to exist (a missing one is a
    ``ConfigError`` naming its key); ``data.sources`` each resolved the same way."""
    from medclip.data.storage import exists as storage_exists  # a path or a bucket URL

    data_cfg = dict(cfg["data"])
    data_cfg["manifest"] = resolve_path(data_cfg.get("manifest"))
    data_cfg["cache_dir"] = resolve_path(data_cfg.get("cache_dir"))
    if data_cfg.get("sources"):
        if data_cfg.get("manifest") or data_cfg.get("cache_dir"):
            log.warning("data.sources is set: data.manifest / data.cache_dir are not used (list them as a source)")
        sources = []
        for i, spec in enumerate(data_cfg["sources"]):
            spec = {
                **spec,
                "manifest": resolve_path(spec.get("manifest")),
                "cache_dir": resolve_path(spec.get("cache_dir")),
            }
            used = "cache_dir" if spec["cache_dir"] else "manifest"
            if not storage_exists(spec[used]):
                raise ConfigError(f"data.sources[{i}].{used}: {spec[used]} does not exist")
            sources.append(spec)
        data_cfg["sources"] = sources
    else:
        used = "cache_dir" if data_cfg["cache_dir"] else "manifest"
        if not storage_exists(data_cfg[used]):
            raise ConfigError(f"data.{used}: {data_cfg[used]} does not exist")
    return data_cfg


def bind_data_to_model(data_cfg: dict[str, Any], model: Any) -> None:
    """What the model sees, saved with it: ``data.image_size`` defaults to the model's input size, the model's
    preprocessing is set from the data config, and ``data.max_text_tokens`` becomes the one text length (see
    :func:`training_preprocess`)."""
    if data_cfg.get("image_size") is None:
        model_size = model.config.vision.image_size
        data_cfg["image_size"] = model_size if isinstance(model_size, int) else 224
    model.config.preprocess = training_preprocess(data_cfg, model.config)
    data_cfg["max_text_tokens"] = model.config.preprocess.context_length


def fit(config: Mapping[str, Any] | str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """Train a dual encoder as the config says; return the exported model folder (``<output_dir>/model``)."""
    cfg = load_config(config, overrides)
    seed = int(cfg["seed"])
    L.seed_everything(seed, workers=True)
    output_dir = Path(cfg["output_dir"]).expanduser().resolve()  # created once the model is built: a bad
    checkpoint_dir = _checkpoint_dir(cfg, output_dir)  # model name or tower leaves no empty run folder behind

    data_cfg = resolve_data_config(cfg)
    ckpt_path = _resume_path(cfg, checkpoint_dir, output_dir)
    module = DualEncoderModule(cfg["model"], cfg["loss"], cfg["optim"])
    bind_data_to_model(data_cfg, module.model)
    cached = use_feature_cache(cfg, module.model)
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg["text_pretrain"].get("enabled") and ckpt_path is None:  # a resumed run has its trained weights
        _text_prestage(cfg, data_cfg, module, output_dir, seed)
    cfg["data"]["feature_cache"] = cached  # the resolved run config records what was used
    datamodule = MedClipDataModule(
        data_cfg,
        module.model.tokenize,
        seed=seed,
        feature_extractor=BackboneFeatures(module.model) if cached else None,
        feature_dir=Path(resolve_path(cfg["data"].get("feature_cache_dir")) or output_dir / "feature_cache"),
        max_captions=int(cfg["loss"].get("max_sub_captions", 4)) if cfg["loss"].get("sub_captions") else 0,
    )
    trainer = build_trainer(cfg, output_dir, checkpoint_dir)
    if not module.automatic_optimization:  # optim.accum_freq > 1: the module clips (see build_trainer)
        clip = cfg["trainer"].get("gradient_clip_val")
        module.manual_gradient_clip = (
            float(clip) if clip else None,
            cfg["trainer"].get("gradient_clip_algorithm") or "norm",
        )
    if trainer.is_global_zero:
        print(model_summary_line(module.model), flush=True)  # beside the training progress lines
        with atomic_write(output_dir / "config.yaml") as tmp:  # a full disk: DiskFullError naming it
            tmp.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    with warnings.catch_warnings():
        # the DataModule restores the data position itself (MedClipDataModule.load_state_dict)
        warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
        # CacheDataset splits its shards by rank and worker itself, so its __len__ is exact
        warnings.filterwarnings("ignore", message=".*`IterableDataset` has `__len__` defined.*")
        # optim.accum_freq > 1 (manual optimization): a checkpoint holds the weights after its step, as it does
        # under automatic optimization
        warnings.filterwarnings("ignore", message=".*manual optimization and every_n_train_steps.*")
        if module.lock_summary:  # locked towers (LiT) run in eval mode on purpose
            warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")
        started = time.time()
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    model_dir = output_dir / "model"
    record = training_record(cfg)
    record.update(run_record(data_cfg, steps=int(trainer.global_step), wall_time_s=time.time() - started))
    record["nonfinite_steps_skipped"] = module.nonfinite_steps  # NaN/Inf steps skipped by this fit call
    module.model.config.extra["training"] = record
    # a new model makes the old one's thresholds, drafter, gallery and eval output stale: set them aside
    with CheckpointDir(model_dir).replacing_model(active=trainer.is_global_zero):
        _export(trainer, module, model_dir)
    return model_dir
