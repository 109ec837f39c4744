"""KAD-style text pre-stage: report <-> knowledge-graph label text; lowers its loss, changes only the text tower."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_train_fit import _config, manifest, one_torch_thread  # noqa: F401 (fixtures)

from medclip.train import fit
from medclip.train.pretrain import corpus_texts, labelled_reports, pair_loss, text_pretrain

REPORTS = [
    "There is a small left pleural effusion.",
    "The heart is enlarged. Cardiomegaly.",
    "Right pneumothorax.",
    "No pneumothorax. No pleural effusion.",
    "Patchy consolidation in the right lower lobe.",
    "Pulmonary edema with cardiomegaly.",
    "Large pleural effusion on the right.",
    "Mild cardiomegaly is present.",
    "Small apical pneumothorax on the left.",
    "Consolidation compatible with pneumonia.",
    "The lungs are clear. No effusion or pneumothorax.",
    "Interstitial edema.",
]


@pytest.fixture
def corpus_csv(tmp_path: Path) -> Path:
    path = tmp_path / "reports.csv"
    pd.DataFrame({"uid": range(len(REPORTS) + 1), "report": REPORTS + ["Visit scheduled for tuesday."]}).to_csv(path)
    return path


def test_corpus_reading_and_labelling(corpus_csv: Path, manifest: Path) -> None:  # noqa: F811
    texts = corpus_texts(corpus_csv)
    assert len(texts) == len(REPORTS) + 1
    corpus = labelled_reports(texts)
    assert len(corpus) == len(REPORTS)  # the report without any known finding is left out
    effusion = dict(corpus)["There is a small left pleural effusion."]
    assert effusion["pleural_effusion"] == 1.0
    from_manifest = corpus_texts(manifest)
    assert len(from_manifest) == 24  # the train split only
    with pytest.raises(ValueError, match="no report text column"):
        bad = corpus_csv.parent / "bad.csv"
        pd.DataFrame({"x": [1]}).to_csv(bad)
        corpus_texts(bad)


def test_pre_stage_lowers_its_loss_and_changes_only_the_text_tower(corpus_csv: Path) -> None:
    from medclip.knowledge import Graph, ReportAugmenter
    from medclip.model import create_model

    torch.manual_seed(0)
    model = create_model("tiny-test", vision={"image_size": 16})
    corpus = labelled_reports(corpus_texts(corpus_csv))
    augmenter = ReportAugmenter(Graph.load())
    import random

    fixed = [
        (r, augmenter.labels_to_text(labels, random.Random(k), unknown="name")) for k, (r, labels) in enumerate(corpus)
    ]

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(pair_loss(model, [r for r, _ in fixed], [t for _, t in fixed], 1 / 0.07))

    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    before = eval_loss()
    model.train()
    losses = text_pretrain(model, corpus, steps=40, lr=2e-3, batch_size=8, seed=0, augmenter=augmenter)
    after = eval_loss()
    assert len(losses) == 40 and after < before * 0.8, (before, after)
    for name, value in model.state_dict().items():
        changed = not torch.equal(value, before_state[name])
        if name.startswith("text."):
            continue
        assert not changed, f"{name} is outside the text tower and changed"
    assert any(
        not torch.equal(v, before_state[k]) for k, v in model.state_dict().items() if k.startswith("text.encoder")
    )
    assert any(not torch.equal(v, before_state[k]) for k, v in model.state_dict().items() if k.startswith("text.proj"))


def test_fit_runs_the_pre_stage_first(manifest: Path, corpus_csv: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = _config({"manifest": str(manifest)}, tmp_path / "run", max_steps=1, val_check_interval=None)
    cfg["text_pretrain"] = {"enabled": True, "corpora": [str(corpus_csv)], "steps": 3, "lr": 1e-3, "batch_size": 4}
    fit(copy.deepcopy(cfg))
    summary = json.loads((tmp_path / "run" / "text_pretrain.json").read_text())
    assert summary["steps"] == 3 and summary["labelled_reports"] == len(REPORTS)
    assert str(corpus_csv) not in json.dumps(summary)  # counts only, no paths
    # with no corpora the training manifest's (train split) reports are used
    cfg["text_pretrain"]["corpora"] = []
    cfg["output_dir"] = str(tmp_path / "run2")
    fit(copy.deepcopy(cfg))
    assert json.loads((tmp_path / "run2" / "text_pretrain.json").read_text())["reports"] == 24
