"""Contrastive losses for the dual encoder, exact under data parallelism.

Every loss takes ``(image_features, text_features, logit_scale, logit_bias=None, labels=None,
group_ids=None)`` with normalised features of the *local* batch. Under ``torch.distributed`` the
features are gathered from all ranks with gradients flowing back (``gather_with_grad``), and with
``local_loss`` each rank scores only its own rows against all columns. Each rank's loss is scaled so
that the mean over ranks equals the single-process loss on the full batch, and DDP's gradient
averaging then gives exactly the full-batch gradient (batch sizes may differ between ranks).

Rank and world size come from the constructor, else from ``torch.distributed`` at call time
(so a loss built before the process group exists still works).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from medclip.distributed import distributed_info

LOSS_NAMES = ("infonce", "siglip", "label_aware", "multi_positive")


# --------------------------------------------------------------------------- distributed helpers
def _all_gather_sizes(n: int, device: torch.device, world_size: int) -> list[int]:
    size = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def gather_rows(
    x: torch.Tensor, rank: int, world_size: int, with_grad: bool = True, sizes: list[int] | None = None
) -> tuple[torch.Tensor, list[int]]:
    """Concatenate ``x`` (rows) from all ranks in rank order; returns ``(all_rows, rows_per_rank)``.

    ``with_grad``: gradients w.r.t. the gathered rows flow back to the rank that owns them.
    Otherwise only this rank's own rows keep their gradient. Ranks may hold different row counts.
    """
    if world_size == 1:
        return x, [x.shape[0]]
    sizes = sizes or _all_gather_sizes(x.shape[0], x.device, world_size)
    longest = max(sizes)
    padded = x if x.shape[0] == longest else torch.cat([x, x.new_zeros((longest - x.shape[0],) + x.shape[1:])])
    if with_grad and x.requires_grad:
        parts = list(_AllGatherWithGrad.apply(padded, rank, world_size).chunk(world_size))
    else:
        parts = [torch.empty_like(padded) for _ in range(world_size)]
        dist.all_gather(parts, padded.detach().contiguous())
        parts[rank] = padded
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]), sizes


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather of equal-sized row blocks; each rank gets back the summed gradient of its block."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
        ctx.rank, ctx.rows = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world_size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's loss depends on every block
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows], None, None


class _RingShift(torch.autograd.Function):
    """Send a tensor to the right neighbour, receive the left one's; gradients travel back."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
        ctx.rank, ctx.world_size = rank, world_size
        return _ring_exchange(tensor, to_rank=(rank + 1) % world_size, from_rank=(rank - 1) % world_size)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        back = _ring_exchange(
            grad.contiguous(), to_rank=(ctx.rank - 1) % ctx.world_size, from_rank=(ctx.rank + 1) % ctx.world_size
        )
        return back, None, None


def _ring_exchange(tensor: torch.Tensor, to_rank: int, from_rank: int) -> torch.Tensor:
    received = torch.empty_like(tensor)
    ops = [dist.P2POp(dist.isend, tensor.contiguous(), to_rank), dist.P2POp(dist.irecv, received, from_rank)]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return received


# --------------------------------------------------------------------------- targets
def label_similarity(a: torch.Tensor, b: torch.Tensor, uncertain_weight: float = 0.5) -> torch.Tensor:
    """Cosine similarity (A, B) of finding-label vectors (1 positive, 0 negative, -1 uncertain, NaN unknown).

    A study is the vector of its positive findings (uncertain ones count ``uncertain_weight``)
    plus a "no finding" component that is 1 when it has labels but no positive finding, so two
    normal studies match. A study with no known label at all matches nothing (similarity 0).
    """

    def encode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.float()
        known = ~torch.isnan(x)
        positive = torch.where(x == 1, 1.0, torch.where(x == -1, float(uncertain_weight), 0.0))
        has_label = known.any(dim=1)
        normal = ((positive.sum(dim=1) == 0) & has_label).float()
        return F.normalize(torch.cat([positive, normal[:, None]], dim=1), dim=1), has_label

    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"label vectors must be (N, n_findings) with equal widths, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    va, ka = encode(a)
    vb, kb = encode(b)
    return (va @ vb.T) * (ka[:, None] & kb[None, :]).float()


def group_ids_from_keys(keys: Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
    """Stable int64 ids for string keys (e.g. study ids), equal on every rank and every run."""
    ids = [
        int.from_bytes(hashlib.blake2b(str(k).encode(), digest_size=8).digest(), "little") & (2**62 - 1) for k in keys
    ]
    return torch.tensor(ids, dtype=torch.long, device=device)


def logit_init_for_loss(name: str) -> dict[str, float | None]:
    """Config overrides for the temperature (and bias) a loss expects at initialisation."""
    if name == "siglip":
        return {"init_logit_scale": math.log(10.0), "init_logit_bias": -10.0}
    if name not in LOSS_NAMES:
        raise ValueError(f"unknown loss {name!r}; choose from {LOSS_NAMES}")
    return {"init_logit_scale": math.log(1 / 0.07), "init_logit_bias": None}


# --------------------------------------------------------------------------- losses
class ContrastiveLoss(nn.Module):
    """Common machinery: distributed gathering and the full-batch normalisation."""

    def __init__(
        self,
        rank: int | None = None,
        world_size: int | None = None,
        gather_with_grad: bool = True,
        local_loss: bool = True,
    ) -> None:
        super().__init__()
        self.rank, self.world_size = rank, world_size
        self.gather_with_grad = gather_with_grad
        self.local_loss = local_loss

    @staticmethod
    def _check(image_features: torch.Tensor, text_features: torch.Tensor) -> None:
        if image_features.ndim != 2 or image_features.shape != text_features.shape:
            raise ValueError(
                f"image and text features must both be (B, E), got {tuple(image_features.shape)} and {tuple(text_features.shape)}"
            )

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float,
        logit_bias: torch.Tensor | float | None = None,
        labels: torch.Tensor | None = None,
        group_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError


class SoftTargetInfoNCE(ContrastiveLoss):
    """Symmetric cross-entropy of image->text and text->image logits against row targets.

    Subclasses define the (rows x columns) target weights; plain InfoNCE uses the identity.
    """

    def targets(
        self,
        rows: slice,
        n_columns: int,
        labels: torch.Tensor | None,
        group_ids: torch.Tensor | None,
        device: torch.device,
    ) -> torch.Tensor | None:
        """Target weights (len(rows), n_columns), or None for one positive per row (the diagonal)."""
        return None

    def _side_info(self, labels: torch.Tensor | None, group_ids: torch.Tensor | None) -> None:
        """Raise if the loss needs labels or group ids and they are missing or mis-shaped."""

    def forward(  # noqa: D102
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float,
        logit_bias: torch.Tensor | float | None = None,
        labels: torch.Tensor | None = None,
        group_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self._check(image_features, text_features)
        self._side_info(labels, group_ids)
        rank, world = distributed_info(self.rank, self.world_size)
        img, txt = image_features.float(), text_features.float()
        n_local = img.shape[0]
        if labels is not None and labels.shape[0] != n_local or group_ids is not None and group_ids.shape[0] != n_local:
            raise ValueError("labels / group_ids need one row per sample of the batch")
        all_img, sizes = gather_rows(img, rank, world, self.gather_with_grad)
        all_txt, _ = gather_rows(txt, rank, world, self.gather_with_grad, sizes)
        all_labels = gather_rows(labels.float(), rank, world, False, sizes)[0] if labels is not None else None
        all_groups = gather_rows(group_ids, rank, world, False, sizes)[0] if group_ids is not None else None
        n_total = sum(sizes)
        offset = sum(sizes[:rank])
        if self.local_loss or world == 1:
            rows = slice(offset, offset + n_local)
            logits_img = logit_scale * img @ all_txt.T
            logits_txt = logit_scale * txt @ all_img.T
            norm = n_total / world  # mean over ranks of the local sums = full-batch mean
        else:
            rows = slice(0, n_total)
            logits_img = logit_scale * all_img @ all_txt.T
            logits_txt = logits_img.T
            norm = n_total
        if logit_bias is not None:
            logits_img = logits_img + logit_bias
            logits_txt = logits_txt + logit_bias
        target = self.targets(rows, n_total, all_labels, all_groups, img.device)
        if target is None:
            index = torch.arange(rows.start, rows.stop, device=img.device)
            total = F.cross_entropy(logits_img, index, reduction="sum") + F.cross_entropy(
                logits_txt, index, reduction="sum"
            )
        else:
            total = (
                -(target * F.log_softmax(logits_img, dim=1)).sum() - (target * F.log_softmax(logits_txt, dim=1)).sum()
            )
        return total / (2 * norm)


class InfoNCELoss(SoftTargetInfoNCE):
    """Symmetric CLIP loss: each image's report is its only positive."""


class LabelAwareLoss(SoftTargetInfoNCE):
    """InfoNCE with soft targets from finding labels (MedCLIP's fix for false negatives).

    Pairs whose studies share findings are not pushed apart: the target of row i puts weight 1
    on its own pair and ``soft_weight * similarity`` (see :func:`label_similarity`, kept when at
    least ``min_similarity``) on every other pair, normalised to sum to 1. With no shared
    findings this is exactly :class:`InfoNCELoss`.
    """

    def __init__(
        self, soft_weight: float = 1.0, min_similarity: float = 0.0, uncertain_weight: float = 0.5, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.soft_weight = soft_weight
        self.min_similarity = min_similarity
        self.uncertain_weight = uncertain_weight

    def _side_info(self, labels: torch.Tensor | None, group_ids: torch.Tensor | None) -> None:  # noqa: D102
        if labels is None or labels.ndim != 2:
            raise ValueError("label_aware loss needs labels of shape (B, n_findings)")

    def targets(  # noqa: D102
        self,
        rows: slice,
        n_columns: int,
        labels: torch.Tensor | None,
        group_ids: torch.Tensor | None,
        device: torch.device,
    ) -> torch.Tensor:
        assert labels is not None  # _side_info refused a batch without them
        sim = label_similarity(labels[rows], labels, self.uncertain_weight)
        sim = torch.where(sim >= self.min_similarity, sim, torch.zeros_like(sim)) * self.soft_weight
        eye = torch.zeros_like(sim)
        eye[torch.arange(sim.shape[0], device=device), torch.arange(rows.start, rows.stop, device=device)] = 1.0
        weights = torch.where(eye > 0, eye, sim)
        return weights / weights.sum(dim=1, keepdim=True)


class MultiPositiveLoss(SoftTargetInfoNCE):
    """InfoNCE where all samples with the same ``group_ids`` (e.g. views or sentences of one study) are positives."""

    def _side_info(self, labels: torch.Tensor | None, group_ids: torch.Tensor | None) -> None:  # noqa: D102
        if group_ids is None or group_ids.ndim != 1:
            raise ValueError("multi_positive loss needs group_ids of shape (B,) (see group_ids_from_keys)")

    def targets(  # noqa: D102
        self,
        rows: slice,
        n_columns: int,
        labels: torch.Tensor | None,
        group_ids: torch.Tensor | None,
        device: torch.device,
    ) -> torch.Tensor:
        assert group_ids is not None  # _side_info refused a batch without them
        same = (group_ids[rows, None] == group_ids[None, :]).float()
        return same / same.sum(dim=1, keepdim=True)


class SigLIPLoss(ContrastiveLoss):
    """Sigmoid loss (Zhai et al., 2023): every image-text pair is a binary match / no-match.

    ``dist_impl="gather"`` all-gathers text features with gradients (any batch sizes);
    ``"neighbour"`` passes text chunks round the ring of ranks (open_clip's "shift"; equal batch
    sizes). Loss per rank = its rows' sum / (full batch / world), as in the full-batch loss.
    """

    def __init__(self, dist_impl: str = "gather", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if dist_impl not in ("gather", "neighbour"):
            raise ValueError(f"dist_impl must be 'gather' or 'neighbour', got {dist_impl!r}")
        self.dist_impl = dist_impl

    @staticmethod
    def _pair_loss(
        img: torch.Tensor,
        txt: torch.Tensor,
        logit_scale: torch.Tensor | float,
        logit_bias: torch.Tensor | float | None,
        diagonal_offset: int | None,
    ) -> torch.Tensor:
        logits = logit_scale * img @ txt.T
        if logit_bias is not None:
            logits = logits + logit_bias
        sign = -torch.ones_like(logits)
        if diagonal_offset is not None:
            idx = torch.arange(img.shape[0], device=img.device)
            sign[idx, idx + diagonal_offset] = 1.0
        return -F.logsigmoid(sign * logits).sum()

    def forward(  # noqa: D102
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float,
        logit_bias: torch.Tensor | float | None = None,
        labels: torch.Tensor | None = None,
        group_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self._check(image_features, text_features)
        rank, world = distributed_info(self.rank, self.world_size)
        img, txt = image_features.float(), text_features.float()
        if world == 1:
            return self._pair_loss(img, txt, logit_scale, logit_bias, 0) / img.shape[0]
        if self.dist_impl == "gather":
            all_txt, sizes = gather_rows(txt, rank, world, self.gather_with_grad)
            offset = sum(sizes[:rank])
            total = self._pair_loss(img, all_txt, logit_scale, logit_bias, offset)
            return total / (sum(sizes) / world)
        sizes = _all_gather_sizes(img.shape[0], img.device, world)
        if len(set(sizes)) != 1:
            raise ValueError(f"SigLIP dist_impl='neighbour' needs equal batch sizes on all ranks, got {sizes}")
        total = self._pair_loss(img, txt, logit_scale, logit_bias, 0)
        received = txt
        for _ in range(world - 1):
            received = _RingShift.apply(received, rank, world)
            total = total + self._pair_loss(img, received, logit_scale, logit_bias, None)
        return total / img.shape[0]


_LOSSES: dict[str, type[ContrastiveLoss]] = {
    "infonce": InfoNCELoss,
    "siglip": SigLIPLoss,
    "label_aware": LabelAwareLoss,
    "multi_positive": MultiPositiveLoss,
}


def build_loss(name: str, **kwargs: Any) -> ContrastiveLoss:
    """A loss by name: ``infonce``, ``siglip``, ``label_aware`` or ``multi_positive``."""
    try:
        cls = _LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose from {LOSS_NAMES}") from None
    return cls(**kwargs)
