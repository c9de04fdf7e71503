"""GPU feed: batches/s that reach a CUDA device from an image store, against an in-RAM tensor.

    python bench/gpu_feed.py                 # needs CUDA; 50k rows, batch 256, 0/2/4/8 workers
    python bench/gpu_feed.py --quick

For each workload of bench/loader.py ("frames": uint8[84,84] a row; "atari": 4-frame stacks
rebuilt from single frames, next_obs derived), every batch of a ``ReplayLoader`` with
``pin_memory=True`` is copied to the GPU with ``non_blocking=True`` and consumed there (cast to
float and reduced, so the copy cannot be skipped). The reference is the same loop over the
same rows held in RAM as one tensor: a random batch gathered into one of two pinned buffers
and copied the same way, i.e. what feeding from memory costs. The ratio says whether reading
from the store keeps up. Writes bench/out/gpu_feed.json. Never part of the tests or CI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Generator, Iterator
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader import WORKLOADS, build

import replaystore as rs
from replaystore.torch import ReplayDataset, ReplayLoader

Batch = dict[str, torch.Tensor]


def in_ram_batches(path: Path, batch: int, seed: int) -> Generator[Batch, None, None]:
    """Random batches of the store's rows gathered from RAM into two alternating pinned buffers."""
    with rs.open(path) as store:
        data = store.get(np.arange(len(store)))
    rows = {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in data.items()}
    buffers = [{name: torch.empty((batch, *t.shape[1:]), dtype=t.dtype).pin_memory()
                for name, t in rows.items()} for _ in range(2)]
    copied = [torch.cuda.Event(), torch.cuda.Event()]
    generator = torch.Generator().manual_seed(seed)
    for step in range(1 << 62):
        which = step % 2
        copied[which].synchronize()  # the GPU has finished reading this buffer
        index = torch.randint(len(data["action"]), (batch,), generator=generator)
        for name, source in rows.items():
            torch.index_select(source, 0, index, out=buffers[which][name])
        yield buffers[which]
        copied[which].record()


def store_batches(path: Path, batch: int, workers: int, seed: int) -> Generator[Batch, None, None]:
    loader = ReplayLoader(ReplayDataset(path, batch, seed=seed), num_workers=workers,
                          pin_memory=True, multiprocessing_context="fork" if workers else None)
    yield from loader


def feed_rate(batches: Iterator[Batch], count: int, warmup: int = 20) -> float:
    """Batches/s delivered to the GPU and consumed there."""
    device = torch.device("cuda")
    total = torch.zeros((), device=device)

    def step() -> None:
        nonlocal total
        batch = next(batches)
        for tensor in batch.values():
            on_gpu = tensor.to(device, non_blocking=True)
            total = total + on_gpu.float().mean()

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(count):
        step()
    torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def measure(batches: Generator[Batch, None, None], count: int) -> float:
    try:
        return feed_rate(batches, count)
    finally:
        batches.close()  # stops a loader's workers before the next configuration starts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--workers", default="0,2,4,8")
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "gpu_feed.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_feed.py needs a CUDA device (torch.cuda.is_available() is False)")
    rows, count = (5_000, 50) if args.quick else (args.rows, args.batches)
    workers = [int(w) for w in args.workers.split(",")]
    work = Path(tempfile.mkdtemp(prefix="rs-bench-gpu-"))
    results: dict[str, dict[str, float]] = {}
    try:
        for name, fields in WORKLOADS.items():
            build(work / name, fields, rows)
            path = work / name
            rates = {"in_ram": measure(in_ram_batches(path, args.batch, 0), count)}
            for w in workers:
                rates[f"workers{w}"] = measure(store_batches(path, args.batch, w, 0), count)
            results[name] = rates
            line = ", ".join(f"{k} {v:,.0f} b/s ({v / rates['in_ram']:.2f}x)"
                             for k, v in rates.items())
            print(f"{name:7s} batch {args.batch}: {line}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "rows": rows, "batch": args.batch, "batches": count, "results": results,
        "machine": {"gpu": torch.cuda.get_device_name(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "replaystore": rs.__version__}}, indent=2))


if __name__ == "__main__":
    main()
