"""The checkpoint folder: one owner for its layout and for which model its files belong to.

``medclip fit`` exports the model files; ``medclip eval --save-to-checkpoint`` adds the operating
points and the report drafter; the demo adds its gallery and reads everything::

    <checkpoint>/
        config.json          model config, with what the model sees under "preprocess" (window, size, slice
                             choice, text length: medclip.model.PreprocessConfig)  (medclip.model.dual_encoder.CONFIG_NAME)
        model.safetensors    weights                           (medclip.model.dual_encoder.WEIGHTS_NAME)
        tokenizer files      written by the tokenizer's save_pretrained (vocab.txt, tokenizer.json, ...)
        provenance.json      the model fingerprint, computed once from the weights (cached by size and mtime)
        thresholds.json      per-finding operating points chosen on a validation split (medclip eval)
        drafter/             the report drafter medclip eval scored and the demo serves
        adapters/<method>/   few-shot classifiers of medclip adapt (adapter.json with provenance + adapter.safetensors)
        gallery/             the demo's reference gallery (embeddings, scrubbed reports, thumbnails)
        eval/                medclip eval's default output folder (metrics.json, plots)
        stale/<fingerprint>/ files of an earlier model, set aside when medclip fit replaced it (STALE.txt says how
                             to remake them)

The *model fingerprint* (:func:`model_fingerprint`) identifies the weights: a SHA-256 over every
tensor's name, dtype, shape and bytes. It is the same whether computed from a model in memory or
from ``model.safetensors``, so files derived from a model (thresholds, drafter, gallery) can record
it and be refused when the folder's model is another one. When ``medclip fit`` writes a new
model over an old one (a second run, ``resume=last``), :meth:`CheckpointDir.replacing_model` moves
the old model's thresholds, drafter, gallery and eval output to ``stale/<old fingerprint>/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import shutil
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medclip.fsutil import atomic_write
from medclip.model.dual_encoder import CONFIG_NAME, WEIGHTS_NAME, DualEncoder

__all__ = [
    "ADAPTERS_DIR",
    "DRAFTER_DIR",
    "EVAL_DIR",
    "GALLERY_DIR",
    "PROVENANCE_FILE",
    "THRESHOLDS_FILE",
    "CheckpointDir",
    "StaleFileError",
    "model_fingerprint",
    "write_json",
]

THRESHOLDS_FILE = "thresholds.json"
DRAFTER_DIR = "drafter"
ADAPTERS_DIR = "adapters"
GALLERY_DIR = "gallery"
EVAL_DIR = "eval"
PROVENANCE_FILE = "provenance.json"
STALE_DIR = "stale"
STALE_NOTE = "STALE.txt"
PROVENANCE_FORMAT = "medclip.provenance"
FINGERPRINT_LENGTH = 16

log = logging.getLogger(__name__)


class StaleFileError(ValueError):
    """A file derived from a model (operating points, drafter, gallery) that belongs to another model
    than the checkpoint's; the message names the file and ends with the command that remakes it."""


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of a tensor (any dtype, bf16 included) in C order."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy().tobytes()) if flat.numel() else memoryview(b"")


def _digest(items: Iterable[tuple[str, torch.Tensor]]) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(items, key=lambda kv: kv[0]):
        digest.update(f"{name}|{str(tensor.dtype).removeprefix('torch.')}|{tuple(tensor.shape)};".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()[:FINGERPRINT_LENGTH]


def model_fingerprint(model: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """A short SHA-256 of a model's (or state dict's) tensors: names, dtypes, shapes and values.

    Equal for a model in memory and the ``model.safetensors`` it was saved to; any change of any
    weight gives another fingerprint.
    """
    state = model.state_dict() if isinstance(model, nn.Module) else model
    return _digest(state.items())


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON to ``path``, all or nothing (:func:`medclip.fsutil.atomic_write`)."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")


class CheckpointDir:
    """A checkpoint folder: where each file lives, and the fingerprint of the model in it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def open(cls, name_or_path: str | Path) -> CheckpointDir:
        """A checkpoint folder, or ``"hf-hub:org/name"`` resolved to its local snapshot folder (the
        Hugging Face cache only, when offline)."""
        from medclip.model import resources

        name = str(name_or_path)
        return cls(resources.resolve_hf_hub(name) if name.startswith(resources.HF_HUB_PREFIX) else name_or_path)

    def __repr__(self) -> str:
        return f"CheckpointDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ layout
    @property
    def config(self) -> Path:
        """The model config (``config.json``)."""
        return self.path / CONFIG_NAME

    @property
    def weights(self) -> Path:
        """The model weights (``model.safetensors``)."""
        return self.path / WEIGHTS_NAME

    @property
    def provenance(self) -> Path:
        """``provenance.json``: the cached model fingerprint."""
        return self.path / PROVENANCE_FILE

    @property
    def thresholds(self) -> Path:
        """``thresholds.json``: the operating points of ``medclip eval --save-to-checkpoint``."""
        return self.path / THRESHOLDS_FILE

    @property
    def drafter(self) -> Path:
        """``drafter/``: the report drafter eval scored and the demo serves."""
        return self.path / DRAFTER_DIR

    @property
    def adapters(self) -> Path:
        """``adapters/``: the few-shot classifiers of ``medclip adapt``, one folder per method."""
        return self.path / ADAPTERS_DIR

    def adapter(self, method: str) -> Path:
        """``adapters/<method>/`` (``adapter.json`` + ``adapter.safetensors``)."""
        if not method or "/" in method or method.startswith("."):
            raise ValueError(f"not an adapter name: {method!r}")
        return self.adapters / method

    @property
    def gallery(self) -> Path:
        """``gallery/``: the demo's reference gallery."""
        return self.path / GALLERY_DIR

    @property
    def eval_dir(self) -> Path:
        """``eval/``: ``medclip eval``'s default output folder."""
        return self.path / EVAL_DIR

    @property
    def stale(self) -> Path:
        """``stale/``: files of earlier models, set aside when the model was replaced."""
        return self.path / STALE_DIR

    def derived(self) -> list[Path]:
        """The files made from this folder's model that exist: thresholds, drafter, adapters, gallery, eval output."""
        return [p for p in (self.thresholds, self.drafter, self.adapters, self.gallery, self.eval_dir) if p.exists()]

    def is_model(self) -> bool:
        """True when the folder holds a medclip model (config and weights)."""
        return self.config.is_file() and self.weights.is_file()

    def require(self) -> CheckpointDir:
        """``self`` if the folder exists; FileNotFoundError naming it otherwise."""
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.path}: checkpoint folder not found")
        return self

    # ------------------------------------------------------------------ model
    def load_model(self, map_location: str | torch.device = "cpu") -> DualEncoder:
        """The :class:`~medclip.model.DualEncoder` in this folder, in eval mode."""
        self.require()
        return DualEncoder.from_pretrained(self.path, map_location=map_location).eval()

    def fingerprint(self) -> str:
        """The fingerprint (:func:`model_fingerprint`) of ``model.safetensors``: read from
        ``provenance.json`` while the weights file is unchanged (size and mtime), else computed
        from the weights and stored there."""
        from medclip.model import ModelLoadError

        try:
            stat = self.weights.stat()
        except OSError:
            raise ModelLoadError(f"{self.path}: not a medclip checkpoint ({WEIGHTS_NAME} missing)") from None
        key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        cached = self._read_provenance()
        if cached.get("weights") == key and isinstance(cached.get("model_fingerprint"), str):
            return cached["model_fingerprint"]
        from safetensors import safe_open

        try:
            with safe_open(str(self.weights), framework="pt") as handle:
                fingerprint = _digest((name, handle.get_tensor(name)) for name in handle.keys())
        except Exception as exc:  # safetensors raises its own error types
            raise ModelLoadError(f"{self.weights}: cannot read weights: {exc}") from exc
        try:
            write_json(self.provenance, {"format": PROVENANCE_FORMAT, "model_fingerprint": fingerprint, "weights": key})
        except OSError:  # a read-only checkpoint still has a fingerprint, just not a cached one
            pass
        return fingerprint

    def _read_provenance(self) -> dict:
        try:
            data = json.loads(self.provenance.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) and data.get("format") == PROVENANCE_FORMAT else {}

    # ------------------------------------------------------------------ replacing the model
    @contextmanager
    def replacing_model(self, active: bool = True) -> Iterator[None]:
        """Wrap the writing of new weights into this folder (``medclip fit``'s export): if the weights
        change, the files made from the old model (:meth:`derived`) are moved to
        ``stale/<old fingerprint>/`` with a ``STALE.txt`` that says why and how to remake them.
        ``active=False`` (other ranks of a distributed run) does nothing."""
        derived = self.derived() if active else []
        old = self.fingerprint() if derived and self.weights.is_file() else None
        yield
        if derived and self.derived():
            new = self.fingerprint()
            if new != old:
                self.set_aside(old, new)

    def set_aside(self, old: str | None, new: str) -> Path:
        """Move :meth:`derived` files to ``stale/<old>/`` (a fresh folder each time) and write ``STALE.txt``."""
        base = self.stale / (old or "unknown-model")
        target, k = base, 1
        while target.exists():
            target, k = base.with_name(f"{base.name}-{k}"), k + 1
        target.mkdir(parents=True)
        remake = self._remake_commands()
        moved = []
        for path in self.derived():
            shutil.move(str(path), str(target / path.name))
            moved.append(path.name)
        when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        (target / STALE_NOTE).write_text(
            f"These files were made for an earlier model in {self.path} (fingerprint {old or 'unknown'}).\n"
            f"The model there was replaced on {when} (now fingerprint {new}), so they no longer describe it:\n"
            f"  {', '.join(moved)}\n\nRemake them for the new model:\n" + "".join(f"  {c}\n" for c in remake)
        )
        log.warning(
            "%s: the model was replaced; files made for the previous one (%s) moved to %s. Remake them: %s",
            self.path,
            ", ".join(moved),
            target,
            " ; ".join(remake),
        )
        return target

    def _remake_commands(self) -> list[str]:
        """The commands that remake the derived files, with the manifest / gallery source they recorded."""

        def recorded(path: Path, *keys: str) -> str | None:
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                return None
            for key in keys:
                data = data.get(key) if isinstance(data, dict) else None
            return str(data) if data else None

        commands = []
        if self.thresholds.exists() or self.drafter.exists() or self.eval_dir.exists():
            manifest = recorded(self.thresholds, "validation", "manifest") or recorded(
                self.drafter / "drafter.json", "source", "manifest"
            )
            commands.append(
                f"medclip eval --checkpoint {shlex.quote(str(self.path))} --manifest "
                f"{shlex.quote(manifest) if manifest else 'MANIFEST'} --save-to-checkpoint"
            )
        if self.adapters.exists():
            manifest = None
            for meta in sorted(self.adapters.glob("*/adapter.json")):
                manifest = manifest or recorded(meta, "provenance", "manifest")
            commands.append(
                f"medclip adapt --checkpoint {shlex.quote(str(self.path))} --manifest "
                f"{shlex.quote(manifest) if manifest else 'MANIFEST'}"
            )
        if self.gallery.exists():
            source = recorded(self.gallery / "gallery.json", "source_path")
            commands.append(
                f"medclip demo --checkpoint {shlex.quote(str(self.path))} --build-gallery "
                f"{shlex.quote(source) if source else 'MANIFEST_OR_CACHE'}"
            )
        return commands
