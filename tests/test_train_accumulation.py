"""Exact big-batch contrastive accumulation (``optim.accum_freq``, GradCache): the gradients of one batch of 16 built
from 4 micro-batches of 4 equal those of the batch of 16 in one piece, for every loss, in one process and in two
(gloo), with sub-captions and with cached image features; and a short fit with ``optim.accum_freq=2`` resumes
to the uninterrupted run's weights."""

from __future__ import annotations

import copy
import logging
import socket
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from test_train_fit import CRASH_AFTER, _config, _weights, manifest, one_torch_thread  # noqa: F401 (fixtures)

from medclip.model.losses import LOSS_NAMES, group_ids_from_keys
from medclip.train import fit
from medclip.train.config import ConfigError, load_config
from medclip.train.module import DualEncoderModule, _micro_batch, micro_batch_slices

N, K, IMAGE_SIZE, N_FINDINGS = 16, 4, 32, 5
TOL = {"rtol": 1e-5, "atol": 1e-5}


def make_module(loss: str, **kwargs: Any) -> DualEncoderModule:
    torch.manual_seed(0)
    module = DualEncoderModule(
        {"name": "tiny-test", "overrides": {"vision": {"image_size": IMAGE_SIZE}}, "lock_image": False},
        {"name": loss, "kwargs": kwargs},
        {"lr": 1e-3, "weight_decay": 0.0, "accum_freq": K},
    )
    # dropout masks and BatchNorm batch statistics depend on how a batch is cut: off for the comparison
    return module.eval()


def make_batch(module: DualEncoderModule, *, captions: bool = False, features: bool = False) -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(-1, 2, (N, N_FINDINGS), generator=g).float()
    labels[torch.rand(N, N_FINDINGS, generator=g) < 0.3] = float("nan")
    studies = [f"study{k % 6}" for k in range(N)]  # positives shared across micro-batches (multi_positive)
    texts = [f"finding {k} in the {'left' if k % 2 else 'right'} lung, size {k % 5} cm." for k in range(N)]
    batch: dict[str, Any] = {"labels": labels, "image_ids": [f"img{k}" for k in range(N)]}
    if features:
        width = module.model.visual.proj.in_features
        batch["image_features"] = torch.randn(N, width, generator=g)
    else:
        batch["images"] = torch.rand(N, 1, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    if captions:  # 1 to 3 sentences per image, each its own row
        rows = [(k, f"sentence {c} of image {k}.") for k in range(N) for c in range(1 + k % 3)]
        batch["caption_index"] = torch.tensor([k for k, _ in rows])
        texts = [t for _, t in rows]
        studies = [studies[k] for k, _ in rows]
    tokens = module.model.tokenize(texts)
    batch.update(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    batch["group_ids"] = group_ids_from_keys(studies)
    return batch


def grads_of(module: DualEncoderModule) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def big_batch_grads(module: DualEncoderModule, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    loss, _ = module._loss(batch)
    loss.backward()
    return loss.detach(), grads_of(module)


def accumulated_grads(module: DualEncoderModule, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    loss, _ = module.accumulated_backward(batch, K)
    return loss, grads_of(module)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        torch.testing.assert_close(a[name], b[name], **TOL, msg=name)


CASES = [(name, {}) for name in LOSS_NAMES] + [("infonce", {"local_loss": False})]


@pytest.mark.parametrize(("loss", "kwargs"), CASES, ids=[n + ("-global" if kw else "") for n, kw in CASES])
def test_accumulated_gradients_equal_the_big_batch(loss: str, kwargs: dict) -> None:
    module = make_module(loss, **kwargs)
    batch = make_batch(module)
    big_loss, big = big_batch_grads(module, batch)
    acc_loss, acc = accumulated_grads(module, batch)
    torch.testing.assert_close(acc_loss, big_loss, **TOL)
    assert_same(acc, big)
    assert "model.logit_scale" in acc  # the temperature's gradient counted once, not k times


def test_sub_captions_and_cached_features() -> None:
    module = make_module("multi_positive")
    for batch in (make_batch(module, captions=True), make_batch(module, features=True)):
        assert_same(accumulated_grads(module, batch)[1], big_batch_grads(module, batch)[1])


def test_micro_batches_follow_their_captions() -> None:
    module = make_module("multi_positive")
    batch = make_batch(module, captions=True)
    parts = micro_batch_slices({**batch, "images": batch["images"][:10]}, 4)
    assert [(s.start, s.stop) for s, _ in parts] == [(0, 3), (3, 6), (6, 8), (8, 10)]
    index = batch["caption_index"]
    for images, texts in parts:
        assert index[texts].tolist() == [k for k in index.tolist() if images.start <= k < images.stop]
    with pytest.raises(ValueError, match="cannot be split"):
        micro_batch_slices({"images": torch.zeros(3, 1, 4, 4)}, 4)


def test_train_mode_replays_dropout_and_updates_buffers_once() -> None:
    """In train mode (dropout on, BatchNorm on batch statistics) the gradients, BatchNorm running statistics and
    final RNG state equal those of the micro-batches run once with gradients, in order, and one loss over all:
    the gradient pass replays the cached pass's dropout masks, and the cached pass leaves no buffer changed."""
    module = make_module("infonce").train()
    batch = make_batch(module)
    buffers = [b.clone() for b in module.buffers()]
    torch.manual_seed(5)
    module.zero_grad(set_to_none=True)
    outs = [module._forward(_micro_batch(batch, i, t)) for i, t in micro_batch_slices(batch, K)]
    joined = {
        **outs[0],
        "image_features": torch.cat([o["image_features"] for o in outs]),
        "text_features": torch.cat([o["text_features"] for o in outs]),
    }
    module._loss_from(joined, batch)[0].backward()
    expected, expected_buffers, expected_rng = (
        grads_of(module),
        [b.clone() for b in module.buffers()],
        torch.get_rng_state(),
    )
    with torch.no_grad():
        for buffer, saved in zip(module.buffers(), buffers):
            buffer.copy_(saved)
    torch.manual_seed(5)
    assert_same(accumulated_grads(module, batch)[1], expected)
    assert torch.equal(torch.get_rng_state(), expected_rng)
    assert any(not torch.equal(a, b) for a, b in zip(expected_buffers, buffers))  # BatchNorm statistics moved
    for got, want in zip(module.buffers(), expected_buffers):
        torch.testing.assert_close(got, want, **TOL)


def test_config_checks() -> None:
    base = {"data": {"manifest": "m.parquet", "batch_size": 8}}
    assert load_config(base)["optim"]["accum_freq"] == 1
    assert load_config(base, ["optim.accum_freq=4"])["optim"]["accum_freq"] == 4
    for override, match in [
        ("optim.accum_freq=0", "optim.accum_freq must be an integer >= 1"),
        ("optim.accum_freq=16", "cannot be split into optim.accum_freq = 16"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_config(base, [override])
    with pytest.raises(ConfigError, match="accumulate_grad_batches = 2 cannot be combined"):
        load_config(base, ["optim.accum_freq=2", "trainer.accumulate_grad_batches=2"])
    with pytest.raises(ConfigError, match="drop_last"):
        load_config(base, ["optim.accum_freq=2", "data.drop_last=false"])


# --------------------------------------------------------------------------- two processes (gloo)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        for loss in LOSS_NAMES:
            module = make_module(loss)
            batch = make_batch(module)
            rows = slice(rank * N // world_size, (rank + 1) * N // world_size)
            local = {k: v[rows] for k, v in batch.items()}
            value, grads = accumulated_grads(module, local)  # 8 rows a rank: 4 micro-batches of 2
            for g in grads.values():  # what DDP does: the mean over ranks
                dist.all_reduce(g)
                g /= world_size
            dist.all_reduce(value)
            if rank == 0:
                save_file({"loss": value / world_size, **grads}, str(Path(out_dir) / f"{loss}.safetensors"))
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_the_big_batch(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for loss in LOSS_NAMES:
        module = make_module(loss)
        big_loss, big = big_batch_grads(module, make_batch(module))
        saved = load_file(str(tmp_path / f"{loss}.safetensors"))
        torch.testing.assert_close(saved.pop("loss"), big_loss, **TOL)
        assert_same(saved, big)


# --------------------------------------------------------------------------- fit and resume
def test_fit_with_accum_freq_trains_and_resumes(manifest: Path, tmp_path: Path) -> None:  # noqa: F811
    base = _config({"manifest": str(manifest)}, tmp_path / "full", max_steps=4, val_check_interval=None)
    base["optim"]["accum_freq"] = 2
    base["checkpoint"]["every_n_steps"] = 2
    full = fit(copy.deepcopy(base))
    first = torch.load(tmp_path / "full" / "checkpoints" / "step-00000002.ckpt", weights_only=False)
    assert first["global_step"] == 2 and first["lr_schedulers"][0]["last_epoch"] == 2

    killed = copy.deepcopy(base)
    killed["output_dir"] = str(tmp_path / "killed")
    killed["trainer"]["callbacks"] = [{"class_path": CRASH_AFTER, "init_args": {"step": 3}}]
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(killed)
    resumed = copy.deepcopy(base)
    resumed["output_dir"] = str(tmp_path / "killed")
    resumed["resume"] = str(tmp_path / "killed" / "checkpoints" / "step-00000002.ckpt")
    a, b = _weights(full), _weights(fit(resumed))
    at_step_2 = first["state_dict"]
    assert any(not torch.equal(a[n], at_step_2[f"model.{n}"]) for n in a)  # it trained
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_nonfinite_steps_are_skipped_with_accum_freq(
    manifest: Path,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The NaN/Inf guard under manual optimization: the poisoned step changes no weight and no BatchNorm statistic,
    is counted and named, and the run goes on (the lr schedule advances); the good steps are clipped."""
    from test_train_nonfinite import POISON, SEEN, _base

    SEEN.clear()
    cfg = _base(manifest, tmp_path / "run", max_steps=3)
    cfg["optim"]["accum_freq"] = 2
    cfg["trainer"]["callbacks"] = [{"class_path": POISON, "init_args": {"steps": [2]}}]
    clipped: list[tuple[Any, Any]] = []
    clip = DualEncoderModule.clip_gradients

    def recording_clip(self: DualEncoderModule, optimizer: Any, gradient_clip_val: Any, gradient_clip_algorithm: Any):
        clipped.append((gradient_clip_val, gradient_clip_algorithm))
        return clip(
            self, optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm
        )

    monkeypatch.setattr(DualEncoderModule, "clip_gradients", recording_clip)
    with caplog.at_level(logging.WARNING, logger="medclip.train.module"):
        model_dir = fit(cfg)
    assert clipped == [(1.0, "norm")] * 2  # the trainer's gradient_clip_val, on the two good steps only
    skipped = [r.getMessage() for r in caplog.records if "update skipped" in r.getMessage()]
    assert len(skipped) == 1 and skipped[0].startswith("step 2: loss nan not finite: update skipped"), skipped
    assert SEEN == [(2, [])]
    assert all(bool(torch.isfinite(w).all()) for w in _weights(model_dir).values())
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 3 and ckpt["lr_schedulers"][0]["last_epoch"] == 3


def test_trainer_clipping_moves_to_the_module(tmp_path: Path) -> None:
    """Lightning refuses Trainer clipping under manual optimization: the trainer is built without it."""
    from medclip.train.fit import build_trainer

    cfg = load_config(
        {"data": {"manifest": "m.parquet", "batch_size": 8}, "loggers": []},
        ["optim.accum_freq=2", "trainer.gradient_clip_val=0.5", "trainer.accelerator=cpu"],
    )
    assert build_trainer(cfg, tmp_path, tmp_path / "ckpt").gradient_clip_val is None
    cfg["optim"]["accum_freq"] = 1
    assert build_trainer(cfg, tmp_path, tmp_path / "ckpt").gradient_clip_val == 0.5


@pytest.mark.slow
def test_two_process_ddp_fit_with_accum_freq(manifest: Path, tmp_path: Path) -> None:  # noqa: F811
    """Lightning DDP (gloo, 2 CPU processes) with optim.accum_freq=2: the gradient all-reduce runs once a step
    (the other micro-batches' backward under no_sync) and both ranks finish in step."""
    import os
    import subprocess
    import sys

    import yaml
    from test_train_fit import REPO_ROOT

    cfg = _config({"manifest": str(manifest)}, tmp_path / "ddp", max_steps=3, strategy="ddp", devices=2)
    cfg["trainer"].update(val_check_interval=None, check_val_every_n_epoch=None, limit_val_batches=0)
    cfg["optim"]["accum_freq"] = 2
    cfg["checkpoint"]["every_n_steps"] = 3
    cfg["trainer"]["callbacks"] = [{"class_path": SAVE_RANK_WEIGHTS, "init_args": {"folder": str(tmp_path)}}]
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    path = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])  # the callback lives here
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    done = subprocess.run(
        [sys.executable, "-m", "medclip.train", "--config", str(config_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = torch.load(tmp_path / "ddp" / "checkpoints" / "step-00000003.ckpt", weights_only=False)
    assert ckpt["MedClipDataModule"]["world_size"] == 2 and ckpt["global_step"] == 3
    # each rank saw other images: only the all-reduce of the last micro-batch's backward keeps them equal
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0, msg=name)
    first = ckpt["state_dict"]
    assert any(not torch.equal(rank0[n], first[f"model.{n}"]) for n in rank0 if "num_batches" not in n)


SAVE_RANK_WEIGHTS = f"{__name__}.SaveRankWeights"


class SaveRankWeights(L.Callback):
    """Saves each rank's trainable weights after its first step (``rank<r>.pt`` in ``folder``)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        if trainer.global_step == 1:
            weights = {n: p.detach().clone() for n, p in pl_module.model.named_parameters() if p.requires_grad}
            torch.save(weights, Path(self.folder) / f"rank{trainer.global_rank}.pt")
