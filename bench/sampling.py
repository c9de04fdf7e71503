"""Sampler benchmark: prioritized sample+update, uniform and sequence sampling, index open.

    python bench/sampling.py            # 1M-row vector store, 16M-slot index
    python bench/sampling.py --quick    # small sizes

Sampling is timed on indices only (what a learner pays on top of reading rows, which
bench/store.py measures). Writes bench/out/sampling.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workloads import VECTOR_FIELDS, vector_batches

import replaystore as rs

BATCH = 256


def rate(fn, seconds: float = 3.0) -> float:
    """Calls of ``fn`` per second, after a warm-up."""
    for _ in range(20):
        fn()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(50):
            fn()
        calls += 50
    return calls / (time.perf_counter() - start)


def open_index_ms(path: Path) -> float:
    """Median time to open the store and map its priority index, in fresh processes."""
    code = ("import sys, time; t = time.perf_counter(); import replaystore as rs; "
            "s = rs.open(sys.argv[1]); i0 = time.perf_counter(); s.priority_index(); "
            "print(time.perf_counter() - i0)")
    times = [float(subprocess.run([sys.executable, "-c", code, str(path)], check=True,
                                  capture_output=True, text=True).stdout) for _ in range(7)]
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "sampling.json"))
    args = parser.parse_args()
    rows = 20_000 if args.quick else 1_000_000
    big_slots = 1 << (16 if args.quick else 24)
    work = Path(tempfile.mkdtemp(prefix="rs-bench-sampling-"))
    results: dict[str, float] = {}
    try:
        store = rs.create(work / "vector", VECTOR_FIELDS, capacity=rows)
        for batch in vector_batches(rows, 10_000):
            store.extend(batch)
        store.commit()
        rng = np.random.default_rng(0)
        per = rs.PrioritizedSampler(store, alpha=0.6, beta=0.4, seed=0)
        td = rng.random((1024, BATCH))
        step = iter(range(1 << 62))

        def prioritized() -> None:
            batch = per.sample(BATCH)
            per.update_priorities(batch.indices, td[next(step) % 1024])

        results["prioritized_sample_update_per_s"] = rate(prioritized)
        results["prioritized_sample_only_per_s"] = rate(lambda: per.sample(BATCH))
        uniform = rs.UniformSampler(store, seed=0)
        results["uniform_sample_per_s"] = rate(lambda: uniform.sample(BATCH))
        results["uniform_sample_get_per_s"] = rate(lambda: store.get(uniform.sample(BATCH).indices))
        sequences = rs.SequenceSampler(store, 16, seed=0)
        results["sequence16_sample_per_s"] = rate(lambda: sequences.sample(32))
        start = time.perf_counter()
        store.commit()
        results["commit_with_index_ms"] = (time.perf_counter() - start) * 1e3
        store.close()

        big = rs.create(work / "big", {"x": ((1,), "float32")}, capacity=big_slots)
        big.extend({"x": np.zeros((1000, 1), np.float32), "reward": np.zeros(1000),
                    "terminated": np.zeros(1000, bool), "truncated": np.zeros(1000, bool)})
        big.commit()
        big.priority_index(0.6)
        big.close()
        results["open_index_ms_16M" if not args.quick else "open_index_ms_64k"] = \
            open_index_ms(work / "big")
        tree = next((work / "big" / "_replaystore").glob("priority-*.tree"))
        results["index_file_mb"] = tree.stat().st_size / 1e6
        results["index_disk_mb"] = tree.stat().st_blocks * 512 / 1e6
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for key, value in results.items():
        print(f"{key:36s} {value:>12,.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "index_slots": big_slots,
                                          "results": results}, indent=2))


if __name__ == "__main__":
    main()
