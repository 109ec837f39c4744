"""The reference gallery: image embeddings, report texts, non-PHI ids and thumbnails of known studies.

Folder layout written by :func:`build_gallery`::

    gallery.json              format, model fingerprint, size, where it came from
    embeddings.safetensors    "image": float32 (N, E), L2-normalised, rows in table order
    gallery.parquet           image_id, study_id (salted hashes), split, modality, view_position,
                              report_findings, report_impression, report_text (scrubbed by the indexer)
    thumbnails/<image_id>.png small grey previews (the longest side THUMBNAIL_SIZE)

The report drafter is not part of the gallery: the demo serves the one ``medclip eval`` scored
(``<checkpoint>/drafter``, see :class:`medclip.checkpoint.CheckpointDir`).

The embeddings belong to one model: :meth:`Gallery.load` refuses a gallery built with another one.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from medclip.checkpoint import CheckpointDir, model_fingerprint
from medclip.data.cache import cache_shards, iter_cache, preprocess_row, read_cache_index
from medclip.data.dataset import report_text
from medclip.data.manifest import read_manifest
from medclip.fsutil import atomic_write
from medclip.inference.encoders import EmbeddingModel, model_preprocess
from medclip.inference.index import EmbeddingIndex
from medclip.io.windowing import resize_to_square
from medclip.model.preprocess import PreprocessConfig

__all__ = ["Gallery", "GalleryError", "GalleryMatch", "build_gallery", "model_fingerprint"]

log = logging.getLogger(__name__)

GALLERY_FORMAT = "medclip.gallery"
GALLERY_INFO = "gallery.json"
GALLERY_EMBEDDINGS = "embeddings.safetensors"
GALLERY_TABLE = "gallery.parquet"
THUMBNAILS = "thumbnails"
THUMBNAIL_SIZE = 160
#: Columns kept from the manifest: salted-hash ids, acquisition facts and the scrubbed report.
TABLE_COLUMNS = (
    "image_id",
    "study_id",
    "split",
    "modality",
    "view_position",
    "report_findings",
    "report_impression",
    "report_text",
)


class GalleryError(ValueError):
    """A gallery folder that is missing, unreadable, or was built with another model."""


@dataclass(frozen=True)
class GalleryMatch:
    """One similar study: its similarity to the query, ids, report and thumbnail path."""

    rank: int
    score: float
    image_id: str
    study_id: str
    view_position: str
    report: str
    thumbnail: Path | None


def _preprocess(model: EmbeddingModel) -> PreprocessConfig:
    """The model's saved preprocessing (:func:`medclip.inference.model_preprocess`); a square input only."""
    size = getattr(model, "image_size", None)  # an open_clip adapter's (H, W)
    if isinstance(size, tuple) and len(set(size)) != 1:
        raise GalleryError(f"the demo gallery needs a square model input, got image_size {size}")
    return model_preprocess(model)


def _manifest_images(manifest: str | Path | pd.DataFrame, split: str | None) -> pd.DataFrame:
    """The manifest rows a gallery may hold: 2D images of ``split`` (None: every split)."""
    df = manifest if isinstance(manifest, pd.DataFrame) else read_manifest(manifest)
    if split is not None and "split" in df:
        df = df[df["split"] == split]
    if "kind" in df:
        df = df[df["kind"].fillna("image") == "image"]
    return df


def _rows_from_manifest(df: pd.DataFrame, config: PreprocessConfig) -> Iterator[tuple[dict, np.ndarray]]:
    for row in df.to_dict("records"):
        if row.get("kind", "image") != "image":
            continue
        try:
            yield row, preprocess_row(row, config)
        except ValueError as exc:  # ImageReadError and friends: skip the row, say why
            log.warning("gallery: skipped %s (%s)", row.get("image_id"), getattr(exc, "reason", exc))


def _rows_from_cache(cache_dir: Path, split: str | None, size: int) -> Iterator[tuple[dict, np.ndarray]]:
    for sample in iter_cache(cache_dir, split):
        meta = sample["meta"]
        image = sample["image"]
        if meta.get("kind", "image") != "image" or image.ndim != 2:
            continue
        if image.shape != (size, size):
            image = resize_to_square(image.astype(np.float32) / 255.0, size)
            image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        yield meta, image


def _thumbnail(pixels: np.ndarray) -> Image.Image:
    img = Image.fromarray(pixels, mode="L")
    img.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS)
    return img


@torch.no_grad()
def build_gallery(
    model: EmbeddingModel,
    manifest_or_cache: str | Path | pd.DataFrame,
    out_dir: str | Path,
    *,
    split: str | None = "train",
    batch_size: int = 32,
    progress: bool = False,
) -> Path:
    """Embed the 2D images of a manifest (Parquet path or DataFrame) or a cache folder with ``model``
    and write a gallery folder (see the module docstring) to ``out_dir``; returns ``out_dir``.

    ``split``: which split the reference studies come from (None: all). Rows without a report are
    skipped: a similar study is only useful with its report. ``progress``: a progress bar on stderr
    (images embedded of those the source holds) and a line per later step.
    """
    source = manifest_or_cache
    pre = _preprocess(model)
    size = pre.image_size
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        built = PreprocessConfig.from_dict(
            read_cache_index(source).get("config", {}), strict=False
        )  # CacheError: not a cache
        if built.window != pre.window:
            log.warning(
                "gallery: the cache's images were windowed with %r, the model was trained with %r: "
                "build the gallery from the manifest to embed the model's own pixels",
                built.window,
                pre.window,
            )
        total = sum(count for _, count in cache_shards(source, split))  # 2D or not: an upper bound
        rows = _rows_from_cache(Path(source), split, size)
        origin = f"cache {Path(source).name}"
    elif isinstance(source, (str, Path)):
        if not Path(source).is_file():
            raise FileNotFoundError(f"{source}: no manifest or cache folder there")
        images = _manifest_images(source, split)
        total, rows = len(images), _rows_from_manifest(images, pre)
        origin = f"manifest {Path(source).name}"
    else:
        images = _manifest_images(source, split)
        total, rows = len(images), _rows_from_manifest(images, pre)
        origin = "manifest (DataFrame)"
    out = Path(out_dir)
    (out / THUMBNAILS).mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    records: list[dict] = []
    embeddings: list[torch.Tensor] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        if batch:
            x = torch.from_numpy(np.stack(batch)).float().div_(255.0).unsqueeze(1)
            embeddings.append(model.encode_image(x, normalize=True).float().cpu())
            batch.clear()

    bar = tqdm(
        rows,
        total=total,
        desc="gallery: embedding images",
        unit="img",
        disable=not progress,
        file=sys.stderr,
        mininterval=1.0,
        dynamic_ncols=True,
    )
    try:
        for meta, pixels in bar:
            text = report_text(meta, "body")
            if not text:
                continue
            record = {k: ("" if meta.get(k) is None else str(meta.get(k))) for k in TABLE_COLUMNS}
            _thumbnail(pixels).save(out / THUMBNAILS / f"{record['image_id']}.png")
            records.append(record)
            batch.append(pixels)
            if len(batch) == batch_size:
                flush()
        flush()
    finally:
        bar.close()
        model.train(was_training)
    if not records:
        raise GalleryError(
            f"{origin}: no 2D images with a report{f' in split {split!r}' if split else ''} to build a gallery from"
        )
    from safetensors.torch import save_file

    # Each file all or nothing, gallery.json last: a rebuild that fails half-way leaves the old gallery readable.
    matrix = torch.cat(embeddings).contiguous()
    with atomic_write(out / GALLERY_EMBEDDINGS) as tmp:
        save_file({"image": matrix}, str(tmp))
    table = pd.DataFrame.from_records(records, columns=list(TABLE_COLUMNS))
    with atomic_write(out / GALLERY_TABLE) as tmp:
        table.to_parquet(tmp, index=False)
    info = {
        "format": GALLERY_FORMAT,
        "model_fingerprint": model_fingerprint(model),
        "size": len(records),
        "embed_dim": int(matrix.shape[1]),
        "image_size": size,
        "split": split,
        "source": origin,
        "source_path": str(Path(source).resolve()) if isinstance(source, (str, Path)) else None,
    }
    with atomic_write(out / GALLERY_INFO) as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")
    return out


class Gallery:
    """A loaded gallery: embeddings in a search index, the table of ids and reports, thumbnails."""

    def __init__(self, directory: Path, embeddings: torch.Tensor, table: pd.DataFrame, info: dict) -> None:
        if embeddings.shape[0] != len(table):
            raise GalleryError(f"{directory}: {embeddings.shape[0]} embeddings but {len(table)} table rows")
        self.directory = directory
        self.embeddings = embeddings
        self.table = table.reset_index(drop=True)
        self.info = info
        self.index = EmbeddingIndex(embeddings)

    def __len__(self) -> int:
        return len(self.table)

    @classmethod
    def load(
        cls, directory: str | Path, model: EmbeddingModel | None = None, *, checkpoint: str | Path | None = None
    ) -> Gallery:
        """Read a gallery folder; with ``model`` (or ``checkpoint``, whose cached fingerprint is used),
        check that it was built with that model: another model's gallery is refused with the command
        that rebuilds it."""
        directory = Path(directory)
        info_path = directory / GALLERY_INFO
        if not info_path.is_file():
            raise GalleryError(
                f"{directory}: not a gallery folder ({GALLERY_INFO} missing); "
                "build one with medclip.demo.build_gallery or `medclip demo --build-gallery`"
            )
        try:
            info = json.loads(info_path.read_text())
            from safetensors.torch import load_file

            embeddings = load_file(str(directory / GALLERY_EMBEDDINGS))["image"].float()
            table = pd.read_parquet(directory / GALLERY_TABLE)
        except (OSError, ValueError, KeyError) as exc:
            raise GalleryError(f"{directory}: cannot read the gallery ({type(exc).__name__}: {exc})") from exc
        if info.get("format") != GALLERY_FORMAT:
            raise GalleryError(f"{info_path}: not a medclip gallery (format != {GALLERY_FORMAT!r})")
        expected = (
            CheckpointDir(checkpoint).fingerprint()
            if checkpoint is not None
            else model_fingerprint(model)
            if model is not None
            else None
        )
        if expected is not None and info.get("model_fingerprint") != expected:
            source = info.get("source_path")
            parts = [
                "medclip",
                "demo",
                "--checkpoint",
                str(checkpoint) if checkpoint is not None else "CHECKPOINT",
                "--build-gallery",
                str(source) if source else "MANIFEST_OR_CACHE",
            ]
            if checkpoint is None or CheckpointDir(checkpoint).gallery.resolve() != directory.resolve():
                parts += ["--gallery", str(directory)]
            if info.get("split", "train") != "train":
                parts += ["--gallery-split", str(info.get("split") or "all")]
            command = " ".join(p if p in ("CHECKPOINT", "MANIFEST_OR_CACHE") else shlex.quote(p) for p in parts)
            raise GalleryError(
                f"{directory}: built with another model (fingerprint {info.get('model_fingerprint')}, "
                f"this model's is {expected}); rebuild it for this checkpoint with: {command}"
            )
        return cls(directory, embeddings, table, info)

    @property
    def reports(self) -> list[str]:
        """Each gallery item's report text (findings + impression), in row order."""
        return [report_text(r, "body") for r in self.table.to_dict("records")]

    def search(self, image_features: torch.Tensor | np.ndarray, k: int = 5) -> list[GalleryMatch]:
        """The ``k`` most similar gallery studies to one image embedding, best first (one image per study)."""
        scores, idx = self.index.search(image_features, min(len(self), max(k * 4, k)))
        out: list[GalleryMatch] = []
        seen: set[str] = set()
        for score, i in zip(scores[0], idx[0]):
            row = self.table.iloc[int(i)]
            study = str(row["study_id"] or row["image_id"])
            if study in seen:
                continue
            seen.add(study)
            thumb = self.directory / THUMBNAILS / f"{row['image_id']}.png"
            out.append(
                GalleryMatch(
                    rank=len(out) + 1,
                    score=float(score),
                    image_id=str(row["image_id"]),
                    study_id=str(row["study_id"]),
                    view_position=str(row.get("view_position", "")),
                    report=report_text(row.to_dict(), "body"),
                    thumbnail=thumb if thumb.is_file() else None,
                )
            )
            if len(out) == k:
                break
        return out
