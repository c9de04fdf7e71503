"""verify and repair: what repair keeps and drops, verify beside a live ring writer, and the
manifest's episode in progress checked against the committed rows."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import rows_for

import replaystore as rs
from replaystore.codecs import parse_shard, shard_index_nbytes
from replaystore.episodes import BLOCK
from replaystore.layout import MANIFEST, dumps, episode_block_key
from replaystore.manifest import _checksum, load_manifest
from replaystore.storage.local import LocalStorage

ROOT = Path(__file__).resolve().parents[1]

VECTORS = {"obs": {"shape": (4,), "dtype": "float32", "codec": "raw", "chunk_rows": 64},
           "action": {"shape": (), "dtype": "int64", "codec": "lz4:1", "chunk_rows": 128}}
SHARDED = {"frame": {"shape": (8, 8), "dtype": "uint8", "codec": "lz4hc:5/rows",
                     "chunk_rows": 64},
           "action": {"shape": (), "dtype": "int64", "codec": "raw", "chunk_rows": 128}}


def fill(store: rs.Store, count: int, first: int = 0) -> None:
    store.extend(rows_for(store.schema, first, count))
    store.commit()


def everything(path: Path) -> dict[str, np.ndarray]:
    with rs.open(path) as store:
        return store.get(store.slots())


def files(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes()
            for p in sorted(path.rglob("*")) if p.is_file()}


def flip(path: Path, key: str, offset: int | None = None) -> None:
    data = bytearray((path / key).read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0x10
    (path / key).write_bytes(bytes(data))


def segments(values: dict[str, np.ndarray]) -> np.ndarray:
    """Episode number of each row (from the done flags), oldest first."""
    ends = values["terminated"] | values["truncated"]
    return np.concatenate(([0], np.cumsum(ends[:-1])))


# -- repair keeps every episode without an unreadable row (issue item 7) ----------------------


@pytest.fixture
def vectors(make_store) -> Path:
    store = make_store(VECTORS)
    fill(store, 1000)
    rs.PrioritizedSampler(store, seed=0)
    store.commit()
    store.close()
    return store.path


def test_repair_keeps_every_episode_without_unreadable_rows(vectors: Path) -> None:
    before = everything(vectors)
    flip(vectors, "obs/c.0.0")  # rows 0..63: the oldest chunk, which rolled everything back
    result = rs.repair(vectors)
    seg = segments(before)
    keep = ~np.isin(seg, seg[:64])
    assert result.rewrite is not None and result.rewrite.rows_after == keep.sum() > 900
    assert result.rows_before == 1000 and result.rows_after == keep.sum()
    assert result.dropped == ((0, int(np.argmax(keep))),)
    after = everything(vectors)
    for name in ("obs", "action", "reward", "terminated", "truncated"):
        np.testing.assert_array_equal(after[name], before[name][keep], err_msg=name)
    assert rs.verify(vectors).ok


def test_repair_rollback_keeps_only_the_rows_before_the_first_unreadable_one(
        vectors: Path) -> None:
    before = everything(vectors)
    flip(vectors, "action/c.3")  # rows 384..511
    result = rs.repair(vectors, rollback=True)
    assert result.rows_after == 384 and result.dropped == ((384, 1000),)
    after = everything(vectors)
    np.testing.assert_array_equal(after["action"], before["action"][:384])
    assert rs.verify(vectors).ok


def test_repair_salvage_is_accepted_and_means_the_default(vectors: Path) -> None:
    flip(vectors, "action/c.3")
    plan = rs.repair(vectors, dry_run=True)
    assert rs.repair(vectors, salvage=True).rows_after == plan.rows_after
    with pytest.raises(ValueError, match="rollback"):
        rs.repair(vectors, salvage=True, rollback=True)


def test_repair_dry_run_reports_what_it_would_drop_and_changes_nothing(vectors: Path) -> None:
    flip(vectors, "action/c.3")  # rows 384..511
    flip(vectors, "obs/c.12.0")  # rows 768..831
    untouched = files(vectors)
    plan = rs.repair(vectors, dry_run=True)
    assert files(vectors) == untouched
    assert plan.dry_run and plan.rewrite is None and not plan.index_reset
    before = everything_readable(vectors)
    seg = segments(before)
    bad = np.zeros(1000, bool)
    bad[384:512] = bad[768:832] = True
    keep = ~np.isin(seg, seg[bad])
    assert plan.rows_before == 1000 and plan.rows_after == keep.sum()
    assert plan.episodes_dropped == len(np.unique(seg[bad]))
    dropped = np.flatnonzero(~keep)
    assert sum(b - a for a, b in plan.dropped) == len(dropped)
    assert all(a in dropped and b - 1 in dropped for a, b in plan.dropped)
    assert plan.to_json()["dropped"] == [list(r) for r in plan.dropped]
    done = rs.repair(vectors)
    assert not done.dry_run and (done.rows_after, done.dropped) == (plan.rows_after,
                                                                    plan.dropped)


def everything_readable(path: Path) -> dict[str, np.ndarray]:
    """Done flags of every committed row (their chunks are intact in these tests)."""
    with rs.open(path) as store:
        return store.get(store.slots(), ["terminated", "truncated"])


def test_repair_of_a_damaged_row_in_a_shard_drops_only_that_rows_episode(make_store) -> None:
    store = make_store(SHARDED)
    fill(store, 300)
    store.close()
    path = store.path
    before = everything(path)
    key = "frame/c.1.0.0"  # rows 64..127, one compressed row each
    data = (path / key).read_bytes()
    offsets, lengths = parse_shard(data, 64, 64, key=key, field="frame")
    assert len(data) > shard_index_nbytes(64)
    flip(path, key, offsets[10] + lengths[10] - 6)  # row 74's payload, not its header
    report = rs.verify(path)
    assert [(p.key, p.ranges) for p in report.problems] == [(key, ((74, 75),))]
    result = rs.repair(path)
    seg = segments(before)
    keep = seg != seg[74]
    assert result.rows_after == keep.sum() and keep.sum() > 290
    np.testing.assert_array_equal(everything(path)["frame"], before["frame"][keep])
    assert rs.verify(path).ok


def test_repair_of_a_damaged_shard_index_drops_the_episodes_of_the_whole_shard(
        make_store) -> None:
    store = make_store(SHARDED)
    fill(store, 300)
    store.close()
    flip(store.path, "frame/c.1.0.0", -2)  # the index's checksum
    assert [p.ranges for p in rs.verify(store.path).problems] == [((64, 128),)]


# -- the open episode in the manifest (issue item 17f) ----------------------------------------


def craft(path: Path, open_episode: tuple[int, int, float] | None) -> None:
    """Replace the manifest's episode in progress, with a valid checksum."""
    backend = LocalStorage(path)
    doc = load_manifest(backend).to_json()
    doc["open_episode"] = None if open_episode is None else list(open_episode)
    backend.put(MANIFEST, dumps({**doc, "crc32c": _checksum(doc)}), durable=True)


@pytest.fixture
def in_progress(make_store) -> Path:
    """1,000 rows whose last episode (rows 994..999) is still running."""
    store = make_store(VECTORS)
    fill(store, 1000)
    assert store.manifest.open_episode[:2] == (994, 6)
    store.close()
    return store.path


def rewards(path: Path, first: int, stop: int) -> float:
    with rs.open(path) as store:
        return float(store.get(np.arange(first, stop), ["reward"])["reward"].sum(dtype=np.float64))


@pytest.mark.parametrize("crafted", ["start-later", "start-earlier", "longer", "shorter",
                                     "return", "none", "zero-length", "negative"])
def test_crafted_open_episode_is_reported_naming_the_manifest(in_progress: Path,
                                                              crafted: str) -> None:
    path = in_progress
    total = rewards(path, 994, 1000)
    episode = {"start-later": (995, 5, rewards(path, 995, 1000)),
               "start-earlier": (990, 10, rewards(path, 990, 1000)),
               "longer": (994, 7, total), "shorter": (994, 5, rewards(path, 994, 999)),
               "return": (994, 6, total + 0.5), "none": None,
               "zero-length": (1000, 0, 0.0), "negative": (-6, 1006, total)}[crafted]
    assert rs.verify(path).ok
    craft(path, episode)
    report = rs.verify(path)
    assert [p.key for p in report.problems] == [MANIFEST], [str(p) for p in report.problems]
    message = report.problems[0].message
    assert "open_episode" in message or "episode in progress" in message
    if report.snapshot is None:
        return  # refused when the manifest is read: it does not end at the last row
    result = rs.repair(path)  # rebuilt from the rows: nothing to drop
    assert result.rows_after == 1000 and not result.dropped
    assert rs.verify(path).ok and len(rs.open(path)) == 1000
    assert rs.open(path).manifest.open_episode[:2] == (994, 6)


def test_open_episode_where_every_episode_is_finished_is_reported(make_store) -> None:
    store = make_store(VECTORS)
    fill(store, 994)  # row 993 ends an episode (993 % 7 == 6)
    assert store.manifest.open_episode is None
    store.close()
    craft(store.path, (987, 7, rewards(store.path, 987, 994)))
    assert [p.key for p in rs.verify(store.path).problems] == [MANIFEST]


def test_open_episode_return_allows_float64_accumulation(make_store) -> None:
    store = make_store(VECTORS)
    values = rows_for(store.schema, 0, 5000)
    values["terminated"][:] = values["truncated"][:] = False
    values["reward"] = np.full(5000, 0.1, np.float32)
    for i in range(0, 5000, 7):  # the writer adds batch sums in float64
        store.extend({k: v[i:i + 7] for k, v in values.items()})
    for i in range(3):
        store.append({k: v[i] for k, v in values.items()})  # and single rows one by one
    store.commit()
    store.close()
    assert rs.verify(store.path).ok


def test_open_episode_of_a_ring_whose_start_was_overwritten(make_store) -> None:
    store = make_store(VECTORS, capacity=300)
    values = rows_for(store.schema, 0, 1000)
    values["terminated"][:] = values["truncated"][:] = False
    values["terminated"][399] = True
    store.extend(values)  # the episode in progress began at row 400, before the window
    store.commit()
    m = store.manifest
    assert (m.start, m.open_episode[:2]) == (700, (400, 600))
    store.close()
    assert rs.verify(store.path).ok
    craft(store.path, (700, 300, 1.0))  # clipped to the window: accepted, return unknown
    assert rs.verify(store.path).ok
    craft(store.path, (500, 500, 1.0))  # ends at the window's end, starts after row 400
    assert [p.key for p in rs.verify(store.path).problems] == [MANIFEST]
    craft(store.path, (710, 290, 1.0))  # starts inside the window with no episode end there
    assert [p.key for p in rs.verify(store.path).problems] == [MANIFEST]


# -- episode blocks before a ring's window ----------------------------------------------------


def test_verify_does_not_demand_episode_blocks_before_a_rings_window(make_store) -> None:
    store = make_store({"x": ((), "int8")}, capacity=1000)
    count = 2 * BLOCK * 2 + 2000  # two-row episodes: three blocks, two before the window
    store.extend({"x": np.zeros(count, np.int8), "reward": np.ones(count),
                  "terminated": np.arange(count) % 2 == 1, "truncated": np.zeros(count, bool)})
    store.commit()
    m = store.manifest
    store.close()
    assert m.episodes // BLOCK == 2 and m.start > 2 * BLOCK * 2
    assert rs.verify(store.path).ok
    for block in (0, 1):  # the writer may delete them: every episode in them ended before
        (store.path / episode_block_key(block)).unlink(missing_ok=True)
    report = rs.verify(store.path)
    assert report.ok, [str(p) for p in report.problems]
    assert report.episodes == 500
    (store.path / episode_block_key(2)).unlink()  # this one holds the window's episodes
    assert [p.key for p in rs.verify(store.path).problems] == [episode_block_key(2)]


# -- verify and repair beside a live ring writer (issue item 15) ------------------------------

RING = {"obs": {"shape": (4,), "dtype": "float32", "codec": "raw", "chunk_rows": 16},
        "action": {"shape": (), "dtype": "int64", "codec": "lz4:1", "chunk_rows": 32},
        "frame": {"shape": (6, 6), "dtype": "uint8", "codec": "lz4hc:5/rows",
                  "chunk_rows": 16},
        "next_frame": {"next_of": "frame", "chunk_rows": 16},
        "reward": {"shape": (), "dtype": "float32", "codec": "raw", "chunk_rows": 24},
        "terminated": {"shape": (), "dtype": "bool", "chunk_rows": 40},
        "truncated": {"shape": (), "dtype": "bool", "chunk_rows": 56}}
RING_CAPACITY = 120

WRITER = r"""
import json, os, sys
import numpy as np
import replaystore as rs

path, stop = sys.argv[1], sys.argv[2]
store = rs.open(path, "a", commit_every_rows=1 << 40)
per = rs.PrioritizedSampler(store, seed=0)
rng = np.random.default_rng(0)
row, commits = store.manifest.end, 0
print("ready", flush=True)
while not os.path.exists(stop):
    n = int(rng.integers(1, 40))
    g = np.arange(row, row + n)
    frame = ((g[:, None, None] * 7 + np.arange(36).reshape(6, 6)) % 251).astype(np.uint8)
    store.extend({"obs": np.stack([g, -g, g % 3, g % 5], 1).astype(np.float32),
                  "action": g, "frame": frame, "next_frame": frame + 1,
                  "reward": (g % 4).astype(np.float32),
                  "terminated": rng.random(n) < 0.15, "truncated": rng.random(n) < 0.03})
    row += n
    store.commit()
    slots = store.slots()[-n:]
    per.update_priorities(slots, 0.5 + slots % 3)
    commits += 1
store.close()
print(json.dumps({"end": row, "commits": commits}), flush=True)
"""


@contextlib.contextmanager
def live_ring_writer(path: Path) -> Iterator[dict[str, int]]:
    """A ring store at ``path`` and a writer process appending and committing to it (small
    batches, ~13 commits per ring) until the block ends; yields the writer's final counts."""
    with rs.create(path, RING, capacity=RING_CAPACITY) as store:
        store.extend({"obs": np.zeros((50, 4)), "action": np.zeros(50, np.int64),
                      "frame": np.zeros((50, 6, 6), np.uint8),
                      "next_frame": np.zeros((50, 6, 6), np.uint8), "reward": np.zeros(50),
                      "terminated": np.arange(50) % 10 == 9, "truncated": np.zeros(50, bool)})
    stop = path.with_name(path.name + ".stop")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(stop)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    counts: dict[str, int] = {}
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield counts
    finally:
        stop.touch()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    counts.update(json.loads(out.strip().splitlines()[-1]))


def test_verify_beside_a_live_ring_writer_reports_no_false_problems(tmp_path: Path) -> None:
    path = tmp_path / "ring"
    runs, stale, false_problems, seqs = 0, 0, [], set()
    with live_ring_writer(path) as counts:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline or runs < 5:
            try:
                report = rs.verify(path)
            except rs.StaleReadError as exc:
                stale += 1
                false_problems.append(f"StaleReadError: {exc}")
                continue
            runs += 1
            false_problems.extend(str(p) for p in report.problems)
            assert any("is writing the store" in w for w in report.warnings)
            with rs.open(path) as store:
                seqs.add(store.manifest.commit_seq)
    assert not false_problems, (runs, stale, false_problems[:5])
    assert counts["end"] > 5 * RING_CAPACITY and len(seqs) > 3  # it wrapped while verified
    assert rs.verify(path).ok


def test_repair_beside_a_live_writer_is_refused_naming_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "ring"
    with live_ring_writer(path):
        for dry_run in (True, False):
            with pytest.raises(rs.WriterLockedError, match="writing") as info:
                rs.repair(path, dry_run=dry_run)
            assert info.value.pid is not None and info.value.pid != os.getpid()
    assert rs.verify(path).ok

