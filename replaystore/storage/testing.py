"""Conformance tests that every :class:`~replaystore.storage.base.Storage` implementation passes.

One class of tests for all implementations is what keeps them interchangeable: a store tested
on :class:`~replaystore.storage.memory.MemoryStorage` must behave the same on disk or in a
bucket, and a new implementation is done when it passes this suite. Subclass
:class:`StorageTests` in a test module and provide the ``storage_factory`` fixture::

    class TestMyStorage(StorageTests):
        @pytest.fixture
        def storage_factory(self, tmp_path):
            counter = itertools.count()
            return lambda: MyStorage(tmp_path / f"s{next(counter)}")

Override :meth:`StorageTests.reopen` where a second handle on the same location can be made,
and :meth:`StorageTests.power_cut_states` where what a power cut would leave can be observed
(the durability tests skip otherwise). A test that an implementation cannot pass yet is
overridden in its subclass, marked ``xfail(strict=True)`` with the reason, so that the fix
shows up as a failure to remove the mark.

This module imports pytest and hypothesis; the package never imports it.
"""

from __future__ import annotations

import array
import dataclasses
import re
import string
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..errors import CorruptStoreError
from .base import TEMPORARY_MARK, Capabilities, Storage

__all__ = ["UNSAFE_KEYS", "StorageTests", "storage_keys"]

UNSAFE_KEYS = ("../escape", "/abs", "a//b", "a/./b", "", "a/", "..", ".", "a/../b", "a/b\\c",
               "a b", "a\x00b", "a\nb", "é")
"""Keys every implementation refuses with ``CorruptStoreError`` on every verb."""

_SEGMENT_CHARS = string.ascii_letters + string.digits + "_.-"


def storage_keys() -> st.SearchStrategy[str]:
    """Valid keys of one to four segments, none of them reserved for temporary files."""
    segment = st.text(_SEGMENT_CHARS, min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))
    return (st.lists(segment, min_size=1, max_size=4).map("/".join)
            .filter(lambda k: TEMPORARY_MARK not in k))


# Keys of which none is a folder of another: any of them can hold a value at any time.
_POOL = ("a", "b/c", "b/d", "e/f/g", "e/f/h", "x.y-z_0")
_OPS = st.one_of(
    st.tuples(st.just("put"), st.sampled_from(_POOL), st.binary(max_size=40), st.booleans()),
    st.tuples(st.just("put_if_absent"), st.sampled_from(_POOL), st.binary(max_size=40)),
    st.tuples(st.just("delete"), st.sampled_from(_POOL), st.booleans()),
    st.tuples(st.just("sync"), st.lists(st.sampled_from(_POOL), max_size=3)),
)
# function_scoped_fixture: the tests make a new storage per example from the factory.
# differing_executors: each subclass runs the same inherited method; examples that one
# implementation saved to the database are valid inputs for every other.
_FIXTURE_SETTINGS = settings(max_examples=40, deadline=None,
                             suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                    HealthCheck.differing_executors])


class StorageTests:
    """What every storage must do, verb by verb, including refusals and the durability
    contract where a power cut can be observed."""

    # -- hooks for implementations -----------------------------------------------------------

    @pytest.fixture
    def storage_factory(self) -> Callable[[], Storage]:
        """A function returning a new, empty storage each call (hypothesis tests need one per
        example). Subclasses must override this fixture."""
        pytest.fail(f"{type(self).__name__} must provide the storage_factory fixture")

    @pytest.fixture
    def storage(self, storage_factory: Callable[[], Storage]) -> Storage:
        """An empty storage."""
        return storage_factory()

    def reopen(self, storage: Storage) -> Storage:
        """A second handle on the same location, as another process would open it (the same
        object where that is all there is)."""
        return storage

    def power_cut_states(self, storage: Storage) -> Sequence[Storage]:
        """The states (all of them, or a sample that includes the worst) that a power cut now
        could leave; skips the durability tests where that cannot be observed."""
        pytest.skip(f"what a power cut leaves is not observable for {type(storage).__name__}")

    # -- the class itself --------------------------------------------------------------------

    def test_is_a_storage_with_capabilities(self, storage: Storage) -> None:
        assert isinstance(storage, Storage)
        caps = storage.capabilities
        assert isinstance(caps, Capabilities)
        assert caps.local_path is None or isinstance(caps.local_path, Path)
        assert isinstance(caps.atomic_exchange, bool) and isinstance(caps.conditional_put, bool)
        with pytest.raises(dataclasses.FrozenInstanceError):
            caps.conditional_put = not caps.conditional_put  # type: ignore[misc]

    # -- get and put -------------------------------------------------------------------------

    @pytest.mark.parametrize("key", ["k", "a/b/c.0", "_replaystore/manifest.json", "A-b_c.9"])
    @pytest.mark.parametrize("data", [b"", b"hello", bytes(range(256)) * 3, b"\x00" * 70_000])
    def test_put_get_round_trip(self, storage: Storage, key: str, data: bytes) -> None:
        storage.put(key, data)
        assert storage.get(key) == data
        assert storage.exists(key)
        assert storage.size(key) == len(data)
        assert self.reopen(storage).get(key) == data

    def test_durable_put_round_trip(self, storage: Storage) -> None:
        storage.put("d/k", b"durable", durable=True)
        assert storage.get("d/k") == b"durable"

    def test_put_copies_the_callers_buffer(self, storage: Storage) -> None:
        buffer = bytearray(b"abcdef")
        storage.put("k", buffer)
        buffer[:] = b"XXXXXX"
        assert storage.get("k") == b"abcdef"

    def test_put_takes_any_bytes_like_as_raw_bytes(self, storage: Storage) -> None:
        numbers = array.array("d", [1.5, -2.0, 3.25])
        storage.put("doubles", memoryview(numbers))
        assert storage.get("doubles") == numbers.tobytes()
        assert storage.size("doubles") == 24
        storage.put("sliced", memoryview(b"0123456789")[2:5])
        assert storage.get("sliced") == b"234"

    @pytest.mark.parametrize("durable", [False, True])
    def test_put_replaces_the_whole_value(self, storage: Storage, durable: bool) -> None:
        storage.put("k", b"x" * 1000, durable=True)
        storage.put("k", b"short", durable=durable)
        assert storage.get("k") == b"short"
        assert storage.size("k") == 5
        storage.put("k", b"y" * 2000, durable=durable)
        assert storage.get("k") == b"y" * 2000

    def test_missing_key(self, storage: Storage) -> None:
        for key in ("nothing", "nothing/here"):
            with pytest.raises(FileNotFoundError):
                storage.get(key)
            with pytest.raises(FileNotFoundError):
                storage.get(key, limit=10)
            with pytest.raises(FileNotFoundError):
                storage.get_range(key, 0, 1)
            with pytest.raises(FileNotFoundError):
                storage.size(key)
            assert not storage.exists(key)

    def test_limit_refuses_a_larger_value_naming_the_key(self, storage: Storage) -> None:
        storage.put("m/manifest.json", b"0123456789")
        assert storage.get("m/manifest.json", limit=10) == b"0123456789"
        assert storage.get("m/manifest.json", limit=1_000) == b"0123456789"
        with pytest.raises(CorruptStoreError, match=re.escape("m/manifest.json")) as info:
            storage.get("m/manifest.json", limit=9)
        assert info.value.key == "m/manifest.json"
        storage.put("empty", b"")
        assert storage.get("empty", limit=0) == b""

    # -- ranged gets -------------------------------------------------------------------------

    def test_get_range(self, storage: Storage) -> None:
        data = bytes(range(100))
        storage.put("r", data)
        assert storage.get_range("r", 0, 100) == data
        assert storage.get_range("r", 10, 5) == data[10:15]
        assert storage.get_range("r", 95, 10) == data[95:]  # fewer bytes past the end
        assert storage.get_range("r", 100, 10) == b""  # at the end
        assert storage.get_range("r", 1_000, 10) == b""  # far past it
        assert storage.get_range("r", 10, 0) == b""  # zero length

    def test_get_range_of_an_empty_value(self, storage: Storage) -> None:
        storage.put("e", b"")
        assert storage.get_range("e", 0, 10) == b""

    @pytest.mark.parametrize(("offset", "length"), [(-1, 5), (0, -1)])
    def test_get_range_refuses_negative_numbers(self, storage: Storage, offset: int,
                                               length: int) -> None:
        storage.put("r", b"abc")
        with pytest.raises(ValueError):
            storage.get_range("r", offset, length)

    # -- put_if_absent -----------------------------------------------------------------------

    def test_put_if_absent_creates_once(self, storage: Storage) -> None:
        assert storage.put_if_absent("lock/owner", b"first") is True
        assert storage.get("lock/owner") == b"first"
        assert storage.put_if_absent("lock/owner", b"second") is False
        assert storage.get("lock/owner") == b"first"

    def test_put_if_absent_loses_to_a_plain_put(self, storage: Storage) -> None:
        storage.put("k", b"there")
        assert storage.put_if_absent("k", b"new") is False
        assert storage.get("k") == b"there"

    def test_put_if_absent_after_delete(self, storage: Storage) -> None:
        assert storage.put_if_absent("k", b"1")
        storage.delete("k")
        assert storage.put_if_absent("k", b"2")
        assert storage.get("k") == b"2"

    def test_put_if_absent_race_has_one_winner(self, storage: Storage) -> None:
        threads = 8
        barrier = threading.Barrier(threads)
        results: dict[int, bool] = {}

        def contend(i: int) -> None:
            barrier.wait()
            results[i] = storage.put_if_absent("race/winner", bytes([i]) * 1000)

        workers = [threading.Thread(target=contend, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        winners = [i for i, won in results.items() if won]
        assert len(results) == threads and len(winners) == 1
        assert storage.get("race/winner") == bytes([winners[0]]) * 1000

    # -- list --------------------------------------------------------------------------------

    def test_list_by_folder_prefix(self, storage: Storage) -> None:
        keys = ["f/c.0", "f/c.1", "f/sub/deeper/x", "fg/y", "g/zarr.json", "top"]
        for key in keys:
            storage.put(key, b"1")
        listed = storage.list("f")
        assert isinstance(listed, Iterator)
        assert sorted(listed) == ["f/c.0", "f/c.1", "f/sub/deeper/x"]  # not "fg/y"
        assert sorted(storage.list("f/sub")) == ["f/sub/deeper/x"]
        assert sorted(storage.list()) == sorted(keys)
        assert sorted(storage.list("")) == sorted(keys)
        assert list(storage.list("nothing")) == []
        assert list(storage.list("top")) == []  # a value, not a folder: nothing under it
        storage.delete("f/c.0")
        assert sorted(storage.list("f")) == ["f/c.1", "f/sub/deeper/x"]

    def test_list_of_an_empty_storage(self, storage: Storage) -> None:
        assert list(storage.list()) == []

    def test_list_never_shows_temporary_names(self, storage: Storage) -> None:
        # A writer rewriting keys while another thread lists: only real keys appear.
        stop = threading.Event()

        def rewrite() -> None:
            i = 0
            while not stop.is_set():
                storage.put("d/k", bytes([i % 256]) * 5000)
                i += 1

        storage.put("d/k", b"0")
        writer = threading.Thread(target=rewrite)
        writer.start()
        try:
            for _ in range(200):
                assert list(storage.list("d")) == ["d/k"]
        finally:
            stop.set()
            writer.join()

    def test_list_hides_planted_temporary_files(self, storage: Storage) -> None:
        root = storage.capabilities.local_path
        if root is None:
            pytest.skip("no files to plant")
        storage.put("d/k", b"1")
        (root / "d" / f"k{TEMPORARY_MARK}999-0").write_bytes(b"partial")
        assert list(storage.list("d")) == ["d/k"]
        assert list(storage.list()) == ["d/k"]

    # -- delete, exists, size ----------------------------------------------------------------

    @pytest.mark.parametrize("durable", [False, True])
    def test_delete_is_idempotent(self, storage: Storage, durable: bool) -> None:
        storage.put("a/k", b"1")
        storage.delete("a/k", durable=durable)
        assert not storage.exists("a/k")
        with pytest.raises(FileNotFoundError):
            storage.get("a/k")
        storage.delete("a/k", durable=durable)
        storage.delete("never/was", durable=durable)
        assert list(storage.list()) == []

    def test_size_without_reading(self, storage: Storage) -> None:
        storage.put("s", b"x" * 12345)
        assert storage.size("s") == 12345
        storage.put("s", b"")
        assert storage.size("s") == 0

    # -- keys --------------------------------------------------------------------------------

    @pytest.mark.parametrize("key", UNSAFE_KEYS)
    def test_unsafe_keys_are_refused_by_every_verb(self, storage: Storage, key: str) -> None:
        calls: list[Callable[[], object]] = [
            lambda: storage.get(key), lambda: storage.get(key, limit=1),
            lambda: storage.get_range(key, 0, 1), lambda: storage.put(key, b"x"),
            lambda: storage.put(key, b"x", durable=True), lambda: storage.put_if_absent(key, b"x"),
            lambda: storage.sync([key]), lambda: storage.exists(key), lambda: storage.size(key),
            lambda: storage.delete(key), lambda: storage.delete(key, durable=True)]
        if key:  # "" lists everything
            calls.append(lambda: list(storage.list(key)))
        for call in calls:
            with pytest.raises(CorruptStoreError, match="unsafe storage key"):
                call()
        assert list(storage.list()) == []

    @pytest.mark.parametrize("key", [f"k{TEMPORARY_MARK}1-2", f"d{TEMPORARY_MARK}x/k"])
    def test_temporary_names_are_reserved(self, storage: Storage, key: str) -> None:
        with pytest.raises(CorruptStoreError, match="reserved"):
            storage.put(key, b"x")
        with pytest.raises(CorruptStoreError, match="reserved"):
            storage.put_if_absent(key, b"x")
        assert list(storage.list()) == []

    def test_a_folder_key_holds_no_value(self, storage: Storage) -> None:
        storage.put("a/b", b"1")
        assert not storage.exists("a")
        with pytest.raises((FileNotFoundError, CorruptStoreError)):
            storage.get("a")
        with pytest.raises(FileNotFoundError):
            storage.size("a")

    def test_a_key_is_a_value_or_a_folder_never_both(self, storage: Storage) -> None:
        storage.put("a/b", b"1")
        with pytest.raises(OSError):
            storage.put("a", b"2")
        storage.put("v", b"3")
        with pytest.raises(OSError):
            storage.put("v/w", b"4")
        with pytest.raises(OSError):
            storage.put("v/w/x", b"4")
        assert sorted(storage.list()) == ["a/b", "v"]
        assert storage.get("a/b") == b"1" and storage.get("v") == b"3"

    def test_keys_under_a_value_hold_nothing(self, storage: Storage) -> None:
        storage.put("v", b"3")
        assert not storage.exists("v/w")
        with pytest.raises(FileNotFoundError):
            storage.get("v/w")
        with pytest.raises(FileNotFoundError):
            storage.size("v/w")
        storage.delete("v/w")  # nothing there: not an error

    def test_a_folder_key_can_hold_a_value_once_emptied(self, storage: Storage) -> None:
        storage.put("a/b", b"1")
        storage.delete("a/b")
        storage.put("a", b"2")
        assert storage.get("a") == b"2"

    @given(data=st.data())
    @_FIXTURE_SETTINGS
    def test_any_valid_key_round_trips(self, storage_factory: Callable[[], Storage],
                                       data: st.DataObject) -> None:
        storage = storage_factory()
        key = data.draw(storage_keys(), label="key")
        value = data.draw(st.binary(max_size=300), label="value")
        storage.put(key, value)
        assert storage.get(key) == value and storage.size(key) == len(value)
        folder = key.rpartition("/")[0]
        assert list(storage.list(folder)) == [key]
        storage.delete(key)
        assert not storage.exists(key)

    # -- sync --------------------------------------------------------------------------------

    def test_sync_accepts_what_was_put(self, storage: Storage) -> None:
        storage.put("x/y", b"1")
        storage.put("x/z", b"2")
        storage.sync(["x/y", "x/z"])
        storage.sync([])
        storage.sync(iter(["x/y"]))  # any iterable
        assert storage.get("x/y") == b"1"

    def test_sync_of_a_deleted_key(self, storage: Storage) -> None:
        storage.put("x/y", b"1")
        storage.delete("x/y")
        storage.sync(["x/y"])
        assert not storage.exists("x/y")

    def test_sync_of_a_key_that_never_existed(self, storage: Storage) -> None:
        storage.sync(["never/was"])

    # -- concurrency -------------------------------------------------------------------------

    def test_readers_see_the_old_value_or_the_new_one(self, storage: Storage) -> None:
        values = (b"a" * 100, b"b" * 50_000)
        storage.put("k", values[0])
        reader = self.reopen(storage)
        done = threading.Event()
        seen: list[bytes] = []

        def write() -> None:
            try:
                for i in range(300):
                    storage.put("k", values[i % 2])
            finally:
                done.set()

        writer = threading.Thread(target=write)
        writer.start()
        try:
            while not done.is_set():
                seen.append(reader.get("k"))
        finally:
            writer.join()
        assert all(v in values for v in seen)

    # -- against a model ---------------------------------------------------------------------

    @given(ops=st.lists(_OPS, max_size=25))
    @_FIXTURE_SETTINGS
    def test_behaves_like_a_dict(self, storage_factory: Callable[[], Storage],
                                 ops: list[tuple[Any, ...]]) -> None:
        storage = storage_factory()
        model: dict[str, bytes] = {}
        for op in ops:
            if op[0] == "put":
                _, key, value, durable = op
                storage.put(key, value, durable=durable)
                model[key] = value
            elif op[0] == "put_if_absent":
                _, key, value = op
                assert storage.put_if_absent(key, value) is (key not in model)
                model.setdefault(key, value)
            elif op[0] == "delete":
                _, key, durable = op
                storage.delete(key, durable=durable)
                model.pop(key, None)
            else:
                storage.sync([k for k in op[1] if k in model])
        assert sorted(storage.list()) == sorted(model)
        for key in _POOL:
            assert storage.exists(key) is (key in model)
            if key in model:
                assert storage.get(key) == model[key] and storage.size(key) == len(model[key])

    # -- durability, where a power cut can be observed ---------------------------------------

    def test_durable_put_survives_every_power_cut(self, storage: Storage) -> None:
        storage.put("m", b"old", durable=True)
        storage.put("m", b"committed", durable=True)
        assert storage.put_if_absent("lock", b"owner")
        storage.put("other", b"not durable")
        for state in self.power_cut_states(storage):
            assert state.get("m") == b"committed"
            assert state.get("lock") == b"owner"

    def test_non_durable_replace_leaves_old_or_new_never_empty(self, storage: Storage) -> None:
        storage.put("chunk", b"committed rows", durable=True)
        storage.put("chunk", b"committed rows and more")
        storage.put("chunk", b"committed rows and more still")
        allowed = {b"committed rows", b"committed rows and more", b"committed rows and more still"}
        for state in self.power_cut_states(storage):
            assert state.get("chunk") in allowed

    def test_new_key_before_sync_may_be_lost_or_empty_only(self, storage: Storage) -> None:
        storage.put("new", b"value")
        for state in self.power_cut_states(storage):
            assert not state.exists("new") or state.get("new") in (b"value", b"")

    def test_sync_makes_puts_and_deletes_durable(self, storage: Storage) -> None:
        storage.put("gone", b"1", durable=True)
        storage.put("replaced", b"old", durable=True)
        storage.put("new", b"fresh")
        storage.put("replaced", b"new")
        storage.delete("gone")
        storage.sync(["new", "replaced", "gone"])
        for state in self.power_cut_states(storage):
            assert state.get("new") == b"fresh"
            assert state.get("replaced") == b"new"
            assert not state.exists("gone")

    def test_durable_delete_survives_every_power_cut(self, storage: Storage) -> None:
        storage.put("k", b"1", durable=True)
        storage.delete("k", durable=True)
        storage.put("j", b"1", durable=True)
        storage.delete("j")
        storage.delete("j", durable=True)  # the second call makes the first one's delete durable
        for state in self.power_cut_states(storage):
            assert not state.exists("k") and not state.exists("j")

    def test_local_files_are_the_values(self, storage: Storage) -> None:
        root = storage.capabilities.local_path
        if root is None:
            pytest.skip("not stored as local files")
        storage.put("a/b/c", b"on disk", durable=True)
        assert (root / "a" / "b" / "c").read_bytes() == b"on disk"
        (root / "a" / "b" / "d").write_bytes(b"planted")
        assert storage.get("a/b/d") == b"planted"
        assert sorted(storage.list("a")) == ["a/b/c", "a/b/d"]
