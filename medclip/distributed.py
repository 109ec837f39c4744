"""Where this process stands in a distributed run: the one rank helper of medclip.

The losses (gathering features across ranks) and the streaming cache dataset (which shards each
rank reads) both ask :func:`distributed_info`; explicit values win, so tests and callers that know
their place (a DataModule given ``rank``/``world_size``) need no process group.
"""

from __future__ import annotations


def distributed_info(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)``: the given values, else the initialised process group's, else (0, 1)."""
    if rank is not None and world_size is not None:
        return rank, world_size
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


__all__ = ["distributed_info"]
