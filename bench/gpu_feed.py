"""GPU feed: batches/s that reach a CUDA device from an image store, against an in-RAM tensor.

    python bench/gpu_feed.py                 # needs CUDA; 50k rows, batch 256, 0/2/4/8 workers,
                                             # median of 3 interleaved rounds
    python bench/gpu_feed.py --quick

For each workload of bench/loader.py ("frames": uint8[84,84] a row; "atari": 4-frame stacks
rebuilt from single frames, next_obs derived), every batch of a ``ReplayLoader`` with
``pin_memory=True`` is copied to the GPU with ``non_blocking=True`` and consumed there, two
ways: "mean" casts every field to float and reduces it (the bare feed: the copy cannot be
skipped), "dqn" takes an Adam step of the Nature DQN network on the observations (a real
training step). The reference is the same loop over the same rows held in RAM as one tensor:
a random batch gathered into one of two pinned buffers and copied the same way, i.e. what
feeding from memory costs. The ratio says whether reading from the store keeps the GPU busy.
Writes bench/out/gpu_feed.json. Never part of the tests or CI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
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


class NatureDQN(torch.nn.Module):
    """The Atari DQN network (Mnih et al. 2015), to time a real training step per batch."""

    def __init__(self, channels: int, actions: int = 6) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(channels, 32, 8, stride=4), torch.nn.ReLU(),
            torch.nn.Conv2d(32, 64, 4, stride=2), torch.nn.ReLU(),
            torch.nn.Conv2d(64, 64, 3, stride=1), torch.nn.ReLU(), torch.nn.Flatten(),
            torch.nn.Linear(3136, 512), torch.nn.ReLU(), torch.nn.Linear(512, actions))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.net(frames.float() / 255.0)


def consumer(kind: str) -> Callable[[dict[str, torch.Tensor]], None]:
    """What the GPU does with each batch: "mean" reduces every field (the bare feed),
    "dqn" takes an Adam step of NatureDQN on the observations (a real training step)."""
    if kind == "mean":
        total = torch.zeros((), device="cuda")

        def reduce(batch: dict[str, torch.Tensor]) -> None:
            nonlocal total
            for tensor in batch.values():
                total = total + tensor.float().mean()
        return reduce
    made: list[tuple[NatureDQN, torch.optim.Optimizer]] = []

    def train(batch: dict[str, torch.Tensor]) -> None:
        obs = batch["obs"] if batch["obs"].dim() == 4 else batch["obs"].unsqueeze(1)
        if not made:  # channels: 4 for stacks, 1 for single frames
            model = NatureDQN(obs.shape[1]).cuda()
            made.append((model, torch.optim.Adam(model.parameters(), lr=1e-4)))
        model, optimizer = made[0]
        q = model(obs).gather(1, batch["action"].view(-1, 1))
        loss = torch.nn.functional.smooth_l1_loss(q.squeeze(1), torch.zeros_like(q.squeeze(1)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return train


def feed_rate(batches: Iterator[Batch], count: int, consume: Callable[[Batch], None],
              warmup: int = 20) -> float:
    """Batches/s delivered to the GPU and consumed there."""
    device = torch.device("cuda")

    def step() -> None:
        batch = next(batches)
        consume({name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()})

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(count):
        step()
    torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def measure(batches: Generator[Batch, None, None], count: int,
            consume: Callable[[Batch], None]) -> float:
    try:
        return feed_rate(batches, count, consume)
    finally:
        batches.close()  # stops a loader's workers before the next configuration starts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--workers", default="0,2,4,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--consume", default="mean,dqn",
                        help="mean: reduce each field on the GPU; dqn: a NatureDQN Adam step")
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "gpu_feed.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_feed.py needs a CUDA device (torch.cuda.is_available() is False)")
    rows, count = (5_000, 50) if args.quick else (args.rows, args.batches)
    args.rounds = 1 if args.quick else args.rounds
    workers = [int(w) for w in args.workers.split(",")]
    work = Path(tempfile.mkdtemp(prefix="rs-bench-gpu-"))
    results: dict[str, dict[str, object]] = {}
    try:
        for name, fields in WORKLOADS.items():
            build(work / name, fields, rows)
            path = work / name
            for kind in args.consume.split(","):
                consume = consumer(kind)
                rounds: dict[str, list[float]] = {}
                for _ in range(args.rounds):  # interleaved, so machine noise hits all alike
                    rounds.setdefault("in_ram", []).append(
                        measure(in_ram_batches(path, args.batch, 0), count, consume))
                    for w in workers:
                        rounds.setdefault(f"workers{w}", []).append(
                            measure(store_batches(path, args.batch, w, 0), count, consume))
                rates = {key: statistics.median(values) for key, values in rounds.items()}
                results[f"{name}/{kind}"] = {**rates, "rounds": rounds}
                line = ", ".join(f"{k} {v:,.0f} b/s ({v / rates['in_ram']:.2f}x)"
                                 for k, v in rates.items())
                print(f"{name:7s} {kind:4s} batch {args.batch}: {line}", flush=True)
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
