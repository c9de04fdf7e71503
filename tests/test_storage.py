"""The storage protocol: conformance of each implementation, and the recording wrapper that the
crash tests are built on (events, injected errors, simulated power cuts)."""

from __future__ import annotations

import errno
import itertools
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replaystore.errors import CorruptStoreError, SyncError
from replaystore.storage import (
    POWER_LOSS_MODES,
    Change,
    MemoryStorage,
    RecordingStorage,
    Storage,
    check_key,
)
from replaystore.storage import local as backend_module
from replaystore.storage.local import LocalStorage
from replaystore.storage.testing import StorageTests

# -- conformance ------------------------------------------------------------------------------


class TestMemoryStorage(StorageTests):
    @pytest.fixture
    def storage_factory(self) -> Callable[[], Storage]:
        return MemoryStorage

    def power_cut_states(self, storage: Storage) -> Sequence[Storage]:
        assert isinstance(storage, MemoryStorage)
        return storage.power_loss_states("mixed", limit=256)


class TestRecordingStorage(StorageTests):
    """The wrapper must be invisible: the same suite passes through it."""

    @pytest.fixture
    def storage_factory(self) -> Callable[[], Storage]:
        return lambda: RecordingStorage(MemoryStorage())

    def power_cut_states(self, storage: Storage) -> Sequence[Storage]:
        assert isinstance(storage, RecordingStorage)
        return storage.power_loss_states("mixed", limit=256)


class TestLocalStorage(StorageTests):
    @pytest.fixture
    def storage_factory(self, tmp_path: Path) -> Callable[[], Storage]:
        counter = itertools.count()
        return lambda: LocalStorage(tmp_path / f"store{next(counter)}")

    def reopen(self, storage: Storage) -> Storage:
        assert isinstance(storage, LocalStorage)
        return LocalStorage(storage.root)


# -- the key rule -----------------------------------------------------------------------------


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
       | st.lists(st.sampled_from(["a", ".", "..", "", "b-c", "x.y", "é", " "]),
                  max_size=4).map("/".join))
def test_key_rule_is_the_backends(key: str) -> None:
    def verdict(check: Callable[[str], str]) -> bool:
        try:
            check(key)
        except CorruptStoreError:
            return False
        return True

    assert verdict(check_key) == verdict(backend_module.check_key)


# -- MemoryStorage's durability bookkeeping -------------------------------------------------


def test_initial_values_are_durable() -> None:
    storage = MemoryStorage({"a/b": b"1", "c": bytearray(b"2")})
    assert storage.values() == {"a/b": b"1", "c": b"2"}
    assert storage.durable_values() == storage.values()
    assert storage.pending() == {}


def test_pending_changes_are_tracked_until_durable() -> None:
    storage = MemoryStorage({"k": b"0"})
    storage.put("k", b"1")
    storage.put("n", b"new")
    storage.delete("k")
    assert storage.pending() == {"k": (Change(b"1", True), Change(None, True)),
                                 "n": (Change(b"new", False),)}
    assert not storage.is_durable("k") and storage.is_durable("other")
    storage.sync(["k"])
    assert storage.is_durable("k") and "k" not in storage.durable_values()
    storage.put("n", b"newer", durable=True)
    assert storage.pending() == {}
    assert storage.durable_values() == {"n": b"newer"}


def test_copy_is_independent_and_keeps_durability() -> None:
    storage = MemoryStorage({"d": b"durable"})
    storage.put("p", b"pending")
    twin = storage.copy()
    assert twin.values() == storage.values() and twin.pending() == storage.pending()
    twin.put("p", b"changed", durable=True)
    assert storage.get("p") == b"pending" and not storage.is_durable("p")


def test_sync_refuses_a_bad_key_before_syncing_any() -> None:
    storage = MemoryStorage()
    storage.put("a", b"1")
    with pytest.raises(CorruptStoreError):
        storage.sync(["a", "../b"])
    assert not storage.is_durable("a")


# -- power loss -------------------------------------------------------------------------------


def _history() -> MemoryStorage:
    """A durable value, a key replaced without durability, a new key, a delete, a synced put."""
    storage = MemoryStorage()
    storage.put("durable", b"D", durable=True)
    storage.put("replaced", b"old", durable=True)
    storage.put("replaced", b"new")
    storage.put("new", b"N")
    storage.put("deleted", b"X", durable=True)
    storage.delete("deleted")
    storage.put("synced", b"S")
    storage.sync(["synced"])
    return storage


def _outcomes(states: Iterable[MemoryStorage], key: str) -> set[bytes | None]:
    return {s.get(key) if s.exists(key) else None for s in states}


@pytest.mark.parametrize("mode", POWER_LOSS_MODES)
def test_durable_and_synced_values_survive_every_cut(mode: str) -> None:
    storage = _history()
    states = storage.power_loss_states(mode, limit=1_000)  # type: ignore[arg-type]
    for seed in range(20):
        states.append(storage.power_loss(seed, mode))  # type: ignore[arg-type]
    for state in states:
        assert state.get("durable") == b"D" and state.get("synced") == b"S"
        assert state.pending() == {}  # what a cut leaves is on disk: durable
    assert storage.pending().keys() == {"replaced", "new", "deleted"}  # original untouched


def test_each_mode_leaves_what_it_models() -> None:
    storage = _history()
    expected = {
        "drop": ({b"old"}, {None}, {b"X"}),
        "keep": ({b"new"}, {b"N"}, {None}),
        "atomic": ({b"old", b"new"}, {None, b"N"}, {b"X", None}),
        "mixed": ({b"old", b"new"}, {None, b"N", b""}, {b"X", None}),  # a new key may be empty
        "tear": ({b"old", b"new", b""}, {None, b"N", b""}, {b"X", None}),  # so may a replaced one
    }
    for mode, (replaced, new, deleted) in expected.items():
        states = storage.power_loss_states(mode, limit=1_000)  # type: ignore[arg-type]
        assert _outcomes(states, "replaced") == replaced, mode
        assert _outcomes(states, "new") == new, mode
        assert _outcomes(states, "deleted") == deleted, mode
        # every combination, each once: keys are lost or kept independently
        assert len(states) == len(replaced) * len(new) * len(deleted), mode


def test_every_intermediate_value_is_a_possible_cut() -> None:
    storage = MemoryStorage({"k": b"v0"})
    for i in range(1, 4):
        storage.put("k", f"v{i}".encode())
    assert _outcomes(storage.power_loss_states("atomic"), "k") == {b"v0", b"v1", b"v2", b"v3"}


def test_power_loss_is_reproducible_and_random() -> None:
    storage = MemoryStorage()
    for i in range(30):
        storage.put(f"k{i}", b"1")
    first = storage.power_loss(7, "atomic").values()
    assert storage.power_loss(random.Random(7), "atomic").values() == first
    assert 0 < len(first) < 30  # some kept, some dropped
    assert storage.power_loss(None).values() == storage.power_loss(0).values()


def test_power_loss_states_samples_past_the_limit() -> None:
    storage = MemoryStorage()
    for i in range(12):
        storage.put(f"k{i}", b"1")  # 3 outcomes each in "mixed": 531,441 states
    states = storage.power_loss_states(limit=50, rng=1)
    assert len(states) == 50
    assert len({tuple(sorted(s.values().items())) for s in states}) == 50
    assert states[0].values() == {}  # the extremes come first: everything dropped,
    assert states[1].values() == storage.values()  # and everything kept


def test_power_loss_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="mode"):
        MemoryStorage().power_loss(0, "partial")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        MemoryStorage().power_loss_states(limit=0)


# -- the recorder: events ---------------------------------------------------------------------


def test_every_call_is_an_event() -> None:
    rec = RecordingStorage()
    rec.put("a/1", b"xyz")
    rec.put("m", b"12", durable=True)
    assert rec.get("a/1") == b"xyz"
    assert rec.get_range("a/1", 1, 5) == b"yz"
    assert rec.size("a/1") == 3
    assert rec.exists("a/1") and not rec.exists("b")
    assert rec.put_if_absent("lock", b"me") and not rec.put_if_absent("lock", b"you")
    assert list(rec.list("a")) == ["a/1"]
    rec.sync(["a/1", "m"])
    rec.delete("a/1")
    rec.delete("gone", durable=True)
    got = [(e.verb, e.key, e.durable, e.changed, e.size) for e in rec.events]
    assert got == [
        ("put", "a/1", False, True, 3), ("put", "m", True, True, 2), ("get", "a/1", False, False, 3),
        ("get_range", "a/1", False, False, 2), ("size", "a/1", False, False, 3),
        ("exists", "a/1", False, False, None), ("exists", "b", False, False, None),
        ("put_if_absent", "lock", True, True, 2), ("put_if_absent", "lock", False, False, 3),
        ("list", "a", False, False, 1), ("sync", "a/1", True, False, None),
        ("sync", "m", True, False, None), ("delete", "a/1", False, True, None),
        ("delete", "gone", True, False, None)]
    assert [e.seq for e in rec.events] == list(range(len(got)))
    assert all(e.error is None for e in rec.events)
    assert rec.events[0].data == b"xyz"


def test_errors_are_recorded_and_raised() -> None:
    rec = RecordingStorage()
    with pytest.raises(FileNotFoundError):
        rec.get("missing")
    with pytest.raises(CorruptStoreError):
        rec.put("../x", b"1")
    assert [(e.verb, type(e.error)) for e in rec.events] == [
        ("get", FileNotFoundError), ("put", CorruptStoreError)]


def test_find_and_mark() -> None:
    rec = RecordingStorage()
    rec.put("obs/c/0", b"1")
    mark = rec.mark()
    rec.put("obs/c/1", b"1")
    rec.put("meta/m", b"1")
    assert [e.key for e in rec.find("put", "obs/*")] == ["obs/c/0", "obs/c/1"]
    assert [e.key for e in rec.find(since=mark)] == ["obs/c/1", "meta/m"]
    assert rec.find("delete") == []


# -- the recorder: injected errors ------------------------------------------------------------


def test_fail_before_changes_nothing() -> None:
    rec = RecordingStorage(MemoryStorage({"obs/c/0": b"old"}))
    fault = rec.fail("put", "obs/*")
    with pytest.raises(OSError) as info:
        rec.put("obs/c/0", b"new", durable=True)
    assert info.value.errno == errno.EIO and info.value.filename == "obs/c/0"
    assert rec.get("obs/c/0") == b"old" and rec.is_durable("obs/c/0")
    assert fault.fired == 1
    rec.put("obs/c/0", b"new")  # times=1: the next call goes through
    assert rec.get("obs/c/0") == b"new"
    assert [(e.verb, e.error is not None, e.changed) for e in rec.find("put")] == [
        ("put", True, False), ("put", False, True)]


def test_fail_after_applies_the_change_without_durability() -> None:
    rec = RecordingStorage(MemoryStorage({"m": b"old"}))
    rec.fail("put", "m", when="after")
    with pytest.raises(OSError):
        rec.put("m", b"new", durable=True)
    assert rec.get("m") == b"new" and not rec.is_durable("m")
    assert rec.power_loss(0, "drop").get("m") == b"old"
    rec.fail("put_if_absent", when="after")
    with pytest.raises(OSError):
        rec.put_if_absent("lock", b"me")
    assert rec.get("lock") == b"me" and not rec.is_durable("lock")
    rec.fail("delete", when="after")
    with pytest.raises(OSError):
        rec.delete("m", durable=True)
    assert not rec.exists("m") and not rec.is_durable("m")
    assert rec.replay().values() == rec.inner.values()


def test_failed_sync_stops_at_the_failing_key() -> None:
    rec = RecordingStorage()
    for key in ("a", "b", "c"):
        rec.put(key, b"1")
    rec.fail("sync", "b")
    with pytest.raises(SyncError) as info:
        rec.sync(["a", "b", "c"])
    assert info.value.filename == "b"
    assert rec.is_durable("a") and not rec.is_durable("b") and not rec.is_durable("c")
    assert [(e.key, e.durable) for e in rec.find("sync")] == [("a", True), ("b", False)]
    rec.fail("sync", "c", when="after")
    with pytest.raises(SyncError):
        rec.sync(["c"])
    assert not rec.is_durable("c")  # a failed fsync makes nothing durable, whenever it fails


def test_fail_options() -> None:
    rec = RecordingStorage()
    rec.put("k", b"1")
    every = rec.fail("get", "k", times=None)
    for _ in range(3):
        with pytest.raises(OSError):
            rec.get("k")
    assert every.fired == 3
    rec.clear_faults()
    assert rec.get("k") == b"1"

    rec.fail("*", "k", ValueError("custom"), times=2)
    with pytest.raises(ValueError, match="custom"):
        rec.exists("k")
    with pytest.raises(ValueError, match="custom"):
        rec.size("k")
    assert rec.size("k") == 1

    rec.fail("list", "", lambda key: OSError(errno.ENOSPC, "full", key))
    with pytest.raises(OSError) as info:
        rec.list()
    assert info.value.errno == errno.ENOSPC
    assert rec.fail("get", "other").fired == 0

    with pytest.raises(ValueError, match="verb"):
        rec.fail("read", "k")
    with pytest.raises(ValueError, match="when"):
        rec.fail("get", "k", when="during")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="times"):
        rec.fail("get", "k", times=0)


# -- the recorder: replay and cuts ------------------------------------------------------------


def test_replay_rebuilds_any_point_of_history() -> None:
    rec = RecordingStorage(MemoryStorage({"start": b"0"}))
    rec.put("a", b"1")
    rec.put("a", b"2", durable=True)
    rec.get("a")
    rec.delete("start")
    rec.sync(["start"])
    full = rec.replay()
    assert full.values() == rec.inner.values()
    assert full.durable_values() == rec.inner.durable_values()
    assert full.pending() == rec.inner.pending()
    assert rec.replay(0).values() == {"start": b"0"}
    assert rec.replay(1).values() == {"start": b"0", "a": b"1"}
    assert rec.replay(1).pending() == {"a": (Change(b"1", False),)}
    assert rec.power_loss(0, "drop", at=1).values() == {"start": b"0"}
    assert rec.power_loss(0, "drop", at=2).values() == {"start": b"0", "a": b"2"}
    assert [s.values() for s in rec.power_loss_states("drop", at=4)] == [
        {"start": b"0", "a": b"2"}]


def test_cuts_visit_every_change() -> None:
    rec = RecordingStorage()
    rec.put("x", b"0", durable=True)
    mark = rec.mark()
    rec.put("a", b"1")
    rec.get("a")  # a read: no new cut point after it
    rec.sync(["a"])
    points: dict[int, list[dict[str, bytes]]] = {}
    for at, state in rec.cuts(mark, "atomic"):
        points.setdefault(at, []).append(state.values())
    assert sorted(points) == [1, 2, 4]
    assert points[1] == [{"x": b"0"}]
    assert sorted(points[2], key=len) == [{"x": b"0"}, {"x": b"0", "a": b"1"}]
    assert points[4] == [{"x": b"0", "a": b"1"}]


# -- the recorder: ordering assertions --------------------------------------------------------


def _commit(storage: Storage, chunks: dict[str, bytes], manifest: bytes) -> None:
    for key, data in chunks.items():
        storage.put(key, data)
    storage.sync(chunks)
    storage.put("meta/manifest", manifest, durable=True)


def test_assert_durable_before_accepts_a_correct_commit() -> None:
    rec = RecordingStorage()
    _commit(rec, {"obs/c/0": b"a", "obs/c/1": b"b"}, b"m1")
    rec.put("obs/c/2", b"later")  # after the manifest: not its concern
    assert rec.assert_durable_before("obs/*", "meta/manifest") == 1
    rec.assert_all_durable("meta/*")
    with pytest.raises(AssertionError, match="obs/c/2"):
        rec.assert_all_durable()


def test_assert_durable_before_catches_a_missing_sync() -> None:
    rec = RecordingStorage()
    rec.put("obs/c/0", b"a")
    rec.put("obs/c/1", b"b")
    rec.sync(["obs/c/0"])
    rec.put("meta/manifest", b"m", durable=True)
    with pytest.raises(AssertionError, match=r"'obs/c/1'.*not durable") as info:
        rec.assert_durable_before("obs/*", "meta/manifest")
    assert "obs/c/0" not in str(info.value)


def test_assert_durable_before_counts_a_synced_publish_and_deletes() -> None:
    rec = RecordingStorage()
    rec.put("obs/c/0", b"a", durable=True)
    rec.put("meta/manifest", b"m")
    rec.delete("ep/0")  # nothing there: not a change
    rec.put("ep/1", b"e", durable=True)
    rec.delete("ep/1")
    rec.sync(["meta/manifest"])  # published by a sync
    assert rec.assert_durable_before("obs/*", "meta/manifest") == 1
    assert rec.assert_durable_before("ep/*", "meta/manifest") == 1
    with pytest.raises(AssertionError, match="ep/1"):
        rec.assert_durable_before("ep/*", "meta/manifest", deletes=True)


def test_assert_durable_before_needs_a_publish() -> None:
    rec = RecordingStorage()
    rec.put("meta/manifest", b"m")
    with pytest.raises(AssertionError, match="never made durable"):
        rec.assert_durable_before("obs/*", "meta/manifest")
    rec.sync(["meta/manifest"])
    mark = rec.mark()
    with pytest.raises(AssertionError, match="never made durable"):
        rec.assert_durable_before("obs/*", "meta/manifest", since=mark)


# -- the point of it all: a removed durability step fails a test -----------------------------


def _commit_variant(storage: Storage, step: str, chunks: dict[str, bytes], manifest: bytes) -> None:
    """A commit with one durability step removed (or none: "intact")."""
    for key, data in chunks.items():
        storage.put(key, data)
    if step == "manifest first":
        storage.put("meta/manifest", manifest, durable=True)
    if step != "no chunk sync":
        storage.sync(chunks)
    if step != "manifest first":
        storage.put("meta/manifest", manifest, durable=step != "manifest not durable")


def _check_every_cut(rec: RecordingStorage, since: int, committed: dict[bytes, dict[str, bytes]],
                     returned: bytes) -> None:
    """After any cut, each chunk the manifest names holds (at least) its committed rows; after
    the commit returned, the manifest is the one it wrote."""
    for at, state in rec.cuts(since, "mixed", per_cut=64):
        manifest = state.get("meta/manifest")
        for key, rows in committed[manifest].items():
            assert state.exists(key) and state.get(key).startswith(rows), (at, key)
        if at == len(rec.events):
            assert manifest == returned, at


def _ordering_holds(rec: RecordingStorage, since: int) -> bool:
    try:
        rec.assert_durable_before("obs/*", "meta/manifest", since=since)
        rec.assert_all_durable("meta/manifest")
    except AssertionError:
        return False
    return True


@pytest.mark.parametrize("step", ["intact", "no chunk sync", "manifest first",
                                  "manifest not durable"])
def test_a_removed_durability_step_is_caught(step: str) -> None:
    first = {"obs/c/0": b"0123456789"}  # a partly filled chunk, grown by the second commit
    second = {"obs/c/0": b"0123456789abcdefghij", "obs/c/1": b"ABCDEFGHIJ"}
    committed = {b"m1": first, b"m2": second}
    rec = RecordingStorage()
    _commit(rec, first, b"m1")
    mark = rec.mark()
    _commit_variant(rec, step, second, b"m2")
    if step == "intact":
        _check_every_cut(rec, mark, committed, b"m2")
        assert _ordering_holds(rec, mark)
    else:
        with pytest.raises(AssertionError):
            _check_every_cut(rec, mark, committed, b"m2")
        assert not _ordering_holds(rec, mark)


def test_tear_mode_shows_why_a_replaced_value_is_synced_first() -> None:
    # A storage that renamed unsynced bytes over a committed chunk could leave it empty:
    # "tear" finds that cut, "mixed" (the protocol's promise) never contains it.
    rec = RecordingStorage()
    _commit(rec, {"obs/c/0": b"0123456789"}, b"m1")
    rec.put("obs/c/0", b"0123456789abcdefghij")  # uncommitted growth of a committed chunk
    assert b"" not in _outcomes(rec.power_loss_states("mixed"), "obs/c/0")
    assert b"" in _outcomes(rec.power_loss_states("tear"), "obs/c/0")
