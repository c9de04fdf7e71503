"""Writer child for the SIGKILL crash tests: appends deterministic rows to a store until killed.

    python tests/crash/writer_child.py PATH SEED CAPACITY MODE

Creates the store at PATH (CAPACITY 0: unbounded, else a ring of that many rows) or, when it
exists, reopens it with ``mode="a"`` and continues at the committed end. Row ``g`` holds
``checks.expected_rows([g])``, so whatever survives a crash can be checked without a log.

MODE picks the mix of writes: ``mixed`` (single appends and batches of a few chunks),
``append`` (single rows only), ``extend`` (batches only) or ``burst`` (batches up to 2.5 times
the capacity, rare commits: the ring overwrites rows that were never committed). SEED draws
the schema's chunk sizes (on creation), the auto-commit threshold and the write pattern.

Output, one flushed line each, after the fact it reports is durable:

    open START END      the committed window found on opening
    commit START END    after an explicit commit() returned
    auto START END      after an append/extend that auto-committed returned

The child never exits by itself: past ``checks.ROW_LIMIT`` rows it commits and sleeps.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
from pathlib import Path

import numpy as np
from checks import MODES, ROW_LIMIT, expected_rows, store_fields

import replaystore as rs


def report(kind: str, manifest: rs.Manifest) -> None:
    """Print one line about the committed window; flushed, so a kill cannot lose it."""
    print(f"{kind} {manifest.start} {manifest.end}", flush=True)


def open_store(path: Path, seed: int, capacity: int | None, rng: random.Random) -> rs.Store:
    """Create the store, or reopen it for appending, with a random auto-commit policy."""
    commit_rows = rng.choice([7, 31, 100, 257, 1000])
    commit_seconds = rng.choice([0.05, 0.3, 30.0])
    if path.exists():
        return rs.open(path, mode="a", commit_every_rows=commit_rows,
                       commit_every_seconds=commit_seconds)
    return rs.create(path, store_fields(random.Random(seed)), capacity=capacity,
                     commit_every_rows=commit_rows, commit_every_seconds=commit_seconds)


def batch_size(mode: str, capacity: int | None, rng: random.Random) -> int:
    """Rows in the next write; 0 means a single ``append``."""
    if mode == "append" or (mode == "mixed" and rng.random() < 0.5):
        return 0
    if mode == "burst":
        top = int(2.5 * capacity) if capacity else 600
        return rng.randint(1, top)
    return rng.choice([1, 2, 3, rng.randint(4, 40), rng.randint(41, 200)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("seed", type=int)
    parser.add_argument("capacity", type=int, help="ring size, 0 for an unbounded store")
    parser.add_argument("mode", choices=MODES)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    capacity = args.capacity or None
    commit_chance = rng.choice([0.002, 0.02, 0.1, 0.4]) if args.mode != "burst" else 0.01
    store = open_store(args.path, args.seed, capacity, rng)
    report("open", store.manifest)
    row = store.manifest.end
    last_end = row
    first = True
    while row < ROW_LIMIT:
        count = min(batch_size(args.mode, capacity, rng), ROW_LIMIT - row)
        if count == 0:
            store.append(**{name: value[0] for name, value in expected_rows([row]).items()})
            row += 1
        else:
            store.extend(expected_rows(np.arange(row, row + count)))
            row += count
        if store.manifest.end + store.pending != row:
            sys.exit(f"writer lost count: manifest end {store.manifest.end} + pending "
                     f"{store.pending} != next row {row}")
        if store.manifest.end != last_end:
            report("auto", store.manifest)
        if first or rng.random() < commit_chance:
            report("commit", store.commit())
            first = False
        last_end = store.manifest.end
    report("commit", store.commit())
    while True:  # never exit by ourselves: the parent kills us
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
