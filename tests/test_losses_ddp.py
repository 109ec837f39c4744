"""Every loss under 2-process DDP (CPU, gloo) equals one process on the full batch: loss and gradients."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medclip.model.losses import build_loss

D_IN, EMBED, N_FINDINGS = 6, 5, 4

#: (name, constructor kwargs, rows per rank). Uneven rows also check the last, smaller batch.
CASES = [
    ("infonce", {}, (5, 3)),
    ("infonce", {"local_loss": False}, (5, 3)),
    ("siglip", {}, (5, 3)),
    ("siglip", {"dist_impl": "neighbour"}, (4, 4)),
    ("label_aware", {}, (5, 3)),
    ("label_aware", {"local_loss": False, "uncertain_weight": 0.3}, (4, 4)),
    ("multi_positive", {}, (5, 3)),
]


class LinearPair(nn.Module):
    """Two linear 'towers' and the temperature: the smallest model with the dual encoder's outputs."""

    def __init__(self, with_bias: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image = nn.Linear(D_IN, EMBED)
        self.text = nn.Linear(D_IN, EMBED)
        self.logit_scale = nn.Parameter(torch.tensor(2.3))
        self.logit_bias = nn.Parameter(torch.tensor(-3.0)) if with_bias else None

    def forward(self, x_img: torch.Tensor, x_txt: torch.Tensor) -> dict:
        return {
            "image_features": F.normalize(self.image(x_img), dim=-1),
            "text_features": F.normalize(self.text(x_txt), dim=-1),
            "logit_scale": self.logit_scale.exp(),
            "logit_bias": self.logit_bias,
        }


def make_batch(n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(-1, 2, (n, N_FINDINGS), generator=g).float()
    labels[torch.rand(n, N_FINDINGS, generator=g) < 0.3] = float("nan")
    return {
        "x_img": torch.randn(n, D_IN, generator=g),
        "x_txt": torch.randn(n, D_IN, generator=g),
        "labels": labels,
        # studies spread over both ranks: 0 and 2 have samples on rank 0 and rank 1
        "group_ids": torch.tensor([0, 1, 2, 0, 3, 2, 4, 5])[:n],
    }


def run_case(name: str, kwargs: dict, rows: slice, ddp: bool) -> tuple[float, dict[str, torch.Tensor]]:
    batch = make_batch(8)
    model = LinearPair(with_bias=name == "siglip")
    if ddp:
        model = nn.parallel.DistributedDataParallel(model)
    out = model(batch["x_img"][rows], batch["x_txt"][rows])
    loss = build_loss(name, **kwargs)(
        out["image_features"],
        out["text_features"],
        out["logit_scale"],
        out["logit_bias"],
        labels=batch["labels"][rows],
        group_ids=batch["group_ids"][rows],
    )
    loss.backward()
    inner = model.module if ddp else model
    grads = {k: p.grad.detach().clone() for k, p in inner.named_parameters()}
    value = loss.detach().clone()
    if ddp:
        torch.distributed.all_reduce(value)
        value /= torch.distributed.get_world_size()
    return float(value), grads


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        for i, (name, kwargs, sizes) in enumerate(CASES):
            start = sum(sizes[:rank])
            value, grads = run_case(name, kwargs, slice(start, start + sizes[rank]), ddp=True)
            if rank == 0:
                save_file({"loss": torch.tensor(value), **grads}, str(Path(out_dir) / f"case{i}.safetensors"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("ddp")
    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), str(out_dir)), nprocs=2, join=True)
    return out_dir


@pytest.mark.parametrize(
    "case",
    range(len(CASES)),
    ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for n, kw, _ in CASES],
)
def test_ddp_matches_full_batch(case: int, ddp_results: Path) -> None:
    from safetensors.torch import load_file

    name, kwargs, sizes = CASES[case]
    expected_loss, expected_grads = run_case(
        name, {k: v for k, v in kwargs.items() if k != "dist_impl"}, slice(0, sum(sizes)), ddp=False
    )
    got = load_file(str(ddp_results / f"case{case}.safetensors"))
    assert got["loss"].item() == pytest.approx(expected_loss, rel=1e-5, abs=1e-6)
    for key, grad in expected_grads.items():
        assert grad.abs().sum() > 0, f"{key}: zero gradient makes the comparison meaningless"
        torch.testing.assert_close(
            got[key], grad, rtol=1e-4, atol=1e-6, msg=lambda m, key=key: f"{name} {kwargs} grad {key}: {m}"
        )
