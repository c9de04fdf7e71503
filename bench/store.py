"""Store benchmark: append, extend, commit, reopen, random get, bytes on disk, peak RSS.

    python bench/store.py                  # 1M-row vector store, 200k-frame image store
    python bench/store.py --quick          # small sizes, a smoke run

Each phase runs in its own subprocess so its peak RSS (VmHWM) is its own. Random reads are
compared with a numpy gather from an in-RAM array of the same data (the memcpy floor).
Writes a table to stdout and JSON to bench/out/store.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workloads import VECTOR_FIELDS, MovingShapes, vector_batches

import replaystore as rs

IMAGE_FIELDS = {"obs": ((84, 84), "uint8"), "action": ((), "int64")}
BATCH = 256


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def timed_commits(store: rs.Store, make_rows, repeats: int = 20) -> float:
    """Median seconds of commit() with a small pending batch (what a training loop does)."""
    times = []
    for _ in range(repeats):
        store.extend(make_rows())
        start = time.perf_counter()
        store.commit()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_vector(path: Path, rows: int) -> dict:
    store = rs.create(path, VECTOR_FIELDS, commit_every_rows=1 << 40)
    one_by_one = min(100_000, rows // 2)
    batch = next(vector_batches(one_by_one, one_by_one))
    # As an environment hands them over: numpy observations, Python float and bools.
    values = [{"obs": batch["obs"][i], "action": batch["action"][i],
               "next_obs": batch["next_obs"][i], "reward": float(batch["reward"][i]),
               "terminated": bool(batch["terminated"][i]), "truncated": bool(batch["truncated"][i])}
              for i in range(one_by_one)]
    start = time.perf_counter()
    for row in values:
        store.append(row)
    append_rate = one_by_one / (time.perf_counter() - start)
    batches = list(vector_batches(rows - one_by_one, 1000, seed=1))
    start = time.perf_counter()
    for b in batches:
        store.extend(b)
    store.commit()
    extend_rate = (rows - one_by_one) / (time.perf_counter() - start)
    small = next(vector_batches(100, 100, seed=2))
    commit_s = timed_commits(store, lambda: small)
    store.close()
    raw = rs.open(path).schema.row_nbytes * rows
    return {"append_rows_s": append_rate, "extend_rows_s": extend_rate, "commit_ms": commit_s * 1e3,
            "disk_bytes": disk_bytes(path), "raw_bytes": raw, "peak_rss_mb": peak_rss_mb()}


def write_image(path: Path, rows: int) -> dict:
    store = rs.create(path, IMAGE_FIELDS, commit_every_rows=1 << 40)
    shapes = MovingShapes()
    one_by_one = min(5_000, rows // 4)
    frames = shapes.frames(one_by_one)
    start = time.perf_counter()
    for i, frame in enumerate(frames):
        store.append(obs=frame, action=i % 6, reward=0.0, terminated=False,
                     truncated=i % 1000 == 999)  # Python scalars, as from an environment
    append_rate = one_by_one / (time.perf_counter() - start)
    spent, done = 0.0, one_by_one
    while done < rows:
        n = min(1000, rows - done)
        batch = {"obs": shapes.frames(n), "action": np.arange(n) % 6,
                 "reward": np.zeros(n, np.float32), "terminated": np.zeros(n, bool),
                 "truncated": (np.arange(done, done + n) % 1000) == 999}
        start = time.perf_counter()
        store.extend(batch)
        spent += time.perf_counter() - start
        done += n
    start = time.perf_counter()
    store.commit()
    spent += time.perf_counter() - start
    one = {"obs": shapes.frames(1), "action": [0], "reward": [0.0], "terminated": [False],
           "truncated": [False]}
    commit_s = timed_commits(store, lambda: one)
    store.close()
    raw = rs.open(path).schema.row_nbytes * rows
    return {"append_rows_s": append_rate, "extend_rows_s": (rows - one_by_one) / spent,
            "commit_ms": commit_s * 1e3, "disk_bytes": disk_bytes(path), "raw_bytes": raw,
            "peak_rss_mb": peak_rss_mb()}


def read(path: Path, cache_bytes: int, batches: int) -> dict:
    opens = []
    for _ in range(20):
        start = time.perf_counter()
        store = rs.open(path, cache_bytes=cache_bytes)
        opens.append(time.perf_counter() - start)
    rng = np.random.default_rng(0)
    n = len(store)
    for _ in range(max(50, batches // 10)):  # warm the cache
        store.get(rng.integers(0, n, BATCH))
    indices = rng.integers(0, n, (batches, BATCH))
    start = time.perf_counter()
    for idx in indices:
        store.get(idx)
    rate = batches / (time.perf_counter() - start)
    rss = peak_rss_mb()
    # The floor: the same gather from arrays already in RAM (after measuring RSS above).
    subset = np.sort(rng.choice(n, min(n, 20_000), replace=False))
    arrays = store.get(subset)
    local = rng.integers(0, len(subset), (batches, BATCH))
    start = time.perf_counter()
    for idx in local:
        {k: v[idx] for k, v in arrays.items()}
    floor = batches / (time.perf_counter() - start)
    return {"reopen_ms": statistics.median(opens) * 1e3, "get_batches_s": rate,
            "numpy_gather_batches_s": floor, "cache_bytes": cache_bytes,
            "cached_bytes": store.cached_bytes, "peak_rss_mb": rss}


def child(phase: str, path: Path, rows: int, cache_bytes: int, batches: int) -> dict:
    if phase == "write-vector":
        return write_vector(path, rows)
    if phase == "write-image":
        return write_image(path, rows)
    return read(path, cache_bytes, batches)


def run_phase(phase: str, path: Path, rows: int, cache_bytes: int = 0, batches: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--path", str(path), "--rows", str(rows),
           "--cache-bytes", str(cache_bytes), "--batches", str(batches)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--vector-rows", type=int, default=1_000_000)
    parser.add_argument("--image-rows", type=int, default=200_000)
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "store.json"))
    parser.add_argument("--dir", default=None, help="where to build the stores (a temp dir)")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cache-bytes", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--batches", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(child(args.phase, Path(args.path), args.rows, args.cache_bytes,
                               args.batches)))
        return
    vector_rows = 20_000 if args.quick else args.vector_rows
    image_rows = 4_000 if args.quick else args.image_rows
    batches = 200 if args.quick else 3000
    work = Path(tempfile.mkdtemp(prefix="rs-bench-", dir=args.dir))
    try:
        results = {}
        vec, img = work / "vector", work / "image"
        results["vector"] = {**run_phase("write-vector", vec, vector_rows),
                             **_prefix(run_phase("read", vec, vector_rows,
                                                 rs.store.DEFAULT_CACHE_BYTES, batches))}
        results["image"] = run_phase("write-image", img, image_rows)
        quarter = results["image"]["raw_bytes"] // 4
        results["image"].update(_prefix(run_phase("read", img, image_rows, quarter,
                                                  batches // 10)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(results, vector_rows, image_rows)
    doc = {"results": results, "vector_rows": vector_rows, "image_rows": image_rows,
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                       "platform": platform.platform(), "numpy": np.__version__,
                       "replaystore": rs.__version__},
           "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(f"\nJSON written to {args.out}")


def _prefix(read_result: dict) -> dict:
    return {("read_peak_rss_mb" if k == "peak_rss_mb" else k): v for k, v in read_result.items()}


def report(results: dict, vector_rows: int, image_rows: int) -> None:
    rows = [
        ("append one-by-one (rows/s)", "append_rows_s", "{:,.0f}"),
        ("extend 1000-row batches (rows/s)", "extend_rows_s", "{:,.0f}"),
        ("commit, small batch pending (ms)", "commit_ms", "{:.2f}"),
        ("reopen (ms)", "reopen_ms", "{:.2f}"),
        ("random get(256), warm (batches/s)", "get_batches_s", "{:,.0f}"),
        ("  numpy gather in RAM (batches/s)", "numpy_gather_batches_s", "{:,.0f}"),
        ("bytes on disk (MB)", "disk_bytes", "{:,.1f}"),
        ("raw bytes (MB)", "raw_bytes", "{:,.1f}"),
        ("read cache budget (MB)", "cache_bytes", "{:,.1f}"),
        ("peak RSS, writer (MB)", "peak_rss_mb", "{:,.0f}"),
        ("peak RSS, reader (MB)", "read_peak_rss_mb", "{:,.0f}"),
    ]
    head = f"{'metric':36s} {f'vector ({vector_rows:,})':>18s} {f'image ({image_rows:,})':>18s}"
    print(head)
    print("-" * len(head))
    for label, key, fmt in rows:
        cells = []
        for kind in ("vector", "image"):
            value = results[kind][key]
            if key.endswith("bytes"):
                value = value / 1e6
            cells.append(fmt.format(value))
        print(f"{label:36s} {cells[0]:>18s} {cells[1]:>18s}")
    for kind in ("vector", "image"):
        r = results[kind]
        print(f"{kind}: compression {r['raw_bytes'] / r['disk_bytes']:.1f}x")


if __name__ == "__main__":
    main()
