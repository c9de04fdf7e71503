"""DataLoader benchmark: batches/s with 0 and 2 workers over image stores.

    python bench/loader.py               # 50k rows, batch 256, 5 interleaved rounds
    python bench/loader.py --quick

Workloads: "frames" (obs uint8[84,84] per row) and "atari" (obs stored as single frames read
as 4-frame stacks, next_obs kept only at episode ends and rebuilt: 8 frames decoded a row).
Rounds interleave the configurations so machine noise hits them alike; the ratio of medians
is printed. Writes bench/out/loader.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workloads import MovingShapes

import replaystore as rs
from replaystore.torch import ReplayDataset, ReplayLoader

WORKLOADS = {
    "frames": {"obs": ((84, 84), "uint8"), "action": ((), "int64")},
    "atari": {"obs": {"shape": (84, 84), "dtype": "uint8", "stack": 4},
              "next_obs": {"next_of": "obs"}, "action": ((), "int64")},
}


def build(path: Path, fields: dict, rows: int) -> None:
    shapes = MovingShapes()
    with rs.create(path, fields) as store:
        for first in range(0, rows, 1000):
            n = min(1000, rows - first)
            frames = shapes.frames(n + 1)
            batch = {"obs": frames[:-1], "action": np.arange(n) % 6,
                     "reward": np.zeros(n, np.float32), "terminated": np.zeros(n, bool),
                     "truncated": (np.arange(first, first + n) % 500) == 499}
            if "next_obs" in fields:
                batch["next_obs"] = frames[1:]
            store.extend(batch)


def loader_rate(path: Path, batch: int, batches: int, workers: int) -> float:
    dataset = ReplayDataset(path, batch, seed=0, batches_per_epoch=batches + 20)
    loader = ReplayLoader(dataset, num_workers=workers,
                          multiprocessing_context="fork" if workers else None)
    it = iter(loader)
    for _ in range(20):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    elapsed = time.perf_counter() - start
    del it
    return batches / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "loader.json"))
    args = parser.parse_args()
    rows, rounds, batches = (5_000, 2, 30) if args.quick else (args.rows, args.rounds, 200)
    work = Path(tempfile.mkdtemp(prefix="rs-bench-loader-"))
    results = {}
    try:
        for name, fields in WORKLOADS.items():
            build(work / name, fields, rows)
            rates: dict[int, list[float]] = {0: [], 2: []}
            for _ in range(rounds):
                for workers in (0, 2):
                    rates[workers].append(loader_rate(work / name, args.batch, batches, workers))
            one, two = statistics.median(rates[0]), statistics.median(rates[2])
            results[name] = {"workers0_batches_s": one, "workers2_batches_s": two,
                             "ratio": two / one, "rounds": rates}
            print(f"{name:7s} batch {args.batch}: 0 workers {one:8.1f} b/s, 2 workers "
                  f"{two:8.1f} b/s, ratio {two / one:.2f}x", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "batch": args.batch,
                                          "results": results}, indent=2))


if __name__ == "__main__":
    main()
