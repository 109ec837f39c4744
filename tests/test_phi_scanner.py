"""The shared PHI scanner finds planted values inside compressed containers and ignores tensor bytes."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from phi import assert_no_phi, phi_hits
from safetensors.torch import save_file

NAME = "Zzplanted0042"


def test_finds_a_name_in_a_compressed_parquet_column(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    pd.DataFrame({"report_text": [f"seen by {NAME}"] + ["clear"] * 200}).to_parquet(path, compression="zstd")
    assert NAME.encode() not in path.read_bytes().lower()  # a byte grep would miss it
    assert [v for v, _ in phi_hits(path, [NAME])] == [NAME]


def test_finds_a_name_in_deflated_zip_and_gzipped_tar_members(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = json.dumps({"text": NAME.lower() * 3}).encode()
        info = tarfile.TarInfo("x.meta.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (tmp_path / "shard.tar.gz").write_bytes(gzip.compress(buf.getvalue()))
    with zipfile.ZipFile(tmp_path / "a.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("inner/notes.txt", f"patient {NAME} " * 50)
    where = sorted(w for _, w in phi_hits(tmp_path, [NAME]))
    assert len(where) == 2 and "a.zip::inner/notes.txt" in where[0] and "x.meta.json" in where[1]


def test_finds_a_name_in_safetensors_metadata_but_not_in_tensor_bytes(tmp_path: Path) -> None:
    raw = np.frombuffer((NAME.lower() * 4).encode()[:48], dtype=np.float32).copy()  # weights that spell the name
    save_file({"w": torch.from_numpy(raw)}, str(tmp_path / "clean.safetensors"))
    assert_no_phi(tmp_path / "clean.safetensors", [NAME])
    save_file({"w": torch.zeros(2)}, str(tmp_path / "leak.safetensors"), metadata={"source": NAME})
    assert phi_hits(tmp_path / "leak.safetensors", [NAME])


def test_torch_checkpoint_storages_are_skipped_but_pickled_strings_are_not(tmp_path: Path) -> None:
    spelled = torch.from_numpy(np.frombuffer((NAME.lower() * 4).encode()[:48], dtype=np.float32).copy())
    torch.save({"state_dict": {"w": spelled}}, tmp_path / "clean.ckpt")
    assert NAME.lower().encode() in (tmp_path / "clean.ckpt").read_bytes()  # a byte grep fires by chance here
    assert_no_phi(tmp_path / "clean.ckpt", [NAME])
    torch.save({"hyper_parameters": {"note": NAME}, "state_dict": {}}, tmp_path / "leak.ckpt")
    assert phi_hits(tmp_path / "leak.ckpt", [NAME])


def test_refuses_values_short_enough_to_match_by_chance(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="by chance"):
        phi_hits(tmp_path, ["mrn0"])
    with pytest.raises(ValueError, match="nothing"):
        phi_hits(tmp_path, [])
