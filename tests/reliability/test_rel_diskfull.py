"""Disk full and write errors: a clear error, the last commit intact, the store still opens.

Writers run in child processes that hit:

* RLIMIT_FSIZE (SIGXFSZ ignored): every write past the limit fails with EFBIG, the way a full
  disk fails with ENOSPC. Limits are chosen so that the failing file is a chunk, a shard, an
  episode block, the priority tree's allocation, or its growth. The child then raises its own
  limit ("space was freed") and retries the commit, which must publish exactly the rows
  appended.
* a read-only store folder (a root child loses its permission bypass): opening for writing
  fails with a PermissionError, a writer whose folder turns read-only fails at its next commit,
  and readers, verify and ``replaystore verify``/``info`` keep working.
* a real full file system: a tiny tmpfs mounted in a private user and mount namespace
  (skipped where ``unshare -rm`` is not allowed).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rel_common import ROOT, build_store, rows, run_python

import replaystore as rs

STORED = ("obs", "action", "frame", "reward", "terminated", "truncated")

WRITER = r"""
import json, os, resource, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import replaystore as rs
from rel_common import FIELDS, rows

path, capacity = sys.argv[2], int(sys.argv[3]) or None
prioritized, batch = sys.argv[4] == "1", int(sys.argv[5])
out = {"committed": None, "window": None, "error": None, "stage": None}

def error(exc):
    return {"mro": [c.__name__ for c in type(exc).__mro__], "errno": getattr(exc, "errno", None),
            "filename": getattr(exc, "filename", None), "message": str(exc)[:300]}

store = rs.create(path, FIELDS, capacity=capacity, commit_every_rows=1 << 40)
end, per = 0, None
from replaystore.storage.local import LocalDisk, LocalStorage
for owner, verb in ((LocalStorage, "put"), (LocalDisk, "allocate")):
    # note which file failed (the OSError does not say)
    def wrapped(self, key, *args, _inner=getattr(owner, verb), **kwargs):
        try:
            return _inner(self, key, *args, **kwargs)
        except OSError:
            out.setdefault("failed_key", key)
            raise
    setattr(owner, verb, wrapped)
try:
    out["stage"] = "first rows"
    store.extend(rows(0, 50))
    end = store.commit().end
    out["committed"], out["window"] = end, [store.manifest.start, end]
    if prioritized:
        out["stage"] = "priority index"
        per = rs.PrioritizedSampler(store, seed=0)
    while end < 200_000:
        out["stage"] = "append"
        store.extend(rows(end, batch))
        out["stage"] = "commit"
        m = store.commit()
        end = m.end
        out["committed"], out["window"] = end, [m.start, m.end]
        if per is not None:
            out["stage"] = "priorities"
            slots = store.slots()[-batch:]
            per.update_priorities(slots, 1.0 + slots % 13)
except OSError as exc:
    out["error"] = error(exc)
# Space is freed: the same writer retries and must publish exactly what was appended.
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
try:
    m = store.commit()
    out["retried"] = [m.start, m.end, store.pending]
except Exception as exc:
    out["retry_error"] = error(exc)
store.close()
print(json.dumps(out))
"""


def check_content(path: Path, window: tuple[int, int] | None = None) -> rs.Manifest:
    """The store opens, verifies, and every committed row is exactly rows(g)."""
    report = rs.verify(path)
    assert report.ok, [str(p) for p in report.problems]
    with rs.open(path) as store:
        m = store.manifest
        if window is not None:
            assert (m.start, m.end) == tuple(window)
        got = store.get(store.slots())
    want = rows(m.start, m.rows)
    for name in STORED:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    return m


# (limit, capacity, prioritized, batch, the file that fails): each limit hits another file.
LIMITS = {
    "shard-8KiB": (8 << 10, 0, False, 37, "frame/c."),
    "episode-block-64KiB": (64 << 10, 0, False, 500, "_replaystore/episodes."),
    "ring-chunk-8KiB": (8 << 10, 300, False, 131, "c."),
    "index-allocation-1MiB": (1 << 20, 0, True, 500, "_replaystore/priority-65536.tree"),
    "index-growth-3MiB": (3 << 20, 0, True, 5000, "_replaystore/priority-262144.tree"),
}


@pytest.mark.parametrize("case", list(LIMITS))
def test_file_size_limit_gives_a_clear_error_and_keeps_the_last_commit(tmp_path: Path,
                                                                       case: str) -> None:
    limit, capacity, prioritized, batch, failing = LIMITS[case]
    path = tmp_path / "store"
    child = run_python(WRITER, Path(__file__).resolve().parent, path, capacity,
                       int(prioritized), batch, file_size=limit, timeout=120)
    assert child.returncode == 0 and child.result, child.stderr[-3000:]
    out = child.result
    err = out["error"]
    assert err is not None, f"no write failed under a {limit}-byte limit: {out}"
    assert err["errno"] == errno.EFBIG and "OSError" in err["mro"], err
    assert failing in out["failed_key"], out
    # The last commit is intact, and the store opens and verifies (before the retry ran, the
    # child's last commit was out["window"]; the retry then committed the rest).
    retried = out.get("retried")
    assert retried is not None, out.get("retry_error")
    start, end, pending = retried
    assert pending == 0 and end >= out["committed"]
    m = check_content(path)
    assert (m.start, m.end) == (start, end)
    # A later writer carries on.
    with rs.open(path, "a") as store:
        store.extend(rows(end, 10))
    check_content(path)


READ_ONLY_WRITER = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
import replaystore as rs
from rel_common import recorder, rows

path = sys.argv[2]
out = {}

attempt = recorder(out)

# A writer commits, then its folders turn read-only (as after a remount) and it goes on.
store = rs.open(path, "a")
store.extend(rows(store.manifest.end, 300))
out["first"] = store.commit().end
for dirpath, _, _ in os.walk(path):
    os.chmod(dirpath, 0o555)
def append_and_commit():
    store.extend(rows(store.manifest.end + store.pending, 300))  # fills chunks: writes them
    store.commit()
attempt("commit", append_and_commit)
attempt("close", store.close)
print(json.dumps(out))
"""

READ_ONLY_USERS = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import replaystore as rs
from rel_common import recorder
from replaystore_cli.main import main

path = sys.argv[2]
out = {}

attempt = recorder(out)

def read():
    with rs.open(path) as store:
        store.get(store.slots())
        store.episodes
        store.priority_index().leaf(store.slots())
        return store.manifest.end
attempt("read", read)
attempt("verify", lambda: rs.verify(path).ok)
attempt("open_for_writing", lambda: rs.open(path, "a"))
attempt("cli_verify", lambda: main(["verify", path]))
attempt("cli_info", lambda: main(["info", path]))
attempt("cli_compact", lambda: main(["compact", path]))
print(json.dumps(out))
"""


def thaw(path: Path) -> None:
    for dirpath, _, _ in os.walk(path):
        os.chmod(dirpath, 0o755)


def failed_with(outcome: object, error: str) -> bool:
    return isinstance(outcome, dict) and error in outcome.get("mro", ())


def test_read_only_store_folder(tmp_path: Path) -> None:
    path = build_store(tmp_path / "store", count=1000)
    here = Path(__file__).resolve().parent
    try:
        writer = run_python(READ_ONLY_WRITER, here, path, unprivileged=True)
        assert writer.returncode == 0 and writer.result, writer.stderr[-3000:]
        assert writer.result["first"] == 1300
        assert failed_with(writer.result["commit"], "PermissionError"), writer.result
        users = run_python(READ_ONLY_USERS, here, path, unprivileged=True)
        assert users.returncode == 0 and users.result, users.stderr[-3000:]
    finally:
        thaw(path)
    out = users.result
    assert out["read"] == 1300 and out["verify"] is True, out
    assert failed_with(out["open_for_writing"], "PermissionError"), out
    assert out["cli_verify"] in ("ok", {"exit": 0}) and out["cli_info"] in ("ok", {"exit": 0})
    assert out["cli_compact"] == {"exit": 1}, out  # one "Error: ..." line, no traceback
    assert "Traceback" not in users.stderr
    check_content(path, (0, 1300))


def test_close_releases_the_lock_when_the_folder_turned_read_only(tmp_path: Path) -> None:
    path = build_store(tmp_path / "store", count=1000)
    try:
        writer = run_python(READ_ONLY_WRITER.replace('print(json.dumps(out))', """
for dirpath, _, _ in os.walk(path):
    os.chmod(dirpath, 0o755)
try:
    rs.open(path, "a").close()
    out["reopened"] = True
except rs.WriterLockedError as exc:
    out["reopened"] = str(exc)
print(json.dumps(out))"""), Path(__file__).resolve().parent, path, unprivileged=True)
    finally:
        thaw(path)
    assert writer.returncode == 0 and writer.result, writer.stderr[-3000:]
    # close() may report the failed write, but must not keep the lock.
    assert writer.result["reopened"] is True, (writer.result["reopened"], writer.result["close"])


def test_write_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "store"
    child = run_python(WRITER, Path(__file__).resolve().parent, path, 0, 0, 37,
                       file_size=8 << 10)
    err = child.result["error"]
    assert str(path) in (err["filename"] or "") + err["message"], err


# -- a real full file system -----------------------------------------------------------------------


def _can_mount_tmpfs(folder: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c",
                            f"mount -t tmpfs -o size=64k tmpfs {folder}"],
                           capture_output=True)
    return probe.returncode == 0


FULL_DISK = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import replaystore as rs
from rel_common import FIELDS, rows
path, prioritized = sys.argv[2], sys.argv[3] == "1"
out = {"committed": 0, "error": None}
store = rs.create(path, FIELDS, commit_every_rows=1 << 40)
per = None
end = 0
try:
    # The index reserves its disk space when it is made: on a full disk that fails here, with
    # ENOSPC, instead of a SIGBUS later when a memory-mapped page cannot be backed.
    per = rs.PrioritizedSampler(store, seed=0) if prioritized else None
    while True:
        store.extend(rows(end, 97))
        end = store.commit().end
        out["committed"] = end
        if per is not None:
            slots = store.slots()
            per.update_priorities(slots[-97:], 1.0 + slots[-97:] % 5)
except OSError as exc:
    out["error"] = {"errno": exc.errno, "mro": [c.__name__ for c in type(exc).__mro__],
                    "message": str(exc)[:300]}
print(json.dumps(out), flush=True)
store.close()
report = rs.verify(path)
print(json.dumps({**out, "verified": report.ok}), flush=True)
"""


def run_on_full_tmpfs(tmp_path: Path, prioritized: bool) -> tuple[subprocess.CompletedProcess,
                                                                  dict, Path]:
    mount, copy = tmp_path / "mnt", tmp_path / "copy"
    mount.mkdir()
    if not _can_mount_tmpfs(mount):
        pytest.skip("cannot mount a tmpfs in a user namespace here (unshare -rm)")
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")]))
    here = Path(__file__).resolve().parent
    shell = (f"mount -t tmpfs -o size=400k tmpfs {mount} && "
             f"{sys.executable} {script} {here} {mount}/store {int(prioritized)}; "
             f"echo exit=$?; cp -a {mount}/store {copy}")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", shell], capture_output=True,
                          text=True, timeout=120, env=env)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc, (lines[-1] if lines else {}), copy


def test_full_file_system_without_priorities(tmp_path: Path) -> None:
    proc, out, copy = run_on_full_tmpfs(tmp_path, prioritized=False)
    assert "exit=0" in proc.stdout, proc.stdout + proc.stderr
    assert out["error"]["errno"] == errno.ENOSPC and out["committed"] > 0, out
    assert out["verified"] is True  # verify ran on the full file system itself
    m = check_content(copy)
    assert m.end == out["committed"]


def test_full_file_system_with_a_priority_index(tmp_path: Path) -> None:
    proc, out, copy = run_on_full_tmpfs(tmp_path, prioritized=True)
    assert "exit=0" in proc.stdout, proc.stdout + proc.stderr  # was exit=135: SIGBUS
    assert out["error"]["errno"] == errno.ENOSPC and out["verified"] is True, out
    assert check_content(copy).end == out["committed"]


# -- a failed fsync (the defects issue) ---------------------------------------------------------


@pytest.mark.parametrize("failing_call", [0, 1, 2, 3])
def test_a_failed_fsync_stops_the_writer_until_reopened(tmp_path, monkeypatch, failing_call):
    """After fsync fails (EIO, ENOSPC) the kernel may have dropped the dirty pages, and a second
    fsync on a new descriptor reports success: a retried commit used to publish a manifest over
    rows that never reached the disk. The writer must refuse every later append and commit,
    and a reopened store continue from the last commit."""
    path = tmp_path / "s"
    fields = {"obs": {"shape": (4,), "dtype": "float32", "chunk_rows": 64},
              "frame": {"shape": (8, 8), "dtype": "uint8", "chunk_rows": 32}}
    store = rs.create(path, fields)
    batch = {"obs": np.arange(400, dtype=np.float32).reshape(100, 4),
             "frame": np.arange(6400).astype(np.uint8).reshape(100, 8, 8),
             "reward": np.ones(100, np.float32), "terminated": np.arange(100) % 9 == 8,
             "truncated": np.zeros(100, bool)}
    store.extend(batch)
    store.commit()
    store.extend(batch)  # rows 100..199: chunks filled and flushed, then committed
    real, calls = os.fsync, []

    def failing(fd: int) -> None:
        calls.append(fd)
        if len(calls) > failing_call:
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(rs.SyncError) as info:
        store.commit()
    assert info.value.errno == errno.EIO and str(path) in str(info.value.filename)
    monkeypatch.setattr(os, "fsync", real)  # the "device" works again: a retry would pass
    with pytest.raises(rs.WriterFailedError, match="open it again"):
        store.commit()
    with pytest.raises(rs.WriterFailedError):
        store.extend(batch)
    store.close()
    with rs.open(path, "a") as again:
        assert len(again) == 100  # the last commit; rows 100..199 are gone, none half-kept
        again.extend(batch)
    assert len(rs.open(path)) == 200 and rs.verify(path).ok
