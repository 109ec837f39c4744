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

import bisect
import logging
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from medclip.model.losses import group_ids_from_keys
from medclip.seeding import sample_seed
from medclip.train.features import BackboneFeatures, FeatureStore, cache_key, fill_store, source_identity
from medclip.train.sampler import (
    ResumableSampler,
    WeightedResumableSampler,
    concept_balance_weights,
    sample_concepts,
)
from medclip.train.text import TextPolicy, TextTransform

log = logging.getLogger(__name__)

#: ``image_transform(image, rng) -> image``: an image augmentation (``medclip.data.transforms``).
ImageTransform = Callable[[torch.Tensor, random.Random], torch.Tensor]
#: ``tokenize(texts, max_length) -> mapping with input_ids and attention_mask`` (``DualEncoder.tokenize``).
Tokenize = Callable[..., Mapping[str, torch.Tensor]]


def image_seed(seed: int, epoch: int, key: int | str) -> int:
    """The seed of one sample's image augmentation (a stream apart from its text augmentation)."""
    return sample_seed(seed, epoch, f"image:{key}")


def sub_captions(text: str, rng: random.Random, max_captions: int) -> list[str]:
    """The report's sentences as separate captions (DreamLIP), at most ``max_captions`` of them (a seeded sample,
    report order kept); a text without sentence breaks is its own single caption."""
    from medclip.data.reports import split_sentences

    sentences = split_sentences(text) or ([text] if text.strip() else [""])
    if len(sentences) > max_captions:
        keep = sorted(rng.sample(range(len(sentences)), max_captions))
        sentences = [sentences[k] for k in keep]
    return sentences


def default_text_transform(seed: int = 0) -> TextTransform | None:
    """The knowledge-graph report augmenter, or ``None`` (with a warning) when it cannot be built."""
    try:
        from medclip.knowledge import Graph, ReportAugmenter
    except ImportError as exc:
        log.warning("text augmentation disabled: medclip.knowledge is not available (%s)", exc)
        return None
    return ReportAugmenter(Graph.load(), seed=seed)


class _SampleRewriter:
    """What both training wrappers do to one sample of an epoch: text chosen / augmented and sub-captions
    with one seeded rng, cached backbone features attached, the image augmented with another rng."""

    text_transform: TextTransform | None
    seed: int
    features: FeatureStore | None
    image_transform: ImageTransform | None
    text_policy: TextPolicy | None
    train: bool
    max_captions: int

    def _configure(
        self,
        text_transform: TextTransform | None,
        seed: int,
        features: FeatureStore | None,
        image_transform: ImageTransform | None,
        text_policy: TextPolicy | None,
        train: bool,
        max_captions: int,
    ) -> None:
        self.text_transform = text_transform
        self.seed = seed
        self.features = features
        self.image_transform = image_transform
        self.text_policy = text_policy  # when set, it chooses the text (report or label text) and augments it
        self.train = train
        self.max_captions = max_captions  # > 0: sub-caption training, each sentence its own positive

    def _rewrite(self, item: dict[str, Any], epoch: int, key: int | str) -> dict[str, Any]:
        rng = random.Random(sample_seed(self.seed, epoch, key))
        if self.text_policy is not None:
            item["text"] = self.text_policy(item, rng, self.train)
        elif self.text_transform is not None:
            item["text"] = self.text_transform(item["text"], rng)
        if self.max_captions:
            item["captions"] = sub_captions(item["text"], rng, self.max_captions)
        if self.features is not None:
            item["image_features"] = self.features.get(item["image_id"])
        if self.image_transform is not None and "image" in item:
            item["image"] = self.image_transform(item["image"], random.Random(image_seed(self.seed, epoch, key)))
        return item


class AugmentedDataset(_SampleRewriter, Dataset):
    """A map-style dataset whose report texts are rewritten by ``text_transform``, keyed by ``(index, epoch)``."""

    def __init__(
        self,
        dataset: Dataset,
        text_transform: TextTransform | None,
        seed: int,
        features: FeatureStore | None = None,
        image_transform: ImageTransform | None = None,
        text_policy: TextPolicy | None = None,
        train: bool = True,
        max_captions: int = 0,
    ) -> None:
        self.dataset = dataset
        self._configure(text_transform, seed, features, image_transform, text_policy, train, max_captions)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        return self._rewrite(dict(self.dataset[index]), epoch, index)


class AugmentedIterable(_SampleRewriter, IterableDataset):
    """Wraps the cache stream: per-epoch reshuffle, mid-epoch resume, texts rewritten with an rng keyed
    by ``(epoch, image_id)``."""

    def __init__(
        self,
        dataset: Any,
        *,
        text_transform: TextTransform | None,
        seed: int,
        features: FeatureStore | None = None,
        image_transform: ImageTransform | None = None,
        text_policy: TextPolicy | None = None,
        train: bool = True,
        max_captions: int = 0,
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self._configure(text_transform, seed, features, image_transform, text_policy, train, max_captions)
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
            yield self._rewrite(item, self.epoch, item["image_id"])


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
        # images of one study share a group (positives for the multi_positive loss); the ids are
        # hashes of the study id, so they agree across ranks when the loss gathers the batch
        keys = [str(item.get("study_id") or f"image:{item['image_id']}") for item in items]
        extra: dict[str, torch.Tensor] = {}
        if "captions" in items[0]:
            # sub-captions: one text row per sentence, each pointing at its image (caption_index) and
            # sharing its image's group, so the multi_positive loss makes every sentence a positive of it
            rows = [(k, str(c)) for k, item in enumerate(items) for c in item["captions"]]
            texts = [c for _, c in rows]
            extra["caption_index"] = torch.tensor([k for k, _ in rows], dtype=torch.long)
            keys = [keys[k] for k, _ in rows]
        else:
            texts = [str(item["text"] or "") for item in items]
        tokens = self.tokenize(texts, max_length=self.max_text_tokens)
        return {
            **extra,
            "image_features" if cached else "images": torch.stack(
                [torch.as_tensor(item[image_key], dtype=torch.float32) for item in items]
            ),
            "input_ids": tokens["input_ids"],
            "attention_mask": tokens["attention_mask"],
            "labels": torch.stack([torch.as_tensor(item["labels"], dtype=torch.float32) for item in items]),
            "group_ids": group_ids_from_keys(keys),
            # the batch's (salted) image ids, never paths: named when a step's loss is NaN/Inf
            "image_ids": [str(item["image_id"]) for item in items],
        }


def label_matrix(dataset: Any) -> np.ndarray:
    """(N, n_labels) label values of a map-style manifest or cache dataset, read without decoding images."""
    names = list(getattr(dataset, "label_names", []))
    if hasattr(dataset, "frame"):  # ManifestDataset
        from medclip.data.manifest import LABEL_PREFIX

        columns = [LABEL_PREFIX + n for n in names]
        return dataset.frame[columns].to_numpy(dtype=np.float64) if columns else np.zeros((len(dataset), 0))
    rows = []
    for k in range(len(dataset)):
        labels = dataset.meta(k).get("labels", {})
        rows.append([np.nan if labels.get(n) is None else float(labels[n]) for n in names])
    return np.asarray(rows, dtype=np.float64).reshape(len(dataset), len(names))


class SourceDataset(Dataset):
    """Several map-style datasets (``data.sources``) as one: label vectors on the union of their label names
    (NaN where a source has no such label); each item says its source, text mode and mix probability."""

    def __init__(self, datasets: Sequence[Any], specs: Sequence[Mapping[str, Any]]) -> None:
        self.datasets = list(datasets)
        self.specs = [dict(s) for s in specs]
        names: list[str] = []
        for ds in self.datasets:
            names += [n for n in getattr(ds, "label_names", []) if n not in names]
        self.label_names = names
        self._columns = [[names.index(n) for n in getattr(ds, "label_names", [])] for ds in self.datasets]
        self.offsets = np.cumsum([0] + [len(ds) for ds in self.datasets]).tolist()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """``(source, index within the source)`` of a global index."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        source = bisect.bisect_right(self.offsets, index) - 1
        return source, index - self.offsets[source]

    def __getitem__(self, index: int) -> dict[str, Any]:
        source, local = self.locate(int(index))
        item = dict(self.datasets[source][local])
        labels = torch.full((len(self.label_names),), float("nan"))
        if self._columns[source]:
            labels[self._columns[source]] = torch.as_tensor(item["labels"], dtype=torch.float32)
        item["labels"] = labels
        spec = self.specs[source]
        item.update(source=source, text_mode=spec["text"], mix_prob=spec["mix_prob"])
        return item

    def image_ids(self) -> list[str]:
        """Image ids of every item, in order."""
        return [i for ds in self.datasets for i in ds.image_ids()]

    def labels(self) -> np.ndarray:
        """(N, n_labels) on the union of label names (NaN = unknown)."""
        full = np.full((len(self), len(self.label_names)), np.nan)
        for s, ds in enumerate(self.datasets):
            if self._columns[s]:
                full[self.offsets[s] : self.offsets[s + 1], self._columns[s]] = label_matrix(ds)
        return full

    def sampling_weights(self, concept_balance: Mapping[str, Any] | None = None) -> np.ndarray:
        """Per-item draw weights: each source gets its ``weight`` share of the stream; within a source, items
        are equally likely or, with concept balance on, weighted so no concept exceeds ``max_share``."""
        total_weight = sum(float(spec["weight"]) for spec, ds in zip(self.specs, self.datasets) if len(ds))
        weights = np.zeros(len(self))
        labels = self.labels() if concept_balance and concept_balance.get("enabled") else None
        for s, (spec, ds) in enumerate(zip(self.specs, self.datasets)):
            if not len(ds):
                continue
            part = np.ones(len(ds))
            if labels is not None and concept_balance is not None:
                concepts = sample_concepts(labels[self.offsets[s] : self.offsets[s + 1]], self.label_names)
                cap = float(concept_balance["max_share"])
                part, shares = concept_balance_weights(concepts, cap)
                top = sorted(shares.items(), key=lambda kv: -kv[1])[:5]
                log.info(
                    "concept balance, source %s: largest shares %s",
                    spec["name"],
                    ", ".join(f"{c} {v:.2f}" for c, v in top),
                )
                over = {c: v for c, v in shares.items() if v > cap + 1e-3}
                if over:
                    log.warning(
                        "concept balance, source %s: max_share %.2f cannot be met for %s (too few concepts "
                        "or one in every sample); they are reduced as far as possible",
                        spec["name"],
                        cap,
                        ", ".join(sorted(over)),
                    )
            weights[self.offsets[s] : self.offsets[s + 1]] = float(spec["weight"]) / total_weight * part / part.sum()
        return weights


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
        max_captions: int = 0,
    ) -> None:
        super().__init__()
        self.cfg = dict(data)
        #: > 0: sub-caption training (loss.sub_captions), at most this many sentences per image
        self.max_captions = int(max_captions)
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
        self.text_policy: TextPolicy | None = None

    # ------------------------------------------------------------------ datasets
    @property
    def source(self) -> str:
        """The cache folder(s) or manifest file(s) the batches come from."""
        if self.is_mixture:
            return ", ".join(str(spec["cache_dir"] or spec["manifest"]) for spec in self.source_specs())
        return str(self.cfg["cache_dir"] if self.is_iterable else self.cfg["manifest"])

    @property
    def label_text_enabled(self) -> bool:
        """Whether rows get knowledge-graph text from their labels (data.label_text.enabled)."""
        return bool((self.cfg.get("label_text") or {}).get("enabled", False))

    def source_specs(self) -> list[dict[str, Any]]:
        """The data sources: ``data.sources`` with defaults filled in, or the single manifest / cache."""
        mix = float((self.cfg.get("label_text") or {}).get("mix_prob", 0.0))
        if not self.cfg.get("sources"):
            return [
                {
                    "name": "data",
                    "manifest": self.cfg.get("manifest"),
                    "cache_dir": self.cfg.get("cache_dir"),
                    "weight": 1.0,
                    "text": "mixed",
                    "mix_prob": mix,
                }
            ]
        return [
            {
                "name": str(spec.get("name") or f"source{i}"),
                "manifest": spec.get("manifest"),
                "cache_dir": spec.get("cache_dir"),
                "weight": float(spec.get("weight", 1.0)),
                "text": spec.get("text", "report"),
                "mix_prob": float(spec.get("mix_prob", mix)),
            }
            for i, spec in enumerate(self.cfg["sources"])
        ]

    @property
    def is_mixture(self) -> bool:
        """Whether items are drawn with weights from map-style sources (data.sources or concept balance)."""
        return bool(self.cfg.get("sources")) or bool((self.cfg.get("concept_balance") or {}).get("enabled"))

    def _map_dataset(self, spec: Mapping[str, Any], split: str, kwargs: Mapping[str, Any]) -> Any:
        from medclip.data.dataset import CacheMapDataset, ManifestDataset

        kwargs = dict(kwargs)
        if spec.get("cache_dir"):
            return CacheMapDataset(spec["cache_dir"], split=split, max_bad_samples=self.max_bad_samples, **kwargs)
        kwargs.setdefault("image_size", self.cfg.get("image_size", 224))
        # an image without any text teaches nothing; with label text, labels are enough
        kwargs.setdefault("require_text", "text_or_labels" if self.label_text_enabled else True)
        return ManifestDataset(spec["manifest"], split=split, **kwargs)

    def _make_dataset(self, split: str, *, train: bool, with_images: bool = True, whole: bool = False) -> Any:
        """The dataset of ``split``; ``whole``: every sample on this process, in order (feature extraction)."""
        from medclip.data.dataset import CacheDataset

        kwargs = dict(self.cfg.get("dataset_kwargs") or {})
        kwargs["with_images"] = with_images
        if self.cfg.get("text_field"):
            kwargs.setdefault("text_field", self.cfg["text_field"])
        if self.is_mixture:
            datasets, specs = [], []
            for spec in self.source_specs():
                try:
                    dataset = self._map_dataset(
                        spec, split, {k: v for k, v in kwargs.items() if k not in ("seed", "shuffle", "buffer_size")}
                    )
                except ValueError as exc:  # a source without this split
                    log.info("source %s: no %s split (%s)", spec["name"], split, exc)
                    continue
                datasets.append(dataset)
                specs.append(spec)
            if not datasets:
                raise ValueError(f"{self.source}: no source has rows in split {split!r}")
            return SourceDataset(datasets, specs)
        if not self.is_iterable:
            return self._map_dataset(self.source_specs()[0], split, kwargs)
        # the cache was resized when it was built; ranks are passed explicitly (workers have no process group)
        from medclip.data.cache import read_cache_index

        built = read_cache_index(self.cfg["cache_dir"]).get("config", {}).get("image_size")
        wanted = self.cfg.get("image_size")
        if train and built and wanted and built != wanted:
            log.warning(
                "%s holds %s px images, data.image_size is %s: the cache's size is used (and saved with "
                "the model as what it sees, so eval and the demo use it too)",
                self.cfg["cache_dir"],
                built,
                wanted,
            )
        rank, world = (0, 1) if whole else self._rank_and_world()
        kwargs.setdefault("seed", self.seed)
        kwargs.setdefault("shuffle", bool(self.cfg.get("shuffle", True)) and train and not whole)
        kwargs["max_bad_samples"] = self.max_bad_samples
        return CacheDataset(self.cfg["cache_dir"], split=split, rank=rank, world_size=world, **kwargs)

    @property
    def max_bad_samples(self) -> int:
        """Bad cache samples one reader skips in an epoch before the run stops (``data.max_bad_samples``)."""
        from medclip.data.dataset import DEFAULT_MAX_BAD_SAMPLES

        value = self.cfg.get("max_bad_samples")
        return DEFAULT_MAX_BAD_SAMPLES if value is None else int(value)

    @property
    def is_iterable(self) -> bool:
        """Whether batches stream from the cache (preferred when both a cache and a manifest are set)."""
        return bool(self.cfg.get("cache_dir")) and not self.is_mixture

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    # ------------------------------------------------------------------ feature cache
    def feature_preprocessing(self) -> dict[str, Any]:
        """What, besides the model, determines an image's cached features."""
        from medclip.data.cache import read_cache_index

        kwargs = dict(self.cfg.get("dataset_kwargs") or {})
        sources = []
        for spec in self.source_specs():
            if spec.get("cache_dir"):
                sources.append(
                    {
                        "cache": source_identity(spec["cache_dir"]),
                        "cache_config": read_cache_index(spec["cache_dir"]).get("config", {}),
                    }
                )
            else:
                sources.append(
                    {"manifest": source_identity(spec["manifest"]), "image_size": self.cfg.get("image_size", 224)}
                )
        return {"sources": sources, "window": kwargs.get("window", "auto")}

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
                self.features,
                whole,
                self.feature_extractor,
                batch_size=int(self.cfg["batch_size"]),
                num_workers=int(self.cfg.get("num_workers", 0)),
                seed=self.seed,
                desc=f"locked image tower features, split {split}",
                progress=self._is_rank_zero(),
            )
        if self._is_rank_zero():  # beside the training progress lines: what was reused, what was computed
            reused = len(self.features) - self.features_computed
            print(
                f"feature cache {self.features.path}: {len(self.features)} images, {reused} reused from an "
                f"earlier run with the same model and preprocessing, {self.features_computed} computed now",
                flush=True,
            )

    def _is_rank_zero(self) -> bool:
        return self.trainer is None or bool(getattr(self.trainer, "is_global_zero", True))

    def setup(self, stage: str | None = None) -> None:
        use_features = self.feature_extractor is not None
        if use_features and self.features is None:
            splits = [s for s in (self.cfg.get("train_split") or "train", self.cfg.get("val_split")) if s]
            self._prepare_features(splits)
        if stage in (None, "fit") and self._train_source is None:
            self._train_source = self._make_dataset(
                self.cfg.get("train_split") or "train", train=True, with_images=not use_features
            )
            if not self.is_iterable and len(self._train_source) == 0:
                raise ValueError(f"{self.source}: no rows in split {self.cfg.get('train_split')!r}")
            self.text_policy = self._text_policy(self._train_source)
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

    def _val_policy(self) -> TextPolicy | None:
        """Validation texts: the report, or label text (fixed per sample) for rows without one."""
        return self._text_policy(self._val_source) if self.label_text_enabled else None

    def _text_policy(self, dataset: Any) -> TextPolicy:
        """Report text (augmented) or label text per sample, for the label names of ``dataset``."""
        augmenter = self.text_transform if hasattr(self.text_transform, "labels_to_text") else None
        return TextPolicy(
            getattr(dataset, "label_names", []),
            report_transform=self.text_transform,
            label_text=self.label_text_enabled,
            mix_prob=float((self.cfg.get("label_text") or {}).get("mix_prob", 0)),
            augmenter=augmenter,
            exam_prob=float((self.cfg.get("label_text") or {}).get("exam_prob", 0)),
        )

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
            wrapper = AugmentedIterable(
                self._train_source,
                text_transform=self.text_transform,
                seed=self.seed,
                features=self.features,
                image_transform=self.image_transform,
                text_policy=self.text_policy,
                max_captions=self.max_captions,
            )
            if resume:
                wrapper.resume_from(resume["epoch"], resume["batches_done"], batch_size)
            self._train_wrapper = wrapper
            return DataLoader(
                wrapper,
                batch_size=batch_size,
                drop_last=bool(self.cfg.get("drop_last", True)),
                **self._loader_kwargs(iterable=True),
            )
        if self.is_mixture:
            weights = self._train_source.sampling_weights(self.cfg.get("concept_balance"))
            sampler: ResumableSampler = WeightedResumableSampler(weights, seed=self.seed, rank=rank, world_size=world)
        else:
            sampler = ResumableSampler(
                len(self._train_source),
                shuffle=bool(self.cfg.get("shuffle", True)),
                seed=self.seed,
                rank=rank,
                world_size=world,
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
        self._train_wrapper = AugmentedDataset(
            self._train_source,
            self.text_transform,
            self.seed,
            self.features,
            self.image_transform,
            text_policy=self.text_policy,
            max_captions=self.max_captions,
        )
        return DataLoader(
            self._train_wrapper,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=bool(self.cfg.get("drop_last", True)),
            **self._loader_kwargs(iterable=False),
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
            val = AugmentedIterable(
                val,
                text_transform=None,
                seed=self.seed,
                features=self.features,
                text_policy=self._val_policy(),
                train=False,
            )
            return DataLoader(val, batch_size=batch_size, **kwargs)
        rank, world = self._rank_and_world()
        sampler = ResumableSampler(len(self._val_source), shuffle=False, rank=rank, world_size=world)
        return DataLoader(
            AugmentedDataset(
                self._val_source, None, self.seed, self.features, text_policy=self._val_policy(), train=False
            ),
            batch_size=batch_size,
            sampler=sampler,
            **kwargs,
        )

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
                state_dict.get("world_size"),
                world,
            )


def resolve_path(value: str | Path | None) -> str | None:
    """A config path as an absolute string (relative paths are taken from the working directory); an fsspec
    URL (``s3://bucket/cache``) is kept as it is."""
    from medclip.data.storage import is_url

    if value not in (None, "") and is_url(value):
        return str(value)
    return None if value in (None, "") else str(Path(value).expanduser().resolve())
