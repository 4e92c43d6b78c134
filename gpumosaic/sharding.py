"""Sharding of a sample stream over ranks and DataLoader workers, and the epochs' orders.

An epoch is a permutation of the N samples (:func:`epoch_permutation`, ``torch.randperm`` on the CPU with a
generator seeded from ``(seed, epoch, stream)`` by ``numpy.random.SeedSequence``: the order is the same on
every device). The stream is split into ``S = world_size · num_workers`` shards (:class:`ShardInfo`);
shard ``s = rank · num_workers + worker`` takes the strided slice ``perm[s::S]``. ``rank`` / ``world_size``
come from the arguments, else from ``torch.distributed`` when it is initialised (:func:`resolve_rank`);
``worker`` / ``num_workers`` from ``torch.utils.data.get_worker_info()``. Used by
:class:`~gpumosaic.OnlineMosaicDataset` and :func:`gpumosaic.export.export_shards`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import get_worker_info

from ._check import check_seed

__all__ = ["ShardInfo", "shard_info", "resolve_rank", "epoch_permutation", "STREAM_PAIRS", "STREAM_REAL"]

STREAM_PAIRS = 0
"""Permutation stream of the (pose, view) pairs."""
STREAM_REAL = 1
"""Permutation stream of the real images."""


def _generator_seed(seed: int, epoch: int, stream: int) -> int:
    words = np.random.SeedSequence([seed, epoch, stream]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) | (int(words[1]) << 32)) & ((1 << 63) - 1)


def epoch_permutation(num_items: int, seed: int = 0, epoch: int = 0, stream: int = STREAM_PAIRS) -> torch.Tensor:
    """The epoch's order of ``num_items`` samples: ``torch.randperm`` on the CPU, seeded from ``(seed, epoch)``.

    Args:
        num_items: N >= 0 (M·V pairs, or the real pool's size).
        seed, epoch: non-negative integers; the generator's seed is
            ``numpy.random.SeedSequence([seed, epoch, stream])`` (so nearby seeds/epochs are unrelated).
        stream: 0 for (pose, view) pairs, 1 for real images.

    Returns:
        int64 (N,) on the CPU (same order whatever device the batches are made on); 8 bytes per item.
    """
    if int(num_items) != num_items or num_items < 0:
        raise ValueError(f"Expected num_items to be a non-negative integer, got {num_items}")
    gen = torch.Generator().manual_seed(_generator_seed(check_seed(seed), check_seed(epoch, "epoch"), stream))
    return torch.randperm(int(num_items), generator=gen)


@dataclass(frozen=True)
class ShardInfo:
    """Where one data stream sits among ranks and DataLoader workers.

    Attributes:
        rank, world_size: the process's place in ``torch.distributed`` (0, 1 when not distributed).
        worker, num_workers: the DataLoader worker (0, 1 in the main process).
    """

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1

    @property
    def shard(self) -> int:
        """``rank · num_workers + worker``."""
        return self.rank * self.num_workers + self.worker

    @property
    def num_shards(self) -> int:
        """``world_size · num_workers``."""
        return self.world_size * self.num_workers


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)``: both given (checked: integers, ``0 <= rank < world_size``), or both ``None``:
    ``torch.distributed``'s when it is initialised, else ``(0, 1)``."""
    if rank is None and world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1
    if rank is None or world_size is None:
        raise ValueError(f"Expected both rank and world_size or neither, got rank={rank}, world_size={world_size}")
    if int(world_size) != world_size or world_size < 1 or int(rank) != rank or not 0 <= rank < world_size:
        raise ValueError(f"Expected integers 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return int(rank), int(world_size)


def shard_info(rank: int | None = None, world_size: int | None = None) -> ShardInfo:
    """The current stream's :class:`ShardInfo`.

    ``rank`` / ``world_size``: explicit, or (both ``None``) ``torch.distributed``'s when initialised, else
    0 / 1. Worker id and count come from ``torch.utils.data.get_worker_info()``.
    """
    rank, world_size = resolve_rank(rank, world_size)
    info = get_worker_info()
    worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return ShardInfo(rank=rank, world_size=world_size, worker=worker, num_workers=num_workers)
