"""One writer at a time; readers see committed snapshots while a writer appends and wraps."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import rows_for

import replaystore as rs

FIELDS = {"obs": {"shape": (8,), "dtype": "int64", "chunk_rows": 32},
          "frame": {"shape": (12, 12), "dtype": "uint8", "chunk_rows": 16}}

WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[2])
    import replaystore as rs
    from conftest import rows_for
    store = rs.open(sys.argv[1], "a")
    g = store.manifest.end
    deadline = time.monotonic() + float(sys.argv[3])
    print("ready", flush=True)
    while time.monotonic() < deadline:
        n = 1 + g % 23
        store.extend(rows_for(store.schema, g, n))
        g += n
        if g % 3 == 0:
            store.commit()
    store.commit()
    print(g, flush=True)
""")


def test_second_writer_is_refused_with_pid(make_store):
    store = make_store()
    with pytest.raises(rs.WriterLockedError, match=f"process {os.getpid()}") as info:
        rs.open(store.path, "a")
    assert info.value.pid == os.getpid()
    rs.open(store.path)  # readers are welcome
    store.close()
    rs.open(store.path, "a").close()  # released on close


def test_lock_held_by_another_process(make_store):
    store = make_store()
    store.close()
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(store.path),
                              os.path.dirname(__file__), "3"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(rs.WriterLockedError, match=f"process {child.pid}"):
            rs.open(store.path, "a")
    finally:
        child.kill()
        child.wait()
    rs.open(store.path, "a").close()  # a killed writer leaves no lock behind


@pytest.mark.parametrize("capacity", [None, 200])
def test_reader_sees_only_whole_commits_while_writer_runs(tmp_path, capacity):
    path = tmp_path / "s"
    rs.create(path, FIELDS, capacity=capacity).close()
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(path),
                              os.path.dirname(__file__), "2.5"], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    reader = rs.open(path, cache_bytes=64 << 10)
    rng = np.random.default_rng(0)
    checked = stale = refreshes = 0
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        if reader.refresh():
            refreshes += 1
        m = reader.manifest
        if m.rows == 0:
            continue
        rows = rng.integers(m.start, m.end, 64)
        slots = rows if capacity is None else rows % capacity
        try:
            got = reader.get(slots)
        except rs.StaleReadError:
            stale += 1  # the ring overtook this snapshot: refresh and go on
            continue
        for name in ("obs", "frame"):
            expected = np.stack([rows_for(reader.schema, int(g), 1)[name][0] for g in rows])
            np.testing.assert_array_equal(got[name], expected)
        checked += len(rows)
    final = int(child.stdout.readline())
    child.wait(timeout=30)
    assert checked > 1000 and refreshes > 5
    reader.refresh()
    assert reader.manifest.end == final


# -- the single writer is never duplicated (the defects issue) ----------------------------------


def test_overwrite_refuses_a_store_with_a_live_writer(tmp_path):
    """create(overwrite=True) used to delete the folder before taking the lock: two writers."""
    path = tmp_path / "s"
    store = rs.create(path, FIELDS)
    store.extend(rows_for(store.schema, 0, 50))
    store.commit()
    store.close()
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(path),
                              os.path.dirname(__file__), "3"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(rs.WriterLockedError, match=f"process {child.pid}"):
            rs.create(path, {"other": ((2,), "float32")}, overwrite=True)
        assert rs.open(path).schema.names[:2] == ("obs", "frame")
    finally:
        child.kill()
        child.wait()
    rows = len(rs.open(path))
    assert rows >= 50 and rs.verify(path).ok
    fresh = rs.create(path, {"other": ((2,), "float32")}, overwrite=True)  # no writer now
    assert len(fresh) == 0 and fresh.schema.names[0] == "other"


FORKED = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, sys.argv[2])
    import replaystore as rs
    from conftest import rows_for
    store = rs.open(sys.argv[1], "a")
    per = rs.PrioritizedSampler(store, seed=0)
    pid = os.fork()
    if pid == 0:  # the child: every way it could drop or use the parent's lock
        try:
            store.append({k: v[0] for k, v in rows_for(store.schema, 0, 1).items()})
            print("child appended", flush=True)
        except rs.ReadOnlyError:
            try:
                per.update_priorities([0, 1], [5.0, 5.0])
                print("child updated priorities", flush=True)
            except rs.ReadOnlyError:
                print("child refused", flush=True)
        store.close()
        del store
        os._exit(0) if sys.argv[3] == "_exit" else sys.exit(0)
    os.waitpid(pid, 0)
    print("child done", flush=True)
    sys.stdin.readline()  # hold the writer until the test says
    store.extend(rows_for(store.schema, store.manifest.end, 5))
    store.commit()
    print("parent committed", flush=True)
""")


@pytest.mark.parametrize("exit_with", ["exit", "_exit"])
def test_a_forked_child_never_releases_or_uses_the_writer_lock(tmp_path, exit_with):
    path = tmp_path / "s"
    store = rs.create(path, FIELDS)
    store.extend(rows_for(store.schema, 0, 20))
    store.commit()
    store.close()
    parent = subprocess.Popen([sys.executable, "-c", FORKED, str(path), os.path.dirname(__file__),
                               exit_with], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert parent.stdout.readline().strip() == "child refused"
        assert parent.stdout.readline().strip() == "child done"
        with pytest.raises(rs.WriterLockedError, match=f"process {parent.pid}"):
            rs.open(path, "a")  # a third process: the lock is still the parent's
        parent.stdin.write("go\n")
        parent.stdin.flush()
        assert parent.stdout.readline().strip() == "parent committed"
    finally:
        parent.kill()
        parent.wait()
    assert len(rs.open(path)) == 25 and rs.verify(path).ok


def test_a_pickled_writer_comes_back_as_a_reader(tmp_path):
    """Stable-Baselines3's save_replay_buffer pickles its buffer: a writer must not unpickle
    as a second writer without the lock."""
    path = tmp_path / "s"
    store = rs.create(path, FIELDS)
    store.extend(rows_for(store.schema, 0, 30))
    store.commit()
    blob = pickle.dumps(store)
    code = textwrap.dedent("""
        import pickle, sys
        import replaystore as rs
        copy = pickle.loads(sys.stdin.buffer.read())
        print(copy.mode, len(copy), flush=True)
        try:
            copy.commit()
        except rs.ReadOnlyError:
            print("refused", flush=True)
    """)
    child = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True,
                           timeout=60)
    assert child.stdout.decode().split() == ["r", "30", "refused"], child.stderr.decode()
    store.extend(rows_for(store.schema, 30, 10))  # the original is still the only writer
    store.commit()
    assert len(rs.open(path)) == 40


def test_probing_the_lock_never_fails_a_writer_opening(tmp_path):
    """info's lock-holder probe takes a shared lock for an instant; a writer opening at that
    instant used to fail, naming a stale pid."""
    path = tmp_path / "s"
    rs.create(path, FIELDS).close()
    prober = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from replaystore.storage.local import LocalStorage
        from replaystore.layout import LOCK
        backend = LocalStorage(sys.argv[1])
        deadline = time.monotonic() + float(sys.argv[2])
        print("ready", flush=True)
        while time.monotonic() < deadline:
            backend.lock_holder(LOCK)
    """), str(path), "4"], stdout=subprocess.PIPE, text=True)
    try:
        assert prober.stdout.readline().strip() == "ready"
        opened = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            rs.open(path, "a").close()
            opened += 1
    finally:
        prober.kill()
        prober.wait()
    assert opened > 100


def test_reader_opened_before_a_prune_refuses_episodes(tmp_path):
    """get and refresh raised StoreReplacedError, but the episode table was read from the new
    store's blocks: a reader's episodes must come from its own store or raise."""
    path = tmp_path / "s"
    store = rs.create(path, FIELDS)
    store.extend(rows_for(store.schema, 0, 300))
    store.commit()
    store.close()
    reader = rs.open(path)
    before = reader.episodes
    assert len(before) > 10
    rs.prune(path, rs.Selection(keep_last=3))
    with pytest.raises(rs.StoreReplacedError):
        _ = reader.episodes
    with pytest.raises(rs.StoreReplacedError):
        reader.episode_table(clip=True)
    with pytest.raises(rs.StoreReplacedError):
        rs.EpisodeSampler(reader, seed=0).sample_episodes(2)
