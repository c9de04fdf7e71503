"""Durability you can observe: every durability step of a commit, and its order, is checked.

The writer's commit runs over :class:`~replaystore.storage.RecordingStorage`, which records
every storage call and can build each state a power cut could leave (mode ``"mixed"``: what the
storage protocol promises). After every cut, during and between commits, the store must open
at a commit, never one behind a commit that returned before the cut, and every row of that
commit must read back byte for byte, with its episode table. Then the steps below the
protocol: :class:`~replaystore.storage.local.LocalStorage`'s fsyncs, renames and links, and the
priority index's undo log, tree flush and checkpoint around a real commit, observed by
recording the system calls. Last, an fsync failing at each step of a commit.

Removing any one durability step from the library fails at least one test here (each was
removed once, and these are the tests that then failed):

* the chunk sync in ``Writer._commit``, or moving it after the manifest's put: every test of
  the writer (the cut checks find committed rows in missing chunks; ``assert_durable_before``
  finds chunks not durable when the manifest was);
* ``durable=True`` in ``commit_manifest``: every test of the writer (``assert_all_durable``
  after a commit; a cut loses the manifest, or keeps one behind a returned commit);
* ``LocalStorage.put``'s fsync of a temporary file before it replaces a value:
  ``test_put_over_a_value_syncs_the_new_bytes_before_the_rename`` (and, on real XFS and ext4,
  ``tests/reliability/test_rel_powercut.py``);
* the folder fsync after a durable put's rename:
  ``test_a_durable_put_syncs_file_then_renames_then_syncs_its_folder``;
* the undo log's fsync in ``PriorityIndex.flush``, ``index.flush()`` in
  ``CommitState.before_publish``, the fsync in ``PriorityIndex.checkpoint_now``:
  ``test_priority_checkpoint_order_in_a_commit``.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import replaystore as rs
from replaystore import frames, priority
from replaystore.episodes import BLOCK, EpisodeTable
from replaystore.errors import SyncError, WriterFailedError
from replaystore.layout import (
    GROUP,
    MANIFEST,
    META_GROUP,
    array_document,
    array_key,
    dumps,
    group_document,
    meta_group_document,
)
from replaystore.manifest import Manifest, commit_manifest, load_manifest
from replaystore.reader import Reader
from replaystore.schema import Schema
from replaystore.storage import MemoryStorage, RecordingStorage
from replaystore.storage.local import LocalStorage
from replaystore.writer import Writer

EPISODES = "_replaystore/episodes.*"

# -- the writer over a recording storage ------------------------------------------------------

LAYOUTS: dict[str, dict[str, Any]] = {
    # Small chunks of every field, so most commits fill some chunks and rewrite partial ones.
    "unbounded-chunks": dict(capacity=None, fields={
        "obs": {"shape": (3,), "dtype": "float32", "chunk_rows": 4},
        "action": {"shape": (), "dtype": "int64", "codec": "zstd:3", "chunk_rows": 5},
        "reward": {"shape": (), "dtype": "float32", "chunk_rows": 6},
        "terminated": {"shape": (), "dtype": "bool", "chunk_rows": 7},
        "truncated": {"shape": (), "dtype": "bool", "chunk_rows": 3}}),
    # Per-row shards and a next_of field of them; the episode fields keep their default chunks.
    "unbounded-shards-next_of": dict(capacity=None, fields={
        "frame": {"shape": (8, 8), "dtype": "uint8", "codec": "lz4hc:5/rows", "chunk_rows": 16},
        "next_frame": {"next_of": "frame", "chunk_rows": 16}}),
    # A ring whose size is no multiple of the shard: its last shard is partial.
    "ring-shards": dict(capacity=24, fields={
        "frame": {"shape": (8, 8), "dtype": "uint8", "codec": "lz4hc:5/rows", "chunk_rows": 16},
        "obs": {"shape": (2,), "dtype": "float64", "chunk_rows": 4},
        "reward": {"shape": (), "dtype": "float32", "chunk_rows": 8},
        "terminated": {"shape": (), "dtype": "bool", "chunk_rows": 8},
        "truncated": {"shape": (), "dtype": "bool", "chunk_rows": 8}}),
    # A ring with a next_of field, and commits made by the writer itself every 13 rows.
    "ring-next_of": dict(capacity=20, commit_every_rows=13, fields={
        "obs": {"shape": (4,), "dtype": "float32", "chunk_rows": 8},
        "next_obs": {"next_of": "obs", "chunk_rows": 8},
        "action": {"shape": (), "dtype": "int16", "chunk_rows": 3},
        "reward": {"shape": (), "dtype": "float32", "chunk_rows": 5},
        "terminated": {"shape": (), "dtype": "bool", "chunk_rows": 4},
        "truncated": {"shape": (), "dtype": "bool", "chunk_rows": 4}}),
    # A tiny ring: it wraps several times between two commits.
    "ring-tiny": dict(capacity=7, fields={
        "obs": {"shape": (), "dtype": "int32", "chunk_rows": 3},
        "reward": {"shape": (), "dtype": "float32", "chunk_rows": 2},
        "terminated": {"shape": (), "dtype": "bool", "chunk_rows": 3},
        "truncated": {"shape": (), "dtype": "bool", "chunk_rows": 5}}),
}


class Hooks:
    """What the store does around a manifest replacement: nothing (no index, no samplers)."""

    def before_publish(self, old: Manifest, new: Manifest, full: bool) -> Manifest:
        return new

    def after_publish(self, manifest: Manifest, full: bool) -> None:
        pass


def make_rows(schema: Schema, count: int, rng: np.random.Generator, p_end: float
              ) -> dict[str, np.ndarray]:
    """``count`` rows of every field: random values, episode ends with probability ``p_end``,
    integer rewards (so that every sum of them is exact), and ``next_of`` fields that continue
    into the next row's target except at episode ends and, now and then, elsewhere too."""
    rows: dict[str, np.ndarray] = {}

    def random(field: rs.Field) -> np.ndarray:
        shape = (count, *field.shape)
        if field.dtype.kind == "f":
            return rng.standard_normal(shape).astype(field.dtype)
        if field.dtype.kind == "b":
            return rng.random(shape) < 0.5
        return rng.integers(0, 120, shape).astype(field.dtype)

    for field in schema:
        if field.name in ("terminated", "truncated"):
            rows[field.name] = rng.random(count) < p_end / 2
        elif field.name == "reward":
            rows[field.name] = rng.integers(-3, 4, count).astype(field.dtype)
        elif field.next_of is None:
            rows[field.name] = random(field)
    ends = rows["terminated"] | rows["truncated"]
    for field in schema:
        if field.next_of is not None:
            given = random(field)
            follows = ~ends & (rng.random(count) < 0.9)
            follows[-1] = False
            given[:-1][follows[:-1]] = rows[field.next_of][1:][follows[:-1]]
            rows[field.name] = given
    return {name: rows[name] for name in schema.names}


def build(rec: RecordingStorage, schema: Schema, capacity: int | None) -> Manifest:
    """What ``rs.create`` writes, into any storage: the zarr documents, synced, then the first
    manifest."""
    rec.put(GROUP, dumps(group_document(schema, capacity)))
    rec.put(META_GROUP, dumps(meta_group_document()))
    for field in schema:
        rec.put(array_key(field.name), dumps(array_document(field, 0)))
    rec.sync([GROUP, META_GROUP, *(array_key(f.name) for f in schema)])
    return commit_manifest(rec, Manifest(schema.hash, capacity))


class Run:
    """One store over a recording storage, its writer, and everything it was given."""

    def __init__(self, layout: str | dict[str, Any], total: int, seed: int,
                 p_end: float) -> None:
        spec = LAYOUTS[layout] if isinstance(layout, str) else layout
        self.schema = Schema.from_fields(spec["fields"])
        self.capacity: int | None = spec["capacity"]
        self.rec = RecordingStorage(MemoryStorage())
        first = build(self.rec, self.schema, self.capacity)
        self.start = self.rec.mark()
        self.returned: list[tuple[int, int]] = [(self.start, first.commit_seq)]
        self.rows = make_rows(self.schema, total, np.random.default_rng(seed), p_end)
        self.appended = 0
        self._written: list[Manifest] = []
        self._documents = {array_key(f.name) for f in self.schema}
        self.writer = Writer(self.rec, self.schema, first,
                             commit_every_rows=spec.get("commit_every_rows", 1 << 40),
                             commit_every_seconds=1e9, hooks=Hooks())
        commit = self.writer.commit

        def recorded_commit() -> Manifest:  # explicit commits and the writer's own
            manifest = commit()
            self.returned.append((self.rec.mark(), manifest.commit_seq))
            self.check_commit_durable()
            return manifest

        self.writer.commit = recorded_commit  # type: ignore[method-assign]

    # -- driving ------------------------------------------------------------------------

    def append(self, count: int) -> None:
        for g in range(self.appended, self.appended + count):
            self.writer.append(self.schema.check_row({n: v[g] for n, v in self.rows.items()}))
        self.appended += count

    def extend(self, count: int) -> None:
        part = slice(self.appended, self.appended + count)
        arrays, n = self.schema.check_batch({n: v[part] for n, v in self.rows.items()})
        self.writer.extend(arrays, n)
        self.appended += count

    def commit(self) -> Manifest:
        return self.writer.commit()

    def play(self, ops: list[tuple[str, int]]) -> None:
        for op, count in ops:
            if op == "commit":
                self.commit()
            else:
                getattr(self, op)(count)

    # -- the ordering assertions ------------------------------------------------------------

    def check_commit_durable(self) -> None:
        """Right after a commit returned: the manifest and every chunk are durable, and each
        chunk and episode block was durable before the manifest that names them."""
        rec = self.rec
        rec.assert_all_durable(MANIFEST)
        for field in self.schema:
            rec.assert_all_durable(f"{field.name}/c.*")
        if self.capacity is None:  # a ring deletes retired episode blocks without a sync
            rec.assert_all_durable(EPISODES)
        # The commit's own manifest is its last put of the manifest (a ring may publish
        # shrunken windows earlier, while chunks of uncommitted rows are not durable yet).
        publish = rec.find("put", MANIFEST)[-1].seq
        for field in self.schema:
            rec.assert_durable_before(f"{field.name}/c.*", MANIFEST, since=publish)
        rec.assert_durable_before(EPISODES, MANIFEST, since=publish)

    # -- the power cuts -----------------------------------------------------------------------

    def check_cuts(self, since: int | None = None, per_cut: int = 8) -> int:
        """Check every power cut from event ``since`` (the start of the history) on; returns
        how many distinct states were checked.

        States that differ only in the arrays' ``zarr.json`` documents (which no replaystore
        read uses, and which are rewritten after each commit's manifest) are checked once:
        those documents only have to parse.
        """
        checked: set[frozenset[tuple[str, bytes]]] = set()
        documents: set[frozenset[tuple[str, bytes]]] = set()
        for at, state in self.rec.cuts(self.start if since is None else since, "mixed",
                                       per_cut=per_cut):
            values = state.values()
            docs = frozenset((k, v) for k, v in values.items() if k in self._documents)
            rest = frozenset((k, v) for k, v in values.items() if k not in self._documents)
            try:
                if docs not in documents:
                    documents.add(docs)
                    for key in self._documents:
                        doc = json.loads(state.get(key))
                        assert doc["node_type"] == "array", key
                if rest not in checked:
                    checked.add(rest)
                    self.check_state(at, state)
            except Exception as exc:
                events = "\n  ".join(map(str, self.rec.events[max(0, at - 6):at]))
                raise AssertionError(f"power cut after event {at} (the last ones:\n  {events}"
                                     f"\n): {exc!r}") from exc
        return len(checked)

    def written(self) -> list[Manifest]:
        """Every manifest the writer put (whether or not the put returned)."""
        events = [e for e in self.rec.find("put", MANIFEST) if e.changed]
        if len(events) != len(self._written):
            self._written = [load_manifest(MemoryStorage({MANIFEST: e.data or b""}))
                             for e in events]
        return self._written

    def check_state(self, at: int, state: MemoryStorage) -> None:
        m = load_manifest(state)
        returned = max(seq for mark, seq in self.returned if mark <= at)
        assert m.commit_seq >= returned, (
            f"the manifest is commit {m.commit_seq}, but commit {returned} had returned")
        assert m in self.written(), f"commit {m.commit_seq} was never written"
        group = json.loads(state.get(GROUP))["attributes"]["replaystore"]
        assert Schema.from_json(group["schema"]) == self.schema
        assert group["capacity"] == self.capacity
        rows = np.arange(m.start, m.end, dtype=np.int64)
        slots = m.slot_of(rows)
        reader = Reader(state, self.schema, m, 1 << 20)
        stored = [f.name for f in self.schema if not f.derived]
        got = reader.get(slots, stored)
        for name in stored:
            want = self.rows[name][rows]
            assert got[name].tobytes() == want.tobytes(), f"{name} rows differ"
        # Episodes: the manifest's counts and the table from its blocks, against the rows.
        ends = np.flatnonzero(self.rows["terminated"][:m.end] | self.rows["truncated"][:m.end])
        starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64)[:len(ends)]
        assert m.episodes == len(ends)
        open_start = int(ends[-1]) + 1 if len(ends) else 0
        open_episode = None if open_start == m.end else (
            open_start, m.end - open_start,
            float(self.rows["reward"][open_start:m.end].astype(np.float64).sum()))
        assert m.open_episode == open_episode
        table = EpisodeTable(m.episodes, m.open_episode).finished(state, m.start)
        keep = starts >= m.start
        reward = self.rows["reward"].astype(np.float64)
        assert table["start"].tolist() == starts[keep].tolist()
        assert table["length"].tolist() == (ends - starts + 1)[keep].tolist()
        assert table["return"].tolist() == [float(reward[a:b + 1].sum())
                                            for a, b in zip(starts[keep], ends[keep],
                                                            strict=True)]
        assert table["terminated"].tolist() == self.rows["terminated"][ends[keep]].tolist()
        assert table["truncated"].tolist() == self.rows["truncated"][ends[keep]].tolist()
        derived = [f.name for f in self.schema if f.derived]
        if derived and len(rows):
            firsts = np.concatenate(([m.start], starts, [open_start]))
            firsts = np.unique(firsts[(firsts >= m.start) & (firsts < m.end)])
            got = frames.gather(reader, firsts, slots, derived)
            for name in derived:
                assert got[name].tobytes() == self.rows[name][rows].tobytes(), \
                    f"{name} rows differ"


ops_strategy = st.lists(
    st.one_of(st.tuples(st.just("append"), st.integers(1, 6)),
              st.tuples(st.just("extend"), st.integers(1, 30)),
              st.just(("commit", 0))),
    min_size=1, max_size=8)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@settings(max_examples=6, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops_strategy, seed=st.integers(0, 2**32 - 1),
       p_end=st.sampled_from([0.0, 0.15, 0.6]))
def test_every_power_cut_keeps_each_returned_commit(layout: str, ops: list[tuple[str, int]],
                                                    seed: int, p_end: float) -> None:
    """Appends, extends and commits at random points; at every cut during and between them
    the storage holds a commit no older than the last that returned, byte for byte."""
    total = sum(n for _, n in ops)
    run = Run(layout, total + 1, seed, p_end)
    run.play([*ops, ("commit", 0)])
    assert run.check_cuts() > 0


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_fixed_history_cut_at_every_step(layout: str) -> None:
    """One fixed history per layout that fills, wraps and commits partly filled chunks, cut
    at every step with up to 16 states a cut there may leave."""
    run = Run(layout, 120, seed=7, p_end=0.2)
    run.play([("extend", 5), ("commit", 0), ("append", 3), ("extend", 17), ("commit", 0),
              ("append", 1), ("commit", 0), ("extend", 40), ("append", 2), ("commit", 0),
              ("extend", 9)])
    assert len(run.returned) >= 5
    assert run.check_cuts(per_cut=16) > 0


def test_episode_blocks_across_a_block_boundary_and_retired_by_a_ring() -> None:
    """More than a block of episodes (every row ends one): the first block fills and, in a
    ring, is retired; every cut still shows the committed episodes."""
    run = Run(dict(capacity=300, fields={
        "obs": {"shape": (), "dtype": "int64", "chunk_rows": 128},
        "reward": {"shape": (), "dtype": "float32", "chunk_rows": 128},
        "terminated": {"shape": (), "dtype": "bool", "chunk_rows": 128},
        "truncated": {"shape": (), "dtype": "bool", "chunk_rows": 128}}),
        BLOCK + 1000, seed=3, p_end=2.0)  # p_end 2: every row ends an episode
    for count in (BLOCK - 100, 150, 900):
        run.extend(count)
        mark = run.rec.mark()
        run.commit()
        run.check_cuts(since=mark, per_cut=6)
    assert run.rec.find("delete", EPISODES), "the ring retired no episode block"
    assert run.writer.manifest.episodes > BLOCK


# -- injected errors ------------------------------------------------------------------------


def fault_run(layout: str) -> tuple[Run, int]:
    """A store with one commit, then rows that (in a ring) wrap; returns it and the mark
    before the next commit."""
    run = Run(layout, 60, seed=11, p_end=0.2)
    run.extend(10)
    run.commit()
    run.append(2)
    run.extend(9)  # fewer rows than "ring-next_of" commits at by itself
    assert run.writer.pending == 11
    return run, run.rec.mark()


def inject(rec: RecordingStorage, verb: str, key: str, occurrence: int, when: str) -> list[Any]:
    """Make the ``occurrence``-th call (from 0) of ``verb`` on ``key`` fail with SyncError."""
    seen = [0]
    faults: list[Any] = []
    original = getattr(rec, verb)

    def call(*args: Any, **kwargs: Any) -> Any:
        keys = list(args[0]) if verb == "sync" else [args[0]]
        if key in keys:
            if seen[0] == occurrence:
                error = SyncError(5, "injected fsync failure", key)
                faults.append(rec.fail(verb, key, error, when=when))  # type: ignore[arg-type]
            seen[0] += 1
        return original(keys, *args[1:], **kwargs) if verb == "sync" else original(*args,
                                                                                   **kwargs)

    setattr(rec, verb, call)
    return faults


@pytest.mark.parametrize("layout", ["ring-next_of", "unbounded-chunks", "ring-tiny"])
def test_a_failed_sync_at_each_step_of_a_commit(layout: str) -> None:
    """A SyncError at each put and sync of a commit (before and after its change): the commit
    raises, the writer refuses to go on, and every power cut still holds the last commit."""
    clean, mark = fault_run(layout)
    clean.commit()
    calls = [e for e in clean.rec.events[mark:] if e.verb in ("put", "sync")]
    assert any(e.key == MANIFEST for e in calls)
    targets = []
    for i, event in enumerate(calls):
        occurrence = sum(1 for e in calls[:i] if (e.verb, e.key) == (event.verb, event.key))
        for when in ("before", "after") if event.verb == "put" else ("before",):
            targets.append((event.verb, event.key, occurrence, when))
    for verb, key, occurrence, when in targets:
        run, mark = fault_run(layout)
        faults = inject(run.rec, verb, key, occurrence, when)
        what = f"{verb} {key!r} #{occurrence} ({when})"
        with pytest.raises(SyncError):
            run.commit()
        assert len(faults) == 1 and faults[0].fired == 1, what
        with pytest.raises(WriterFailedError):
            run.commit()
        with pytest.raises(WriterFailedError):
            run.append(1)
        try:
            run.check_cuts(since=mark, per_cut=3)
        except AssertionError as exc:
            raise AssertionError(f"after a SyncError at {what}: {exc}") from exc


# -- LocalStorage's own steps, as system calls --------------------------------------------------


def _path_of(fd: Any) -> str:
    fd = fd if isinstance(fd, int) else fd.fileno()
    return os.readlink(f"/proc/self/fd/{fd}")


class Syscalls:
    """Every fsync, replace, rename and link (and numpy memory-map flush) since :meth:`clear`,
    as ``(call, path[, target])``. An fsync of the file named ``undo`` also carries the bytes
    that file holds once it is synced; a memory-map flush carries ``undo``'s size then."""

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []
        self.undo: str | None = None

    def clear(self) -> None:
        self.log = []

    def index(self, *entry: Any) -> int:
        """The position of the first call that starts with ``entry``."""
        found = self.positions(*entry)
        assert found, f"{entry} not in {self.log}"
        return found[0]

    def positions(self, *entry: Any) -> list[int]:
        return [i for i, e in enumerate(self.log) if e[:len(entry)] == entry]


@pytest.fixture
def syscalls(monkeypatch: pytest.MonkeyPatch) -> Syscalls:
    seen = Syscalls()
    real_calls = {name: getattr(os, name) for name in ("fsync", "replace", "rename", "link")}
    real_flush = np.memmap.flush

    def fsync(fd: Any) -> None:
        path = _path_of(fd)
        real_calls["fsync"](fd)
        if path == seen.undo:
            with open(path, "rb") as f:
                seen.log.append(("fsync", path, f.read()))
        else:
            seen.log.append(("fsync", path))

    def moved(name: str) -> Callable[..., None]:
        def call(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            real_calls[name](src, dst, *args, **kwargs)
            seen.log.append((name, os.path.realpath(src), os.path.realpath(dst)))
        return call

    def flush(self: np.memmap) -> None:
        real_flush(self)
        seen.log.append(("memmap.flush",
                         None if seen.undo is None else os.path.getsize(seen.undo)))

    monkeypatch.setattr(os, "fsync", fsync)
    for name in ("replace", "rename", "link"):
        monkeypatch.setattr(os, name, moved(name))
    monkeypatch.setattr(np.memmap, "flush", flush)
    return seen


@pytest.fixture
def disk(tmp_path: Path) -> LocalStorage:
    backend = LocalStorage(tmp_path / "s")
    backend.make_container()
    return backend


def real(path: Path) -> str:
    return os.path.realpath(path)


def test_put_over_a_value_syncs_the_new_bytes_before_the_rename(
        disk: LocalStorage, syscalls: Syscalls) -> None:
    """A value that may hold committed bytes is only replaced by bytes already on disk (XFS
    and ext4 ``noauto_da_alloc`` may persist the rename before the data)."""
    disk.put("a/k", b"committed rows")
    disk.sync(["a/k"])
    syscalls.clear()
    disk.put("a/k", b"committed rows and more")  # not durable, but over a value
    replaces = [e for e in syscalls.log if e[0] == "replace"]
    assert len(replaces) == 1 and replaces[0][2] == real(disk.root / "a/k"), syscalls.log
    tmp = replaces[0][1]
    assert syscalls.index("fsync", tmp) < syscalls.index("replace", tmp), syscalls.log


@pytest.mark.parametrize("existing", [False, True])
def test_a_durable_put_syncs_file_then_renames_then_syncs_its_folder(
        disk: LocalStorage, syscalls: Syscalls, existing: bool) -> None:
    if existing:
        disk.put("meta/m.json", b"old", durable=True)
    syscalls.clear()
    disk.put("meta/m.json", b"new", durable=True)
    log = syscalls.log
    tmp = next(e for e in log if e[0] == "replace")[1]
    renamed = syscalls.index("replace", tmp, real(disk.root / "meta/m.json"))
    assert syscalls.index("fsync", tmp) < renamed, log
    folder = syscalls.positions("fsync", real(disk.root / "meta"))
    assert any(i > renamed for i in folder), f"the folder was not synced after the rename: {log}"
    if not existing:  # the new folder's own entry, in the root, is made durable too
        assert any(i > renamed for i in syscalls.positions("fsync", real(disk.root))), log


def test_sync_fsyncs_files_then_their_folders(disk: LocalStorage, syscalls: Syscalls) -> None:
    disk.put("x/old", b"0")
    disk.put("y/gone", b"0")
    disk.sync(["x/old", "y/gone"])
    disk.put("x/a", b"1")
    disk.put("x/b", b"2")
    disk.put("y/c", b"3")
    disk.put("x/old", b"4")  # over a value: its data was synced by the put
    disk.delete("y/gone")
    syscalls.clear()
    disk.sync(["x/a", "x/b", "y/c", "x/old", "y/gone"])
    files = [syscalls.index("fsync", real(disk.root / k)) for k in ("x/a", "x/b", "y/c")]
    for folder in ("x", "y"):
        synced = syscalls.positions("fsync", real(disk.root / folder))
        assert synced and min(synced) > max(files), \
            f"{folder} was not synced after the files: {syscalls.log}"


def test_put_if_absent_syncs_before_linking_and_the_folder_after(
        disk: LocalStorage, syscalls: Syscalls) -> None:
    (disk.root / "locks").mkdir()
    assert disk.put_if_absent("locks/owner", b"pid 1")
    log = syscalls.log
    tmp, key = next(e for e in log if e[0] == "link")[1:]
    assert key == real(disk.root / "locks/owner")
    linked = syscalls.index("link", tmp)
    assert syscalls.index("fsync", tmp) < linked, log
    folder = syscalls.positions("fsync", real(disk.root / "locks"))
    assert any(i > linked for i in folder), log
    assert not disk.put_if_absent("locks/owner", b"pid 2")
    assert disk.get("locks/owner") == b"pid 1"


def test_a_durable_delete_syncs_the_folder(disk: LocalStorage, syscalls: Syscalls) -> None:
    disk.put("d/k", b"1")
    disk.put("d/other", b"2")
    disk.sync(["d/k", "d/other"])
    syscalls.clear()
    disk.delete("d/k", durable=True)
    assert not (disk.root / "d/k").exists()
    assert syscalls.positions("fsync", real(disk.root / "d")), syscalls.log


# -- the priority checkpoint around a real commit ---------------------------------------------


def _rows(count: int) -> dict[str, np.ndarray]:
    return {"obs": np.ones((count, 3)), "reward": np.zeros(count),
            "terminated": np.zeros(count, bool), "truncated": np.zeros(count, bool)}


def test_priority_checkpoint_order_in_a_commit(tmp_path: Path, syscalls: Syscalls) -> None:
    """The undo log durable before the tree's pages are flushed, the tree flushed before the
    manifest's rename, then the next undo log's checkpoint record written and synced."""
    store = rs.create(tmp_path / "s", {"obs": ((3,), "float32")}, capacity=64)
    syscalls.undo = real(store.path / priority.UNDO)
    try:
        index = store.priority_index()
        store.extend(_rows(10))
        store.commit()
        index.set(np.arange(5), np.full(5, 2.5))  # priority changes since that commit
        store.extend(_rows(4))  # and new rows, which the commit gives the maximum priority
        syscalls.clear()
        manifest = store.commit()
        log = syscalls.log
        renamed = [i for i, e in enumerate(log)
                   if e[0] == "replace" and e[2] == real(store.path / MANIFEST)]
        assert len(renamed) == 1, log
        renamed = renamed[0]
        flushes = [i for i, e in enumerate(log[:renamed]) if e[0] == "memmap.flush"]
        assert flushes, f"the tree was not flushed before the manifest: {log}"
        undo_size = log[flushes[-1]][1]
        assert undo_size > 16, "the commit made no priority change to undo"
        synced = [i for i in syscalls.positions("fsync", syscalls.undo) if i < flushes[-1]]
        assert synced and len(log[synced[-1]][2]) == undo_size, (
            f"the undo records were not all durable before the tree was flushed: {log}")
        checkpoint = manifest.state["priority"]["checkpoint"]
        record = np.array([(priority.LOG_START, float(checkpoint))],
                          priority._UNDO_RECORD).tobytes()
        after = [log[i][2] for i in syscalls.positions("fsync", syscalls.undo) if i > renamed]
        assert record in after, (
            f"no durable checkpoint record {checkpoint} after the manifest's rename: {log}")
    finally:
        store.close()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_the_key_patterns_name_what_a_commit_writes(layout: str) -> None:
    """The ordering assertions above pass vacuously if their patterns match no key: every
    key a commit writes must match one, and the chunks must be synced before the manifest."""
    run = Run(layout, 30, seed=1, p_end=0.5)
    run.extend(12)  # fewer rows than "ring-next_of" commits at by itself
    mark = run.rec.mark()
    run.commit()
    patterns = [MANIFEST, EPISODES, *(f"{f.name}/c.*" for f in run.schema),
                *(array_key(f.name) for f in run.schema)]
    events = [e for e in run.rec.events[mark:] if e.changed or e.durable]
    assert all(any(fnmatch.fnmatchcase(e.key, p) for p in patterns) for e in events), events
    publish = max(e.seq for e in events if e.key == MANIFEST)
    synced = {e.key for e in events if e.verb == "sync" and e.seq < publish}
    for field in run.schema:
        assert fnmatch.filter(synced, f"{field.name}/c.*"), f"no chunk of {field.name} synced"
    assert fnmatch.filter(synced, EPISODES)
