"""SIGKILL a writer mid-work, many times over the same store, and check what survives.

Each case drives one store through several cycles: writer_child.py appends deterministic rows
(mixing single appends, batches, explicit and automatic commits, with tiny chunks so chunk
switches and ring wraps happen every few rows), is killed with SIGKILL 20-400 ms after its first
commit, and the store is checked read-only (see checks.verify_store) before the next child
reopens it with mode="a" and carries on.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checks import MODES, Lineage

# (capacity or None, writer mode, kills); the kills add up to at least MIN_KILLS.
CASES = {
    "unbounded-mixed": (None, "mixed", 8),
    "unbounded-extend": (None, "extend", 7),
    "unbounded-append": (None, "append", 6),
    "ring300-mixed": (300, "mixed", 9),
    "ring50-mixed": (50, "mixed", 8),  # smaller than some chunks: a chunk stays open across wraps
    "ring120-burst": (120, "burst", 8),  # batches larger than the ring, rare commits
    "ring97-append": (97, "append", 7),
    "ring1000-extend": (1000, "extend", 7),
}
MIN_KILLS = 60
# Known issue: the writer updates each field's zarr.json shape *after* replacing the manifest
# (Writer.sync_array_shapes), so a kill in between leaves plain zarr readers seeing fewer rows
# than are committed until a writer reopens the store. Such cycles end the case as an xfail once
# every other check has passed; set this to False to make them fail.
ZARR_SHAPE_LAG_IS_KNOWN = True


def test_enough_kills() -> None:
    assert sum(kills for _, _, kills in CASES.values()) >= MIN_KILLS
    assert {mode for _, mode, _ in CASES.values()} == set(MODES)


@pytest.mark.parametrize(("capacity", "mode", "kills"), list(CASES.values()), ids=list(CASES))
def test_kill_restart_cycles(tmp_path: Path, capacity: int | None, mode: str, kills: int) -> None:
    seed = sum(map(ord, f"{capacity}-{mode}"))
    rng = random.Random(seed)
    lineage = Lineage(tmp_path / "store", capacity=capacity, mode=mode, seed=seed,
                      log_dir=tmp_path / "logs")
    lagged = []
    for i in range(kills):
        run, verdict = lineage.cycle(rng.uniform(0.02, 0.4))
        context = f"cycle {i} (printed end {run.printed_end}): " + "; ".join(verdict.problems)
        assert run.killed, context
        assert verdict.ok, context
        assert verdict.end >= run.printed_end > 0, context
        if verdict.zarr_shape_lag:
            assert ZARR_SHAPE_LAG_IS_KNOWN, context
            lagged.append(f"cycle {i}: end {verdict.end}")
    if lagged:
        pytest.xfail(f"known issue: zarr shapes lagged the manifest after {len(lagged)} of "
                     f"{kills} kills ({', '.join(lagged)})")
