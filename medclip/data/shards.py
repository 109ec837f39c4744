"""Splitting preprocessing across array-job tasks: which task does which part (``--num-shards/--shard-index``).

``medclip index`` and ``medclip cache`` take ``--num-shards N --shard-index i``; inside a SLURM array job
both default from the scheduler's variables (``SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN`` of
``SLURM_ARRAY_TASK_COUNT``), so ``sbatch --array=0-7`` needs no extra flags. Each task writes its own
part; a merge makes the result identical to a single-process run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Task ``index`` of ``count`` (0-based)."""

    index: int = 0
    count: int = 1

    @property
    def is_whole(self) -> bool:
        """True for a single-process run (one shard)."""
        return self.count == 1

    @property
    def tag(self) -> str:
        """The file-name tag of this part, e.g. ``part-00003-of-00008``."""
        return f"part-{self.index:05d}-of-{self.count:05d}"

    def block(self, items: Sequence[T]) -> list[T]:
        """This task's contiguous block of ``items`` (blocks keep a folder's files together)."""
        n = len(items)
        return list(items[self.index * n // self.count : (self.index + 1) * n // self.count])

    def owns(self, k: int) -> bool:
        """Round-robin ownership of item number ``k``."""
        return k % self.count == self.index


def resolve_shard(
    num_shards: int | None = None, shard_index: int | None = None, env: Mapping[str, str] | None = None
) -> Shard:
    """The shard of this task: the arguments, else a SLURM array job's variables, else the whole (0 of 1).

    Inside an array job the task number is ``SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN`` (arrays may start
    at 1) and the count ``SLURM_ARRAY_TASK_COUNT``; an array with a step or gaps (``--array=0-9:2``,
    ``--array=1,5``) is refused, since its ids do not number the parts 0..N-1.
    """
    env = os.environ if env is None else env
    slurm_id, slurm_count = env.get("SLURM_ARRAY_TASK_ID"), env.get("SLURM_ARRAY_TASK_COUNT")
    if num_shards is None and shard_index is None and slurm_id not in (None, "") and slurm_count not in (None, ""):
        task, count = int(slurm_id), int(slurm_count)
        low = int(env.get("SLURM_ARRAY_TASK_MIN") or 0)
        high = int(env.get("SLURM_ARRAY_TASK_MAX") or low + count - 1)
        if high - low + 1 != count:
            raise ValueError(
                f"SLURM array ids {low}..{high} are not {count} consecutive numbers (a step or gaps in "
                "--array): use --array=0-N-1, or pass --num-shards and --shard-index"
            )
        num_shards, shard_index = count, task - low
    if num_shards is None and shard_index is None:
        return Shard()
    if num_shards is None or shard_index is None:
        raise ValueError("give both --num-shards and --shard-index (or neither)")
    num_shards, shard_index = int(num_shards), int(shard_index)
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(
            f"--shard-index must be in 0..{num_shards - 1} for --num-shards {num_shards}, got {shard_index}"
        )
    return Shard(shard_index, num_shards)


def parse_part_tag(name: str) -> Shard | None:
    """The shard a part file's name carries (``...part-00003-of-00008...``), or None."""
    import re

    m = re.search(r"part-(\d{5})-of-(\d{5})", name)
    return Shard(int(m.group(1)), int(m.group(2))) if m else None


def missing_parts(found: Sequence[Shard]) -> tuple[int, list[int]]:
    """(count, indices not yet written) for the parts found; raises when they disagree on the count."""
    counts = {s.count for s in found}
    if len(counts) > 1:
        raise ValueError(f"parts of different runs found (--num-shards {sorted(counts)}): remove the stale ones")
    count = counts.pop() if counts else 0
    have = {s.index for s in found}
    return count, [i for i in range(count) if i not in have]
