"""One logging set-up for the command lines: Lightning's INFO lines once, no adverts, no third-party deprecation noise."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml
from test_train_fit import _config, manifest, one_torch_thread  # noqa: F401 (fixtures)

from medclip.logging_setup import LIGHTNING_LOGGERS, setup_logging

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def restore_logging():
    """setup_logging changes process-wide state: put root, Lightning's loggers and the warning filters back."""
    names = ["", "lightning", *LIGHTNING_LOGGERS]
    saved = {
        n: (list(logging.getLogger(n).handlers), logging.getLogger(n).level, logging.getLogger(n).propagate)
        for n in names
    }
    with warnings.catch_warnings():
        yield
    for n, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(n)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


def test_lightning_lines_print_once_without_adverts_and_library_deprecations_hidden(restore_logging) -> None:
    import lightning  # noqa: F401  (its import puts a console handler on the `lightning` logger)

    lightning_console = io.StringIO()
    # where Lightning's own handlers would print (`lightning.pytorch` and `lightning.fabric` have their own too,
    # and do not propagate: imported before setup_logging, they printed every line twice and the adverts)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        for h in logging.getLogger(name).handlers:
            if type(h) is logging.StreamHandler:
                h.setStream(lightning_console)
    for name in ("lightning.pytorch", "lightning.fabric"):  # as Lightning's import leaves them outside pytest
        logger = logging.getLogger(name)
        if not any(type(h) is logging.StreamHandler for h in logger.handlers):
            logger.addHandler(logging.StreamHandler(lightning_console))
        logger.propagate = False
    out = io.StringIO()
    setup_logging(0, stream=out)
    setup_logging(0, stream=out)  # a second call replaces, it does not add a handler
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    log.info("GPU available: False, used: False")
    log.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger](https://x) ...")
    logging.getLogger("medclip.test").warning("medclip says")
    logging.getLogger("medclip.test").info("hidden at verbosity 0")
    assert out.getvalue().splitlines() == [
        "INFO lightning: GPU available: False, used: False",
        "WARNING medclip.test: medclip says",
    ]
    assert lightning_console.getvalue() == ""
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("default")
        setup_logging(0, stream=out)
        exec(
            compile("import warnings; warnings.warn('old', FutureWarning)", "x", "exec"),
            {"__name__": "lightning.pytorch.x"},
        )
        exec(compile("import warnings; warnings.warn('ours', FutureWarning)", "x", "exec"), {"__name__": "medclip.x"})
    assert [str(w.message) for w in caught] == ["ours"]


def test_verbose_shows_debug_and_library_warnings(restore_logging) -> None:
    out = io.StringIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("default")
        setup_logging(1, stream=out)
        logging.getLogger("medclip.test").debug("details")
        exec(
            compile("import warnings; warnings.warn('old', FutureWarning)", "x", "exec"),
            {"__name__": "lightning.pytorch.x"},
        )
    assert "DEBUG medclip.test: details" in out.getvalue()
    assert [str(w.message) for w in caught] == ["old"]


def test_tiny_fit_through_the_cli_prints_each_lightning_line_once_and_no_ads(manifest: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = _config({"manifest": str(manifest)}, tmp_path / "run", max_steps=2, val_check_interval=2)
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "medclip.cli", "fit", "--config", str(tmp_path / "fit.yaml")],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    info = [line for line in lines if line.startswith("INFO")]
    assert "INFO lightning: Seed set to 11" in info and any("GPU available" in line for line in info)
    messages = [line.split(": ", 1)[1] for line in lines if ": " in line]
    assert all(messages.count(line.split(": ", 1)[1]) == 1 for line in info), info
    text = proc.stdout + proc.stderr
    for advert in ("💡", "litlogger", "LitLogger", "litmodels"):
        assert advert not in text
    assert "deprecated" not in text.lower() and "FutureWarning" not in text


def _medclip_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if type(h).__name__ == "_MedclipHandler"]


@pytest.mark.parametrize(
    "entry",
    ["medclip.cli", "medclip.train.__main__", "medclip.eval.cli", "medclip.knowledge.__main__", "medclip.demo.app"],
)
def test_every_command_line_sets_logging_up_the_one_way(entry: str, tmp_path: Path, restore_logging, capsys) -> None:
    import importlib

    missing = str(tmp_path / "missing")
    argv = {
        "medclip.cli": ["label", missing],
        "medclip.train.__main__": ["--config", missing + ".yaml"],
        "medclip.eval.cli": ["--checkpoint", missing, "--manifest", missing + ".parquet"],
        "medclip.knowledge.__main__": [missing + ".parquet"],
        "medclip.demo.app": ["--checkpoint", missing],
    }[entry]
    for h in _medclip_handlers():
        logging.getLogger().removeHandler(h)
    assert importlib.import_module(entry).main(argv) == 2  # a clear error, after logging was set up
    assert len(_medclip_handlers()) == 1
    assert all(logging.getLogger(n).propagate is False for n in LIGHTNING_LOGGERS)
