"""Resumable indexing (per-file state saved during the run) and column-wise report linking."""

from __future__ import annotations

import pandas as pd
import pytest
from test_sharded_preprocessing import SAMPLE, _sorted  # noqa: F401  (the bundled sample export)

import medclip.data.indexer as indexer
from medclip.data.indexer import index_export

SALT = "resume-test"


class Killed(Exception):
    pass


def test_killed_index_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    full = index_export(SAMPLE, tmp_path / "ref" / "m.parquet", reports=SAMPLE / "reports.csv", salt=SALT,
                        workers=1, progress=False)
    n_files = full.files_read
    real = indexer.read_file_record
    read: list[str] = []

    def counting(args):
        if len(read) == 23:  # the process dies while reading file 24
            raise Killed()
        read.append(args[0])
        return real(args)

    monkeypatch.setattr(indexer, "read_file_record", counting)
    out = tmp_path / "run" / "m.parquet"
    with pytest.raises(Killed):
        index_export(SAMPLE, out, reports=SAMPLE / "reports.csv", salt=SALT, workers=1, progress=False,
                     checkpoint_every=10)
    assert not out.exists()  # no half manifest
    first = list(read)
    read.clear()
    monkeypatch.setattr(indexer, "read_file_record", real)
    monkeypatch.setattr(indexer, "read_file_record", lambda args: (read.append(args[0]), real(args))[1])
    res = index_export(SAMPLE, out, reports=SAMPLE / "reports.csv", salt=SALT, workers=1, progress=False,
                       checkpoint_every=10)
    assert res.files_reused == 20 and res.files_read == n_files - 20  # saved after 10 and 20 files
    assert read == [p for p in _all(SAMPLE) if p not in first[:20]]  # only the files not saved yet
    pd.testing.assert_frame_equal(_sorted(pd.read_parquet(out)), _sorted(pd.read_parquet(tmp_path / "ref" / "m.parquet")))


def _all(root) -> list[str]:
    return [str(p) for p in indexer.walk_export(root)]


def test_report_linking_does_not_iterate_rows_with_pandas(tmp_path, monkeypatch):
    """Regression (issue 11.2): linking went through DataFrame.iterrows, ~650 rows/s; now column-wise."""
    ref = index_export(SAMPLE, tmp_path / "a.parquet", reports=SAMPLE / "reports.csv", salt=SALT, workers=1,
                       progress=False)

    def forbidden(self):
        raise AssertionError("iterrows used")

    monkeypatch.setattr(pd.DataFrame, "iterrows", forbidden)
    res = index_export(SAMPLE, tmp_path / "b.parquet", reports=SAMPLE / "reports.csv", salt=SALT, workers=1,
                       progress=False, incremental=False)
    assert res.reports_linked == ref.reports_linked > 0
    assert (res.manifest["report_text"].str.len() > 0).sum() == 67
    pd.testing.assert_frame_equal(_sorted(pd.read_parquet(tmp_path / "a.parquet")),
                                  _sorted(pd.read_parquet(tmp_path / "b.parquet")))


def test_path_linked_reports_adopt_patient_and_study(tmp_path):
    """Raster files linked by path take patient/study from the reports table (column-wise code path)."""
    import numpy as np
    from PIL import Image

    export = tmp_path / "export"
    (export / "a").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a/x.png", "a/y.png", "z.png"):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(export / name)
    pd.DataFrame({"path": ["a/x.png", "y.png", "z.png"], "patient_id": ["P1", "P1", "P2"],
                  "study_id": ["S1", "S1", "S9"], "report": ["FINDINGS: one.", "FINDINGS: two.", "FINDINGS: three."]}
                 ).to_csv(export / "reports.csv", index=False)
    df = index_export(export, tmp_path / "m.parquet", reports=export / "reports.csv", salt=SALT, workers=1,
                      progress=False, fractions=(1.0, 0.0, 0.0)).manifest
    df.index = [p.rsplit("/", 1)[-1][0] for p in df["path"]]
    assert df.loc["x", "patient_id"] == df.loc["y", "patient_id"] != df.loc["z", "patient_id"]
    assert df.loc["x", "study_id"] == df.loc["y", "study_id"]
    assert df.loc["y", "report_findings"] == "two." and df.loc["z", "report_findings"] == "three."
