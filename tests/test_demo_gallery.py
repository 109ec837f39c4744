"""The demo gallery on disk: a rebuild that fails half-way leaves the previous gallery readable."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from medclip.demo import Gallery, build_gallery
from medclip.sample import SAMPLE_EXPORT as SAMPLE_EXPORT_DIR

REPO = Path(__file__).resolve().parents[1]
EXPORT = SAMPLE_EXPORT_DIR


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medclip.data.indexer import index_export

    root = tmp_path_factory.mktemp("gallery")
    export = root / "export"
    export.mkdir()
    for study in sorted(p for p in EXPORT.iterdir() if p.is_dir())[:3]:
        shutil.copytree(study, export / study.name)
    shutil.copy(EXPORT / "reports.csv", export / "reports.csv")
    index_export(
        export,
        root / "manifest.parquet",
        reports=export / "reports.csv",
        fractions=(1.0, 0.0, 0.0),
        workers=1,
        progress=False,
    )
    return root / "manifest.parquet"


def test_gallery_rebuild_that_fails_half_way_keeps_the_old_gallery(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medclip.model import create_model

    torch.manual_seed(0)
    model = create_model("tiny-test").eval()
    out = build_gallery(model, manifest, tmp_path / "gallery")
    before = Gallery.load(out)
    table_bytes = (out / "gallery.parquet").read_bytes()

    def disk_full(self: pd.DataFrame, path, *args, **kwargs) -> None:
        Path(path).write_bytes(b"PAR1 half a table")  # what a crash mid-write leaves
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", disk_full)
    # atomic_write turns ENOSPC into DiskFullError (an OSError) naming the file and the space needed
    with pytest.raises(OSError, match=r"disk full while writing .*gallery\.parquet"):
        build_gallery(model, manifest, out)
    monkeypatch.undo()
    assert (out / "gallery.parquet").read_bytes() == table_bytes
    after = Gallery.load(out)
    assert len(after) == len(before) and torch.equal(after.embeddings, before.embeddings)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")], "no temporary file left behind"
