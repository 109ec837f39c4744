"""PyTorch datasets over a manifest (decode on the fly) or a cache (stream preprocessed shards).

Both yield the same items::

    {"image": FloatTensor (1, H, W) or (1, D, H, W) in [0, 1], "text": str,
     "labels": FloatTensor (n_labels,) with NaN = not mentioned, "image_id", "study_id", "patient_id",
     "attributes": {attribute: concept id} (modality, plane, body region, subtype where the row has them)}
"""

from __future__ import annotations

import logging
import random
import tarfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from medclip.data.cache import CacheConfig, CacheError, cache_shards, iter_shard, preprocess_row, read_cache_index
from medclip.data.manifest import LABEL_PREFIX, label_columns, read_manifest
from medclip.data.storage import StorageError, as_location, open_file, retry_call, retry_stream
from medclip.distributed import distributed_info
from medclip.knowledge.attributes import row_attributes
from medclip.model.preprocess import PreprocessConfig
from medclip.seeding import epoch_seed

log = logging.getLogger(__name__)

TEXT_FIELDS = ("body", "text", "findings", "impression")
#: Bad cache samples (undecodable members, a truncated or deleted shard) one reader skips in one epoch before
#: the run stops (``data.max_bad_samples``).
DEFAULT_MAX_BAD_SAMPLES = 100
#: Deterministic per-item hooks of these datasets (``fn(text) -> text``, ``fn(image) -> image``). Training's
#: seeded rewriting, ``fn(text, rng)``, is :data:`medclip.train.text.TextTransform`, applied by the DataModule.
TextFn = Callable[[str], str]
ImageFn = Callable[[torch.Tensor], torch.Tensor]


def report_text(meta: dict, text_field: str = "body") -> str:
    """The training text of a row: ``body`` = findings + impression (else the whole report)."""
    if text_field not in TEXT_FIELDS:
        raise ValueError(f"text_field must be one of {TEXT_FIELDS}, got {text_field!r}")
    get = lambda k: str(meta.get(k) or "").strip()  # noqa: E731
    if text_field == "body":
        parts = [p for p in (get("report_findings"), get("report_impression")) if p]
        return " ".join(parts) if parts else get("report_text")
    if text_field == "text":
        return get("report_text")
    return get(f"report_{text_field}")


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    if arr.dtype == np.uint8:
        t = torch.from_numpy(arr).float().div_(255.0)
    else:
        t = torch.from_numpy(arr.astype(np.float32, copy=False))
    return t.unsqueeze(0)


def _labels(meta_labels: dict, names: Sequence[str]) -> torch.Tensor:
    return torch.tensor(
        [float("nan") if meta_labels.get(n) is None else float(meta_labels[n]) for n in names], dtype=torch.float32
    )


class ManifestDataset(Dataset):
    """Map-style dataset that decodes, windows and resizes each image when it is read.

    ``require_text``: True keeps only rows with report text; ``"text_or_labels"`` also keeps rows that have
    a known label (they get text from their labels in training). ``with_images=False``: items carry no
    image (training from cached features). ``config``: what the model sees (a checkpoint's
    :class:`~medclip.model.preprocess.PreprocessConfig`, or a cache's config); default: ``image_size``
    and ``window`` with the other defaults."""

    def __init__(
        self,
        manifest: str | Path | pd.DataFrame,
        split: str | None = None,
        *,
        image_size: int = 224,
        window: str = "auto",
        text_field: str = "body",
        label_names: Sequence[str] | None = None,
        text_transform: TextFn | None = None,
        image_transform: ImageFn | None = None,
        require_text: bool | str = False,
        config: CacheConfig | PreprocessConfig | None = None,
        with_images: bool = True,
    ) -> None:
        df = read_manifest(manifest) if not isinstance(manifest, pd.DataFrame) else manifest
        if split is not None:
            df = df[df["split"] == split]
        if require_text == "text_or_labels":  # rows without a report may still get text from their labels
            labelled = df[label_columns(df)].notna().any(axis=1) if label_columns(df) else pd.Series(False, df.index)
            df = df[[bool(report_text(r, text_field)) or bool(has) for r, has in zip(df.to_dict("records"), labelled)]]
        elif require_text:
            df = df[[bool(report_text(r, text_field)) for r in df.to_dict("records")]]
        self.frame = df.reset_index(drop=True)
        self.records = self.frame.to_dict("records")
        self.label_names = (
            list(label_names)
            if label_names is not None
            else [c[len(LABEL_PREFIX) :] for c in label_columns(self.frame)]
        )
        self.text_field = text_field
        self.text_transform = text_transform
        self.image_transform = image_transform
        self.config = config or CacheConfig(image_size=image_size, window=window)
        self.with_images = with_images  # False: items carry no "image" (features come from elsewhere)

    def __len__(self) -> int:
        return len(self.records)

    def image_ids(self) -> list[str]:
        """The image id of every item, in order."""
        return [str(r["image_id"]) for r in self.records]

    def __getitem__(self, index: int) -> dict:
        row = self.records[index]
        text = report_text(row, self.text_field)
        if self.text_transform is not None:
            text = self.text_transform(text)
        labels = {
            n: (None if pd.isna(row.get(LABEL_PREFIX + n)) else row.get(LABEL_PREFIX + n)) for n in self.label_names
        }
        item = {
            "text": text,
            "labels": _labels(labels, self.label_names),
            "image_id": row["image_id"],
            "study_id": row["study_id"],
            "patient_id": row["patient_id"],
            "attributes": row_attributes(row),
        }
        if self.with_images:
            image = _to_tensor(preprocess_row(row, self.config))
            item["image"] = self.image_transform(image) if self.image_transform is not None else image
        return item


class BadSamples:
    """Counts the cache samples a reader skipped in one epoch; warns for each, stops past ``limit``.

    A sample is bad when a member does not decode (garbage ``image.npy``, broken ``meta.json``), or when its
    shard ends early (truncated by a full quota or a dead node) or is gone (deleted after the run started):
    those samples are counted from the shard's count in ``cache.json``."""

    def __init__(self, limit: int) -> None:
        if int(limit) < 0:
            raise ValueError(f"max_bad_samples must be >= 0, got {limit!r}")
        self.limit = int(limit)
        self.count = 0

    def add(self, shard: object, reason: str, n: int = 1, key: str | None = None) -> None:
        self.count += n
        what = f"sample {key}" if key else f"{n} sample{'s' if n != 1 else ''}"
        if self.count > self.limit:
            raise CacheError(
                f"cache shard {shard}: {reason}; {self.count} bad samples in this epoch exceed "
                f"data.max_bad_samples = {self.limit}, so training stops. Delete that shard and run `medclip cache` "
                "again with the same options (it rewrites only missing shards), or raise data.max_bad_samples"
            )
        log.warning(
            "cache shard %s: %s skipped (%s); %d bad in this epoch, the run stops past %d (data.max_bad_samples)",
            shard,
            what,
            reason,
            self.count,
            self.limit,
        )


def store_outage(path: object, exc: StorageError) -> CacheError:
    """The error that stops training when the object store holding a shard keeps failing or refuses: an outage
    is not a bad sample (it would be counted against ``data.max_bad_samples`` shard after shard)."""
    detail = str(exc)
    if detail.startswith(f"{exc.location}: "):
        detail = detail[len(f"{exc.location}: ") :]
    return CacheError(
        f"cache shard {path}: {detail}. Training stops (an object-store failure is not counted against "
        "data.max_bad_samples); the checkpoints saved so far are kept: resume=last continues once the shard can be read"
    )


def guarded_shard(path: object, expected: int, bad: BadSamples) -> Iterator[dict]:
    """The good samples of one shard; bad ones (see :class:`BadSamples`) are counted in ``bad`` and left out.

    A shard in a bucket is read through :func:`medclip.data.storage.retry_stream`: a transient fault (HTTP 503, a
    dropped connection) reopens it and goes on after the samples already read; one that persists, or a refusal
    (403), stops training with a :class:`CacheError` naming the shard (:func:`store_outage`)."""
    seen = 0
    location = as_location(path)  # type: ignore[arg-type]
    try:
        for sample in retry_stream("read", location, lambda: iter_shard(location, tolerant=True)):
            seen += 1
            if "__error__" in sample:
                bad.add(path, sample["__error__"], key=str(sample.get("__key__")))
                continue
            yield sample
    except StorageError as exc:
        raise store_outage(path, exc) from exc
    except FileNotFoundError:
        reason = "the shard is missing (deleted after the run started?)"
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        reason = f"the shard is truncated or unreadable after {seen} samples ({type(exc).__name__}: {str(exc)[:120]})"
    else:
        reason = f"the shard ends after {seen} samples (truncated?)"
    lost = expected - seen
    if lost > 0:
        bad.add(path, f"{reason}; cache.json lists {expected}", n=lost)


class CacheDataset(IterableDataset):
    """Streams a split of a WebDataset cache; every rank yields the same number of samples per epoch.

    Shards are dealt to (rank, worker) readers when there are enough of them, else samples are dealt
    one by one. ``set_epoch`` reshuffles; ``skip_batches`` resumes mid-epoch.

    A bad sample (a member that does not decode; the rest of a truncated shard; every sample of a shard
    deleted after the run started) is skipped with a warning and counted; a reader that meets more than
    ``max_bad_samples`` in one epoch stops with a :class:`~medclip.data.cache.CacheError` naming the shard.
    The places of skipped samples are filled by repeating recent good ones, so every rank still yields
    its ``len`` samples (distributed ranks stay in step) and an exact resume over the same files stays exact.
    """

    def __init__(
        self,
        cache_dir: str | Path,
        split: str | None = "train",
        *,
        shuffle: bool = True,
        seed: int = 0,
        buffer_size: int = 256,
        text_field: str = "body",
        label_names: Sequence[str] | None = None,
        text_transform: TextFn | None = None,
        image_transform: ImageFn | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        with_images: bool = True,
        max_bad_samples: int = DEFAULT_MAX_BAD_SAMPLES,
    ) -> None:
        self.cache_dir = as_location(cache_dir)  # a folder or an fsspec URL (s3://bucket/cache)
        self.with_images = with_images  # False: items carry no "image" (features come from elsewhere)
        self.max_bad_samples = int(max_bad_samples)
        BadSamples(self.max_bad_samples)  # checks the value now
        index = read_cache_index(self.cache_dir)
        self.shards = cache_shards(self.cache_dir, split)
        if not self.shards:
            raise ValueError(f"{cache_dir}: no shards for split {split!r}")
        self.split = split
        self.label_names = list(label_names) if label_names is not None else list(index.get("labels", []))
        self.shuffle, self.seed, self.buffer_size = shuffle, seed, buffer_size
        self.text_field, self.text_transform, self.image_transform = text_field, text_transform, image_transform
        self._rank, self._world = rank, world_size
        self.epoch = 0
        self._skip = (0, 0)

    # -- distributed bookkeeping
    def _dist(self) -> tuple[int, int]:
        return distributed_info(self._rank, self._world)

    @property
    def total(self) -> int:
        return sum(c for _, c in self.shards)

    def _rank_shards(self, rank: int, world: int) -> list[int]:
        """Shards owned by one rank (fixed across epochs: shard j belongs to rank j % world)."""
        return [j for j in range(len(self.shards)) if j % world == rank]

    def _per_rank(self, world: int) -> int:
        if len(self.shards) >= world:
            return min(sum(self.shards[j][1] for j in self._rank_shards(r, world)) for r in range(world))
        return self.total // world

    def __len__(self) -> int:
        """Samples this rank yields per epoch (equal on every rank)."""
        return self._per_rank(self._dist()[1])

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of this epoch (and forget any resume position)."""
        self.epoch = int(epoch)
        self._skip = (0, 0)

    def skip_batches(self, n_batches: int, batch_size: int) -> None:
        """Resume: the next iteration starts after ``n_batches`` batches of this rank's epoch."""
        self._skip = (int(n_batches), int(batch_size))

    def _items(self, rank: int, world: int, worker: int, n_workers: int) -> Iterator[dict]:
        rng = random.Random(epoch_seed(self.seed, self.epoch) * 101 + rank)
        bad = BadSamples(self.max_bad_samples)
        per_rank = self._per_rank(world)
        owned = self._rank_shards(rank, world)
        if len(owned) >= n_workers and len(self.shards) >= world:
            # shard-level: the rank's shards, shuffled per epoch, dealt to its workers
            if self.shuffle:
                rng.shuffle(owned)
            counts = [
                sum(self.shards[j][1] for k, j in enumerate(owned) if k % n_workers == w) for w in range(n_workers)
            ]
            excess = sum(counts) - per_rank
            for w in range(n_workers - 1, -1, -1):  # trim so that every rank yields per_rank samples
                cut = min(excess, counts[w])
                counts[w] -= cut
                excess -= cut
            limit = counts[worker]
            stream: Iterator[dict] = (
                s
                for k, j in enumerate(owned)
                if k % n_workers == worker
                for s in guarded_shard(self.shards[j][0], self.shards[j][1], bad)
            )
        else:
            # sample-level: every reader scans all shards and keeps its own samples
            order = list(range(len(self.shards)))
            if self.shuffle:
                random.Random(epoch_seed(self.seed, self.epoch)).shuffle(order)

            def stream_all() -> Iterator[dict]:
                g = 0
                for j in order:
                    for s in guarded_shard(self.shards[j][0], self.shards[j][1], bad):
                        if g % world == rank and (g // world) % n_workers == worker:
                            yield s
                        g += 1

            stream = stream_all()
            limit = self._worker_share(per_rank, worker, n_workers)
        count = 0
        recent: deque[dict] = deque(maxlen=64)
        for sample in self._shuffled(stream, rng):
            if count >= limit:
                return
            count += 1
            recent.append(sample)
            yield sample
        # bad samples were skipped: repeat recent good ones so that this reader still yields its share
        for k in range(limit - count if recent else 0):
            yield recent[k % len(recent)]

    @staticmethod
    def _worker_share(n: int, worker: int, n_workers: int) -> int:
        return n // n_workers + (1 if worker < n % n_workers else 0)

    def _shuffled(self, stream: Iterator[dict], rng: random.Random) -> Iterator[dict]:
        if not self.shuffle or self.buffer_size <= 1:
            yield from stream
            return
        buf: list[dict] = []
        for s in stream:
            buf.append(s)
            if len(buf) >= self.buffer_size:
                yield buf.pop(rng.randrange(len(buf)))
        rng.shuffle(buf)
        yield from buf

    def __iter__(self) -> Iterator[dict]:
        rank, world = self._dist()
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        n_batches, batch_size = self._skip
        # The DataLoader takes batches from workers round-robin, so batch k came from worker k % W as its
        # (k // W)-th batch. Resuming at batch s, worker w takes over the stream of worker (s + w) % W.
        role = (n_batches + worker) % n_workers
        skip_here = ((n_batches + worker) // n_workers) * batch_size
        for i, sample in enumerate(self._items(rank, world, role, n_workers)):
            if i < skip_here:
                continue
            yield self._item(sample)

    def _item(self, sample: dict) -> dict:
        meta = sample["meta"]
        text = report_text(meta, self.text_field)
        if self.text_transform is not None:
            text = self.text_transform(text)
        item = {
            "text": text,
            "labels": _labels(meta.get("labels", {}), self.label_names),
            "image_id": meta["image_id"],
            "study_id": meta["study_id"],
            "patient_id": meta["patient_id"],
            "attributes": row_attributes(meta),
        }
        if self.with_images:
            image = _to_tensor(sample["image"])
            item["image"] = self.image_transform(image) if self.image_transform is not None else image
        return item


class CacheMapDataset(Dataset):
    """Random access to one split of a WebDataset cache (map-style), for weighted and mixed sampling.

    The shards' tar members are indexed once (offsets); an item is read with one seek per file, so any
    order costs the same as streaming. Items are those of :class:`CacheDataset`.
    """

    def __init__(
        self,
        cache_dir: str | Path,
        split: str | None = "train",
        *,
        text_field: str = "body",
        label_names: Sequence[str] | None = None,
        with_images: bool = True,
        max_bad_samples: int = DEFAULT_MAX_BAD_SAMPLES,
        **_ignored: object,
    ) -> None:
        self._bad = BadSamples(max_bad_samples)
        self.cache_dir = as_location(cache_dir)  # a folder or an fsspec URL (s3://bucket/cache)
        index = read_cache_index(self.cache_dir)
        shards = cache_shards(self.cache_dir, split)
        if not shards:
            raise ValueError(f"{cache_dir}: no shards for split {split!r}")
        self.label_names = list(label_names) if label_names is not None else list(index.get("labels", []))
        self.text_field, self.with_images = text_field, with_images
        self.shards = [str(path) for path, _ in shards]
        entries: dict[tuple[int, str], dict[str, tuple[int, int]]] = {}
        order: list[tuple[int, str]] = []
        for s, (path, expected) in enumerate(zip(self.shards, (count for _, count in shards))):
            members: dict[str, dict[str, tuple[int, int]]] = {}

            def scan(path: str = path, members: dict = members) -> None:
                members.clear()  # a retry after a transient fault scans the shard again from its start
                with open_file(as_location(path)) as handle, tarfile.open(fileobj=handle, mode="r") as tar:
                    for member in tar:
                        if member.isfile():
                            key, _, ext = member.name.partition(".")
                            members.setdefault(key, {})[ext] = (member.offset_data, member.size)

            try:
                retry_call("read", as_location(path), scan)
            except StorageError as exc:
                raise store_outage(path, exc) from exc
            except FileNotFoundError:
                self._bad.add(path, "the shard is missing; cache.json lists it", n=expected)
            except (tarfile.TarError, OSError, EOFError) as exc:  # truncated: keep what was indexed
                lost = max(expected - len(members), 1)
                self._bad.add(path, f"the shard is truncated or unreadable ({type(exc).__name__}: {exc})", n=lost)
            for key, found in members.items():
                entries[(s, key)] = found
                order.append((s, key))
        self.entries = [(s, entries[(s, key)]) for s, key in order if "meta.json" in entries[(s, key)]]
        if not self.entries:
            raise CacheError(f"{cache_dir}: no readable samples for split {split!r}")
        self._metas: list[dict | None] = [None] * len(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @staticmethod
    def _read(path: str, where: tuple[int, int]) -> bytes:
        def read() -> bytes:
            with open_file(as_location(path)) as handle:
                handle.seek(where[0])
                return handle.read(where[1])

        try:
            return retry_call("read", as_location(path), read)
        except StorageError as exc:
            raise store_outage(path, exc) from exc

    def meta(self, index: int) -> dict:
        """The sample's ``meta.json`` (ids, split, report texts, labels)."""
        cached = self._metas[index]
        if cached is None:
            import json

            s, members = self.entries[index]
            try:
                cached = json.loads(self._read(self.shards[s], members["meta.json"]))
            except CacheError:  # the object store is down: the run stops (store_outage)
                raise
            except (OSError, EOFError, ValueError) as exc:  # read as an item: skipped and counted (__getitem__)
                raise ValueError(
                    f"cache shard {self.shards[s]}: meta.json of sample #{index} cannot be read "
                    f"({type(exc).__name__}: {str(exc)[:120]})"
                ) from exc
            self._metas[index] = cached
        return cached

    def image_ids(self) -> list[str]:
        """The image id of every item, in order."""
        return [str(self.meta(k)["image_id"]) for k in range(len(self))]

    def __getitem__(self, index: int) -> dict:
        """The item at ``index``; a bad one (a member that does not decode or lies past the end of a truncated
        shard, a shard deleted after the run started) is skipped with a counted warning and the next good item
        is returned instead; past ``max_bad_samples`` bad reads (per reader, over the run) it stops with a
        :class:`~medclip.data.cache.CacheError` naming the shard."""
        for attempt in range(len(self)):
            k = (index + attempt) % len(self)
            try:
                return self._get(k)
            except (OSError, EOFError, ValueError, KeyError) as exc:
                if isinstance(exc, CacheError):
                    raise
                s, _ = self.entries[k]
                self._metas[k] = None
                self._bad.add(self.shards[s], f"{type(exc).__name__}: {str(exc)[:120]}", key=f"#{k}")
        raise CacheError(f"{self.cache_dir}: no readable sample left")

    def _get(self, index: int) -> dict:
        import io

        meta = self.meta(index)
        item = {
            "text": report_text(meta, self.text_field),
            "labels": _labels(meta.get("labels", {}), self.label_names),
            "image_id": meta["image_id"],
            "study_id": meta["study_id"],
            "patient_id": meta["patient_id"],
            "attributes": row_attributes(meta),
        }
        if self.with_images:
            s, members = self.entries[index]
            if "image.npy" not in members:
                raise ValueError(f"{self.shards[s]}: sample without image.npy")
            data = self._read(self.shards[s], members["image.npy"])
            if len(data) != members["image.npy"][1]:
                raise EOFError(f"image.npy cut short ({len(data)} of {members['image.npy'][1]} bytes)")
            item["image"] = _to_tensor(np.load(io.BytesIO(data), allow_pickle=False))
        return item
