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


READ_FILE_RECORD = indexer.read_file_record


def _reading(monkeypatch, read: list[str], fail_after: int | None = None) -> None:
    """Count the files the indexer reads; raise (a crash in the run) when ``fail_after`` have been read."""
    real = READ_FILE_RECORD

    def counting(args):
        if fail_after is not None and len(read) == fail_after:
            raise Killed()
        read.append(args[0])
        return real(args)

    monkeypatch.setattr(indexer, "read_file_record", counting)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "m.parquet"
    res = index_export(SAMPLE, out, reports=SAMPLE / "reports.csv", salt=SALT, workers=1, progress=False)
    return res, out


def test_a_run_that_fails_keeps_what_it_read_and_resumes(tmp_path, monkeypatch, reference):
    full, ref = reference
    out = tmp_path / "run" / "m.parquet"
    read: list[str] = []
    _reading(monkeypatch, read, fail_after=23)
    with pytest.raises(Killed):
        index_export(
            SAMPLE, out, reports=SAMPLE / "reports.csv", salt=SALT, workers=1, progress=False, checkpoint_every=10
        )
    assert not out.exists()  # no half manifest
    first = list(read)
    read.clear()
    _reading(monkeypatch, read)
    res = index_export(
        SAMPLE, out, reports=SAMPLE / "reports.csv", salt=SALT, workers=1, progress=False, checkpoint_every=10
    )
    assert res.files_reused == 23 and res.files_read == full.files_read - 23  # saved when it failed
    assert read == [p for p in _all(SAMPLE) if p not in first]  # only the files not read before
    pd.testing.assert_frame_equal(_sorted(pd.read_parquet(out)), _sorted(pd.read_parquet(ref)))


KILL_SCRIPT = """
import os, signal, sys
import medclip.data.indexer as indexer
real, read = indexer.read_file_record, []
def reading(args):
    if len(read) == 23:
        os.kill(os.getpid(), signal.SIGKILL)  # the node dies: no exception handler runs
    read.append(args[0])
    return real(args)
indexer.read_file_record = reading
indexer.index_export(sys.argv[1], sys.argv[2], reports=sys.argv[3], salt=sys.argv[4], workers=1, progress=False,
                     checkpoint_every=10)
"""


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path, monkeypatch, reference):
    """SIGKILL after 23 files: the checkpoint saved after 20 files survives; only the rest is read again."""
    import signal
    import subprocess
    import sys

    full, ref = reference
    out = tmp_path / "run" / "m.parquet"
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(SAMPLE), str(out), str(SAMPLE / "reports.csv"), SALT],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not out.exists() and indexer._state_path(out).exists()
    read: list[str] = []
    _reading(monkeypatch, read)
    res = index_export(SAMPLE, out, reports=SAMPLE / "reports.csv", salt=SALT, workers=1, progress=False)
    assert res.files_reused == 20 and res.files_read == full.files_read - 20
    assert read == _all(SAMPLE)[20:]
    pd.testing.assert_frame_equal(_sorted(pd.read_parquet(out)), _sorted(pd.read_parquet(ref)))


def test_sigterm_becomes_an_interrupt_while_indexing():
    """`medclip index` turns SIGTERM (SLURM's time limit, scancel) into KeyboardInterrupt, so progress is saved."""
    import os
    import signal

    from medclip.cli import _sigterm_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), _sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before


def _all(root) -> list[str]:
    return [str(p) for p in indexer.walk_export(root)]


def test_report_linking_does_not_iterate_rows_with_pandas(tmp_path, monkeypatch):
    """Regression (issue 11.2): linking went through DataFrame.iterrows, ~650 rows/s; now column-wise."""
    ref = index_export(
        SAMPLE, tmp_path / "a.parquet", reports=SAMPLE / "reports.csv", salt=SALT, workers=1, progress=False
    )

    def forbidden(self):
        raise AssertionError("iterrows used")

    monkeypatch.setattr(pd.DataFrame, "iterrows", forbidden)
    res = index_export(
        SAMPLE,
        tmp_path / "b.parquet",
        reports=SAMPLE / "reports.csv",
        salt=SALT,
        workers=1,
        progress=False,
        incremental=False,
    )
    assert res.reports_linked == ref.reports_linked > 0
    assert (res.manifest["report_text"].str.len() > 0).sum() == 67
    pd.testing.assert_frame_equal(
        _sorted(pd.read_parquet(tmp_path / "a.parquet")), _sorted(pd.read_parquet(tmp_path / "b.parquet"))
    )


def test_path_linked_reports_adopt_patient_and_study(tmp_path):
    """Raster files linked by path take patient/study from the reports table (column-wise code path)."""
    import numpy as np
    from PIL import Image

    export = tmp_path / "export"
    (export / "a").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a/x.png", "a/y.png", "z.png"):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(export / name)
    pd.DataFrame(
        {
            "path": ["a/x.png", "y.png", "z.png"],
            "patient_id": ["P1", "P1", "P2"],
            "study_id": ["S1", "S1", "S9"],
            "report": ["FINDINGS: one.", "FINDINGS: two.", "FINDINGS: three."],
        }
    ).to_csv(export / "reports.csv", index=False)
    df = index_export(
        export,
        tmp_path / "m.parquet",
        reports=export / "reports.csv",
        salt=SALT,
        workers=1,
        progress=False,
        fractions=(1.0, 0.0, 0.0),
    ).manifest
    df.index = [p.rsplit("/", 1)[-1][0] for p in df["path"]]
    assert df.loc["x", "patient_id"] == df.loc["y", "patient_id"] != df.loc["z", "patient_id"]
    assert df.loc["x", "study_id"] == df.loc["y", "study_id"]
    assert df.loc["y", "report_findings"] == "two." and df.loc["z", "report_findings"] == "three."
