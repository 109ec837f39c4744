"""Single-process checks of the contrastive losses (the DDP equivalence is in test_losses_ddp.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medclip.model.losses import (
    LOSS_NAMES,
    InfoNCELoss,
    LabelAwareLoss,
    MultiPositiveLoss,
    SigLIPLoss,
    build_loss,
    group_ids_from_keys,
    label_similarity,
    logit_init_for_loss,
)

NAN = float("nan")


def features(n: int = 6, dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, dim, generator=g), dim=-1), F.normalize(torch.randn(n, dim, generator=g), dim=-1)


def test_infonce_matches_open_clip_cliploss() -> None:
    open_clip_loss = pytest.importorskip("open_clip.loss")
    img, txt = features()
    scale = torch.tensor(1 / 0.07)
    expected = open_clip_loss.ClipLoss()(img, txt, scale)
    torch.testing.assert_close(InfoNCELoss()(img, txt, scale), expected)


def test_siglip_matches_open_clip_sigliploss() -> None:
    open_clip_loss = pytest.importorskip("open_clip.loss")
    img, txt = features()
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    expected = open_clip_loss.SigLipLoss()(img, txt, scale, bias)
    torch.testing.assert_close(SigLIPLoss()(img, txt, scale, bias), expected)


def test_infonce_is_low_for_matching_pairs_and_high_for_shuffled() -> None:
    img, _ = features()
    loss = InfoNCELoss()
    matched = loss(img, img.clone(), torch.tensor(50.0))
    shuffled = loss(img, img.roll(1, dims=0), torch.tensor(50.0))
    assert matched < 0.1 < math.log(6) < shuffled


def test_label_aware_equals_infonce_when_no_findings_are_shared() -> None:
    img, txt = features(4)
    labels = torch.tensor([[1, 0, NAN], [0, 1, 0], [NAN, NAN, 1], [NAN, NAN, NAN]])
    scale = torch.tensor(14.0)
    torch.testing.assert_close(LabelAwareLoss()(img, txt, scale, labels=labels), InfoNCELoss()(img, txt, scale))


def test_label_aware_does_not_push_apart_studies_with_the_same_findings() -> None:
    # samples 0 and 1 both have finding 0: pairing image 0 with text 1 is not a mistake
    img, txt = features(4)
    txt = txt.clone()
    txt[1] = img[0]  # text 1 lies right on image 0
    labels = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    unrelated = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0], [NAN, NAN, NAN]])
    scale = torch.tensor(20.0)
    assert LabelAwareLoss()(img, txt, scale, labels=labels) < LabelAwareLoss()(img, txt, scale, labels=unrelated)


def test_label_similarity_handles_uncertain_unknown_and_normal() -> None:
    labels = torch.tensor(
        [
            [1, 0, NAN],  # finding 0
            [1, NAN, NAN],  # finding 0
            [-1, NAN, NAN],  # finding 0 uncertain
            [0, 0, NAN],  # normal (labelled, nothing positive)
            [0, NAN, 0],  # normal
            [NAN, NAN, NAN],  # never labelled: unknown
            [1, 1, NAN],  # findings 0 and 1
        ]
    )
    sim = label_similarity(labels, labels, uncertain_weight=0.5)
    assert sim[0, 1] == pytest.approx(1.0)
    assert sim[0, 2] == pytest.approx(1.0)  # direction only: a weak vote for the same finding
    assert sim[3, 4] == pytest.approx(1.0)  # two normal studies match
    assert sim[0, 3] == 0 and sim[5].abs().sum() == 0 and sim[:, 5].abs().sum() == 0
    assert sim[0, 6] == pytest.approx(1 / math.sqrt(2))
    torch.testing.assert_close(sim, sim.T)
    with pytest.raises(ValueError, match="equal widths"):
        label_similarity(labels, labels[:, :2])


def test_multi_positive_equals_infonce_with_unique_groups_and_rewards_same_study() -> None:
    img, txt = features(4)
    scale = torch.tensor(14.0)
    unique = torch.tensor([10, 11, 12, 13])
    torch.testing.assert_close(MultiPositiveLoss()(img, txt, scale, group_ids=unique), InfoNCELoss()(img, txt, scale))
    txt = txt.clone()
    txt[1] = img[0]  # a second report sentence of study 0 lands on image 0
    same_study = torch.tensor([7, 7, 12, 13])
    assert MultiPositiveLoss()(img, txt, scale, group_ids=same_study) < MultiPositiveLoss()(
        img, txt, scale, group_ids=unique
    )


def test_losses_reject_missing_or_misshaped_inputs() -> None:
    img, txt = features(3)
    scale = torch.tensor(10.0)
    with pytest.raises(ValueError, match="needs labels"):
        LabelAwareLoss()(img, txt, scale)
    with pytest.raises(ValueError, match="needs group_ids"):
        MultiPositiveLoss()(img, txt, scale)
    with pytest.raises(ValueError, match="one row per sample"):
        MultiPositiveLoss()(img, txt, scale, group_ids=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"\(B, E\)"):
        InfoNCELoss()(img, txt[:2], scale)
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("triplet")


def test_build_loss_and_logit_init() -> None:
    assert [type(build_loss(n)).__name__ for n in LOSS_NAMES] == [
        "InfoNCELoss",
        "SigLIPLoss",
        "LabelAwareLoss",
        "MultiPositiveLoss",
    ]
    assert build_loss("label_aware", soft_weight=0.5, local_loss=False).soft_weight == 0.5
    assert logit_init_for_loss("siglip") == {"init_logit_scale": math.log(10.0), "init_logit_bias": -10.0}
    assert logit_init_for_loss("infonce")["init_logit_bias"] is None


def test_group_ids_from_keys_is_stable() -> None:
    ids = group_ids_from_keys(["study-a", "study-b", "study-a"])
    assert ids.dtype == torch.long and ids[0] == ids[2] != ids[1]
    # fixed across processes and runs (no Python hash randomisation)
    assert int(group_ids_from_keys(["study-a"])[0]) == int.from_bytes(
        __import__("hashlib").blake2b(b"study-a", digest_size=8).digest(), "little"
    ) & (2**62 - 1)


def test_losses_backpropagate_to_features_and_temperature() -> None:
    img, txt = features(4)
    img.requires_grad_(True)
    log_scale = torch.tensor(math.log(10.0), requires_grad=True)
    bias = torch.tensor(-10.0, requires_grad=True)
    labels = torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0], [0, 0]])
    for name in LOSS_NAMES:
        img.grad = log_scale.grad = None
        loss = build_loss(name)(
            img, txt, log_scale.exp(), bias if name == "siglip" else None, labels=labels, group_ids=torch.arange(4)
        )
        loss.backward()
        assert torch.isfinite(loss) and img.grad.abs().sum() > 0 and log_scale.grad.abs() > 0, name
