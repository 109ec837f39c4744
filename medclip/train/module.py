"""The LightningModule: a DualEncoder, a contrastive loss, AdamW with linear warmup and cosine decay."""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig

log = logging.getLogger(__name__)

#: Consecutive skipped (non-finite) steps after which a run stops, unless ``optim.max_nonfinite_steps`` says otherwise.
DEFAULT_MAX_NONFINITE_STEPS = 5


class NonFiniteLossError(RuntimeError):
    """Training stopped: the loss or the gradients were NaN/Inf for ``optim.max_nonfinite_steps`` steps in a row.

    The message names the step, the last batch's (salted) image ids and what to try; the checkpoints
    saved before (all of finite weights: skipped steps change nothing) are kept for ``resume``.
    """


#: Parameters that get no weight decay: biases, norm weights, temperature and logit bias.
_NO_DECAY_MARKERS = ("bias", "norm", "logit_scale", "logit_bias", "embeddings.position", "bn")


def lr_lambda(step: int, *, warmup_steps: int, total_steps: int, schedule: str, min_lr_ratio: float) -> float:
    """The learning-rate multiplier at ``step``: linear warmup, then cosine / linear decay or constant."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "linear":
        decay = 1.0 - progress
    else:
        raise ValueError(f"unknown learning-rate schedule {schedule!r} (cosine, linear or constant)")
    return min_lr_ratio + (1.0 - min_lr_ratio) * decay


def _rng_state() -> dict[str, Any]:
    """Python, NumPy and torch CPU RNG states in types a ``weights_only`` checkpoint load accepts."""
    # the legacy MT19937 state is this tuple (numpy types the return as tuple | dict, the non-legacy form)
    state = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state(legacy=True))
    kind, keys, pos, has_gauss, gauss = state
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss_np = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss_np))
    torch.set_rng_state(state["torch"])


def _batch_size(batch: Mapping[str, torch.Tensor]) -> int:
    return int((batch["images"] if "images" in batch else batch["image_features"]).shape[0])


def micro_batch_slices(batch: Mapping[str, Any], k: int) -> list[tuple[slice, slice]]:
    """The k micro-batches of ``batch`` (``optim.accum_freq``): per micro-batch, its image rows and its text rows.

    Sizes as ``torch.tensor_split`` (the first ``n mod k`` get one more). With sub-captions the text rows of a
    micro-batch are those of its images (``caption_index`` is sorted: rows follow their images)."""
    n = _batch_size(batch)
    if n < k:
        raise ValueError(
            f"a batch of {n} samples cannot be split into optim.accum_freq = {k} micro-batches: "
            "use data.batch_size >= optim.accum_freq and data.drop_last true (the last batch of an epoch)"
        )
    bounds = [0]
    for j in range(k):
        bounds.append(bounds[-1] + n // k + (1 if j < n % k else 0))
    caption_index = batch.get("caption_index")
    if caption_index is None:
        text_bounds = bounds
    else:
        edges = torch.searchsorted(caption_index.cpu(), torch.tensor(bounds, dtype=caption_index.dtype))
        text_bounds = [int(e) for e in edges]
    return [(slice(bounds[j], bounds[j + 1]), slice(text_bounds[j], text_bounds[j + 1])) for j in range(k)]


def _micro_batch(batch: Mapping[str, Any], images: slice, texts: slice) -> dict[str, Any]:
    """The model inputs of one micro-batch (images or cached image features, and its text rows)."""
    key = "images" if "images" in batch else "image_features"
    return {
        key: batch[key][images],
        "input_ids": batch["input_ids"][texts],
        "attention_mask": batch["attention_mask"][texts],
    }


def _rng_snapshot(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _rng_restore(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def fused_supported(params: Iterable[torch.Tensor]) -> bool:
    """Whether torch's fused AdamW kernel takes these parameters: floating point (not complex), all on one
    device type that has the kernel (CPU and CUDA in torch 2.14)."""
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    devices = set(_get_fused_kernels_supported_devices())
    kinds = {(p.device.type, p.is_floating_point() and not p.is_complex()) for p in params}
    return bool(kinds) and len({d for d, _ in kinds}) == 1 and all(ok and d in devices for d, ok in kinds)


def build_optimizer(
    groups: list[dict[str, Any]], optim_cfg: Mapping[str, Any], precision: str = ""
) -> torch.optim.Optimizer:
    """The optimizer of ``optim_cfg`` (``optimizer``: adamw or sgd) over parameter ``groups``.

    AdamW uses torch's fused kernel (``optim.fused``: ``auto``, the default, where the parameters allow it; one
    kernel per step instead of a dozen per parameter tensor: a 26M-parameter step is about 4x cheaper on CPU).
    ``auto`` leaves it off under fp16 mixed precision (``precision`` 16-*), whose loss scaler cannot unscale a
    fused optimizer's gradients for clipping; ``true`` asks for it and fails if the parameters cannot have it."""
    name = str(optim_cfg.get("optimizer", "adamw")).lower()
    lr = float(optim_cfg["lr"])
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(optim_cfg.get("momentum", 0.9)))
    if name != "adamw":
        raise ValueError(f"unknown optimizer {name!r} (adamw or sgd)")
    fused_cfg = optim_cfg.get("fused", "auto")
    params = [p for group in groups for p in group["params"]]
    if fused_cfg == "auto" or fused_cfg is None:
        fused = fused_supported(params) and not str(precision).startswith("16")
    elif isinstance(fused_cfg, bool):
        fused = fused_cfg
        if fused and not fused_supported(params):
            kinds = sorted({f"{p.device.type} {p.dtype}" for p in params})
            raise ValueError(f"optim.fused: true, but torch has no fused AdamW for parameters on {', '.join(kinds)}")
    else:
        raise ValueError(f"optim.fused must be auto, true or false, got {fused_cfg!r}")
    return torch.optim.AdamW(
        groups,
        lr=lr,
        betas=tuple(optim_cfg.get("betas", (0.9, 0.98))),
        eps=float(optim_cfg.get("eps", 1e-6)),
        fused=fused or None,
    )


def apply_locks(model: Any, model_cfg: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Apply the config's LiT tower locks (``model.lock_image*``, ``model.lock_text*``) to a DualEncoder;
    returns the trainable / locked parameter counts of each locked tower."""
    summary: dict[str, dict[str, int]] = {}
    if model_cfg.get("lock_image"):
        summary["image"] = model.lock_image_tower(
            int(model_cfg.get("lock_image_unlocked_groups") or 0),
            norms_trainable=bool(model_cfg.get("lock_image_norms_trainable")),
            freeze_bn_stats=bool(model_cfg.get("lock_image_freeze_bn_stats", True)),
        )
    if model_cfg.get("lock_text"):
        summary["text"] = model.lock_text_tower(int(model_cfg.get("lock_text_unlocked_layers") or 0))
    for tower, counts in summary.items():
        log.info("%s tower locked: %d parameters trainable, %d locked", tower, counts["trainable"], counts["locked"])
    return summary


def clamp_logit_scale(model: Any) -> None:
    """Clamp ``model.logit_scale`` (the log of the logit scale) in place to [0, ln(max_logit_scale)], as CLIP does."""
    upper = math.log(float(model.config.max_logit_scale))
    with torch.no_grad():
        model.logit_scale.clamp_(0.0, upper)


class DualEncoderModule(L.LightningModule):
    """Trains a :class:`medclip.model.DualEncoder` with a loss from :func:`medclip.model.losses.build_loss`.

    ``model_cfg``, ``loss_cfg`` and ``optim_cfg`` are the ``model``, ``loss`` and ``optim`` sections of
    the training config; they are saved as hyperparameters so a checkpoint rebuilds the module.
    """

    def __init__(
        self,
        model_cfg: Mapping[str, Any],
        loss_cfg: Mapping[str, Any],
        optim_cfg: Mapping[str, Any],
    ) -> None:
        super().__init__()
        from medclip.model import create_model
        from medclip.model.losses import build_loss

        # saved in checkpoints: DualEncoderModule.load_from_checkpoint(path) rebuilds the module
        self.save_hyperparameters(
            {"model_cfg": dict(model_cfg), "loss_cfg": dict(loss_cfg), "optim_cfg": dict(optim_cfg)}
        )
        self.model = create_model(model_cfg["name"], **dict(model_cfg.get("overrides") or {}))
        # pretrained Hugging Face towers load in eval mode, and Lightning keeps module modes as found:
        # without this their dropout would be off for the whole run
        self.model.train()
        if model_cfg.get("grad_checkpointing"):
            self.model.set_grad_checkpointing(True)
        self.lock_summary = apply_locks(self.model, model_cfg)
        self.loss_name = str(loss_cfg["name"])
        self.loss_fn = build_loss(self.loss_name, **dict(loss_cfg.get("kwargs") or {}))
        self.optim_cfg = dict(optim_cfg)
        self._rng_to_restore: dict[str, Any] | None = None
        self._warned_no_labels = False
        #: NaN/Inf guard: steps skipped in this run, the current run of consecutive ones, and this
        #: optimizer step's batches (loss finite?, image ids) since the last step
        self.max_nonfinite_steps = int(self.optim_cfg.get("max_nonfinite_steps", DEFAULT_MAX_NONFINITE_STEPS))
        self.nonfinite_steps = 0
        self.nonfinite_in_a_row = 0
        self._step_batches: list[tuple[torch.Tensor, list[str]]] = []
        self._buffers_before: list[torch.Tensor] | None = None
        #: exact big-batch contrastive accumulation (GradCache): each batch is split into this many
        #: micro-batches; > 1 trains with manual optimization (see accumulated_backward)
        self.accum_freq = int(self.optim_cfg.get("accum_freq", 1) or 1)
        self.automatic_optimization = self.accum_freq <= 1
        #: (gradient_clip_val, gradient_clip_algorithm) applied by the module itself under manual optimization
        #: (Lightning refuses Trainer clipping there); fit moves them here from the trainer section
        self.manual_gradient_clip: tuple[float | None, str | None] = (None, None)
        #: FLIP: the last ``optim.unmasked_steps`` steps train with the vision tower's patch dropout off
        self.unmasked_steps = int(self.optim_cfg.get("unmasked_steps", 0) or 0)
        self._unmasked = False  # the tower starts with its configured patch dropout
        if self.unmasked_steps and not self.model.config.vision.patch_dropout:
            raise ValueError("optim.unmasked_steps needs model.overrides.vision.patch_dropout > 0 (FLIP)")

    # ------------------------------------------------------------------ steps
    def _forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """The model's outputs for a batch of images, or of cached backbone features (``image_features``:
        a locked backbone's pooled output, see medclip.train.features; only the projection runs)."""
        if "image_features" not in batch:
            return self.model(batch["images"], batch["input_ids"], batch["attention_mask"])
        model = self.model
        projected = model.visual.proj(batch["image_features"].to(model.visual.weight_dtype()))
        return {
            "image_features": torch.nn.functional.normalize(projected, dim=-1),
            "text_features": model.encode_text(batch["input_ids"], batch["attention_mask"], normalize=True),
            "logit_scale": model.logit_scale.exp().clamp(max=model.config.max_logit_scale),
            "logit_bias": model.logit_bias,
        }

    def _loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self._loss_from(self._forward(batch), batch)

    def _loss_from(
        self, outputs: Mapping[str, Any], batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss (and accuracy statistics) of a whole batch from its model outputs (one image row per image,
        one text row per caption)."""
        out = dict(outputs)
        labels = batch.get("labels")
        caption_index = batch.get("caption_index")
        if caption_index is not None:
            # sub-captions: one row per sentence; its image's features (and labels) repeated for it
            out["image_features"] = out["image_features"][caption_index]
            labels = labels[caption_index] if labels is not None else None
        if self.loss_name == "label_aware" and (labels is None or labels.shape[-1] == 0):
            # no finding labels: the soft targets reduce to the identity, i.e. plain InfoNCE
            if not self._warned_no_labels:
                rank_zero_warn(
                    "the data has no finding labels (label.* columns): the label-aware loss trains as "
                    "plain InfoNCE; run `medclip label MANIFEST` to use label-aware targets"
                )
                self._warned_no_labels = True
            labels = out["image_features"].new_zeros((out["image_features"].shape[0], 0))
        loss = self.loss_fn(
            out["image_features"],
            out["text_features"],
            out["logit_scale"],
            out.get("logit_bias"),
            labels=labels,
            group_ids=batch.get("group_ids"),
        )
        with torch.no_grad():
            logits = out["image_features"].float() @ out["text_features"].float().t()
            if caption_index is not None:  # a hit is any row of the same image
                groups = caption_index.to(logits.device)
                i2t = (groups[logits.argmax(dim=1)] == groups).float().mean()
                t2i = (groups[logits.argmax(dim=0)] == groups).float().mean()
            else:
                target = torch.arange(logits.shape[0], device=logits.device)
                i2t = (logits.argmax(dim=1) == target).float().mean()
                t2i = (logits.argmax(dim=0) == target).float().mean()
        stats = {"acc_i2t": i2t, "acc_t2i": t2i, "logit_scale": out["logit_scale"].detach()}
        return loss, stats

    def accumulated_backward(
        self,
        batch: Mapping[str, Any],
        k: int | None = None,
        backward: Callable[[torch.Tensor], None] | None = None,
        sync: Callable[[bool], contextlib.AbstractContextManager[Any]] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Gradients of the whole batch's loss, built from ``k`` micro-batches (GradCache, open_clip's ``--accum-freq``).

        1. every micro-batch's features (cached), the first k - 1 without gradients (the RNG state before each
           forward is kept so dropout draws the same masks again); the last one's forward keeps its graph, so it
           is not run twice;
        2. the last micro-batch's features put in place, the loss over the whole batch (gathered across ranks as
           always), backward; then per micro-batch j < k - 1: its forward with gradients again, its features in
           place of its cached ones, the loss, backward. The gradients sum to those of the whole batch's loss;
           the temperature and logit bias, used by the loss directly, take theirs from the final backward only
           (the one DDP all-reduces: every trainable parameter needs a gradient there). Buffers (BatchNorm
           running statistics) end as after the k forwards of step 1, each micro-batch counted once.

        Memory: one micro-batch's activations plus the features of the batch.

        ``backward`` defaults to ``loss.backward``; ``sync(last)`` is a context for each micro-batch (DDP's gradient
        all-reduce only on the final backward). Returns the (detached) loss of the whole batch and its statistics."""
        k = int(k or self.accum_freq)
        backward = backward or (lambda loss: loss.backward())
        parts = micro_batch_slices(batch, k)
        device = batch["input_ids"].device
        image_cache: list[torch.Tensor] = []
        text_cache: list[torch.Tensor] = []
        states = []
        with torch.no_grad():
            for images, texts in parts[:-1]:
                states.append(_rng_snapshot(device))
                out = self._forward(_micro_batch(batch, images, texts))
                image_cache.append(out["image_features"].detach())
                text_cache.append(out["text_features"].detach())
        kept = dict(self._forward(_micro_batch(batch, *parts[-1])))  # its graph is used below, once
        image_cache.append(kept["image_features"].detach())
        text_cache.append(kept["text_features"].detach())
        after = _rng_snapshot(device)
        buffers = [b.detach().clone() for b in self.model.buffers()]  # the re-runs below would update them again
        loss_value: torch.Tensor | None = None
        stats: dict[str, torch.Tensor] = {}
        order = [k - 1, *range(k - 1)]
        for step, j in enumerate(order):
            last = step == k - 1
            with sync(last) if sync is not None else contextlib.nullcontext():
                if j == k - 1:
                    out = kept
                else:
                    _rng_restore(states[j], device)
                    out = dict(self._forward(_micro_batch(batch, *parts[j])))
                out["image_features"] = torch.cat(image_cache[:j] + [out["image_features"]] + image_cache[j + 1 :])
                out["text_features"] = torch.cat(text_cache[:j] + [out["text_features"]] + text_cache[j + 1 :])
                if not last:  # the loss uses them directly: their gradient counts once, in the final (DDP-synced) pass
                    out["logit_scale"] = out["logit_scale"].detach()
                    if out.get("logit_bias") is not None:
                        out["logit_bias"] = out["logit_bias"].detach()
                loss, micro_stats = self._loss_from(out, batch)
                backward(loss)
            if step == 0:
                loss_value, stats = loss.detach(), micro_stats
            elif not bool(torch.isfinite(loss.detach()).all()):
                loss_value = loss.detach()
        with torch.no_grad():
            for buffer, saved in zip(self.model.buffers(), buffers):
                buffer.copy_(saved)
        _rng_restore(after, device)
        assert loss_value is not None
        return loss_value, stats

    def _backward_sync(self, last: bool) -> contextlib.AbstractContextManager[Any]:
        """DDP all-reduces the gradients in the last micro-batch's backward only (they accumulate until then)."""
        strategy = self.trainer.strategy
        block = getattr(strategy, "block_backward_sync", None)
        if last or block is None:
            return contextlib.nullcontext()
        return cast("contextlib.AbstractContextManager[Any]", block())

    def _accumulated_training_step(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        optimizer = self.optimizers()
        assert not isinstance(optimizer, list)
        optimizer.zero_grad(set_to_none=True)
        loss, stats = self.accumulated_backward(batch, backward=self.manual_backward, sync=self._backward_sync)
        return loss, stats

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        if not self._step_batches:
            # the buffers as this step found them (BatchNorm running statistics: small): a NaN batch would
            # leave them NaN for good, so a skipped step puts them back (on_before_optimizer_step)
            self._buffers_before = [b.detach().clone() for b in self.model.buffers()]
        if self.automatic_optimization:
            loss, stats = self._loss(batch)
        else:
            loss, stats = self._accumulated_training_step(batch)
        batch_size = _batch_size(batch)
        # remembered for the NaN/Inf guard (on_before_optimizer_step), which sees only the gradients
        self._step_batches.append((loss.detach(), list(batch.get("image_ids") or [])))
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/acc_i2t", stats["acc_i2t"], batch_size=batch_size)
        self.log("train/acc_t2i", stats["acc_t2i"], batch_size=batch_size)
        self.log("train/logit_scale", stats["logit_scale"].float().mean(), batch_size=batch_size)
        self.log("train/nonfinite_steps", float(self.nonfinite_steps), batch_size=batch_size)  # skipped so far
        if not self.automatic_optimization:
            # after the logging above, as Lightning's automatic optimization does: the step (the NaN/Inf guard
            # and clipping run in on_before_optimizer_step), then the lr schedule
            optimizer = self.optimizers()
            assert not isinstance(optimizer, list)
            optimizer.step()
            scheduler = self.lr_schedulers()
            if scheduler is not None:
                cast("torch.optim.lr_scheduler.LRScheduler", scheduler).step()
        return loss

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, stats = self._loss(batch)
        batch_size = _batch_size(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch_size)
        self.log("val/acc_i2t", stats["acc_i2t"], sync_dist=True, batch_size=batch_size)
        self.log("val/acc_t2i", stats["acc_t2i"], sync_dist=True, batch_size=batch_size)
        return loss

    # ------------------------------------------------------------------ optimizer and schedule
    def _param_groups(self) -> list[dict[str, Any]]:
        cfg = self.optim_cfg
        tower_lr: Mapping[str, float] = cfg.get("tower_lr") or {}
        groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            lr = float(cfg["lr"])
            for tower, tower_value in tower_lr.items():
                if name.startswith(f"{tower}.") or f".{tower}." in name or name.startswith(f"{tower}_"):
                    lr = float(tower_value)
            no_decay = param.ndim <= 1 or any(marker in name for marker in _NO_DECAY_MARKERS)
            decay = 0.0 if no_decay else float(cfg["weight_decay"])
            groups.setdefault((lr, decay), []).append(param)
        return [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]

    def _total_steps(self) -> int:
        trainer = self.trainer
        if trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        estimated = trainer.estimated_stepping_batches
        if not math.isfinite(estimated):
            raise ValueError("set trainer.max_steps (or max_epochs with a sized dataset) for the lr schedule")
        return int(estimated)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        cfg = self.optim_cfg
        groups = self._param_groups()
        precision = str(getattr(self._trainer, "precision", "") or "") if self._trainer is not None else ""
        optimizer = build_optimizer(groups, cfg, precision=precision)
        total = self._total_steps()
        warmup = int(cfg.get("warmup_steps", 0))
        schedule = str(cfg.get("schedule", "cosine"))
        min_ratio = float(cfg.get("min_lr_ratio", 0.0))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: lr_lambda(
                step, warmup_steps=warmup, total_steps=total, schedule=schedule, min_lr_ratio=min_ratio
            ),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    # ------------------------------------------------------------------ NaN/Inf guard, logit_scale clamp
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip an update whose loss or gradients are not finite: every gradient is set to None, so the
        optimizer changes no weight and no moment, and the buffers the batch's forward pass changed (BatchNorm
        running statistics) are put back (the lr schedule and step count still advance); count it,
        warn with the step and the batch's image ids, and stop when ``optim.max_nonfinite_steps`` come in a row.

        Gradients are checked after their all-reduce, and the decision is shared by all ranks (a sharded
        gradient is checked where it lives), so every rank of a distributed run decides alike. With
        fp16 mixed precision, Inf gradients are the loss scaler's business (it skips and lowers its scale):
        only a non-finite loss counts there."""
        batches, self._step_batches = self._step_batches, []
        params = [p for p in self.parameters() if p.grad is not None]
        # a sharded (FSDP2 DTensor) gradient is checked on this rank's shard; the decision is shared below
        grads = [p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad for p in params if p.grad is not None]
        losses = torch.stack([loss.float().reshape(()) for loss, _ in batches]) if batches else None
        bad_loss = losses is not None and not bool(torch.isfinite(losses).all())
        precision = str(getattr(self.trainer, "precision", ""))
        scaler_owns_inf = precision.startswith("16")
        bad_grads = (
            not scaler_owns_inf and bool(grads) and not bool(torch.stack([g.isfinite().all() for g in grads]).all())
        )
        bad = bool(bad_loss or bad_grads)
        if self.trainer.world_size > 1:  # one rank's bad shard or loss makes every rank skip: they stay in step
            bad = bool(self.trainer.strategy.reduce_boolean_decision(bad, all=False))
        if not bad:
            self.nonfinite_in_a_row = 0
            clip_val, clip_algorithm = self.manual_gradient_clip
            if not self.automatic_optimization and clip_val:  # Lightning clips only under automatic optimization
                self.clip_gradients(optimizer, gradient_clip_val=clip_val, gradient_clip_algorithm=clip_algorithm)
            return
        n_bad = sum(not bool(g.isfinite().all()) for g in grads)  # only on a bad step
        for param in params:
            param.grad = None
        if self._buffers_before is not None:
            with torch.no_grad():
                for buffer, saved in zip(self.model.buffers(), self._buffers_before):
                    buffer.copy_(saved)
        self.nonfinite_steps += 1
        self.nonfinite_in_a_row += 1
        step = int(self.trainer.global_step) + 1
        values = [float(loss) for loss, _ in batches]
        ids = [i for value, (_, batch_ids) in zip(values, batches) if not math.isfinite(value) for i in batch_ids]
        ids = ids or [i for _, batch_ids in batches for i in batch_ids]
        shown = ", ".join(ids[:16]) + (f" (+{len(ids) - 16} more)" if len(ids) > 16 else "")
        what = (
            "loss " + ", ".join(f"{v:g}" for v in values)
            if bad_loss
            else f"gradients of {n_bad} parameter tensors"
            if n_bad
            else "another rank's loss or gradients"
        )
        limit = self.max_nonfinite_steps
        if self.nonfinite_in_a_row >= limit:
            where = getattr(getattr(self.trainer, "checkpoint_callback", None), "dirpath", None)
            raise NonFiniteLossError(
                f"training stopped at step {step}: the loss or gradients were NaN/Inf in {self.nonfinite_in_a_row} "
                f"steps in a row (optim.max_nonfinite_steps = {limit}); last batch: {what} not finite; its images "
                f"(salted ids): {shown or 'unknown'}. No update was applied from the skipped steps, and the "
                f"checkpoints saved before are kept{f' in {where}' if where else ''} (resume=last continues from "
                "the last one). Try: a lower optim.lr or a longer optim.warmup_steps; check these images in the "
                "cache (blank, saturated or corrupted pixels); with trainer.precision 16-mixed or bf16-mixed, "
                "try 32-true"
            )
        log.warning(
            "step %d: %s not finite: update skipped (%d in a row, %d in this run; the run stops at %d in a row); "
            "batch images (salted ids): %s",
            step,
            what,
            self.nonfinite_in_a_row,
            self.nonfinite_steps,
            limit,
            shown or "unknown",
        )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # FLIP's unmasked tuning phase: from total - unmasked_steps on (also after a resume past that point)
        if self.unmasked_steps:
            unmasked = self.global_step >= self._total_steps() - self.unmasked_steps
            if unmasked == self._unmasked:
                return  # the tower already is as this step needs it (set once, not walked every step)
            self._unmasked = unmasked
            self.model.visual.set_patch_dropout(0.0 if unmasked else float(self.model.config.vision.patch_dropout))
            if unmasked and self.trainer.is_global_zero:
                print(
                    f"step {self.global_step}: patch dropout off for the last {self.unmasked_steps} steps "
                    "(FLIP unmasked tuning)",
                    flush=True,
                )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # CLIP (Radford et al., 2021) clamps the learned temperature after every step so that the logits are
        # scaled by at most 100 (config max_logit_scale); forward's clamp alone would freeze its gradient at 0
        clamp_logit_scale(self.model)

    # ------------------------------------------------------------------ epochs, RNG, checkpoints
    def on_train_epoch_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and callable(getattr(datamodule, "set_epoch", None)):
            datamodule.set_epoch(self.current_epoch)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning does not save RNG states; dropout must continue exactly where it was
        checkpoint["medclip_rng"] = _rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rng_to_restore = checkpoint.get("medclip_rng")

    def on_train_start(self) -> None:
        # restored as late as possible: building the model and loaders in between draws random numbers
        if self._rng_to_restore is not None:
            _set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
