"""Helpers for tests/test_torch.py that child processes import (spawned ranks and workers)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

import replaystore as rs

FIELDS = {"obs": {"shape": (3,), "dtype": "float32", "chunk_rows": 64},
          "frame": {"shape": (6, 6), "dtype": "uint8", "chunk_rows": 64},
          "action": ((), "int64")}


def rows(first: int, count: int) -> dict[str, np.ndarray]:
    """Rows whose every field is a function of the global row number g (and so checkable)."""
    g = np.arange(first, first + count)
    return {"obs": (g[:, None] * 10 + np.arange(3)).astype(np.float32),
            "frame": np.broadcast_to((g % 251).astype(np.uint8)[:, None, None],
                                     (count, 6, 6)).copy(),
            "action": g.astype(np.int64),
            "reward": g.astype(np.float32),
            "terminated": g % 40 == 39,
            "truncated": np.zeros(count, bool)}


def make_store(path: Path, count: int, *, capacity: int | None = None,
               priorities: bool = False) -> rs.Store:
    """A store holding ``count`` appended rows (a ring wraps when count > capacity), committed
    and left open for writing."""
    store = rs.create(path, FIELDS, capacity=capacity)
    store.extend(rows(0, count))
    if priorities:
        store.priority_index(0.6)
    store.commit()
    return store


def distributed_rank(rank: int, world_size: int, init_file: str, path: str, out: str) -> None:
    """One rank of the gloo test: epoch-mode and uniform batches, indices saved to ``out``."""
    import torch.distributed as dist

    from replaystore.torch import ReplayDataset, ReplayLoader, World

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    try:
        world = World.detect()
        assert (world.rank, world.world_size) == (rank, world_size), world
        epoch = ReplayLoader(ReplayDataset(path, 32, sampler="epoch", seed=5), num_workers=2,
                             multiprocessing_context="fork")
        first = np.concatenate([b["indices"].numpy() for b in epoch])
        second = np.concatenate([b["indices"].numpy() for b in epoch])  # the next epoch
        uniform = ReplayLoader(ReplayDataset(path, 16, sampler="uniform", seed=5,
                                             batches_per_epoch=3))
        drawn = np.concatenate([b["indices"].numpy() for b in uniform])
        np.savez(os.path.join(out, f"rank{rank}.npz"), first=first, second=second,
                 uniform=drawn, batches=len(epoch))
        dist.barrier()
    finally:
        dist.destroy_process_group()
