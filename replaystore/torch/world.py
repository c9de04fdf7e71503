"""Which rank and which DataLoader worker a piece of code runs in, and the seeds it derives."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch.distributed as dist
from torch.utils.data import get_worker_info

# Tags that keep the seed spaces of different uses apart (first entry of every spawn key).
_SAMPLE, _PERMUTE, _WORKER = 0, 1, 2

# -- who am I -------------------------------------------------------------------------------


def _distributed() -> tuple[int, int]:
    """(rank, world_size) from an initialised process group, else from torchrun's variables."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    # torchrun sets these before the script runs; they also reach spawned DataLoader workers,
    # where the process group of the parent is not initialised.
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        return 0, 1


@dataclass(frozen=True)
class World:
    """Where this code runs: the distributed rank and the ``DataLoader`` worker.

    ``rank``/``world_size`` come from ``torch.distributed`` when a process group is initialised
    (else from torchrun's ``RANK``/``WORLD_SIZE``, else 0 of 1); ``worker``/``num_workers``
    from ``torch.utils.data.get_worker_info()`` (0 of 1 in the main process).

    Examples
    --------
    >>> world = World(rank=1, world_size=2, worker=0, num_workers=2)
    >>> world.stream, world.streams
    (2, 4)
    >>> int(world.worker_rng(seed=7).integers(100)) == int(world.worker_rng(seed=7).integers(100))
    True
    """

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size={self.world_size}), got {self.rank}")
        if not 0 <= self.worker < self.num_workers:
            raise ValueError(f"worker must be in [0, num_workers={self.num_workers}), "
                             f"got {self.worker}")

    @classmethod
    def detect(cls, rank: int | None = None, world_size: int | None = None) -> World:
        """The world of the calling process; ``rank``/``world_size`` override the detection."""
        if rank is None or world_size is None:
            found_rank, found_size = _distributed()
            rank = found_rank if rank is None else rank
            world_size = found_size if world_size is None else world_size
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return cls(int(rank), int(world_size), worker, workers)

    @property
    def stream(self) -> int:
        """A number for this (rank, worker) pair, unique across the whole job."""
        return self.rank * self.num_workers + self.worker

    @property
    def streams(self) -> int:
        """How many (rank, worker) pairs the job has."""
        return self.world_size * self.num_workers

    def rank_rng(self, seed: int, *key: int) -> np.random.Generator:
        """A generator seeded from ``(seed, rank, *key)``: equal in every worker of a rank."""
        return _rng(seed, _SAMPLE, self.rank, *key)

    def worker_rng(self, seed: int, *key: int) -> np.random.Generator:
        """A generator seeded from ``(seed, rank, worker, *key)``: distinct for every worker
        of every rank (for your own augmentations, say)."""
        return _rng(seed, _WORKER, self.rank, self.worker, *key)

    def my_batches(self, first: int, stop: int | None) -> Iterator[int]:
        """This worker's share of batches ``first, first + 1, ... < stop`` (None: no end).

        Worker ``w`` takes ``first + w, first + w + num_workers, ...``: ``DataLoader`` collects
        results from its workers round-robin starting with worker 0, so the batches reach the
        training loop in order ``first, first + 1, ...``.
        """
        start = first + self.worker
        if stop is None:
            return itertools.count(start, self.num_workers)
        return iter(range(start, stop, self.num_workers))

    def my_runs(self, first: int, stop: int | None, size: int) -> Iterator[range]:
        """Like :meth:`my_batches`, dealt in runs of ``size`` consecutive batches (the last
        may be shorter): worker ``w`` takes runs ``w, w + num_workers, ...`` of
        ``first, first + 1, ... < stop``, so runs, too, reach ``DataLoader`` in order.
        """
        if size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        step = size * self.num_workers
        start = first + self.worker * size
        starts = itertools.count(start, step) if stop is None else range(start, stop, step)
        return (range(a, a + size if stop is None else min(a + size, stop)) for a in starts)


def _rng(seed: int, *key: int) -> np.random.Generator:
    # SeedSequence spawn keys give statistically independent streams for distinct keys.
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))
