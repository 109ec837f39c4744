"""Mixed sources with sampling weights, label-to-text, concept-balanced sampling; resume stays exact."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from test_train_fit import CRASH_AFTER, _config, _weights, one_torch_thread  # noqa: F401 (fixtures)

from medclip.data.manifest import write_manifest
from medclip.knowledge import Graph, ReportLabeler
from medclip.train import DEFAULTS, MedClipDataModule, fit
from medclip.train.sampler import WeightedResumableSampler, concept_balance_weights, concept_shares, sample_concepts
from medclip.train.text import TextPolicy

FINDINGS = ["pleural_effusion", "cardiomegaly", "pneumothorax", "consolidation"]


def make_manifest(root: Path, name: str, rows: list[tuple[str | None, str | None]], *, split_every: int = 5) -> Path:
    """A manifest of 16 px PNGs; each row is (positive finding or None = normal, report or None = label only).
    Every ``split_every``-th row is validation; all findings are labelled (1 / 0)."""
    folder = root / name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(len(rows))
    records = []
    for k, (finding, report) in enumerate(rows):
        path = folder / f"img{k:03d}.png"
        Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(path)
        record = {
            "image_id": f"{name}-{k:03d}",
            "path": str(path),
            "kind": "image",
            "files": None,
            "patient_id": f"{name}-p{k:03d}",
            "study_id": f"{name}-s{k:03d}",
            "series_id": f"{name}-s{k:03d}",
            "modality": "CR",
            "report_findings": report,
            "report_impression": None,
            "report_text": report,
            "split": "val" if k % split_every == split_every - 1 else "train",
        }
        for f in FINDINGS:
            record[f"label.{f}"] = 1.0 if f == finding else 0.0
        records.append(record)
    df = pd.DataFrame(records)
    for f in FINDINGS:
        df[f"label.{f}"] = df[f"label.{f}"].astype("float32")
    return write_manifest(df, folder / "manifest.parquet", root=folder)


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sources")
    reports = make_manifest(
        root, "rep", [(FINDINGS[k % 4], f"There is {FINDINGS[k % 4].replace('_', ' ')}.") for k in range(20)]
    )
    # label-only: a normal-heavy table without any report text
    labels = make_manifest(root, "lab", [(None if k % 3 else "pneumothorax", None) for k in range(30)])
    return reports, labels


def _module(data: dict, seed: int = 0) -> MedClipDataModule:
    from medclip.model import create_model

    model = create_model("tiny-test", vision={"image_size": 16})
    cfg = {
        **copy.deepcopy(DEFAULTS["data"]),
        "image_size": 16,
        "batch_size": 4,
        "num_workers": 0,
        "text_augmentation": False,
        **data,
    }
    dm = MedClipDataModule(cfg, model.tokenize, seed=seed)
    dm.setup("fit")
    return dm


def test_sampled_proportions_follow_source_weights(two_sources) -> None:
    reports, labels = two_sources
    dm = _module(
        {
            "sources": [
                {"manifest": str(reports), "weight": 3, "name": "rep"},
                {"manifest": str(labels), "weight": 1, "name": "lab", "text": "labels"},
            ]
        }
    )
    loader = dm.train_dataloader()
    sampler = loader.sampler
    assert isinstance(sampler, WeightedResumableSampler) and len(sampler) == 16 + 24
    counts = [0, 0]
    for epoch in range(150):
        sampler.set_epoch(epoch)
        for index, _ in sampler:
            counts[dm._train_source.locate(index)[0]] += 1
    share = counts[0] / sum(counts)
    assert abs(share - 0.75) < 0.02, share
    # items say where they come from; the label-only source's texts are written from labels
    item = loader.dataset[(16 + 1, 0)]
    assert item["source"] == 1 and item["text"] and item["labels"].shape == (4,)
    batch = next(iter(loader))
    assert batch["images"].shape == (4, 1, 16, 16) and batch["labels"].shape == (4, 4)


def test_label_only_rows_get_text_that_names_positives_and_negates_negatives() -> None:
    names = ["pleural_effusion", "cardiomegaly", "pneumothorax", "unicorn_sign"]
    policy = TextPolicy(names, label_text=True)
    labeler = ReportLabeler(Graph.load())
    for seed in range(40):
        item = {"text": "", "labels": torch.tensor([1.0, 0.0, 0.0, 1.0])}
        text = policy(item, random.Random(seed))
        assert text, seed
        found = labeler.label(text)
        assert found["pleural_effusion"].status == "positive", (seed, text)
        assert found["cardiomegaly"].status == "negative", (seed, text)
        assert found["pneumothorax"].status == "negative", (seed, text)
        assert "unicorn sign" in text.lower()  # a label outside the graph is written under its own name
    normal = policy({"text": "", "labels": torch.tensor([0.0, 0.0, 0.0, float("nan")])}, random.Random(1))
    assert labeler.label(normal)["pneumothorax"].status == "negative"
    assert policy({"text": "", "labels": torch.full((4,), float("nan"))}, random.Random(0)) == ""  # nothing known
    texts = {policy({"text": "", "labels": torch.tensor([1.0, 0, 0, 0])}, random.Random(s)) for s in range(30)}
    assert len(texts) > 10  # varied sentences, not one template


def test_mix_prob_and_text_modes() -> None:
    policy = TextPolicy(["cardiomegaly"], label_text=True, mix_prob=0.0)
    item = {"text": "The heart is enlarged.", "labels": torch.tensor([1.0])}
    assert policy(item, random.Random(0)) == "The heart is enlarged."
    assert policy({**item, "mix_prob": 1.0}, random.Random(0)) != item["text"]
    assert policy({**item, "text_mode": "labels"}, random.Random(0)) != item["text"]
    assert policy({**item, "text_mode": "report", "mix_prob": 1.0}, random.Random(0)) == item["text"]
    swapped = sum(policy({**item, "mix_prob": 0.3}, random.Random(s)) != item["text"] for s in range(400))
    assert 80 < swapped < 160
    assert policy({**item, "mix_prob": 1.0}, random.Random(0), train=False) == item["text"]  # validation: the report
    off = TextPolicy(["cardiomegaly"], label_text=False)
    assert off({"text": "", "labels": torch.tensor([1.0])}, random.Random(0)) == ""


def test_label_only_rows_join_training_with_label_text(two_sources) -> None:
    _, labels = two_sources
    dm = _module({"manifest": str(labels)})
    assert len(dm._train_source) == 24  # rows without a report are kept: their labels give them text
    texts = [dm.train_dataloader().dataset[(k, 0)]["text"] for k in range(24)]
    assert all(texts) and any("pneumothorax" in t.lower() for t in texts)
    with pytest.raises(ValueError, match="no rows"):  # label text off: rows without a report are left out
        _module({"manifest": str(labels), "label_text": {"enabled": False, "mix_prob": 0.0}})


def test_concept_balance_caps_every_concept_share() -> None:
    rng = np.random.default_rng(0)
    names = ["pleural_effusion", "cardiomegaly", "pneumothorax", "edema", "atelectasis"]
    probs = [0.6, 0.2, 0.1, 0.05, 0.03, 0.02]  # "no finding" first: a normal-dominated table
    labels = np.zeros((2000, 5))
    for i, k in enumerate(rng.choice(6, size=2000, p=probs)):
        if k:
            labels[i, k - 1] = 1.0
            if rng.random() < 0.2:  # some multi-label studies
                labels[i, rng.integers(5)] = 1.0
    labels[:50] = np.nan  # unlabelled rows have no concept
    concepts = sample_concepts(labels, names)
    before = concept_shares(np.ones(len(concepts)), concepts)
    assert before["no_finding"] > 0.5
    max_share = 0.3
    weights, shares = concept_balance_weights(concepts, max_share)
    assert max(shares.values()) <= max_share + 1e-3
    sampler = WeightedResumableSampler(weights, seed=3)
    drawn: dict[str, int] = {}
    total = 0
    for epoch in range(5):
        sampler.set_epoch(epoch)
        for index, _ in sampler:
            total += 1
            for c in concepts[index]:
                drawn[c] = drawn.get(c, 0) + 1
    for concept, count in drawn.items():
        assert count / total <= max_share + 0.02, (concept, count / total)
    assert drawn["pleural_effusion"] / total > before["pleural_effusion"] * 0.9  # not emptied


def test_concept_balance_in_the_data_module(two_sources) -> None:
    _, labels = two_sources  # 2/3 normal, 1/3 pneumothorax
    dm = _module({"manifest": str(labels), "concept_balance": {"enabled": True, "max_share": 0.5}})
    sampler = dm.train_dataloader().sampler
    concepts = sample_concepts(dm._train_source.labels(), dm._train_source.label_names)
    counts: dict[str, int] = {}
    for epoch in range(100):
        sampler.set_epoch(epoch)
        for index, _ in sampler:
            for c in concepts[index]:
                counts[c] = counts.get(c, 0) + 1
    total = sum(counts.values())
    assert abs(counts["no_finding"] / total - 0.5) < 0.03 and abs(counts["pneumothorax"] / total - 0.5) < 0.03


def test_weighted_sampler_resumes_the_same_draws() -> None:
    weights = np.linspace(1, 5, 23)
    full = [WeightedResumableSampler(weights, seed=5, rank=r, world_size=2) for r in range(2)]
    resumed = [WeightedResumableSampler(weights, seed=5, rank=r, world_size=2) for r in range(2)]
    for f, s in zip(full, resumed):
        f.set_epoch(4)
        s.resume_from(epoch=4, consumed=2 * 3 * 2)
        s.set_epoch(4)
        assert [i for i, _ in s] == [i for i, _ in f][2 * 3 :]
    with pytest.raises(ValueError, match="weights"):
        WeightedResumableSampler([0.0, 0.0])


@pytest.mark.slow
def test_mixed_sources_with_augmentation_resume_to_the_same_weights(two_sources, tmp_path: Path) -> None:
    """Sources + label text + concept balance + image augmentation: killed mid-epoch and resumed, the run ends
    with the uninterrupted run's weights bit for bit."""
    reports, labels = two_sources
    base = _config({}, tmp_path / "full", max_steps=6, val_check_interval=None, check_val_every_n_epoch=1)
    base["data"].pop("manifest", None)
    base["data"].update(
        image_size=16,
        text_augmentation=True,
        sources=[
            {"manifest": str(reports), "weight": 2, "name": "rep"},
            {"manifest": str(labels), "weight": 1, "name": "lab", "text": "mixed", "mix_prob": 0.5},
        ],
        image_augmentation={"enabled": True},
        concept_balance={"enabled": True, "max_share": 0.4},
        label_text={"enabled": True, "mix_prob": 0.2},
    )
    base["model"]["overrides"] = {"vision": {"image_size": 16}}
    base["checkpoint"]["every_n_steps"] = 2
    full = fit(copy.deepcopy(base))
    killed = copy.deepcopy(base)
    killed["output_dir"] = str(tmp_path / "killed")
    killed["trainer"]["callbacks"] = [{"class_path": CRASH_AFTER, "init_args": {"step": 5}}]
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(killed)
    resumed = copy.deepcopy(base)
    resumed["output_dir"] = str(tmp_path / "killed")
    resumed["resume"] = str(tmp_path / "killed" / "checkpoints" / "step-00000004.ckpt")
    a, b = _weights(full), _weights(fit(resumed))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_a_cache_can_be_a_source(two_sources, tmp_path: Path) -> None:
    from medclip.data.cache import CacheConfig, build_cache
    from medclip.data.dataset import CacheDataset, CacheMapDataset

    reports, labels = two_sources
    cache = tmp_path / "cache"
    build_cache(reports, cache, config=CacheConfig(image_size=16, shard_size=6), workers=1, progress=False)
    streamed = {item["image_id"]: item for item in CacheDataset(cache, "train", shuffle=False)}
    mapped = CacheMapDataset(cache, "train")
    assert len(mapped) == len(streamed) == 16
    for k in (0, 7, 15):
        item = mapped[k]
        ref = streamed[item["image_id"]]
        assert torch.equal(item["image"], ref["image"]) and item["text"] == ref["text"]
        torch.testing.assert_close(item["labels"], ref["labels"], equal_nan=True)
    assert "image" not in CacheMapDataset(cache, "train", with_images=False)[3]
    dm = _module(
        {
            "sources": [
                {"cache_dir": str(cache), "weight": 1, "name": "rep"},
                {"manifest": str(labels), "weight": 1, "name": "lab"},
            ]
        }
    )
    assert len(dm._train_source) == 16 + 24
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (4, 1, 16, 16)
