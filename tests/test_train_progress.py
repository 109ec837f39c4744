"""Logs you can follow: off a terminal, `medclip fit` prints a plain line every N steps; tqdm bars print lines."""

from __future__ import annotations

import io
import re

import pytest
import torch
from test_train_fit import _config, manifest  # noqa: F401  (the tiny 32 px export and its manifest)

from medclip.progress import format_duration, is_terminal, plain_progress_bars


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_fit_off_a_terminal_prints_a_plain_line_every_n_steps(manifest, tmp_path, capsys, monkeypatch):  # noqa: F811
    import medclip.train.progress as train_progress
    from medclip.train import fit

    bars = []
    monkeypatch.setattr(train_progress, "plain_progress_bars", lambda: bars.append(True))  # process-wide: not here

    cfg = _config({"manifest": str(manifest)}, tmp_path / "run", max_steps=3, log_every_n_steps=1, val_check_interval=3)
    cfg["trainer"].pop("enable_progress_bar")  # the default: decided by the output
    fit(cfg)
    out = capsys.readouterr().out  # pytest's capture is not a terminal, as a SLURM .out file is not
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert len(lines) == 3, out
    pattern = re.compile(
        r"^step (\d)/3 \| epoch 0 \| loss \d+\.\d{4} \| \d+\.\d images/s \| lr [\d.e-]+ \| ETA \d\d:\d\d$"
    )
    assert [int(pattern.match(line).group(1)) for line in lines] == [1, 2, 3]
    assert re.search(r"^validation at step 3: val/acc_i2t [\d.]+ \| val/acc_t2i [\d.]+ \| val/loss [\d.]+$", out, re.M)
    assert "training: step 0/3" in out and re.search(r"^training done: step 3 in \d\d:\d\d$", out, re.M)
    assert "\r" not in out and bars == [True]


def test_progress_setup_follows_the_output(monkeypatch):
    import medclip.train.progress as train_progress
    from medclip.train.progress import PlainProgress, progress_setup

    monkeypatch.setattr(train_progress, "plain_progress_bars", lambda: None)

    kwargs, callbacks = progress_setup({"log_every_n_steps": 2}, stream=io.StringIO())
    assert kwargs == {"enable_progress_bar": False} and isinstance(callbacks[0], PlainProgress)
    assert callbacks[0].every == 2
    assert progress_setup({"enable_progress_bar": True}, stream=io.StringIO()) == ({}, [])  # asked for a bar

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert progress_setup({}, stream=Tty()) == ({}, []) and is_terminal(Tty()) and not is_terminal(io.StringIO())


def test_tqdm_bars_become_periodic_lines(monkeypatch):
    import tqdm.std as tqdm_std
    from tqdm.auto import tqdm

    # restored after the test (the patch is process-wide by design: every bar of a `medclip` run)
    monkeypatch.setattr(tqdm_std.tqdm, "status_printer", tqdm_std.tqdm.__dict__["status_printer"])
    import medclip.progress as progress

    monkeypatch.setattr(progress, "_PLAIN_BARS", False)
    plain_progress_bars(interval=3600.0)
    sink = io.StringIO()
    for _ in tqdm(range(1000), desc="caching", file=sink, mininterval=0, miniters=1):
        pass
    lines = [line for line in sink.getvalue().splitlines() if line]  # (tqdm ends a closed bar with a newline)
    assert "\r" not in sink.getvalue()
    assert len(lines) == 2 and lines[0].startswith("caching:   0%") and lines[1].startswith("caching: 100%"), lines


def test_format_duration():
    assert format_duration(65) == "01:05" and format_duration(3 * 3600 + 5) == "03:00:05"
    assert format_duration(2 * 86400 + 61) == "2d 00:01:01"
