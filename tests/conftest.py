"""Shared fixtures: locate ../shared (real data) and skip cleanly without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_path() -> Path:
    """The shared data folder: $MEDCLIP_SHARED, else ../shared beside the repository."""
    env = os.environ.get("MEDCLIP_SHARED")
    return Path(env) if env else REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = shared_path()
    if not (path / "data").is_dir():
        pytest.skip(f"shared data folder not found at {path} (set MEDCLIP_SHARED)")
    return path


@pytest.fixture(scope="session")
def xray_dir(shared_dir: Path) -> Path:
    """The real chest X-ray samples (DICOM, PNG, JPEG) in ../shared/data/xray_samples."""
    path = shared_dir / "data" / "xray_samples"
    if not path.is_dir():
        pytest.skip("xray_samples not in shared data")
    return path


@pytest.fixture(autouse=True, scope="session")
def _offline_env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
