"""Resumable data order: a distributed sampler that can start mid-epoch, and its iterable counterpart.

The position saved in a checkpoint is ``(epoch, samples consumed by all ranks in that epoch)``.
A map-style epoch is one seeded permutation, padded to a multiple of the world size and dealt
round-robin to the ranks, so after ``k`` batches of ``b`` on ``w`` ranks exactly the first
``k * b * w`` entries of the permutation are used: resuming skips those and deals the rest.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


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
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
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
