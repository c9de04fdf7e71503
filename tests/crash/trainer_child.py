"""Trainer child for the exact-resume crash tests: prioritized replay until done or killed.

    python tests/crash/trainer_child.py PATH --steps N --commit-every K [--seed S] [--append]
                                        [--die-at STEP]

Opens the existing store at PATH with ``mode="a"`` and builds
``PrioritizedSampler(name="per", seed=S)``, which restores itself (bit generator, step counter)
from the last commit if there is one. Then, until ``sampler.steps == N``, one training step:

1. ``batch = sampler.sample(32)``; ``step = sampler.steps`` (1 for the first batch ever);
2. new priorities, a deterministic function of the batch's slots and ``step`` (some are 0,
   batches often repeat a slot: the last value wins);
3. with ``--append``, one new row (its content a function of its global row number alone);
4. every K steps ``store.commit()``;
5. with ``--die-at STEP``, after step STEP the child SIGKILLs itself (a deterministic crash).

Output, one flushed line each (a line is printed after the fact it reports):

    resume STEP START END       the sampler's step and the committed window found on opening
    batch STEP DIGEST I0,I1,... the batch's slots; DIGEST hashes its probabilities and weights
    commit STEP                 after commit() returned
    done STEP                   after the last step's commit; the child then exits 0
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sys
from pathlib import Path

import numpy as np

import replaystore as rs

BATCH = 32
ALPHA = 0.6
BETA = rs.Linear(0.4, 1.0, 700)
EPISODE = 9  # appended row g ends an episode when g % EPISODE == EPISODE - 1


def priorities_for(indices: np.ndarray, step: int) -> np.ndarray:
    """The 'TD errors' of a batch: a function of (slot, step) only; about 1 in 100 is 0."""
    mixed = (indices.astype(np.int64) * 2654435761 + step * 40503) % 1009
    return mixed / 97.0


def row_for(g: int) -> dict[str, object]:
    return {"obs": np.array([g, -g], np.float32), "reward": float(g % 5),
            "terminated": g % EPISODE == EPISODE - 1, "truncated": False}


def emit(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--commit-every", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--append", action="store_true")
    parser.add_argument("--die-at", type=int, default=-1)
    args = parser.parse_args(argv)

    # Auto-commits would save the sampler between our explicit commits; keep them out of reach.
    store = rs.open(args.path, "a", commit_every_rows=1 << 40, commit_every_seconds=1e9)
    sampler = rs.PrioritizedSampler(store, alpha=ALPHA, beta=BETA, seed=args.seed, name="per")
    emit(f"resume {sampler.steps} {store.manifest.start} {store.manifest.end}")
    while sampler.steps < args.steps:
        batch = sampler.sample(BATCH)
        step = sampler.steps
        digest = hashlib.sha256(batch.probabilities.tobytes() + batch.weights.tobytes())
        emit(f"batch {step} {digest.hexdigest()[:24]} {','.join(map(str, batch.indices.tolist()))}")
        sampler.update_priorities(batch.indices, priorities_for(batch.indices, step))
        if args.append:
            store.append(row_for(store.manifest.end + store.pending))
        if step % args.commit_every == 0:
            store.commit()
            emit(f"commit {step}")
        if step == args.die_at:
            os.kill(os.getpid(), signal.SIGKILL)
    if store.pending or store.priority_index().has_uncommitted_changes():
        store.commit()
    emit(f"done {sampler.steps}")
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
