"""A wheel of medclip runs on its own: built, installed into a fresh venv outside the checkout, quick start run.

No network: the new venv sees the dependencies of the current environment through a ``.pth`` line (the
current site-packages, whose ``.pth`` files, such as the editable install's, are not processed from there),
and the test checks that ``medclip`` is imported from the new venv, not from the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, argv))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_wheel_installs_and_runs_the_quickstart_outside_the_checkout(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PIP_NO_INDEX="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        GRADIO_ANALYTICS_ENABLED="False",
    )
    # build from a copy of what the wheel is made of, so the shared checkout gets no build/ or egg-info folders
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "medclip", src / "medclip", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = tmp_path / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
        cwd=tmp_path,
        env=env,
    )
    (wheel,) = wheels.glob("medclip_kit-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        cwd=tmp_path,
        env=env,
    )
    site = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path, env=env
        ).stdout.strip()
    )
    (site / "zz_medclip_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    where = Path(
        _run([str(python), "-c", "import medclip; print(medclip.__file__)"], cwd=tmp_path, env=env).stdout.strip()
    )
    assert where.is_relative_to(venv), f"medclip imported from {where}, not from the new venv"
    assert not where.is_relative_to(REPO)

    out = tmp_path / "run"
    done = _run(
        [str(python), "-m", "medclip", "-q", "quickstart", "--max-steps", "2", "-o", str(out)],
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert "done: checkpoint folder" in done.stdout and "next: medclip demo --checkpoint" in done.stdout
    model = out / "model"
    assert (model / "config.json").is_file() and (model / "model.safetensors").is_file()
    assert (model / "gallery").is_dir()

    medclip = venv / "bin" / "medclip"  # the console script of the wheel
    listed = _run([str(medclip), "recipe", "--list"], cwd=tmp_path, env=env).stdout
    assert "kermany_pneumonia" in listed and "mimic_cxr" in listed
    assert "offline-default" in _run([str(medclip), "models"], cwd=tmp_path, env=env).stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    no_model = subprocess.run([str(medclip), "demo"], cwd=empty, env=env, capture_output=True, text=True, timeout=300)
    assert no_model.returncode == 1 and "medclip quickstart" in no_model.stderr  # not "app.py is not there"
    helped = _run(
        [str(python), "-c", "import medclip.demo.app as page; print(page.build_demo.__name__)"], cwd=tmp_path, env=env
    ).stdout
    assert "build_demo" in helped  # the demo page is part of the wheel
