"""SIGKILL ``replaystore prune`` and ``compact`` mid-rewrite, and a prune at each step of its folder
swap (with and without RENAME_EXCHANGE): the old store or the new, never a mix, and nothing left
beside the store that stops the next prune, compact or repair."""

from __future__ import annotations

import importlib
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import replaystore as rs
from replaystore.layout import META

ROWS = 120_000


def contents(path) -> dict[str, np.ndarray]:
    """Every committed row, oldest first, and its priority."""
    with rs.open(path) as store:
        return {**store.get(store.slots()),
                "priority": store.priority_index().priorities(store.slots())}


def filled_store(path: Path, rows: int) -> Path:
    """A store of ``rows`` random rows with a priority index, committed."""
    rng = np.random.default_rng(0)
    with rs.create(path, {"obs": ((17,), "float32"), "action": ((6,), "float32")}) as store:
        store.extend({"obs": rng.random((rows, 17), dtype=np.float32),
                      "action": rng.random((rows, 6), dtype=np.float32),
                      "reward": rng.random(rows).astype(np.float32),
                      "terminated": rng.random(rows) < 0.002, "truncated": np.zeros(rows, bool)})
        store.commit()
        per = rs.PrioritizedSampler(store, seed=0)
        per.update_priorities(store.slots(), rng.random(rows) + 0.5)
    return path


@pytest.fixture
def big_store(tmp_path):
    return filled_store(tmp_path / "store", ROWS)


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


# -- the folder swap itself, killed at each of its steps ------------------------------------------

SWAP_CHILD = Path(__file__).resolve().with_name("swap_child.py")
SMALL_ROWS, KEEP = 3_000, 2_500


def run_swap(path: Path, kill_at: int, *, exchange: bool) -> list[str]:
    """Run swap_child.py (prune to KEEP rows) on ``path``; return the steps it printed before
    it finished (kill_at 0) or sent itself SIGKILL at step ``kill_at``."""
    child = subprocess.run([sys.executable, str(SWAP_CHILD), str(path), str(KEEP),
                            str(kill_at), str(int(exchange))],
                           capture_output=True, text=True, timeout=120)
    lines = child.stdout.splitlines()
    if kill_at and child.returncode != -signal.SIGKILL:
        assert child.returncode == 0 and lines[-1] == "done", child.stderr[-3000:]
    elif not kill_at:
        assert child.returncode == 0, child.stderr[-3000:]
    return [line for line in lines if line.startswith("step ")]


def kill_points(steps: list[str]) -> list[int]:
    """Every step, except inside an rmtree: only its first, middle and last step there."""
    points, run = [], []
    for number, line in enumerate(steps, 1):
        inside = " in " in line
        if run and (not inside or line.split(" in ")[1] != steps[run[-1] - 1].split(" in ")[1]):
            points += sorted({run[0], run[len(run) // 2], run[-1]})
            run = []
        if inside:
            run.append(number)
        else:
            points.append(number)
    if run:
        points += sorted({run[0], run[len(run) // 2], run[-1]})
    return points


def where(step: str) -> str:
    """A step without its number, and inside an rmtree only the folder (the order in which
    rmtree meets the files may differ between copies)."""
    what = step.split(" ", 2)[2]
    return what.split(" ", 1)[0] + " in " + what.split(" in ")[1] if " in " in what else what


def leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


def old_or_new(path: Path, old: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> str:
    """Which of ``old`` and ``new`` the store at ``path`` holds, exactly (else fail)."""
    now = contents(path)
    for outcome, expected in (("new", new), ("old", old)):
        if all(np.array_equal(now[name], values) for name, values in expected.items()):
            return outcome
    pytest.fail(f"the store holds {len(now['obs'])} rows, neither the old {len(old['obs'])} "
                f"nor the new {len(new['obs'])} exactly")


def follow_up(path: Path, which: str) -> None:
    """Run a prune, compact or repair after a kill: it must succeed, keep the right rows and
    leave no sibling folder behind."""
    now = contents(path)
    if which == "prune":
        rs.prune(path, keep_last=len(now["obs"]) - 100, by="rows")
        expected = {name: values[100:] for name, values in now.items()}
    elif which == "compact":
        rs.compact(path)
        expected = now
    else:
        damaged = path / META / "priority.json"
        damaged.write_bytes(damaged.read_bytes().replace(b"{", b"[", 1))
        assert rs.repair(path).index_reset
        expected = {name: values for name, values in now.items() if name != "priority"}
    after = contents(path)
    for name, values in expected.items():
        np.testing.assert_array_equal(after[name], values, err_msg=f"{which}: {name}")
    assert rs.verify(path).ok
    assert leftovers(path) == []


@pytest.fixture
def no_exchange(monkeypatch):
    """This process renames folders as on NFS, without RENAME_EXCHANGE (test code only)."""
    monkeypatch.setattr(importlib.import_module("replaystore.storage.local"), "_exchange",
                        lambda a, b: False)


@pytest.mark.parametrize("exchange", [False, True], ids=["renames", "exchange"])
def test_a_swap_killed_at_any_step_is_finished_or_rolled_back(tmp_path, no_exchange, exchange):
    """Kill a prune at each step of its swap, then kill the next prune early (in its recovery
    of the leftovers, or in its own swap when there are none): the store opens with the old or
    the new rows exactly, and a prune, compact or repair that follows succeeds and leaves no
    sibling folder."""
    pristine = filled_store(tmp_path / "pristine", SMALL_ROWS)
    old = contents(pristine)
    new = {name: values[-KEEP:] for name, values in old.items()}
    shutil.copytree(pristine, tmp_path / "count" / "store")
    steps = run_swap(tmp_path / "count" / "store", 0, exchange=exchange)
    outcomes = {"old": 0, "new": 0}
    between = 0
    for i, point in enumerate(kill_points(steps)):
        path = tmp_path / f"kill{point}" / "store"
        shutil.copytree(pristine, path)
        done = run_swap(path, point, exchange=exchange)
        assert where(done[-1]) == where(steps[point - 1]), (done[-1], steps[point - 1])
        if not path.exists():  # killed between the two renames: the next open completes it
            assert not exchange and done[-1].endswith("rename .store.rewrite")
            between += 1
            again = tmp_path / f"open{point}" / "store"
            shutil.copytree(path.parent, again.parent, symlinks=True)
            assert old_or_new(again, old, new) == "new"
        run_swap(path, 1 + i % 3, exchange=exchange)
        outcomes[old_or_new(path, old, new)] += 1
        assert rs.verify(path).ok, (done[-1], rs.verify(path))
        follow_up(path, ("prune", "compact", "repair")[i % 3])
    assert outcomes["old"] and outcomes["new"], outcomes
    assert between == (not exchange)
