"""Shared pieces of the SIGKILL crash tests (tests/crash/test_sigkill.py and stress/kill.py).

* :func:`expected_rows` and :func:`store_fields`: the content of row ``g`` (a function of ``g``
  alone) and the schema the writer child creates; writer_child.py imports both.
* :func:`run_and_kill`: start writer_child.py on a store, let it work, SIGKILL it, and collect
  what it printed.
* :func:`verify_store`: reopen the killed store read-only and check it against the
  deterministic content: nothing committed was lost, every committed row is byte-exact, the
  episode table matches, and plain zarr reads the same bytes.
* :class:`Lineage`: one store through many kill/restart cycles, both of the above per cycle.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import replaystore as rs

CHILD = Path(__file__).resolve().with_name("writer_child.py")
MODES = ("mixed", "append", "extend", "burst")
ROW_LIMIT = 1 << 23  # obs values stay exact in float32 below 2**23 (they hold g + 0.5)
IMAGE_SHAPE = (32, 32)
_IMAGE_PATTERN = (np.arange(1024, dtype=np.int64).reshape(IMAGE_SHAPE) * 37 // 5) % 256
_OBS_OFFSET = np.array([0.0, 0.5, 0.0])
_OBS_SIGN = np.array([1.0, 1.0, -1.0])
VERIFY_BATCH = 4096
ZARR_FULL_ROWS = 2048  # stores with at most this many rows are read whole through zarr
ZARR_SAMPLE = 96  # otherwise: the oldest, the newest and this many random rows
# Row g ends an episode when g % TERMINATE == TERMINATE - 1 (terminated) or g % TRUNCATE ==
# TRUNCATE - 1 (truncated): episodes of ~6 rows, so the episode table crosses its 4096-record
# blocks after ~25k rows and the crash checks see block boundaries too.
TERMINATE, TRUNCATE, REWARD_MOD = 11, 13, 17


def expected_rows(rows: np.ndarray | range | list[int]) -> dict[str, np.ndarray]:
    """The content of global rows ``rows``: every field of row ``g`` depends on ``g`` only."""
    g = np.asarray(rows, dtype=np.int64).reshape(-1)
    return {
        "obs": ((g[:, None] + _OBS_OFFSET) * _OBS_SIGN).astype(np.float32),
        "action": g * 3 + 1,
        "image": ((g[:, None, None] * 7 + _IMAGE_PATTERN) % 256).astype(np.uint8),
        "reward": (g % REWARD_MOD).astype(np.float32),
        "terminated": g % TERMINATE == TERMINATE - 1,
        "truncated": g % TRUNCATE == TRUNCATE - 1,
    }


def store_fields(rng: random.Random) -> dict[str, dict[str, Any]]:
    """The schema of a crash-test store, with small, unequal chunk sizes drawn from ``rng``.

    Small chunks mean a chunk switch (and, in a small ring, a wrap) every few rows; unequal
    sizes mean the fields switch chunks at different rows. ``image`` (1 KiB rows) keeps the
    default codec, which is the per-row compressed shard layout.
    """
    return {
        "obs": {"shape": (3,), "dtype": "float32", "codec": "raw",
                "chunk_rows": rng.choice([16, 17, 32])},
        "action": {"shape": (), "dtype": "int64", "codec": "zstd:3",
                   "chunk_rows": rng.choice([24, 40, 64])},
        "image": {"shape": IMAGE_SHAPE, "dtype": "uint8", "chunk_rows": rng.choice([16, 20, 32])},
        "reward": {"shape": (), "dtype": "float32", "codec": "lz4:1",
                   "chunk_rows": rng.choice([19, 48])},
        "terminated": {"shape": (), "dtype": "bool", "chunk_rows": 64},
        "truncated": {"shape": (), "dtype": "bool", "codec": "raw", "chunk_rows": 29},
    }


def expected_episodes(start: int, end: int) -> dict[str, np.ndarray]:
    """Finished episodes lying fully inside the committed global rows ``[start, end)``."""
    g = np.arange(max(start - 1, 0), end, dtype=np.int64)
    done = g[(g % TERMINATE == TERMINATE - 1) | (g % TRUNCATE == TRUNCATE - 1)]
    firsts = np.concatenate((np.zeros(1 if start == 0 else 0, np.int64), done + 1))
    firsts = firsts[(firsts >= start) & (firsts < end)]
    which = np.searchsorted(done, firsts)
    firsts = firsts[which < len(done)]
    lasts = done[which[which < len(done)]]
    rewards = np.concatenate(([0.0], np.cumsum(np.arange(start, end, dtype=np.int64) % REWARD_MOD)))
    returns = rewards[lasts + 1 - start] - rewards[firsts - start]
    return {"start": firsts, "length": lasts - firsts + 1, "return": returns,
            "terminated": lasts % TERMINATE == TERMINATE - 1,
            "truncated": lasts % TRUNCATE == TRUNCATE - 1}


# -- one kill cycle ---------------------------------------------------------------------------


@dataclass
class Cycle:
    """What one writer child did before it was killed."""

    opened_at: tuple[int, int] | None = None  # (start, end) the child found when it opened
    printed_end: int = 0  # the last committed end the child printed (0: none)
    commits: int = 0  # commit lines printed
    killed: bool = False  # True when our SIGKILL ended it (not an exit of its own)
    returncode: int | None = None
    error: str | None = None  # why the cycle went wrong on the child's side


def run_and_kill(path: Path, *, seed: int, capacity: int | None, mode: str, delay_s: float,
                 log_dir: Path, wait_for_commit: bool = True,
                 startup_timeout_s: float = 60.0) -> Cycle:
    """Run writer_child.py on ``path`` and SIGKILL it ``delay_s`` after its first commit line.

    With ``wait_for_commit=False`` the delay counts from the start of the process, so the kill
    may land while the child imports or opens the store.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / "child.out", log_dir / "child.err"
    cmd = [sys.executable, str(CHILD), str(path), str(seed), str(capacity or 0), mode]
    cycle = Cycle()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    try:
        if wait_for_commit:
            deadline = time.monotonic() + startup_timeout_s
            while (b"\ncommit " not in b"\n" + out_path.read_bytes() and proc.poll() is None
                   and time.monotonic() < deadline):
                time.sleep(0.002)
        time.sleep(delay_s)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        cycle.returncode = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    cycle.killed = cycle.returncode == -signal.SIGKILL
    cycle.error = _parse_output(out_path.read_bytes(), cycle)
    if not cycle.killed:
        tail = err_path.read_text(errors="replace")[-2000:]
        cycle.error = f"child exited by itself with status {cycle.returncode}: {tail}"
    elif wait_for_commit and cycle.commits == 0 and cycle.error is None:
        cycle.error = f"child printed no commit within {startup_timeout_s} s"
    return cycle


def _parse_output(data: bytes, cycle: Cycle) -> str | None:
    """Read the child's lines into ``cycle``; return a problem found in them, if any."""
    last_end = -1
    # A kill may cut the last line short: only newline-terminated lines count.
    for line in data.decode(errors="replace").split("\n")[:-1]:
        kind, _, rest = line.partition(" ")
        try:
            start, end = map(int, rest.split())
        except ValueError:
            return f"unparsable child output line {line!r}"
        if kind == "open":
            cycle.opened_at = (start, end)
            last_end = end
        elif kind in ("commit", "auto"):
            if end < last_end:
                return f"committed end went backwards: {last_end} then {end}"
            last_end = end
            cycle.printed_end = end
            cycle.commits += 1
        else:
            return f"unknown child output line {line!r}"
    return None


# -- checks after a kill -------------------------------------------------------------------------


@dataclass
class Verdict:
    """What :func:`verify_store` found in one killed store."""

    opened: bool = False
    start: int = 0
    end: int = 0
    episodes: int = 0  # finished episodes ever (manifest.episodes)
    rows_checked: int = 0
    lost_rows: int = 0  # committed rows the child printed that the manifest no longer has
    mismatched_rows: int = 0  # committed rows whose bytes differ (or cannot be read)
    episode_errors: int = 0
    zarr_errors: int = 0  # slots where plain zarr disagrees, or cannot read
    zarr_shape_lag: int = 0  # fields whose zarr shape is behind the committed extent
    zarr_uncommitted: int = 0  # ring slots outside the window where zarr shows a row >= end
    writer_errors: int = 0  # the child failed, or resumed somewhere else than verified
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing committed was lost or wrong (what zarr shows outside the committed window,
        or a lagging zarr shape, is judged separately)."""
        return (self.opened and not self.lost_rows and not self.mismatched_rows
                and not self.episode_errors and not self.zarr_errors and not self.writer_errors)

    def note(self, message: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(message)


def _bad_rows(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Boolean mask of rows (leading axis) whose bytes differ; all rows on dtype/shape mismatch."""
    if got.dtype != want.dtype or got.shape != want.shape:
        return np.ones(len(want), bool)
    a = np.ascontiguousarray(got).reshape(len(got), -1).view(np.uint8)
    b = np.ascontiguousarray(want).reshape(len(want), -1).view(np.uint8)
    return np.any(a != b, axis=1)


def verify_store(path: Path, printed_end: int, *, capacity: int | None,
                 rng: random.Random | None = None, check_zarr: bool = True) -> Verdict:
    """Reopen a killed store read-only and check everything committed against the ground truth.

    ``printed_end`` is the last committed end the writer reported: rows before it were
    committed, so the manifest must still reach it.
    """
    verdict = Verdict()
    try:
        store = rs.open(path)
    except Exception as exc:
        verdict.note(f"cannot open the store: {exc!r}")
        return verdict
    verdict.opened = True
    try:
        _check_window(store, printed_end, capacity, verdict)
        _check_rows(store, verdict)
        _check_episodes(store, verdict)
        if check_zarr:
            _check_zarr(store, rng or random.Random(0), verdict)
    finally:
        store.close()
    return verdict


def _slot_of(rows: np.ndarray, capacity: int | None) -> np.ndarray:
    return rows if capacity is None else rows % capacity


def _check_window(store: rs.Store, printed_end: int, capacity: int | None, v: Verdict) -> None:
    m = store.manifest
    v.start, v.end, v.episodes = m.start, m.end, m.episodes
    if m.end < printed_end:
        v.lost_rows = printed_end - m.end
        v.note(f"manifest end {m.end} is behind the committed end {printed_end} the writer printed")
    if capacity is None and m.start != 0:
        v.note(f"an unbounded store starts at row {m.start}, not 0")
        v.lost_rows += m.start
    if m.capacity != capacity:
        v.note(f"manifest capacity {m.capacity}, expected {capacity}")
        v.mismatched_rows += m.rows
    if len(store) != m.rows or (capacity is not None and m.rows > capacity):
        v.note(f"len(store) {len(store)} does not fit window [{m.start}, {m.end})")
        v.mismatched_rows += 1
    want = _slot_of(np.arange(m.start, m.end, dtype=np.int64), capacity)
    if not np.array_equal(store.slots(), want):
        v.note("store.slots() does not list the committed window oldest first")
        v.mismatched_rows += m.rows
    # A slot outside the window must be refused, not served from stale chunk bytes.
    outside = m.end if capacity is None else (m.end % capacity if m.rows < capacity else None)
    if outside is not None:
        try:
            store.get([outside])
        except IndexError:
            pass
        except Exception as exc:
            v.note(f"reading slot {outside} outside the committed window raised {exc!r}, "
                   "not IndexError")
            v.mismatched_rows += 1
        else:
            v.note(f"slot {outside} outside the committed window was served")
            v.mismatched_rows += 1


def _check_rows(store: rs.Store, v: Verdict) -> None:
    m = store.manifest
    for lo in range(m.start, m.end, VERIFY_BATCH):
        rows = np.arange(lo, min(lo + VERIFY_BATCH, m.end), dtype=np.int64)
        want = expected_rows(rows)
        try:
            got = store.get(_slot_of(rows, m.capacity))
        except Exception as exc:
            v.mismatched_rows += len(rows)
            v.note(f"store.get of rows {rows[0]}..{rows[-1]} failed: {exc!r}")
            continue
        bad = np.zeros(len(rows), bool)
        for name, array in want.items():
            field_bad = _bad_rows(got[name], array)
            if field_bad.any():
                v.note(f"field {name!r}: {int(field_bad.sum())} rows differ, first global row "
                       f"{int(rows[np.argmax(field_bad)])}")
            bad |= field_bad
        v.mismatched_rows += int(bad.sum())
        v.rows_checked += len(rows)


def _check_episodes(store: rs.Store, v: Verdict) -> None:
    m = store.manifest
    try:
        table = store.episodes
    except Exception as exc:
        v.episode_errors += 1
        v.note(f"store.episodes failed: {exc!r}")
        return
    want = expected_episodes(m.start, m.end)
    if len(table) != len(want["start"]):
        v.episode_errors += 1
        v.note(f"episode table has {len(table)} episodes in [{m.start}, {m.end}), "
               f"expected {len(want['start'])}")
        return
    for name, values in want.items():
        bad = table[name] != values
        if bad.any():
            v.episode_errors += int(bad.sum())
            i = int(np.argmax(bad))
            v.note(f"episode {i} (start {int(want['start'][i])}): {name} is {table[name][i]}, "
                   f"expected {values[i]}")


def _check_zarr(store: rs.Store, rng: random.Random, v: Verdict) -> None:
    """Plain zarr must read the same bytes for committed slots (all of them, or a sample)."""
    import zarr  # only the checks need zarr; the writer child does not import it

    m = store.manifest
    if m.rows <= ZARR_FULL_ROWS:
        rows = np.arange(m.start, m.end, dtype=np.int64)
    else:
        picks = [rng.randrange(m.start, m.end) for _ in range(ZARR_SAMPLE)]
        rows = np.unique(np.concatenate((np.arange(m.start, m.start + 32),
                                         np.arange(m.end - 64, m.end), picks)))
    slots = _slot_of(rows, m.capacity)
    order = np.argsort(slots)
    rows, slots = rows[order], slots[order]
    want = expected_rows(rows)
    try:
        group = zarr.open_group(str(store.path), mode="r")
    except Exception as exc:
        v.zarr_errors += len(rows)
        v.note(f"zarr.open_group failed: {exc!r}")
        return
    try:
        ours = store.get(slots) if len(slots) else None
    except Exception:
        ours = None  # _check_rows has reported it; compare zarr with the ground truth alone
    for name, array in want.items():
        try:
            zarray = group[name]
            shape_rows = zarray.shape[0]
            if shape_rows < m.extent:
                v.zarr_shape_lag += 1
                v.note(f"zarr array {name!r} has {shape_rows} rows, the committed extent "
                       f"is {m.extent}")
            elif shape_rows > m.extent:
                v.zarr_errors += 1
                v.note(f"zarr array {name!r} has {shape_rows} rows, more than the committed "
                       f"extent {m.extent}")
            visible = slots < shape_rows
            if not visible.any():
                continue
            got = np.asarray(zarray.oindex[slots[visible]])
        except Exception as exc:
            v.zarr_errors += len(rows)
            v.note(f"zarr read of {name!r} failed: {exc!r}")
            continue
        bad = _bad_rows(got, array[visible])
        if ours is not None:
            bad |= _bad_rows(got, ours[name][visible])
        if bad.any():
            v.zarr_errors += int(bad.sum())
            v.note(f"zarr array {name!r}: {int(bad.sum())} committed slots differ, first slot "
                   f"{int(slots[visible][np.argmax(bad)])}")
    _check_zarr_outside(store, group, v)


def _check_zarr_outside(store: rs.Store, group: Any, v: Verdict) -> None:
    """Count ring slots outside the committed window where zarr shows a never-committed row.

    zarr knows no window: it shows every slot below the array's shape. Row ``g`` is recognised
    by its ``action`` value ``3 g + 1``.
    """
    m = store.manifest
    if m.capacity is None or m.rows >= m.capacity:
        return
    try:
        action = np.asarray(group["action"][:])
    except Exception as exc:
        v.note(f"zarr read of 'action' failed: {exc!r}")
        return
    window = _slot_of(np.arange(m.start, m.end, dtype=np.int64), m.capacity)
    inside = np.zeros(len(action), bool)
    inside[window[window < len(action)]] = True
    rows = (action - 1) // 3
    newer = ~inside & ((action - 1) % 3 == 0) & (rows >= m.end)
    if newer.any():
        v.zarr_uncommitted += int(newer.sum())
        v.note(f"zarr shows {int(newer.sum())} uncommitted rows (global rows >= end {m.end}) "
               f"in ring slots outside the committed window, e.g. row {int(rows[newer][0])}")


# -- a store through many kill/restart cycles ----------------------------------------------------


class Lineage:
    """One store driven through kill/restart cycles: each cycle runs a writer child, kills it
    with SIGKILL and verifies the store. The first cycle creates the store."""

    def __init__(self, path: Path, *, capacity: int | None, mode: str, seed: int,
                 log_dir: Path) -> None:
        self.path = path
        self.capacity = capacity
        self.mode = mode
        self.rng = random.Random(seed)
        self.log_dir = log_dir
        self.cycles = 0
        self.window: tuple[int, int] | None = None  # (start, end) verified after the last kill

    def cycle(self, delay_s: float, *, wait_for_commit: bool = True,
              check_zarr: bool = True) -> tuple[Cycle, Verdict]:
        """Run, kill and verify once; the verdict also covers where the child resumed."""
        fresh = not self.path.exists()
        if not wait_for_commit and fresh:
            # A kill inside create(), before its first manifest, leaves a folder that open()
            # refuses and create() will not replace: not what these cycles are about.
            wait_for_commit = True
        run = run_and_kill(self.path, seed=self.rng.randrange(1 << 30), capacity=self.capacity,
                           mode=self.mode, delay_s=delay_s, log_dir=self.log_dir,
                           wait_for_commit=wait_for_commit)
        self.cycles += 1
        if fresh and not self.path.exists():
            verdict = Verdict(writer_errors=1)
            verdict.note(f"the child made no store ({run.error})")
            return run, verdict
        verdict = verify_store(self.path, run.printed_end, capacity=self.capacity, rng=self.rng,
                               check_zarr=check_zarr)
        if run.error:
            verdict.writer_errors += 1
            verdict.note(f"writer child: {run.error}")
        expected_open = self.window if self.window is not None else (0, 0)
        if run.opened_at is not None and run.opened_at != expected_open:
            verdict.note(f"the writer resumed at window {run.opened_at}, but the store was "
                         f"verified at {expected_open} after the previous kill")
            verdict.writer_errors += 1
        if verdict.opened:
            self.window = (verdict.start, verdict.end)
        return run, verdict
