"""Conformance tests of the I/O boundary. A later object-storage backend subclasses BackendTests."""

from __future__ import annotations

import os

import pytest

from replaystore.errors import CorruptStoreError, WriterLockedError
from replaystore.storage.local import LocalStorage


class BackendTests:
    """What every backend must do; subclasses provide the ``backend`` fixture."""

    def test_write_read_round_trip(self, backend):
        backend.put("a/b/c.0", b"hello")
        assert backend.get("a/b/c.0") == b"hello"
        assert backend.exists("a/b/c.0") and backend.size("a/b/c.0") == 5

    def test_write_replaces_whole_value(self, backend):
        backend.put("k", b"x" * 1000)
        backend.put("k", b"short", durable=True)
        assert backend.get("k") == b"short"

    def test_missing_key(self, backend):
        with pytest.raises(FileNotFoundError):
            backend.get("nothing/here")
        assert not backend.exists("nothing/here")

    def test_list_and_delete(self, backend):
        for key in ("f/c.0", "f/c.1", "g/zarr.json"):
            backend.put(key, b"1")
        assert sorted(backend.list("f")) == ["f/c.0", "f/c.1"]
        assert sorted(backend.list()) == ["f/c.0", "f/c.1", "g/zarr.json"]
        backend.delete("f/c.0")
        backend.delete("f/c.0")  # deleting twice is fine
        assert sorted(backend.list("f")) == ["f/c.1"]

    def test_sync_accepts_written_keys(self, backend):
        backend.put("x/y", b"1")
        backend.sync(["x/y"])
        assert backend.get("x/y") == b"1"

    @pytest.mark.parametrize("key", ["../escape", "/abs", "a//b", "a/./b", "", "a/b\\c", "a b"])
    def test_unsafe_keys_are_refused(self, backend, key):
        with pytest.raises(CorruptStoreError, match="unsafe storage key"):
            backend.put(key, b"x")
        with pytest.raises(CorruptStoreError):
            backend.get(key)

    def test_lock_is_exclusive_and_released(self, backend):
        lock = backend.lock("meta/writer.lock")
        assert backend.lock_holder("meta/writer.lock") == os.getpid()
        with pytest.raises(WriterLockedError):
            backend.lock("meta/writer.lock")
        lock.release()
        assert backend.lock_holder("meta/writer.lock") is None
        backend.lock("meta/writer.lock").release()


class TestLocalStorage(BackendTests):
    @pytest.fixture
    def backend(self, tmp_path):
        return LocalStorage(tmp_path)

    def test_no_temporary_files_are_left(self, backend, tmp_path):
        for i in range(5):
            backend.put("d/k", bytes([i]) * 100)
        assert os.listdir(tmp_path / "d") == ["k"]

    def test_temporary_files_of_a_dead_writer_are_removed(self, backend, tmp_path):
        backend.put("d/k", b"1")
        (tmp_path / "d" / "k.tmp-999-0").write_bytes(b"partial")
        assert list(backend.list("d")) == ["d/k"]
        assert backend.remove_temporary() == 1
        assert os.listdir(tmp_path / "d") == ["k"]


def test_allocate_replaces_a_planted_link_instead_of_writing_through_it(tmp_path):
    """allocate() used to open the key for writing, following a symbolic link planted there:
    the file outside the store became zeros."""
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"precious" * 100)
    backend = LocalStorage(tmp_path / "store")
    backend.put("_replaystore/zarr.json", b"{}")
    os.symlink(outside, tmp_path / "store" / "_replaystore" / "priority-8.tree")
    backend.disk().allocate("_replaystore/priority-8.tree", 4096)
    assert outside.read_bytes() == b"precious" * 100
    tree = tmp_path / "store" / "_replaystore" / "priority-8.tree"
    assert not tree.is_symlink() and tree.stat().st_size == 4096
