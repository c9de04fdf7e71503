"""Train from an image store several times larger than the read cache, and show the memory used.

    python examples/larger_than_ram.py [PATH] [--frames 150000] [--cache-mb 32] [--steps 300]

1. Writes ``--frames`` 84x84 uint8 frames of a bouncing ball (episodes of 200-2000 steps) to a
   store at PATH, as ``obs`` with ``stack=4`` and ``next_obs`` derived from it, so each frame is
   stored once, compressed (about 1 GB raw at the default).
2. Reopens it with ``cache_bytes=--cache-mb`` and trains a small CNN from batches of 4-frame
   stacks drawn by a ``PrioritizedSampler``: the label of a row is the ball's horizontal
   direction (its ``action``), which only *motion* across the stacked frames reveals; the
   per-row loss goes back as the priority, so hard rows (episode starts, bounces) come back more.
3. Prints the peak resident memory (``VmHWM`` from ``/proc/self/status``) of each phase next to
   the store's raw size, its size on disk and the cache budget. The peak is reset between
   phases (``/proc/self/clear_refs``), so the training figure is training alone.

The point: the reader's memory is bounded by the cache budget (plus the interpreter, torch and
one batch), not by the store: rows come from disk on demand and only the rows a batch asks for
are decoded. (The budget is split across the schema's fields by row size, so ``obs`` gets about
half of it here and ``next_obs``, read from ``obs`` except at episode ends, the other half.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

import replaystore as rs

SIZE = 84
MB = 1 << 20


def peak_rss_bytes() -> int:
    """This process's peak resident set size (VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def rss_bytes() -> int:
    """This process's resident set size now (VmRSS), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> bool:
    """Start a new peak (Linux: write 5 to clear_refs); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class BallGame:
    """Deterministic frames of a ball bouncing over a checkered court; a row's action is the
    ball's horizontal direction on its step (1: right), seen in the stack's motion except
    when the ball bounces on that very step or the episode has just begun."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        self.yy, self.xx = yy[None], xx[None]
        self.background = ((xx // 12 + yy // 12) % 2 * 20 + 30).astype(np.uint8)
        self.left = 0
        self._new_episode()

    def _new_episode(self) -> None:
        self.left = int(self.rng.integers(200, 2001))
        self.pos = self.rng.uniform(8, SIZE - 8, 2)
        self.vel = self.rng.uniform(1.0, 3.0, 2) * self.rng.choice([-1, 1], 2)

    def block(self, n: int) -> dict[str, np.ndarray]:
        """The next ``n`` rows: frames before and after each step, actions, episode ends."""
        before, after = np.empty((n, 2)), np.empty((n, 2))
        actions, ends = np.empty(n, np.int64), np.zeros(n, bool)
        for i in range(n):
            before[i] = self.pos
            self.pos += self.vel
            for axis in range(2):
                if not 4 <= self.pos[axis] <= SIZE - 4:
                    self.vel[axis] *= -1
                    self.pos[axis] = np.clip(self.pos[axis], 4, SIZE - 4)
            after[i], actions[i] = self.pos, int(self.pos[1] > before[i, 1])
            self.left -= 1
            if self.left == 0:
                ends[i] = True
                self._new_episode()
        return {"obs": self.render(before), "next_obs": self.render(after), "action": actions,
                "reward": actions.astype(np.float32), "terminated": ends,
                "truncated": np.zeros(n, bool)}

    def render(self, positions: np.ndarray) -> np.ndarray:
        """Frames with the ball at ``positions`` (rows of (y, x))."""
        frames = np.broadcast_to(self.background, (len(positions), SIZE, SIZE)).copy()
        ball = ((self.yy - positions[:, 0, None, None]) ** 2
                + (self.xx - positions[:, 1, None, None]) ** 2) < 16
        frames[ball] = 220
        return frames


def build(path: Path, frames: int, seed: int) -> None:
    shutil.rmtree(path, ignore_errors=True)
    game = BallGame(seed)
    fields = {"obs": {"shape": (SIZE, SIZE), "dtype": "uint8", "stack": 4},
              "next_obs": {"next_of": "obs"}, "action": ((), "int64")}
    with rs.create(path, fields) as store:
        for start in range(0, frames, 1000):
            store.extend(game.block(min(1000, frames - start)))


def train(path: Path, cache_bytes: int, steps: int, batch_size: int, seed: int,
          threads: int) -> dict[str, float]:
    import torch
    from torch import nn

    torch.set_num_threads(max(1, min(threads, os.cpu_count() or 1)))
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(4, 16, 8, stride=4), nn.ReLU(),
                        nn.Conv2d(16, 32, 4, stride=2), nn.ReLU(), nn.Flatten(),
                        nn.Linear(32 * 9 * 9, 128), nn.ReLU(), nn.Linear(128, 2))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    baseline = rss_bytes()
    print(f"  resident before reading anything (Python, numpy, zarr, torch, the model): "
          f"{baseline / MB:.0f} MB")
    # The sampler writes priorities into the store's index: open for writing (no rows added).
    store = rs.open(path, "a", cache_bytes=cache_bytes)
    sampler = rs.PrioritizedSampler(store, alpha=0.6, beta=rs.Linear(0.4, 1.0, steps), seed=seed)
    started, correct, seen, rows_read = time.perf_counter(), 0, 0, 0
    reading = 0.0
    for step in range(1, steps + 1):
        tick = time.perf_counter()
        batch = sampler.sample(batch_size)
        data = store.get(batch.indices, ["obs", "action"])  # (B, 4, 84, 84) stacks
        reading += time.perf_counter() - tick
        rows_read += batch_size
        x = torch.from_numpy(data["obs"]).float().div_(255.0)
        y = torch.from_numpy(data["action"])
        logits = net(x)
        losses = nn.functional.cross_entropy(logits, y, reduction="none")
        loss = (torch.from_numpy(batch.weights.astype(np.float32)) * losses).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sampler.update_priorities(batch.indices, losses.detach().numpy().astype(np.float64))
        correct += int((logits.argmax(1) == y).sum())
        seen += batch_size
        if step % max(1, steps // 6) == 0 or step == steps:
            print(f"  step {step:>5}  loss {loss.item():.3f}  accuracy {correct / seen:.2f}  "
                  f"cache {store.cached_bytes / MB:5.1f} MB  peak RSS "
                  f"{peak_rss_bytes() / MB:.0f} MB", flush=True)
            correct = seen = 0
    seconds = time.perf_counter() - started
    store.commit()
    store.close()
    return {"seconds": seconds, "rows_read": rows_read, "reading": reading,
            "baseline": baseline}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("path", nargs="?", default="runs/larger_than_ram")
    p.add_argument("--frames", type=int, default=150_000)
    p.add_argument("--cache-mb", type=float, default=32)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads: the CNN's batches are small and reads run in this same "
                   "thread, so a second OpenMP thread mostly spin-waits on a 2-core machine")
    p.add_argument("--smoke", action="store_true", help="3,000 frames, 2 MB cache, 10 steps")
    args = p.parse_args(argv)
    if args.smoke:
        args.frames, args.cache_mb, args.steps = 3000, 2, 10
    path, cache_bytes = Path(args.path), int(args.cache_mb * MB)

    started = time.perf_counter()
    build(path, args.frames, args.seed)
    raw = args.frames * SIZE * SIZE
    on_disk = disk_bytes(path)
    print(f"wrote {args.frames:,} frames in {time.perf_counter() - started:.1f} s: raw "
          f"{raw / MB:,.0f} MB, on disk {on_disk / MB:,.1f} MB "
          f"({raw / on_disk:.0f}x smaller); peak RSS while writing {peak_rss_bytes() / MB:.0f} MB")
    reset = reset_peak_rss()

    print(f"training from it with a read cache of {cache_bytes / MB:g} MB "
          f"(raw size / budget = {raw / cache_bytes:.0f}x):")
    result = train(path, cache_bytes, args.steps, args.batch_size, args.seed, args.threads)
    peak = peak_rss_bytes()
    print(f"trained {args.steps} steps ({result['rows_read']:,} stacks of 4 frames, "
          f"{result['rows_read'] / result['seconds']:,.0f} rows/s) in {result['seconds']:.1f} s: "
          f"{1e3 * result['reading'] / args.steps:.1f} ms a batch sampling and reading, "
          f"{1e3 * (result['seconds'] - result['reading']) / args.steps:.1f} ms training")
    print(f"raw size {raw / MB:,.0f} MB | cache budget {cache_bytes / MB:g} MB | peak RSS "
          f"{'of training' if reset else 'of the process'} {peak / MB:,.0f} MB "
          f"= {result['baseline'] / MB:,.0f} MB before reading + "
          f"{(peak - result['baseline']) / MB:,.0f} MB while reading and training (cache, "
          f"batches, activations); {peak / raw:.2f}x the raw size")
    return 0


if __name__ == "__main__":
    sys.exit(main())
