"""One writer at a time; readers see committed snapshots while a writer appends and wraps."""

from __future__ import annotations

import os
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
