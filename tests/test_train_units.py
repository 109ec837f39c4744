"""Training building blocks: config loading and overrides, lr schedule, resumable sampler, report collate."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch

from medclip.train import DEFAULTS, ConfigError, load_config
from medclip.train.config import apply_overrides, parse_override
from medclip.train.data import AugmentedDataset, ReportCollator, sample_seed
from medclip.train.module import lr_lambda
from medclip.train.sampler import ResumableSampler

REPO_ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- config
def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(text)
    return path


def test_load_config_merges_defaults_file_and_overrides(tmp_path: Path) -> None:
    path = _write(tmp_path, "data:\n  manifest: m.parquet\n  batch_size: 8\ntrainer:\n  max_steps: 50\n")
    cfg = load_config(
        path,
        [
            "trainer.max_steps=10",
            "trainer.precision=bf16-mixed",
            "optim.lr=3e-4",
            "trainer.devices=[0,1]",
            "model.overrides.vision.image_size=32",
            "resume=last",
        ],
    )
    assert cfg["data"]["batch_size"] == 8
    assert cfg["data"]["num_workers"] == DEFAULTS["data"]["num_workers"]
    assert cfg["trainer"]["max_steps"] == 10
    assert cfg["trainer"]["precision"] == "bf16-mixed"
    assert cfg["trainer"]["devices"] == [0, 1]
    assert cfg["optim"]["lr"] == pytest.approx(3e-4)
    assert cfg["model"]["overrides"] == {"vision": {"image_size": 32}}
    assert cfg["resume"] == "last"
    # the defaults themselves are never modified
    assert DEFAULTS["trainer"]["max_steps"] == 1000 and DEFAULTS["model"]["overrides"] == {}


def test_any_trainer_option_is_reachable(tmp_path: Path) -> None:
    path = _write(tmp_path, "data: {manifest: m.parquet}\n")
    cfg = load_config(
        path,
        [
            "trainer.strategy=fsdp",
            "trainer.num_nodes=4",
            "trainer.accumulate_grad_batches=8",
            "trainer.val_check_interval=0.5",
            "trainer.deterministic=true",
        ],
    )
    assert cfg["trainer"]["strategy"] == "fsdp"
    assert cfg["trainer"]["num_nodes"] == 4
    assert cfg["trainer"]["accumulate_grad_batches"] == 8
    assert cfg["trainer"]["deterministic"] is True


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.max_step=3"], "did you mean 'max_steps'"),
        (["trainer.logger=false"], "loggers"),
        (["dataa.manifest=x"], "unknown section 'dataa'"),
        (["data.batchsize=3"], "did you mean 'batch_size'"),
        (["data.manifest=null"], "set data.manifest or data.cache_dir"),
        (["data.batch_size=0"], "data.batch_size must be a positive integer"),
        (["optim.schedule=step"], "optim.schedule"),
        (["checkpoint.every_n_steps=0"], "checkpoint.every_n_steps"),
        (["trainer.max_steps"], "not of the form"),
        (["data.batch_size=3", "data.batch_size.x=2"], "data.batch_size is a value"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, overrides: list[str], message: str) -> None:
    path = _write(tmp_path, "data:\n  manifest: m.parquet\n")
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path, overrides)
    if "not of the form" not in message and "is a value" not in message:
        assert str(path) in str(info.value)


def test_bad_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "data: [unclosed\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))


def test_override_values_are_yaml() -> None:
    assert parse_override("a.b=10") == (["a", "b"], 10)
    assert parse_override("a=null") == (["a"], None)
    assert parse_override("a=") == (["a"], None)
    assert parse_override("a=16-mixed") == (["a"], "16-mixed")
    assert apply_overrides({"x": {"y": 1}}, ["x.z.w=true"]) == {"x": {"y": 1, "z": {"w": True}}}


def test_quickstart_config_is_valid() -> None:
    from medclip.train.configs import resolve_config

    cfg = load_config(resolve_config("quickstart"))
    assert cfg["model"]["name"] == "offline-default"
    assert cfg["checkpoint"]["every_n_steps"] <= cfg["trainer"]["max_steps"]


# ----------------------------------------------------------------------------- schedule
def test_lr_warmup_then_cosine() -> None:
    kw = {"warmup_steps": 10, "total_steps": 110, "schedule": "cosine", "min_lr_ratio": 0.1}
    values = [lr_lambda(s, **kw) for s in range(120)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(b > a for a, b in zip(values[:10], values[1:10]))  # warmup rises
    assert values[10] == pytest.approx(1.0)
    assert values[60] == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert values[110] == pytest.approx(0.1) and values[119] == pytest.approx(0.1)
    assert all(b <= a + 1e-12 for a, b in zip(values[10:], values[11:]))  # decays monotonically
    assert lr_lambda(50, warmup_steps=0, total_steps=100, schedule="linear", min_lr_ratio=0.0) == pytest.approx(0.5)
    assert lr_lambda(99, warmup_steps=5, total_steps=100, schedule="constant", min_lr_ratio=0.0) == 1.0


# ----------------------------------------------------------------------------- sampler
def _indices(sampler: ResumableSampler) -> list[int]:
    return [index for index, _ in sampler]


def test_sampler_ranks_partition_each_epoch_and_reshuffle() -> None:
    samplers = [ResumableSampler(10, seed=1, rank=r, world_size=3) for r in range(3)]
    for epoch in (0, 1):
        for s in samplers:
            s.set_epoch(epoch)
        parts = [_indices(s) for s in samplers]
        assert all(len(p) == len(s) == 4 for p, s in zip(parts, samplers))  # padded to 12
        assert set().union(*parts) == set(range(10))
        if epoch == 0:
            first = parts
    assert parts != first  # a new order every epoch
    assert all(e == 1 for _, e in samplers[0])  # items carry their epoch


def test_sampler_resume_continues_the_same_order() -> None:
    world, batch, done = 2, 3, 2
    full = [ResumableSampler(23, seed=5, rank=r, world_size=world) for r in range(world)]
    resumed = [ResumableSampler(23, seed=5, rank=r, world_size=world) for r in range(world)]
    for f, s in zip(full, resumed):
        f.set_epoch(4)
        s.resume_from(epoch=4, consumed=done * batch * world)
        s.set_epoch(4)
        assert _indices(s) == _indices(f)[done * batch :]
        assert len(s) == len(f)  # Lightning counts the batches already done itself
        s.set_epoch(5)  # the skip only applies to the resumed epoch
        f.set_epoch(5)
        assert _indices(s) == _indices(f)


def test_sampler_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least one sample"):
        ResumableSampler(0)
    with pytest.raises(ValueError, match="rank 2"):
        ResumableSampler(5, rank=2, world_size=2)


# ----------------------------------------------------------------------------- text and collate
def test_augmentation_rng_depends_on_seed_epoch_and_index_only() -> None:
    items = [{"text": f"report {i}", "image": torch.zeros(1, 2, 2)} for i in range(4)]

    def shuffle_words(text: str, rng: random.Random) -> str:
        words = (text + " a b c d e f").split()
        rng.shuffle(words)
        return " ".join(words)

    data = AugmentedDataset(items, shuffle_words, seed=7)
    assert data[(2, 3)]["text"] == data[(2, 3)]["text"]
    assert data[(2, 3)]["text"] != data[(2, 4)]["text"] or data[(2, 3)]["text"] != data[(2, 5)]["text"]
    assert items[2]["text"] == "report 2"  # the source item is not modified
    assert AugmentedDataset(items, None, seed=7)[1]["text"] == "report 1"
    assert sample_seed(7, 3, 2) == sample_seed(7, 3, 2) != sample_seed(8, 3, 2)


@pytest.fixture(scope="module")
def tiny_model():
    from medclip.model import create_model

    return create_model("tiny-test", vision={"image_size": 32})


def test_collate_pads_to_longest_truncates_and_masks(tiny_model) -> None:
    long = " ".join(["effusion"] * 300)
    items = [
        {
            "image": torch.rand(1, 32, 32),
            "text": "no acute findings.",
            "labels": torch.tensor([1.0, float("nan")]),
            "image_id": "a",
            "study_id": "s1",
            "patient_id": "p",
        },
        {
            "image": torch.rand(1, 32, 32),
            "text": "small left effusion. heart size normal.",
            "labels": torch.tensor([0.0, 1.0]),
            "image_id": "b",
            "study_id": "s1",
            "patient_id": "p",
        },
        {
            "image": torch.rand(1, 32, 32),
            "text": long,
            "labels": torch.tensor([-1.0, 0.0]),
            "image_id": "c",
            "study_id": "",
            "patient_id": "p",
        },
    ]
    short = ReportCollator(tiny_model.tokenize, max_text_tokens=16)(items[:2])
    lengths = short["attention_mask"].sum(dim=1)
    assert short["input_ids"].shape[1] == int(lengths.max())  # padded only to the longest in the batch
    assert int(lengths[0]) < int(lengths[1])
    pad_id = tiny_model.tokenizer.pad_token_id
    assert bool((short["input_ids"][short["attention_mask"] == 0] == pad_id).all())
    assert bool((short["input_ids"][short["attention_mask"] == 1] != pad_id).all())

    batch = ReportCollator(tiny_model.tokenize, max_text_tokens=16)(items)
    assert batch["images"].shape == (3, 1, 32, 32)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, 16)  # truncated at max_text_tokens
    assert batch["input_ids"][2, -1] == tiny_model.tokenizer.sep_token_id  # truncation keeps the end token
    assert torch.isnan(batch["labels"][0, 1]) and batch["labels"].shape == (3, 2)
    groups = batch["group_ids"].tolist()
    assert groups[0] == groups[1] != groups[2]  # same study = same group
    default = ReportCollator(tiny_model.tokenize)(items)
    assert default["input_ids"].shape[1] == tiny_model.context_length  # default: the tower's maximum


def test_collate_rejects_mixed_image_sizes(tiny_model) -> None:
    items = [
        {"image": torch.rand(1, 32, 32), "text": "a", "labels": torch.zeros(0), "image_id": "a", "study_id": "s"},
        {"image": torch.rand(1, 16, 16), "text": "b", "labels": torch.zeros(0), "image_id": "b", "study_id": "t"},
    ]
    with pytest.raises(ValueError, match="different shapes"):
        ReportCollator(tiny_model.tokenize)(items)
    assert math.isfinite(float(ReportCollator(tiny_model.tokenize)(items[:1])["images"].sum()))


def test_datamodule_text_augmentation_default_flag_and_plug_in(tiny_model) -> None:
    from medclip.knowledge import ReportAugmenter
    from medclip.train import MedClipDataModule

    data = {"manifest": "m.parquet", "batch_size": 2, "text_augmentation": True}
    default = MedClipDataModule(data, tiny_model.tokenize, seed=3)
    assert isinstance(default.text_transform, ReportAugmenter)
    report = "Small left pleural effusion. Heart size is normal. No pneumothorax. Lungs are clear."
    rewritten = AugmentedDataset([{"text": report}], default.text_transform, seed=3)
    assert rewritten[(0, 1)]["text"] == rewritten[(0, 1)]["text"]  # reproducible per (epoch, sample)
    assert any(rewritten[(0, e)]["text"] != report for e in range(5))  # and it does rewrite

    assert MedClipDataModule({**data, "text_augmentation": False}, tiny_model.tokenize).text_transform is None

    def upper(text: str, rng: random.Random) -> str:
        return text.upper()

    assert MedClipDataModule(data, tiny_model.tokenize, text_transform=upper).text_transform is upper


def test_param_groups_tower_lr_and_no_decay() -> None:
    from medclip.train import DualEncoderModule

    module = DualEncoderModule(
        {"name": "tiny-test", "overrides": {"vision": {"image_size": 32}}},
        {"name": "infonce"},
        {**DEFAULTS["optim"], "lr": 1e-3, "weight_decay": 0.1, "tower_lr": {"text": 1e-5}},
    )
    groups = module._param_groups()
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(module.model.named_parameters())
    assert len(by_id) == len(named)  # every parameter in exactly one group
    assert by_id[id(module.model.logit_scale)] == (1e-3, 0.0)
    for name, param in named.items():
        lr, decay = by_id[id(param)]
        assert lr == (1e-5 if name.startswith("text.") else 1e-3), name
        if param.ndim <= 1:
            assert decay == 0.0, name  # biases and norm weights are not decayed
    assert any(decay == 0.1 for _, decay in by_id.values())


def test_resume_last_picks_the_newest_checkpoint(tmp_path: Path) -> None:
    import os

    from medclip.train.fit import _resume_path

    ckpts = tmp_path / "checkpoints"
    assert _resume_path({"resume": "last"}, ckpts, tmp_path) is None  # nothing yet: a fresh start
    assert _resume_path({"resume": None}, ckpts, tmp_path) is None
    ckpts.mkdir()
    last, hpc = ckpts / "last.ckpt", tmp_path / "hpc_ckpt_3.ckpt"
    last.write_bytes(b"x")
    hpc.write_bytes(b"x")
    os.utime(last, (1_000, 1_000))
    os.utime(hpc, (2_000, 2_000))
    assert _resume_path({"resume": "last"}, ckpts, tmp_path) == str(hpc)  # a SLURM requeue checkpoint is newer
    os.utime(last, (3_000, 3_000))
    assert _resume_path({"resume": "last"}, ckpts, tmp_path) == str(last)
    with pytest.raises(ConfigError, match="nope.ckpt not found"):
        _resume_path({"resume": str(tmp_path / "nope.ckpt")}, ckpts, tmp_path)


def test_atomic_checkpoint_io_keeps_the_old_file_when_a_save_fails(tmp_path: Path) -> None:
    from medclip.train.fit import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    target = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"step": 1}, target)
    assert torch.load(target)["step"] == 1

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint({"step": 2, "bad": Unpicklable()}, target)
    assert torch.load(target)["step"] == 1  # the previous checkpoint is intact
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]  # and no temporary file is left


def test_label_aware_is_the_default_and_trains_as_infonce_without_labels() -> None:
    from medclip.train import DualEncoderModule

    assert DEFAULTS["loss"]["name"] == "label_aware"
    torch.manual_seed(0)
    model_cfg = {"name": "tiny-test", "overrides": {"vision": {"image_size": 32}}}
    aware = DualEncoderModule(model_cfg, {"name": "label_aware"}, DEFAULTS["optim"])
    plain = DualEncoderModule(model_cfg, {"name": "infonce"}, DEFAULTS["optim"])
    plain.model.load_state_dict(aware.model.state_dict())
    aware.eval(), plain.eval()
    enc = aware.model.tokenize(["no effusion", "small left effusion", "clear lungs"])
    batch = {"images": torch.rand(3, 1, 32, 32), "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    with pytest.warns(UserWarning, match="no finding labels"):
        loss_aware, _ = aware._loss(batch)
    loss_plain, _ = plain._loss(batch)
    assert torch.allclose(loss_aware, loss_plain)
    # with labels, pairs that share a finding change the targets
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    loss_labelled, _ = aware._loss({**batch, "labels": labels})
    assert not torch.allclose(loss_labelled, loss_plain)


def test_adamw_is_fused_where_it_can_be_and_updates_like_the_loop() -> None:
    """optim.fused auto: torch's fused AdamW on CPU parameters, the same update as torch's loop (to 1e-6), off under
    fp16 mixed precision; true on parameters without a kernel is refused naming them; a bad value is refused."""
    from medclip.train.module import build_optimizer, fused_supported

    torch.manual_seed(0)
    cfg = {"lr": 1e-2, "betas": [0.9, 0.98], "eps": 1e-6}
    weights = [torch.randn(7, 5), torch.randn(5)]
    grads = [[torch.randn_like(w) for w in weights] for _ in range(3)]
    results = []
    for fused in ("auto", False):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        opt = build_optimizer([{"params": params, "weight_decay": 0.1}], {**cfg, "fused": fused})
        assert bool(opt.defaults["fused"]) is (fused == "auto")
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            opt.step()
        results.append([p.detach() for p in params])
    for fused_result, loop_result, start in zip(*results, weights):
        torch.testing.assert_close(fused_result, loop_result, atol=1e-6, rtol=1e-6)
        assert not torch.allclose(fused_result, start)  # the step moved the weights
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert fused_supported(params)
    assert not build_optimizer([{"params": params}], {**cfg, "fused": "auto"}, precision="16-mixed").defaults["fused"]
    assert build_optimizer([{"params": params}], {**cfg, "fused": "auto"}, precision="bf16-mixed").defaults["fused"]
    meta = [torch.nn.Parameter(torch.zeros(3, device="meta"))]
    assert not fused_supported(meta)
    assert not build_optimizer([{"params": meta}], {**cfg, "fused": "auto"}).defaults["fused"]
    with pytest.raises(ValueError, match="optim.fused: true.*meta"):
        build_optimizer([{"params": meta}], {**cfg, "fused": True})
    with pytest.raises(ValueError, match="optim.fused must be"):
        build_optimizer([{"params": params}], {**cfg, "fused": "yes"})
    assert isinstance(build_optimizer([{"params": params}], {**cfg, "optimizer": "sgd"}), torch.optim.SGD)
