"""Sub-caption positives (DreamLIP): each report sentence is its own text row, a positive of exactly its image."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest
import torch
from test_train_fit import _config, manifest, one_torch_thread  # noqa: F401 (fixtures)

from medclip.model.losses import build_loss
from medclip.train import DEFAULTS, ConfigError, DualEncoderModule, fit, load_config
from medclip.train.data import AugmentedDataset, ReportCollator, sub_captions

REPORTS = [
    "Heart size is normal. No pleural effusion. Lungs are clear.",
    "Small left pleural effusion.",
    "Cardiomegaly. Mild pulmonary edema. No pneumothorax. Degenerative spine. Old rib fracture. Stable.",
    "Right lower lobe consolidation. Follow-up advised.",
]


@pytest.fixture(scope="module")
def tiny():
    from medclip.model import create_model

    return create_model("tiny-test", vision={"image_size": 16})


def _batch(tiny, max_captions: int = 4) -> tuple[dict, list[dict]]:
    items = [
        {
            "image": torch.rand(1, 16, 16),
            "text": t,
            "labels": torch.zeros(2),
            "image_id": f"i{k}",
            "study_id": f"s{k}",
            "patient_id": f"p{k}",
        }
        for k, t in enumerate(REPORTS)
    ]
    data = AugmentedDataset(items, None, seed=0, max_captions=max_captions)
    drawn = [data[(k, 0)] for k in range(len(items))]
    return ReportCollator(tiny.tokenize)(drawn), drawn


def test_every_sentence_is_a_positive_of_exactly_its_own_image(tiny) -> None:
    batch, drawn = _batch(tiny)
    index = batch["caption_index"]
    assert index.tolist() == [0, 0, 0, 1, 2, 2, 2, 2, 3, 3]  # 3, 1, 4 (of 6, sampled), 2 sentences
    assert batch["input_ids"].shape[0] == len(index) and batch["images"].shape[0] == 4
    assert drawn[2]["captions"] == [c for c in drawn[2]["captions"] if c in REPORTS[2]]  # real sentences, in order
    # image -> sentence positives: each sentence row links to one image, its own
    image_to_sentence = index[None, :] == torch.arange(4)[:, None]
    assert (image_to_sentence.sum(dim=0) == 1).all()
    # the multi_positive loss's targets over (sentence rows x rows): positives = rows of the same image
    targets = build_loss("multi_positive").targets(slice(0, len(index)), len(index), None, batch["group_ids"], "cpu")
    same_image = index[:, None] == index[None, :]
    assert torch.equal(targets > 0, same_image)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(len(index)))


def test_sub_caption_loss_through_the_module(tiny) -> None:
    torch.manual_seed(0)
    module = DualEncoderModule(
        {"name": "tiny-test", "overrides": {"vision": {"image_size": 16}}},
        {"name": "multi_positive"},
        DEFAULTS["optim"],
    )
    batch, _ = _batch(module.model)
    loss, stats = module._loss(batch)
    assert torch.isfinite(loss) and 0 <= float(stats["acc_i2t"]) <= 1
    loss.backward()
    assert module.model.visual.proj.weight.grad is not None


def test_sentences_are_sampled_deterministically() -> None:
    text = REPORTS[2]
    assert sub_captions(text, random.Random(1), 2) == sub_captions(text, random.Random(1), 2)
    assert len(sub_captions(text, random.Random(1), 10)) == 6
    assert sub_captions("no sentence break", random.Random(0), 3) == ["no sentence break"]


def test_sub_captions_need_the_multi_positive_loss(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="loss.sub_captions needs loss.name=multi_positive"):
        load_config({"data": {"manifest": "m.parquet"}, "loss": {"sub_captions": True}})


def test_fit_with_sub_captions(manifest: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = _config({"manifest": str(manifest)}, tmp_path / "run", max_steps=2, val_check_interval=None)
    cfg["loss"] = {"name": "multi_positive", "sub_captions": True, "max_sub_captions": 3}
    model_dir = fit(copy.deepcopy(cfg))
    assert (model_dir / "model.safetensors").is_file()
