"""medclip.fsutil: per-process temporary folders under one medclip-owned root, cleaned after a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from medclip import fsutil

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def temp_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the system temp folder (and so medclip's temp root) at a private test folder."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(fsutil, "_process_dir", None)
    return tmp_path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _start(pid: int) -> str:
    start = fsutil._start_time(pid)
    assert start is not None
    return start


def _child_env(base: Path) -> dict[str, str]:
    return {**os.environ, "TMPDIR": str(base), "PYTHONPATH": str(REPO)}


def test_temp_root_is_private_to_this_user(temp_base: Path) -> None:
    root = fsutil.temp_root()
    assert root.parent == temp_base and root.name == f"medclip-{os.getuid()}"
    assert root.stat().st_mode & 0o777 == 0o700
    mine = fsutil.process_temp_dir("uploads")
    assert mine.parent.parent == root and mine.parent.name == f"proc-{os.getpid()}-{_start(os.getpid())}"
    assert mine.is_dir() and mine.stat().st_mode & 0o077 == 0


def test_temp_root_refuses_a_folder_planted_by_someone_else(temp_base: Path) -> None:
    target = temp_base / "elsewhere"
    target.mkdir()
    (temp_base / f"medclip-{os.getuid()}").symlink_to(target)  # a link planted where our root would be
    with pytest.warns(UserWarning, match="cannot use"):
        root = fsutil.temp_root()
    assert root.parent == temp_base and root.name.startswith("medclip-") and not root.is_symlink()
    assert not any(target.iterdir())


def test_stale_temp_dirs_of_dead_processes_are_removed_and_live_ones_kept(temp_base: Path) -> None:
    root = fsutil.temp_root()
    live = root / f"proc-{os.getpid()}-{_start(os.getpid())}"
    dead = root / f"proc-{_dead_pid()}-12345"
    recycled = root / f"proc-{os.getpid()}-{int(_start(os.getpid())) + 1}"  # our pid, another start: a reused pid
    other = root / "not-ours"
    for folder in (live, dead, recycled, other):
        (folder / "uploads" / "medclip-upload-x").mkdir(parents=True)
        (folder / "uploads" / "medclip-upload-x" / "series.zip").write_bytes(b"\0" * 1000)
    removed = fsutil.clean_stale_temp_dirs()
    assert sorted(removed) == sorted([dead, recycled])
    assert live.is_dir() and other.is_dir() and not dead.exists() and not recycled.exists()


def test_folder_of_a_sigkilled_process_is_removed_by_the_next_start(temp_base: Path) -> None:
    """Issue 12.12: a demo killed with SIGKILL mid-extraction left its files in /tmp for good."""
    code = (
        "import sys, time\nfrom medclip.fsutil import process_temp_dir\n"
        "work = process_temp_dir('uploads')\n(work / 'half-extracted.dcm').write_bytes(bytes(1 << 20))\n"
        "print(work, flush=True)\ntime.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=_child_env(temp_base), stdout=subprocess.PIPE, text=True)
    try:
        work = Path(proc.stdout.readline().strip())
        assert (work / "half-extracted.dcm").is_file()
        assert fsutil.clean_stale_temp_dirs() == [], "a running process keeps its folder"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (work / "half-extracted.dcm").is_file(), "SIGKILL leaves the folder behind"
    assert fsutil.clean_stale_temp_dirs() == [work.parent]
    assert not work.parent.exists()


def test_process_temp_dir_is_removed_at_a_normal_exit(temp_base: Path) -> None:
    code = (
        "from medclip.fsutil import process_temp_dir\n"
        "work = process_temp_dir('gradio')\n(work / 'upload.png').write_bytes(b'x')\nprint(work)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=_child_env(temp_base), capture_output=True, text=True, check=True
    ).stdout
    work = Path(out.strip())
    assert work.parent.parent.parent == temp_base
    assert not work.parent.exists() and not work.parent.parent.exists(), "the folder and the empty root are removed"


def test_atomic_write_replaces_on_success_and_keeps_the_old_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "table.json"
    with fsutil.atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp.is_file() and tmp != target
        tmp.write_text('{"v": 1}')
        assert not target.exists(), "nothing at the target until the block succeeds"
    assert target.read_text() == '{"v": 1}'
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask, "usual permissions, not mkstemp's 0600"
    with pytest.raises(RuntimeError, match="disk full"):
        with fsutil.atomic_write(target) as tmp:
            tmp.write_text('{"v": 2, "half')
            raise RuntimeError("disk full")
    assert target.read_text() == '{"v": 1}'
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.json"], "no temporary file left behind"


def test_atomic_write_takes_any_writer_that_wants_a_path(tmp_path: Path) -> None:
    import pandas as pd

    target = tmp_path / "m.parquet"
    with fsutil.atomic_write(target, fsync=True) as tmp:
        pd.DataFrame({"a": [1, 2]}).to_parquet(tmp, index=False)
    assert pd.read_parquet(target)["a"].tolist() == [1, 2]
