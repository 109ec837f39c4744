"""Repository layout guarantees."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_datasets_folder_does_not_shadow_hf_datasets():
    assert not (REPO / "datasets" / "__init__.py").exists()
    code = ("import sys, importlib.util; spec = importlib.util.find_spec('datasets'); "
            "assert spec is None or 'site-packages' in str(spec.origin) or spec.origin is None and "
            "all('site-packages' in p for p in spec.submodule_search_locations or []), spec; "
            "import transformers; from transformers import AutoTokenizer; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def test_cli_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "medclip.cli", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    for cmd in ("index", "label", "cache", "fit", "quickstart"):
        assert cmd in out.stdout
