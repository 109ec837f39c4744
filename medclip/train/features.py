"""The training feature cache: a locked image backbone's pooled features, computed once and reused.

With a fully locked vision backbone (LiT, ``model.lock_image``) in eval mode and no image augmentation,
an image's backbone output never changes during training, so decoding and encoding it every epoch is
wasted work. :class:`FeatureStore` holds those features (one row per ``image_id``) in
``<dir>/<key>.safetensors``; the key hashes the backbone's weights and config (the *model fingerprint*)
with the preprocessing (image size, windowing, the data source's identity), so a change of either
starts a new file and a stale one is never read. Training then runs only the trainable projection on
the cached features (:meth:`medclip.train.DualEncoderModule._loss`), which gives the same loss and
gradients as the full forward pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from medclip.fsutil import atomic_write

log = logging.getLogger(__name__)


def model_fingerprint(model: Any) -> str:
    """A hash of the vision backbone's weights, buffers and config (changes when any of them does)."""
    digest = hashlib.sha256()
    cfg = getattr(model.config, "vision", None)
    digest.update(json.dumps(getattr(cfg, "__dict__", {}), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.visual.backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def source_identity(path: str | Path) -> dict[str, Any]:
    """What identifies a data source's images: the path, plus the cache index's hash for a cache folder or
    the file's size and modification time for a manifest."""
    from medclip.data import storage

    if storage.is_url(path):  # a bucket: a cache by its index's content, a manifest by its bytes
        index = storage.join(storage.as_location(path), "cache.json")
        target = index if storage.exists(index) else storage.as_location(path)
        return {"path": str(path), "content": hashlib.sha256(storage.read_bytes(target)).hexdigest()}
    path = Path(path)
    if path.is_dir():
        index = path / "cache.json"
        content = index.read_bytes() if index.is_file() else b""
        return {"path": str(path), "cache_index": hashlib.sha256(content).hexdigest()}
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def cache_key(fingerprint: str, preprocessing: Mapping[str, Any]) -> str:
    """The file name stem of a feature cache: model fingerprint + preprocessing."""
    blob = json.dumps({"model": fingerprint, "preprocessing": preprocessing}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class FeatureStore:
    """Backbone features by ``image_id``, persisted as one safetensors file (written atomically)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.index: dict[str, int] = {}
        self.features: torch.Tensor | None = None
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="pt") as handle:
                ids = json.loads(handle.metadata()["ids"])
                features = handle.get_tensor("features")
        except Exception as exc:  # a damaged file is rebuilt, never trusted
            log.warning("feature cache %s unreadable (%s): recomputing", self.path.name, type(exc).__name__)
            return
        if len(ids) != features.shape[0]:
            log.warning("feature cache %s inconsistent: recomputing", self.path.name)
            return
        self.index = {str(i): k for k, i in enumerate(ids)}
        self.features = features

    def __contains__(self, image_id: str) -> bool:
        return str(image_id) in self.index

    def __len__(self) -> int:
        return len(self.index)

    def get(self, image_id: str) -> torch.Tensor:
        """The features of one image (KeyError naming the store when missing)."""
        try:
            row = self.index[str(image_id)]
        except KeyError:
            raise KeyError(f"image {image_id!r} is not in the feature cache {self.path.name}") from None
        assert self.features is not None
        return self.features[row]

    def add(self, ids: list[str], features: torch.Tensor) -> None:
        """Append features of new images (ids already present are ignored)."""
        keep = [k for k, i in enumerate(ids) if str(i) not in self.index]
        if not keep:
            return
        new = features[keep].detach().float().cpu()
        start = len(self.index)
        for offset, k in enumerate(keep):
            self.index[str(ids[k])] = start + offset
        self.features = new if self.features is None else torch.cat([self.features, new])

    def save(self) -> None:
        """Write the store atomically (a temporary file in the same folder, then a rename)."""
        from safetensors.torch import save_file

        if self.features is None:
            return
        ids = [i for i, _ in sorted(self.index.items(), key=lambda kv: kv[1])]
        with atomic_write(self.path) as tmp:
            save_file({"features": self.features.contiguous()}, tmp, metadata={"ids": json.dumps(ids)})

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers get the tensor, not a file handle
        return {"path": self.path, "index": self.index, "features": self.features}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class BackboneFeatures:
    """``images -> pooled backbone features`` of a DualEncoder, in eval mode and without gradients."""

    def __init__(self, model: Any, device: torch.device | str | None = None) -> None:
        self.model = model
        self.device = device  # where to encode (the trainer's device); None: where the model is

    @property
    def fingerprint(self) -> str:
        """The model fingerprint of the backbone (see :func:`model_fingerprint`)."""
        return model_fingerprint(self.model)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        visual = self.model.visual
        backbone = visual.backbone
        was_training = backbone.training  # False for a locked backbone: nothing to restore
        home = next(visual.parameters()).device
        device = torch.device(self.device) if self.device is not None else home
        backbone.eval()
        try:
            if device != home:
                visual.to(device)
            return visual.features(images.to(device)).float().cpu()
        finally:
            if device != home:
                visual.to(home)
            backbone.train(was_training)


def fill_store(
    store: FeatureStore,
    dataset: Any,
    extractor: BackboneFeatures,
    *,
    batch_size: int,
    num_workers: int = 0,
    seed: int = 0,
    desc: str = "locked image tower features",
    progress: bool = True,
) -> int:
    """Compute the features of every image of ``dataset`` not yet in ``store`` and save it; returns how many
    images were encoded. ``dataset`` must yield items with ``image`` and ``image_id``. A progress bar counts the
    images left (off a terminal the command line turns it into periodic lines)."""
    from tqdm.auto import tqdm

    def collate(items: list[Mapping[str, Any]]) -> tuple[list[str], torch.Tensor]:
        return [str(i["image_id"]) for i in items], torch.stack([torch.as_tensor(i["image"]) for i in items])

    todo_ids: list[str] = []
    pending: set[str] = set()
    chunks: list[torch.Tensor] = []
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(seed),
    )  # never touches the global RNG
    if callable(getattr(dataset, "image_ids", None)):
        # map-style: skip images already cached without decoding them
        missing = [k for k, i in enumerate(dataset.image_ids()) if str(i) not in store]
        if not missing:
            return 0
        loader = DataLoader(
            torch.utils.data.Subset(dataset, missing),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(seed),
        )
    total = len(missing) if callable(getattr(dataset, "image_ids", None)) else getattr(dataset, "__len__", None)
    total = total() if callable(total) else total
    with tqdm(total=total, desc=desc, unit="img", disable=not progress) as bar:
        for ids, images in loader:
            bar.update(len(ids))
            new = [k for k, i in enumerate(ids) if i not in store and i not in pending]
            if not new:
                continue
            todo_ids.extend(ids[k] for k in new)
            pending.update(ids[k] for k in new)
            chunks.append(extractor(images[new]))
    if chunks:
        store.add(todo_ids, torch.cat(chunks))
        store.save()
    return len(todo_ids)
