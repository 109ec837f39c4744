"""Save and load few-shot classifiers next to the checkpoint, tied to its model like ``thresholds.json``.

``<checkpoint>/adapters/<method>/adapter.json`` (format, method, findings, features, settings and the
provenance: model fingerprint, manifest name and SHA-256, shots per class, draw, shot images and
patients, when, medclip version) and ``adapter.safetensors`` (what the method learned or cached).
A classifier of another model is refused at load (:class:`medclip.checkpoint.StaleFileError`, naming
the command that remakes it).
"""

from __future__ import annotations

import json
import shlex
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medclip.checkpoint import CheckpointDir, StaleFileError, write_json
from medclip.fsutil import atomic_write

from .methods import METHODS, AdaptedClassifier

ADAPTER_FORMAT = "medclip.adapter"
ADAPTER_VERSION = 1
ADAPTER_JSON = "adapter.json"
ADAPTER_WEIGHTS = "adapter.safetensors"


def save_adapter(checkpoint: str | Path | CheckpointDir, clf: AdaptedClassifier, provenance: dict[str, Any]) -> Path:
    """Write ``clf`` to ``<checkpoint>/adapters/<method>/``; returns that folder."""
    from safetensors.torch import save_file

    ckpt = checkpoint if isinstance(checkpoint, CheckpointDir) else CheckpointDir(checkpoint)
    folder = ckpt.adapter(clf.method)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / ADAPTER_WEIGHTS) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in clf.tensors.items()}, str(tmp))
    payload = {
        "format": ADAPTER_FORMAT,
        "version": ADAPTER_VERSION,
        "method": clf.method,
        "findings": clf.findings,
        "features": clf.features,
        "params": clf.params,
        "provenance": {
            "model_fingerprint": ckpt.fingerprint(),
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            **provenance,
        },
    }
    write_json(folder / ADAPTER_JSON, payload)
    return folder


def saved_adapters(checkpoint: str | Path | CheckpointDir) -> list[str]:
    """The methods with a saved classifier in the checkpoint folder."""
    ckpt = checkpoint if isinstance(checkpoint, CheckpointDir) else CheckpointDir(checkpoint)
    return sorted(p.parent.name for p in ckpt.adapters.glob(f"*/{ADAPTER_JSON}"))


def read_adapter_meta(checkpoint: str | Path | CheckpointDir, method: str) -> dict[str, Any]:
    """``adapter.json`` of one method (FileNotFoundError naming the command that makes it)."""
    ckpt = checkpoint if isinstance(checkpoint, CheckpointDir) else CheckpointDir(checkpoint)
    path = ckpt.adapter(method) / ADAPTER_JSON
    if not path.is_file():
        have = saved_adapters(ckpt)
        raise FileNotFoundError(
            f"{path}: no {method} classifier saved (have: {', '.join(have) or 'none'}); make it with "
            f"medclip adapt --checkpoint {shlex.quote(str(ckpt.path))} --manifest MANIFEST --methods {method}"
        )
    meta = json.loads(path.read_text())
    if meta.get("format") != ADAPTER_FORMAT or meta.get("method") not in METHODS:
        raise ValueError(f"{path}: not a medclip adapter file")
    return meta


def load_adapter(checkpoint: str | Path | CheckpointDir, method: str) -> tuple[AdaptedClassifier, dict[str, Any]]:
    """(classifier, its adapter.json) of ``method``; StaleFileError when it was made for another model."""
    from safetensors.torch import load_file

    ckpt = checkpoint if isinstance(checkpoint, CheckpointDir) else CheckpointDir(checkpoint)
    meta = read_adapter_meta(ckpt, method)
    made_for = meta.get("provenance", {}).get("model_fingerprint")
    current = ckpt.fingerprint()
    if made_for != current:
        manifest = meta.get("provenance", {}).get("manifest") or "MANIFEST"
        raise StaleFileError(
            f"{ckpt.adapter(method) / ADAPTER_JSON}: made for model {made_for}, but the checkpoint holds {current}; "
            f"remake it: medclip adapt --checkpoint {shlex.quote(str(ckpt.path))} --manifest "
            f"{shlex.quote(str(manifest))} --methods {method}"
        )
    tensors = load_file(str(ckpt.adapter(method) / ADAPTER_WEIGHTS))
    clf = AdaptedClassifier(
        meta["method"], list(meta["findings"]), meta["features"], dict(tensors), dict(meta.get("params") or {})
    )
    return clf, meta


def describe_adapter(meta: dict[str, Any]) -> str:
    """One line: method, shots, draw, features and where the shots came from."""
    prov = meta.get("provenance", {})
    return (
        f"{meta['method']} ({prov.get('shots', '?')} shots per class, draw {prov.get('draw', '?')}, "
        f"{meta['features']} features, from {prov.get('manifest', '?')} split {prov.get('train_split', '?')}, "
        f"model {prov.get('model_fingerprint', '?')}, {prov.get('created', '?')})"
    )
