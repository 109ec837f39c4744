"""Seeds derived from a run's seed: the one place that says how (so every process, worker and restart agrees).

- :func:`epoch_seed`: the shuffle / draw order of one epoch (samplers, streaming cache datasets);
- :func:`sample_seed`: one sample's augmentation in one epoch, keyed by its index or id.
"""

from __future__ import annotations

import zlib


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's order: distinct for every (seed, epoch) a run meets."""
    return int(seed) * 1_000_003 + int(epoch)


def sample_seed(seed: int, epoch: int, key: int | str) -> int:
    """A stable seed for one sample in one epoch (the same in every process, worker and restart)."""
    return zlib.crc32(f"{seed}:{epoch}:{key}".encode())


__all__ = ["epoch_seed", "sample_seed"]
