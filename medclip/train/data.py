"""The training DataModule: manifest or cache datasets, report text augmentation, tokenizing collate.

Text policy for reports (long, variable length):

* the dataset supplies the report text (``data.text_field`` picks the manifest column);
* in training the text goes through a pluggable ``text_transform(text, rng) -> str``, by default the
  knowledge-graph :class:`medclip.knowledge.ReportAugmenter` (sentence sampling and rewording);
  its ``rng`` is seeded from ``(seed, epoch, sample)`` so augmentation is reproducible and resumable;
* the batch is tokenized with the model's tokenizer, padded to the longest text in the batch
  (dynamic padding) and truncated on the right at ``data.max_text_tokens`` (default: the text
  tower's maximum); the attention mask marks real tokens. Reports keep the impression first when
  the dataset builds the text, so right truncation drops the least important part.
"""

from __future__ import annotations

import logging
import os
import random
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from medclip.model.losses import group_ids_from_keys
from medclip.train.features import BackboneFeatures, FeatureStore, cache_key, fill_store, source_identity
from medclip.train.sampler import ResumableSampler

log = logging.getLogger(__name__)

#: ``text_transform(text, rng) -> text``: a report rewriting applied to each training sample.
TextTransform = Callable[[str, random.Random], str]
#: ``image_transform(image, rng) -> image``: an image augmentation (``medclip.data.transforms``).
ImageTransform = Callable[[torch.Tensor, random.Random], torch.Tensor]
#: ``tokenize(texts, max_length) -> mapping with input_ids and attention_mask`` (``DualEncoder.tokenize``).
Tokenize = Callable[..., Mapping[str, torch.Tensor]]


def sample_seed(seed: int, epoch: int, key: int | str) -> int:
    """A stable seed for one sample in one epoch (the same in every process, worker and restart)."""
    return zlib.crc32(f"{seed}:{epoch}:{key}".encode())


def image_seed(seed: int, epoch: int, key: int | str) -> int:
    """The seed of one sample's image augmentation (a stream apart from its text augmentation)."""
    return sample_seed(seed, epoch, f"image:{key}")


def default_text_transform(seed: int = 0) -> TextTransform | None:
    """The knowledge-graph report augmenter, or ``None`` (with a warning) when it cannot be built."""
    try:
        from medclip.knowledge import Graph, ReportAugmenter
    except ImportError as exc:
        log.warning("text augmentation disabled: medclip.knowledge is not available (%s)", exc)
        return None
    return ReportAugmenter(Graph.load(), seed=seed)


class AugmentedDataset(Dataset):
    """A map-style dataset whose report texts are rewritten by ``text_transform``, keyed by ``(index, epoch)``."""

    def __init__(self, dataset: Dataset, text_transform: TextTransform | None, seed: int,
                 features: FeatureStore | None = None, image_transform: ImageTransform | None = None) -> None:
        self.dataset = dataset
        self.text_transform = text_transform
        self.seed = seed
        self.features = features
        self.image_transform = image_transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        item = dict(self.dataset[index])
        if self.text_transform is not None:
            item["text"] = self.text_transform(item["text"], random.Random(sample_seed(self.seed, epoch, index)))
        if self.features is not None:
            item["image_features"] = self.features.get(item["image_id"])
        if self.image_transform is not None and "image" in item:
            item["image"] = self.image_transform(item["image"], random.Random(image_seed(self.seed, epoch, index)))
        return item


class AugmentedIterable(IterableDataset):
    """Wraps the cache stream: per-epoch reshuffle, mid-epoch resume, texts rewritten with an rng keyed
    by ``(epoch, image_id)``."""

    def __init__(self, dataset: Any, *, text_transform: TextTransform | None, seed: int,
                 features: FeatureStore | None = None, image_transform: ImageTransform | None = None) -> None:
        super().__init__()
        self.dataset = dataset
        self.text_transform = text_transform
        self.seed = seed
        self.features = features
        self.image_transform = image_transform
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Stream ``epoch`` from its start."""
        self.epoch = int(epoch)
        self.dataset.set_epoch(epoch)

    def resume_from(self, epoch: int, batches_done: int, batch_size: int) -> None:
        """Stream ``epoch`` after the ``batches_done`` batches this rank already trained on."""
        self.set_epoch(epoch)
        self.dataset.skip_batches(batches_done, batch_size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for item in self.dataset:
            item = dict(item)
            if self.text_transform is not None:
                rng = random.Random(sample_seed(self.seed, self.epoch, item["image_id"]))
                item["text"] = self.text_transform(item["text"], rng)
            if self.features is not None:
                item["image_features"] = self.features.get(item["image_id"])
            if self.image_transform is not None and "image" in item:
                rng = random.Random(image_seed(self.seed, self.epoch, item["image_id"]))
                item["image"] = self.image_transform(item["image"], rng)
            yield item


class ReportCollator:
    """Stacks images and labels, tokenizes texts with dynamic padding, groups samples by study."""

    def __init__(self, tokenize: Tokenize, max_text_tokens: int | None = None) -> None:
        self.tokenize = tokenize
        self.max_text_tokens = max_text_tokens

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not items:
            raise ValueError("cannot collate an empty batch")
        cached = "image_features" in items[0]  # a locked backbone's cached features instead of images
        image_key = "image_features" if cached else "image"
        shapes = {tuple(item[image_key].shape) for item in items}
        if len(shapes) > 1:
            raise ValueError(
                f"images in one batch have different shapes {sorted(shapes)}: set data.image_size "
                "(or build the cache with one size)"
            )
        texts = [str(item["text"] or "") for item in items]
        tokens = self.tokenize(texts, max_length=self.max_text_tokens)
        # images of one study share a group (positives for the multi_positive loss); the ids are
        # hashes of the study id, so they agree across ranks when the loss gathers the batch
        keys = [str(item.get("study_id") or f"image:{item['image_id']}") for item in items]
        return {
            "image_features" if cached else "images":
                torch.stack([torch.as_tensor(item[image_key], dtype=torch.float32) for item in items]),
            "input_ids": tokens["input_ids"],
            "attention_mask": tokens["attention_mask"],
            "labels": torch.stack([torch.as_tensor(item["labels"], dtype=torch.float32) for item in items]),
            "group_ids": group_ids_from_keys(keys),
        }


class MedClipDataModule(L.LightningDataModule):
    """Training and validation batches from a manifest (map-style) or a WebDataset cache (iterable).

    The data position (epoch, samples consumed) is saved in Lightning checkpoints through
    :meth:`state_dict` and restored by :meth:`load_state_dict`, so a resumed run continues with the
    next unseen batch instead of restarting the epoch.
    """

    def __init__(
        self,
        data: Mapping[str, Any],
        tokenize: Tokenize,
        *,
        seed: int = 0,
        text_transform: TextTransform | None | str = "default",
        feature_extractor: BackboneFeatures | None = None,
        feature_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.cfg = dict(data)
        #: with a fully locked image backbone: features computed once (see medclip.train.features)
        self.feature_extractor = feature_extractor
        self.feature_dir = Path(feature_dir) if feature_dir is not None else None
        self.features: FeatureStore | None = None
        self.features_computed = 0  # images encoded by the backbone in setup (0 when the cache was complete)
        self.seed = seed
        self.collate = ReportCollator(tokenize, self.cfg.get("max_text_tokens"))
        if text_transform == "default":
            text_transform = default_text_transform(seed) if self.cfg.get("text_augmentation", True) else None
        self.text_transform: TextTransform | None = text_transform  # type: ignore[assignment]
        from medclip.data.transforms import image_augmentation_from_config

        #: training-only image augmentation (data.image_augmentation), seeded per (seed, epoch, sample)
        self.image_transform: ImageTransform | None = image_augmentation_from_config(self.cfg.get("image_augmentation"))
        self._train_source: Any = None
        self._val_source: Any = None
        self._train_wrapper: AugmentedDataset | AugmentedIterable | None = None
        self._resume: dict[str, int] | None = None

    # ------------------------------------------------------------------ datasets
    @property
    def source(self) -> str:
        """The cache folder or manifest file the batches come from."""
        return str(self.cfg["cache_dir"] if self.is_iterable else self.cfg["manifest"])

    def _make_dataset(self, split: str, *, train: bool, with_images: bool = True, whole: bool = False) -> Any:
        """The dataset of ``split``; ``whole``: every sample on this process, in order (feature extraction)."""
        from medclip.data.dataset import CacheDataset, ManifestDataset

        kwargs = dict(self.cfg.get("dataset_kwargs") or {})
        kwargs["with_images"] = with_images
        if self.cfg.get("text_field"):
            kwargs.setdefault("text_field", self.cfg["text_field"])
        if not self.is_iterable:
            kwargs.setdefault("image_size", self.cfg.get("image_size", 224))
            kwargs.setdefault("require_text", True)  # an image without a report teaches nothing here
            return ManifestDataset(self.cfg["manifest"], split=split, **kwargs)
        # the cache was resized when it was built; ranks are passed explicitly (workers have no process group)
        from medclip.data.cache import read_cache_index

        built = read_cache_index(self.cfg["cache_dir"]).get("config", {}).get("image_size")
        wanted = self.cfg.get("image_size")
        if train and built and wanted and built != wanted:
            log.warning("%s holds %s px images, data.image_size is %s: the cache's size is used",
                        self.cfg["cache_dir"], built, wanted)
        rank, world = (0, 1) if whole else self._rank_and_world()
        kwargs.setdefault("seed", self.seed)
        kwargs.setdefault("shuffle", bool(self.cfg.get("shuffle", True)) and train and not whole)
        return CacheDataset(self.cfg["cache_dir"], split=split, rank=rank, world_size=world, **kwargs)

    @property
    def is_iterable(self) -> bool:
        """Whether batches stream from the cache (preferred when both a cache and a manifest are set)."""
        return bool(self.cfg.get("cache_dir"))

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    # ------------------------------------------------------------------ feature cache
    def feature_preprocessing(self) -> dict[str, Any]:
        """What, besides the model, determines an image's cached features."""
        kwargs = dict(self.cfg.get("dataset_kwargs") or {})
        prep: dict[str, Any] = {"source": source_identity(self.source), "window": kwargs.get("window", "auto")}
        if self.is_iterable:
            from medclip.data.cache import read_cache_index

            prep["cache_config"] = read_cache_index(self.cfg["cache_dir"]).get("config", {})
        else:
            prep["image_size"] = self.cfg.get("image_size", 224)
        return prep

    def _prepare_features(self, splits: list[str]) -> None:
        """Encode every image of ``splits`` that the feature cache lacks (once; later runs reuse the file)."""
        assert self.feature_extractor is not None and self.feature_dir is not None
        if self.trainer is not None and self.feature_extractor.device is None:
            self.feature_extractor.device = self.trainer.strategy.root_device
        if self.features is None:
            key = cache_key(self.feature_extractor.fingerprint, self.feature_preprocessing())
            self.features = FeatureStore(self.feature_dir / f"{key}.safetensors")
        for split in splits:
            try:
                whole = self._make_dataset(split, train=False, whole=True)
            except (ValueError, FileNotFoundError, KeyError):
                continue  # a missing split is reported where it is used
            self.features_computed += fill_store(
                self.features, whole, self.feature_extractor, batch_size=int(self.cfg["batch_size"]),
                num_workers=int(self.cfg.get("num_workers", 0)), seed=self.seed,
            )
        log.info("feature cache %s: %d images (%d encoded now)", self.features.path.name, len(self.features),
                 self.features_computed)

    def setup(self, stage: str | None = None) -> None:
        use_features = self.feature_extractor is not None
        if use_features and self.features is None:
            splits = [s for s in (self.cfg.get("train_split") or "train", self.cfg.get("val_split")) if s]
            self._prepare_features(splits)
        if stage in (None, "fit") and self._train_source is None:
            self._train_source = self._make_dataset(self.cfg.get("train_split") or "train", train=True,
                                                    with_images=not use_features)
            if not self.is_iterable and len(self._train_source) == 0:
                raise ValueError(f"{self.source}: no rows in split {self.cfg.get('train_split')!r}")
        if stage in (None, "fit", "validate") and self._val_source is None and self.cfg.get("val_split"):
            try:
                val = self._make_dataset(self.cfg["val_split"], train=False, with_images=not use_features)
            except (ValueError, FileNotFoundError, KeyError) as exc:
                log.warning("no validation: split %r unavailable (%s)", self.cfg["val_split"], exc)
                val = None
            if val is not None and not self.is_iterable and len(val) == 0:
                log.warning("no validation: split %r is empty", self.cfg["val_split"])
                val = None
            self._val_source = val

    # ------------------------------------------------------------------ loaders
    def _loader_kwargs(self, iterable: bool) -> dict[str, Any]:
        workers = int(self.cfg.get("num_workers", 0))
        if workers > 0:
            # workers tokenize in forked processes: the Rust tokenizer's own thread pool must stay off
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        persistent = bool(self.cfg.get("persistent_workers")) and workers > 0
        if persistent and iterable:
            log.warning("persistent_workers is ignored for the cache: workers must see each new epoch")
            persistent = False
        return {
            "num_workers": workers,
            "collate_fn": self.collate,
            "pin_memory": bool(self.cfg.get("pin_memory")) and torch.cuda.is_available(),
            "persistent_workers": persistent,
            # a private generator: creating an iterator must not consume the global RNG (resume equality)
            "generator": torch.Generator().manual_seed(self.seed),
        }

    def train_dataloader(self) -> DataLoader:
        if self._train_source is None:
            self.setup("fit")
        batch_size = int(self.cfg["batch_size"])
        rank, world = self._rank_and_world()
        resume = self._resume or {}
        if self.is_iterable:
            wrapper = AugmentedIterable(self._train_source, text_transform=self.text_transform, seed=self.seed,
                                        features=self.features, image_transform=self.image_transform)
            if resume:
                wrapper.resume_from(resume["epoch"], resume["batches_done"], batch_size)
            self._train_wrapper = wrapper
            return DataLoader(
                wrapper, batch_size=batch_size, drop_last=bool(self.cfg.get("drop_last", True)),
                **self._loader_kwargs(iterable=True),
            )
        sampler = ResumableSampler(
            len(self._train_source), shuffle=bool(self.cfg.get("shuffle", True)), seed=self.seed,
            rank=rank, world_size=world,
        )
        if resume:
            sampler.resume_from(resume["epoch"], resume["samples_consumed"])
            sampler.set_epoch(resume["epoch"])
        if sampler.per_rank < batch_size and self.cfg.get("drop_last", True):
            raise ValueError(
                f"{self.source}: split {self.cfg.get('train_split')!r} has {len(self._train_source)} "
                f"samples, fewer than data.batch_size={batch_size} per rank x {world} ranks; "
                "lower the batch size or set data.drop_last=false"
            )
        self._train_wrapper = AugmentedDataset(self._train_source, self.text_transform, self.seed, self.features,
                                               self.image_transform)
        return DataLoader(
            self._train_wrapper, batch_size=batch_size, sampler=sampler,
            drop_last=bool(self.cfg.get("drop_last", True)), **self._loader_kwargs(iterable=False),
        )

    def val_dataloader(self) -> DataLoader | list:
        if self._val_source is None:
            self.setup("validate")
        if self._val_source is None:
            return []
        batch_size = int(self.cfg.get("val_batch_size") or self.cfg["batch_size"])
        kwargs = self._loader_kwargs(iterable=self.is_iterable)
        if self.is_iterable:
            val: Any = self._val_source
            if self.features is not None:
                val = AugmentedIterable(val, text_transform=None, seed=self.seed, features=self.features)
            return DataLoader(val, batch_size=batch_size, **kwargs)
        rank, world = self._rank_and_world()
        sampler = ResumableSampler(len(self._val_source), shuffle=False, rank=rank, world_size=world)
        return DataLoader(AugmentedDataset(self._val_source, None, self.seed, self.features), batch_size=batch_size,
                          sampler=sampler, **kwargs)

    # ------------------------------------------------------------------ epochs and resume
    def set_epoch(self, epoch: int) -> None:
        """Tell the iterable cache stream which epoch starts (the sampler gets it from Lightning)."""
        if isinstance(self._train_wrapper, AugmentedIterable) and self._train_wrapper.epoch != epoch:
            self._train_wrapper.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        """The data position: epoch and batches done on each rank (saved in every Lightning checkpoint)."""
        trainer = self.trainer
        if trainer is None:
            return {}
        batches_done = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        _, world = self._rank_and_world()
        return {
            "epoch": trainer.current_epoch,
            "batches_done": int(batches_done),
            "batch_size": int(self.cfg["batch_size"]),
            "world_size": world,
            "samples_consumed": int(batches_done) * int(self.cfg["batch_size"]) * world,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the data position saved by :meth:`state_dict` (before the train loader is built)."""
        if not state_dict:
            return
        self._resume = {k: int(state_dict[k]) for k in ("epoch", "batches_done", "samples_consumed")}
        _, world = self._rank_and_world()
        if self.is_iterable and state_dict.get("world_size", world) != world:
            log.warning(
                "resuming a cache stream saved on %s ranks on %s ranks: the mid-epoch position is approximate",
                state_dict.get("world_size"), world,
            )


def resolve_path(value: str | Path | None) -> str | None:
    """A config path as an absolute string (relative paths are taken from the working directory)."""
    return None if value in (None, "") else str(Path(value).expanduser().resolve())
