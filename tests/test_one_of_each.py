"""Concepts written once (issue 9.5): one deep merge, one TextTransform alias, one rank helper, one seed formula."""

from __future__ import annotations

import random


def test_one_deep_merge_with_opaque_blocks_for_model_overrides() -> None:
    from medclip.model import config as model_config
    from medclip.train import config as train_config

    assert train_config.deep_merge is model_config.deep_merge
    base = {"a": {"x": 1, "y": 2}, "hf_config": {"hidden_size": 8, "num_layers": 2}, "keep": [1]}
    update = {"a": {"y": 3}, "hf_config": {"hidden_size": 16}}
    merged = model_config.deep_merge(base, update)
    assert merged == {"a": {"x": 1, "y": 3}, "hf_config": {"hidden_size": 16, "num_layers": 2}, "keep": [1]}
    # a model override replaces another network's hf_config whole: no key of the old one leaks in
    merged = model_config.deep_merge(base, update, opaque=model_config.OPAQUE_KEYS)
    assert merged["hf_config"] == {"hidden_size": 16} and merged["a"] == {"x": 1, "y": 3}
    assert base["a"] == {"x": 1, "y": 2}, "inputs are not modified"
    merged["keep"].append(2)
    assert base["keep"] == [1], "the result shares nothing with the inputs"


def test_one_text_transform_alias() -> None:
    from medclip.data import dataset
    from medclip.train import data, text

    assert data.TextTransform is text.TextTransform
    assert not hasattr(dataset, "TextTransform")  # the datasets' one-argument hook has its own name
    assert text.TextTransform.__args__ == (str, random.Random, str)


def test_one_rank_helper() -> None:
    from medclip.data import dataset
    from medclip.distributed import distributed_info
    from medclip.model import losses

    assert losses.distributed_info is distributed_info
    assert distributed_info() == (0, 1)  # no process group: a single process
    assert distributed_info(2, 4) == (2, 4)  # explicit values win
    assert "distributed_info" in dataset.CacheDataset._dist.__code__.co_names


def test_one_seed_formula_keeps_every_epoch_order() -> None:
    import torch

    from medclip.data import dataset
    from medclip.seeding import epoch_seed, sample_seed
    from medclip.train import data, sampler

    # the values runs were shuffled with before (resume positions and recorded orders stay valid)
    assert epoch_seed(7, 3) == 7 * 1_000_003 + 3
    assert data.sample_seed is sample_seed and sample_seed(7, 3, 2) == 2179358590  # crc32(b"7:3:2")
    s = sampler.ResumableSampler(10, shuffle=True, seed=5, rank=0, world_size=1)
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(5 * 1_000_003 + 2)).tolist()
    assert s.epoch_order(2) == expected
    for module in (dataset, sampler):
        assert "1_000_003" not in open(module.__file__).read()


def test_one_sentence_splitter_for_reports_labeler_and_augmenter() -> None:
    from medclip.data.reports import split_sentences
    from medclip.knowledge import Graph, ReportAugmenter, ReportLabeler
    from medclip.knowledge.matching import sentence_spans

    text = (
        "Pneumothorax: no. Effusion: small. See No. 2 above. Size 2.5 cm.Heart normal. "
        'lungs clear vs. atelectasis; "Quoted." Next\n\nline e.g. this'
    )
    expected = [
        "Pneumothorax: no.",
        "Effusion: small.",
        "See No. 2 above.",
        "Size 2.5 cm.",
        "Heart normal.",
        'lungs clear vs. atelectasis; "Quoted."',
        "Next",
        "line e.g. this",
    ]
    assert [text[a:b] for a, b in sentence_spans(text)] == expected
    assert split_sentences(text) == expected
    assert ReportAugmenter(Graph.load()).sentences(text) == expected
    labels = ReportLabeler(findings=["pneumothorax", "pleural_effusion"]).label(text)
    # "no." ends its sentence: its "no" does not negate the effusion of the next one
    assert labels["pleural_effusion"].status == "positive"
    assert labels["pleural_effusion"].sentence == "Effusion: small"
    # the labeler's scope also ends at a semicolon (a clause), not only at a sentence end
    assert (
        ReportLabeler(findings=["pleural_effusion"]).label("No pneumothorax; effusion.")["pleural_effusion"].status
        == "positive"
    )
