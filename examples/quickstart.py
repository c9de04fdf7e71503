"""Write a small replay store, reopen it in a fresh handle, sample from it and describe it.

    python examples/quickstart.py [PATH] [--rows N]

The transitions come from a tiny simulated pendulum-like system, so the script needs nothing
but replaystore itself.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import replaystore as rs


def simulate(rows: int, seed: int = 0):
    """Yield (obs, action, reward, next_obs, terminated, truncated) of a noisy 4-D system."""
    rng = np.random.default_rng(seed)
    obs, steps = rng.normal(size=4).astype(np.float32), 0
    for _ in range(rows):
        action = int(rng.integers(2))
        next_obs = (0.98 * obs + 0.05 * (action * 2 - 1) + rng.normal(0, 0.01, 4)).astype(
            np.float32)
        steps += 1
        terminated = bool(np.abs(next_obs[0]) > 2.0)
        truncated = steps >= 200
        yield obs, action, 1.0, next_obs, terminated, truncated
        obs = next_obs
        if terminated or truncated:
            obs, steps = rng.normal(size=4).astype(np.float32), 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default="runs/quickstart")
    parser.add_argument("--rows", type=int, default=50_000)
    args = parser.parse_args()

    fields = {"obs": ((4,), "float32"), "action": ((), "int64"), "next_obs": ((4,), "float32")}
    start = time.perf_counter()
    with rs.create(args.path, fields, capacity=None, overwrite=True) as store:
        for obs, action, reward, next_obs, term, trunc in simulate(args.rows):
            store.append(obs=obs, action=action, reward=reward, next_obs=next_obs,
                         terminated=term, truncated=trunc)
    print(f"wrote {args.rows:,} transitions in {time.perf_counter() - start:.2f} s "
          f"to {args.path}")

    store = rs.open(args.path)  # a reader, as another process would open it
    batch = store.get(np.random.default_rng(1).integers(0, len(store), 256))
    print("sampled a batch: " + ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in batch.items()))
    episodes = store.episodes
    print(f"{len(store):,} rows, {len(episodes):,} episodes, mean return "
          f"{episodes['return'].mean():.1f}, mean length {episodes['length'].mean():.1f}")
    print(f"next: replaystore info {args.path}")


if __name__ == "__main__":
    main()
