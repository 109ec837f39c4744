"""Progress you can follow in a log file (a SLURM ``.out``, ``medclip fit > fit.log``).

Off a terminal, Lightning's progress bar draws nothing useful (Rich's stays silent, tqdm's is one line
of carriage returns), so a log stays empty for hours. There, :class:`PlainProgress` prints one plain
line every N optimizer steps (step, epoch, loss, images/s, learning rate, ETA) and one per validation,
and :func:`plain_progress_bars` turns every tqdm bar (index, cache, label, eval) into a line every
``interval`` seconds plus its last state.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

import lightning as L

from medclip.progress import format_duration, is_terminal, plain_progress_bars


class PlainProgress(L.Callback):
    """Prints ``step 120/20000 | epoch 0 | loss 3.4121 | 812.5 images/s | lr 9.98e-05 | ETA 05:31:02`` every
    ``every_n_steps`` optimizer steps on global rank 0, and the validation metrics after each validation.

    images/s counts every rank's images (the global batch) over the time since the previous line.
    """

    def __init__(self, every_n_steps: int = 50, stream: TextIO | None = None) -> None:
        self.every = max(1, int(every_n_steps))
        self.stream = stream
        self._t0 = self._t_last = 0.0
        self._step0 = self._step_last = 0
        self._images = 0
        self._printed_step = -1

    def _print(self, text: str) -> None:
        stream = self.stream if self.stream is not None else sys.stdout
        stream.write(text + "\n")
        stream.flush()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = self._t_last = time.perf_counter()
        self._step0 = self._step_last = trainer.global_step
        self._images = 0
        if trainer.is_global_zero:
            total = self._total(trainer)
            self._print(
                f"training: step {trainer.global_step}/{total if total else '?'}, "
                f"{trainer.world_size} process(es), a line every {self.every} steps"
            )

    @staticmethod
    def _total(trainer: L.Trainer) -> int | None:
        if trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        try:
            return int(trainer.estimated_stepping_batches)
        except Exception:  # noqa: BLE001  (an unsized stream)
            return None

    @staticmethod
    def _batch_size(batch: Any) -> int:
        if isinstance(batch, Mapping):
            for key in ("image", "features", "input_ids", "labels"):
                shape = getattr(batch.get(key), "shape", None)
                if shape is not None and len(shape):
                    return int(shape[0])
            text = batch.get("text")
            if isinstance(text, (list, tuple)):
                return len(text)
        return 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._images += self._batch_size(batch) * trainer.world_size
        step = trainer.global_step
        if step == self._printed_step or step % self.every or not trainer.is_global_zero:
            return
        self._printed_step = step
        now = time.perf_counter()
        rate = self._images / max(now - self._t_last, 1e-9)
        parts = [f"step {step}/{self._total(trainer) or '?'}", f"epoch {trainer.current_epoch}"]
        loss = trainer.callback_metrics.get("train/loss")
        if loss is None and isinstance(outputs, Mapping):
            loss = outputs.get("loss")
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        parts.append(f"{rate:.1f} images/s")
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.3g}")
        total = self._total(trainer)
        done = step - self._step0
        if total and done > 0:
            parts.append(f"ETA {format_duration((now - self._t0) / done * max(total - step, 0))}")
        self._print(" | ".join(parts))
        self._t_last, self._step_last, self._images = now, step, 0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if metrics:
            shown = " | ".join(f"{k} {float(v):.4f}" for k, v in sorted(metrics.items()))
            self._print(f"validation at step {trainer.global_step}: {shown}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self._print(
                f"training done: step {trainer.global_step} in {format_duration(time.perf_counter() - self._t0)}"
            )


def progress_setup(
    trainer_cfg: Mapping[str, Any], stream: TextIO | None = None
) -> tuple[dict[str, Any], list[L.Callback]]:
    """Trainer keyword overrides and callbacks for the output at hand.

    Off a terminal (unless ``trainer.enable_progress_bar`` is set true): Lightning's bar is turned off,
    :class:`PlainProgress` prints a line every ``trainer.log_every_n_steps`` steps, and tqdm bars become
    periodic lines. On a terminal: nothing changes.
    """
    if is_terminal(stream) or trainer_cfg.get("enable_progress_bar") is True:
        return {}, []
    plain_progress_bars()
    every = int(trainer_cfg.get("log_every_n_steps") or 50)
    return {"enable_progress_bar": False}, [PlainProgress(every, stream)]
