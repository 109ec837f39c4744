"""Resumable data order: a distributed sampler that can start mid-epoch, and its iterable counterpart.

The position saved in a checkpoint is ``(epoch, samples consumed by all ranks in that epoch)``.
A map-style epoch is one seeded permutation, padded to a multiple of the world size and dealt
round-robin to the ranks, so after ``k`` batches of ``b`` on ``w`` ranks exactly the first
``k * b * w`` entries of the permutation are used: resuming skips those and deals the rest.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from medclip.seeding import epoch_seed


class ResumableSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, epoch)`` for this rank's share of a seeded per-epoch order, optionally from mid-epoch.

    Indices come with their epoch so the dataset can seed per-sample randomness (text augmentation)
    from ``(seed, epoch, index)`` whatever the worker or restart.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_samples < 1:
            raise ValueError("ResumableSampler needs at least one sample")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._resume_epoch: int | None = None
        self._resume_consumed = 0

    @property
    def per_rank(self) -> int:
        """Samples each rank sees in a full epoch (the dataset padded to a multiple of the world size)."""
        return math.ceil(self.num_samples / self.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order to produce (Lightning calls this at every epoch start)."""
        self.epoch = epoch

    def resume_from(self, epoch: int, consumed: int) -> None:
        """Skip the first ``consumed`` samples (all ranks together) of ``epoch`` when it is iterated."""
        if consumed < 0:
            raise ValueError(f"consumed must be >= 0, got {consumed}")
        self._resume_epoch, self._resume_consumed = epoch, consumed

    def epoch_order(self, epoch: int) -> list[int]:
        """The global order of ``epoch``, padded by wrapping around to a multiple of the world size."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        total = self.per_rank * self.world_size
        while len(order) < total:
            order += order[: total - len(order)]
        return order

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        order = self.epoch_order(epoch)
        if epoch == self._resume_epoch:
            # a multiple of the world size when the run is resumed on as many ranks as it was saved on
            order = order[min(self._resume_consumed, len(order)) :]
            order = order[: len(order) - len(order) % self.world_size]
        for index in order[self.rank :: self.world_size]:
            yield index, epoch

    def __len__(self) -> int:
        # the full epoch length even when resuming: Lightning counts the batches already done
        return self.per_rank


class WeightedResumableSampler(ResumableSampler):
    """A :class:`ResumableSampler` whose epoch is ``num_draws`` draws with replacement, sample ``i`` drawn with
    probability ``weights[i] / sum(weights)`` (mixed sources, concept-balanced sampling).

    The draws of an epoch are one seeded function of ``(seed, epoch)``, dealt to ranks and resumed
    exactly like the permutation of the unweighted sampler.
    """

    def __init__(
        self,
        weights: Sequence[float] | torch.Tensor,
        *,
        num_draws: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        w = torch.as_tensor(weights, dtype=torch.float64)
        if w.ndim != 1 or len(w) < 1 or not torch.isfinite(w).all() or (w < 0).any() or float(w.sum()) <= 0:
            raise ValueError("weights must be a non-empty vector of finite, non-negative numbers with a positive sum")
        super().__init__(int(num_draws or len(w)), shuffle=True, seed=seed, rank=rank, world_size=world_size)
        self.weights = w

    def epoch_order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        total = self.per_rank * self.world_size
        return torch.multinomial(self.weights, total, replacement=True, generator=generator).tolist()


def sample_concepts(labels: np.ndarray, names: Sequence[str]) -> list[list[str]]:
    """The knowledge-graph concepts of each sample: its positive labels, or ``no_finding`` when it has known
    labels and none positive; an unlabelled sample has none."""
    from medclip.knowledge.labeler import NO_FINDING

    labels = np.asarray(labels, dtype=np.float64)
    concepts: list[list[str]] = []
    for row in labels:
        positive = [names[int(k)] for k in np.flatnonzero(row == 1)]
        if not positive and np.isfinite(row).any():
            positive = [NO_FINDING]
        concepts.append(sorted(set(positive)))
    return concepts


def concept_shares(weights: np.ndarray, concepts: Sequence[Sequence[str]]) -> dict[str, float]:
    """Each concept's share of the sampled pairs when sample ``i`` is drawn with weight ``weights[i]``."""
    weights = np.asarray(weights, dtype=np.float64)
    total = float(weights.sum())
    shares: dict[str, float] = {}
    for w, cs in zip(weights, concepts):
        for c in cs:
            shares[c] = shares.get(c, 0.0) + float(w) / total
    return shares


def concept_balance_weights(
    concepts: Sequence[Sequence[str]], max_share: float, *, iterations: int = 500, tol: float = 1e-4
) -> tuple[np.ndarray, dict[str, float]]:
    """Sampling weights under which no concept (``no_finding`` included) exceeds ``max_share`` of the pairs.

    MetaCLIP's curation (Xu et al., 2024) caps each metadata entry's count; here the metadata are the
    knowledge-graph concepts of each sample and the cap is a share of the sampled stream. Weights of an
    over-represented concept's samples are scaled down until every share is within the cap (iterative
    proportional fitting; multi-label samples are handled jointly). When the cap cannot be met (fewer
    than ``1 / max_share`` concepts, or a concept in every sample) the result is as balanced as the
    iterations get. Returns the weights (mean 1) and the concept shares they give.
    """
    if not 0 < max_share <= 1:
        raise ValueError(f"max_share must be in (0, 1], got {max_share}")
    n = len(concepts)
    weights = np.ones(n, dtype=np.float64)
    names = sorted({c for cs in concepts for c in cs})
    if not names:
        return weights, {}
    member = np.zeros((n, len(names)), dtype=bool)
    column = {c: k for k, c in enumerate(names)}
    for i, cs in enumerate(concepts):
        for c in cs:
            member[i, column[c]] = True
    for _ in range(iterations):
        shares = (weights[:, None] * member).sum(axis=0) / weights.sum()
        over = shares > max_share * (1 + tol)
        if not over.any():
            break
        factor = np.ones(n)
        for k in np.flatnonzero(over):
            factor[member[:, k]] = np.minimum(factor[member[:, k]], max_share / shares[k])
        weights = weights * factor
        weights = weights / weights.mean()
    return weights, concept_shares(weights, concepts)
