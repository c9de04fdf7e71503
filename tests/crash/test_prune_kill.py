"""SIGKILL ``replaystore prune`` and ``compact`` mid-rewrite: the old store or the new, never a mix."""

from __future__ import annotations

import random
import signal
import subprocess
import time

import numpy as np
import pytest

import replaystore as rs

ROWS = 120_000


def contents(path) -> dict[str, np.ndarray]:
    """Every committed row, oldest first, and its priority."""
    with rs.open(path) as store:
        return {**store.get(store.slots()),
                "priority": store.priority_index().priorities(store.slots())}


@pytest.fixture
def big_store(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "store"
    with rs.create(path, {"obs": ((17,), "float32"), "action": ((6,), "float32")}) as store:
        store.extend({"obs": rng.random((ROWS, 17), dtype=np.float32),
                      "action": rng.random((ROWS, 6), dtype=np.float32),
                      "reward": rng.random(ROWS).astype(np.float32),
                      "terminated": rng.random(ROWS) < 0.002, "truncated": np.zeros(ROWS, bool)})
        per = rs.PrioritizedSampler(store, seed=0)
        per.update_priorities(store.slots(), rng.random(ROWS) + 0.5)
    return path


def test_killed_rewrites_leave_the_old_or_the_new_store(big_store, replaystore_exe):
    rng = random.Random(5)
    old = contents(big_store)
    outcomes = {"old": 0, "new": 0}
    for attempt in range(8):
        command = "compact" if attempt % 4 == 3 else "prune"
        keep = len(old["obs"]) - 2_000
        args = [replaystore_exe, command, str(big_store)]
        if command == "prune":
            args += ["--keep-last", str(keep), "--by", "rows"]
        child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 1.5))
        child.send_signal(signal.SIGKILL)
        child.wait()

        now = contents(big_store)
        if command == "compact" or len(now["obs"]) == len(old["obs"]):
            expected, outcome = old, "old"
        else:
            expected = {name: values[-keep:] for name, values in old.items()}
            outcome = "new"
        outcomes[outcome] += 1
        for name, values in expected.items():
            np.testing.assert_array_equal(now[name], values, err_msg=f"{command} {name}")
        assert rs.verify(big_store).ok
        old = now
    # The staging folder of a killed rewrite is removed by the next one.
    rs.compact(big_store)
    assert [p.name for p in big_store.parent.iterdir()] == ["store"]
    assert outcomes["old"] and outcomes["new"], outcomes
