"""Synthetic RL data for benchmarks: vector transitions and frames of moving shapes.

Frames are not noise: a checkered background with a few discs bouncing around, which
compresses like real game frames do (noise would not compress at all and flatter nobody).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

VECTOR_FIELDS = {"obs": ((17,), "float32"), "action": ((6,), "float32"),
                 "next_obs": ((17,), "float32")}


def vector_batches(rows: int, batch: int, seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Hopper-like transitions: obs/next_obs float32[17], action float32[6], 1000-step episodes."""
    rng = np.random.default_rng(seed)
    for first in range(0, rows, batch):
        n = min(batch, rows - first)
        obs = rng.standard_normal((n + 1, 17)).astype(np.float32)
        steps = np.arange(first, first + n)
        yield {"obs": obs[:-1], "next_obs": obs[1:],
               "action": rng.uniform(-1, 1, (n, 6)).astype(np.float32),
               "reward": rng.standard_normal(n).astype(np.float32),
               "terminated": np.zeros(n, bool), "truncated": steps % 1000 == 999}


class MovingShapes:
    """A deterministic stream of uint8 frames of the given size with bouncing discs."""

    def __init__(self, size: int = 84, discs: int = 3, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.yy, self.xx = np.mgrid[0:size, 0:size]
        self.background = ((self.xx // 8 + self.yy // 8) % 2 * 24 + 40).astype(np.uint8)
        self.pos = rng.uniform(10, size - 10, (discs, 2))
        self.vel = rng.uniform(-2.5, 2.5, (discs, 2))
        self.size = size

    def next(self) -> np.ndarray:
        frame = self.background.copy()
        self.pos += self.vel
        bounce = (self.pos < 4) | (self.pos > self.size - 4)
        self.vel[bounce] *= -1
        np.clip(self.pos, 4, self.size - 4, out=self.pos)
        for k, (y, x) in enumerate(self.pos):
            frame[(self.yy - y) ** 2 + (self.xx - x) ** 2 < (3 + 2 * k) ** 2] = 90 + 55 * k
        return frame

    def frames(self, n: int) -> np.ndarray:
        return np.stack([self.next() for _ in range(n)])
