"""A disk (or quota) that fills while medclip writes: every writer stops with one clear error naming the file,
the space it needs and the space free, leaves no temporary file, and keeps the earlier file intact and loadable.

The fault is injected (no unprivileged tmpfs here): the low-level write of each writer writes part of its bytes,
then raises ``OSError(ENOSPC)`` (or, for torch's zip writer, the ``RuntimeError`` it raises on a full disk).
"""

from __future__ import annotations

import errno
import json
import shutil
from collections import namedtuple
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from test_train_fit import one_torch_thread  # noqa: F401 (fixture: tiny models on a shared CPU)

from medclip.fsutil import DiskFullError, atomic_write

_Usage = namedtuple("_Usage", "total used free")


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def _leftovers(folder: Path) -> list[str]:
    """Temporary files or staging folders left behind (none may be)."""
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith((".tmp",)) or p.name.startswith(".staging"))


def _images(root: Path, n: int = 12) -> Path:
    """A manifest of ``n`` 32 px PNGs (8 train, the rest val) with one-line reports."""
    from medclip.data.manifest import write_manifest

    rng = np.random.default_rng(0)
    rows = []
    for k in range(n):
        path = root / "images" / f"img{k:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8)).save(path)
        effusion = float(k % 2)
        rows.append(
            {
                "image_id": f"img{k:02d}",
                "path": str(path),
                "kind": "image",
                "files": None,
                "patient_id": f"pat{k:02d}",
                "study_id": f"st{k:02d}",
                "series_id": f"st{k:02d}",
                "modality": "DX",
                "report_findings": "",
                "report_impression": "",
                "report_text": "Pleural effusion." if effusion else "The lungs are clear.",
                "split": "train" if k < n * 2 // 3 else ("val" if k % 2 else "test"),
                "label.pleural_effusion": effusion,
            }
        )
    return Path(write_manifest(pd.DataFrame(rows), root / "manifest.parquet", root=root))


def test_atomic_write_on_a_full_disk_keeps_the_old_file_and_names_path_and_space(tmp_path: Path) -> None:
    target = tmp_path / "out" / "table.bin"
    target.parent.mkdir()
    target.write_bytes(b"old content")
    with pytest.raises(DiskFullError) as info:
        with atomic_write(target) as tmp:
            with open(tmp, "wb") as handle:
                handle.write(b"x" * 5000)
                handle.flush()
                raise _enospc()
    message = str(info.value)
    assert str(target) in message and "disk full" in message
    assert "needs at least 4.9 KiB" in message and "free on that file system" in message
    assert info.value.errno == errno.ENOSPC and info.value.needed == 5000 and info.value.free is not None
    assert target.read_bytes() == b"old content"
    assert _leftovers(tmp_path) == []


def test_atomic_write_reports_the_callers_expected_size_and_other_errors_pass_unchanged(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    with pytest.raises(DiskFullError, match="needs at least 2.0 MiB"):
        with atomic_write(target, expected_bytes=2 * 1024 * 1024):
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
    with pytest.raises(ValueError, match="not about space"):
        with atomic_write(target):
            raise ValueError("not about space")
    assert not target.exists() and _leftovers(tmp_path) == []


def test_checkpoint_save_on_a_full_disk_keeps_the_previous_checkpoint_loadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medclip.train.fit import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 2, "state_dict": {"w": torch.ones(1000)}}, path)
    real_save = torch.save

    def full_disk_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        Path(f).write_bytes(b"PK" + b"\0" * 1000)  # part of the zip, then torch's own error for a full disk
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", full_disk_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: _Usage(10**9, 10**9 - 100, 100))
    with pytest.raises(DiskFullError) as info:
        io.save_checkpoint({"global_step": 4, "state_dict": {"w": torch.zeros(1000)}}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert str(path) in str(info.value) and "needs at least 3.9 KiB, 100 bytes free" in str(info.value)
    kept = torch.load(path, weights_only=False)
    assert kept["global_step"] == 2 and torch.equal(kept["state_dict"]["w"], torch.ones(1000))
    assert _leftovers(tmp_path) == []


def test_model_export_on_a_full_disk_keeps_the_earlier_model_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.torch

    from medclip.model import DualEncoder, create_model

    torch.manual_seed(0)
    old = create_model("tiny-test")
    folder = old.save_pretrained(tmp_path / "model")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    new = create_model("tiny-test")
    with torch.no_grad():
        new.logit_scale.fill_(1.234)

    def full_disk_save_file(state: Any, filename: str, metadata: Any = None) -> None:
        Path(filename).write_bytes(b"\0" * 64)
        raise _enospc()

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk_save_file)
    with pytest.raises(DiskFullError) as info:
        new.save_pretrained(folder)
    assert str(folder / "model.safetensors") in str(info.value) and "needs at least" in str(info.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # config, tokenizer, weights untouched
    loaded = DualEncoder.from_pretrained(folder)
    assert loaded.logit_scale.item() == pytest.approx(old.logit_scale.item())
    assert _leftovers(tmp_path) == []


def test_cache_shard_write_on_a_full_disk_keeps_finished_shards_and_their_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medclip.data.cache as cache_module
    from medclip.data.cache import CacheConfig, build_cache, iter_cache, read_cache_index

    manifest = _images(tmp_path / "export")
    cache = tmp_path / "cache"
    real_add = cache_module._add_bytes
    calls = {"n": 0}

    def add_until_full(tar: Any, name: str, data: bytes) -> None:
        calls["n"] += 1
        if name.startswith("img02"):  # the second train shard (shard_size 2): the disk fills in it
            raise _enospc()
        real_add(tar, name, data)

    monkeypatch.setattr(cache_module, "_add_bytes", add_until_full)
    config = CacheConfig(image_size=32, shard_size=2)
    with pytest.raises(DiskFullError) as info:
        build_cache(manifest, cache, config=config, workers=1, progress=False)
    assert str(cache / "train" / "shard-000001.tar") in str(info.value)
    index = read_cache_index(cache)
    assert list(index["shards"]) == ["test/shard-000000.tar", "train/shard-000000.tar"]
    assert [s["__key__"] for s in iter_cache(cache, "train")] == ["img00", "img01"]
    assert not (cache / "train" / "shard-000001.tar").exists() and _leftovers(cache) == []
    # with space again, the same command finishes the cache, reusing what was written
    monkeypatch.setattr(cache_module, "_add_bytes", real_add)
    result = build_cache(manifest, cache, config=config, workers=1, progress=False)
    assert result.reused_shards == 2 and len(list(iter_cache(cache, "train"))) == 8


def test_manifest_write_on_a_full_disk_keeps_the_previous_manifest_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.parquet as pq

    from medclip.data.manifest import read_manifest, write_manifest

    manifest = _images(tmp_path)
    before = read_manifest(manifest)

    def full_disk_write_table(table: Any, where: Any, *args: Any, **kwargs: Any) -> None:
        Path(where).write_bytes(b"PAR1" + b"\0" * 3000)
        # pyarrow's own wording of a full disk
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(pq, "write_table", full_disk_write_table)
    with pytest.raises(DiskFullError) as info:
        write_manifest(before.assign(split="train"), manifest, root=tmp_path)
    assert str(manifest) in str(info.value) and "needs at least 2.9 KiB" in str(info.value)
    pd.testing.assert_frame_equal(read_manifest(manifest), before)
    assert _leftovers(tmp_path) == []


def test_eval_metrics_on_a_full_disk_keep_the_previous_metrics_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medclip.eval.runner import evaluate
    from medclip.model import create_model

    torch.manual_seed(0)
    model = create_model("tiny-test").save_pretrained(tmp_path / "model")
    manifest = _images(tmp_path / "export")
    out = tmp_path / "eval"
    evaluate(model, manifest, tasks=("zeroshot",), output_dir=out, n_boot=0)
    before = (out / "metrics.json").read_text()
    assert json.loads(before)
    real_write_text = Path.write_text

    def full_disk_write_text(self: Path, data: str, *args: Any, **kwargs: Any) -> int:
        if self.name.startswith(".metrics.json."):
            real_write_text(self, data[:100], *args, **kwargs)
            raise _enospc()
        return real_write_text(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk_write_text)
    with pytest.raises(DiskFullError, match="metrics.json"):
        evaluate(model, manifest, tasks=("zeroshot",), output_dir=out, n_boot=0)
    assert (out / "metrics.json").read_text() == before
    assert _leftovers(out) == []


def test_fit_on_a_full_disk_stops_with_one_line_and_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``medclip fit`` whose disk fills while it saves the step-4 checkpoint: exit 1 with one line naming that file;
    the step-2 checkpoint and last.ckpt (step 2) load and resume; no temporary file and no model are left."""
    import yaml
    from test_train_fit import _config

    from medclip.cli import main

    manifest = _images(tmp_path / "export", n=24)
    cfg = _config({"manifest": str(manifest)}, tmp_path / "run", max_steps=6, val_check_interval=None)
    cfg["trainer"].update(limit_val_batches=0, check_val_every_n_epoch=None)
    cfg["checkpoint"]["every_n_steps"] = 2
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(cfg))
    real_save = torch.save

    def save_until_full(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(obj, dict) and obj.get("global_step") == 4:
            Path(f).write_bytes(b"PK\0\0")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_full)
    code = main(["fit", "--config", str(tmp_path / "fit.yaml")])
    monkeypatch.setattr(torch, "save", real_save)
    err = capsys.readouterr().err.strip().splitlines()
    checkpoints = tmp_path / "run" / "checkpoints"
    assert code == 1
    assert err[-1].startswith(f"medclip fit: error: disk full while writing {checkpoints / 'step-00000004.ckpt'}")
    assert "free on that file system" in err[-1]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt", "step-00000002.ckpt"]
    assert torch.load(checkpoints / "last.ckpt", weights_only=False)["global_step"] == 2
    assert not (tmp_path / "run" / "model").exists() and _leftovers(tmp_path / "run") == []
    # space freed: the same command with resume=last finishes from step 2
    assert main(["fit", "--config", str(tmp_path / "fit.yaml"), "resume=last"]) == 0
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_report_on_a_full_disk_keeps_the_previous_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medclip.model import create_model
    from medclip.report.builder import ReportOptions, build_report

    torch.manual_seed(0)
    model = create_model("tiny-test").save_pretrained(tmp_path / "model")
    manifest = _images(tmp_path / "export", n=18)
    out = tmp_path / "report"
    options = ReportOptions(n_boot=0, leakage_images=False, reuse=False)
    build_report(model, manifest, out, options=options)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert "index.html" in before
    real_write_text = Path.write_text

    def full_disk_write_text(self: Path, data: str, *args: Any, **kwargs: Any) -> int:
        if self.name.startswith(".index.html."):
            real_write_text(self, data[:1000], *args, **kwargs)
            raise _enospc()
        return real_write_text(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk_write_text)
    with pytest.raises(DiskFullError, match=f"disk full while writing {out / 'index.html'}"):
        build_report(model, manifest, out, options=options)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert _leftovers(out) == []
