"""Shared pieces of the reliability tests (tests/reliability/test_rel_*.py).

* :func:`snapshot`: every file of a store folder and its bytes, to prove a failed call
  changed nothing on disk.
* :func:`build_store`: a store exercising every layout (raw and compressed chunks, per-row
  shards, a ``next_of`` field, two episode blocks, a priority index), with deterministic rows.
* :func:`run_python`: run a snippet in a subprocess under resource limits (address space,
  file size), optionally without root's permission bypass, and read back its JSON.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import replaystore as rs

ROOT = Path(__file__).resolve().parents[2]
GIB = 1 << 30
PR_CAPBSET_DROP = 24  # linux/prctl.h
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER = 1, 2, 3  # linux/capability.h

# Every layout the writer has: raw chunks, compressed chunks, per-row shards, and a next_of
# field stored only at episode ends. Smallish chunks: a few hundred files.
FIELDS: dict[str, Any] = {
    "obs": {"shape": (4,), "dtype": "float32", "codec": "raw", "chunk_rows": 256},
    "action": {"shape": (), "dtype": "int64", "codec": "lz4:1", "chunk_rows": 512},
    "frame": {"shape": (8, 8), "dtype": "uint8", "codec": "lz4hc:5/rows", "chunk_rows": 128},
    "next_frame": {"next_of": "frame", "chunk_rows": 128},
    "reward": {"shape": (), "dtype": "float32", "codec": "zstd:3", "chunk_rows": 1024},
}


def rows(first: int, count: int) -> dict[str, np.ndarray]:
    """Rows ``first .. first + count - 1`` of :data:`FIELDS`: a function of the row number alone.

    Episodes are 2 rows long (so 8,200 rows fill more than one 4,096-episode block); every 7th
    episode is truncated instead of terminated.
    """
    g = np.arange(first, first + count, dtype=np.int64)
    end = g % 2 == 1
    frame = ((g[:, None, None] * 13 + np.arange(64).reshape(8, 8)) % 251).astype(np.uint8)
    return {
        "obs": np.stack([g, -g, g * 0.5, g % 7], axis=1).astype(np.float32),
        "action": g * 3 + 1,
        "frame": frame,
        "next_frame": (frame.astype(np.int64) + 1).astype(np.uint8),
        "reward": (g % 5).astype(np.float32),
        "terminated": end & (g // 2 % 7 != 3),
        "truncated": end & (g // 2 % 7 == 3),
    }


def checked_rows(g: np.ndarray) -> dict[str, np.ndarray]:
    """Rows for concurrency checks: field ``row`` holds the global row number and ``check`` a
    checksum of it and every other field (see :func:`row_checksums`)."""
    g = np.asarray(g, dtype=np.int64)
    values = {
        "row": g,
        "obs": ((g[:, None] * 7 + np.arange(16)) % 1009).astype(np.float32) / 7,
        "frame": ((g[:, None, None] * 31 + np.arange(144).reshape(12, 12)) % 256
                  ).astype(np.uint8),
        "reward": (g % 13).astype(np.float32),
        "terminated": g % 17 == 16,
        "truncated": g % 23 == 22,
    }
    values["check"] = row_checksums(values)
    return values


def row_checksums(values: dict[str, np.ndarray]) -> np.ndarray:
    """blake2b (8 bytes) of each row's number and fields: a row whose fields come from
    different writes fails it."""
    n = len(values["row"])
    parts = [np.ascontiguousarray(values[k]).reshape(n, -1).view(np.uint8)
             for k in ("row", "obs", "frame", "reward", "terminated", "truncated")]
    joined = np.concatenate(parts, axis=1)
    return np.array([int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8).digest(),
                                    "little") for r in joined], dtype=np.uint64)


def build_store(path: Path, *, count: int = 8_200, capacity: int | None = None,
                priorities: bool = True) -> Path:
    """A committed, cleanly closed store at ``path`` (see :data:`FIELDS` and :func:`rows`)."""
    with rs.create(path, FIELDS, capacity=capacity) as store:
        for first in range(0, count, 1000):
            store.extend(rows(first, min(1000, count - first)))
        store.commit()
        if priorities:
            per = rs.PrioritizedSampler(store, seed=0)
            slots = store.slots()
            per.update_priorities(slots, 0.5 + (slots % 17) / 4.0)
    return path


def content(path: Path) -> dict[str, np.ndarray]:
    """Every committed row of the store, oldest first, plus ``_row`` (global row numbers)."""
    with rs.open(path) as store:
        m = store.manifest
        values = store.get(store.slots())
        values["_row"] = np.arange(m.start, m.end, dtype=np.int64)
        return values


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (relative name -> bytes); symbolic links as their target."""
    files = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            full = Path(dirpath) / name
            rel = full.relative_to(path).as_posix()
            files[rel] = (b"->" + os.readlink(full).encode()) if full.is_symlink() \
                else full.read_bytes()
    return files


def changed(before: dict[str, bytes], after: dict[str, bytes]) -> list[str]:
    """Names of files added, removed or modified between two snapshots."""
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


@dataclass
class Limited:
    """What a :func:`run_python` child did."""

    returncode: int
    result: Any  # the JSON object the child printed last, or None
    stdout: str
    stderr: str


def _limits(address_space: int | None, file_size: int | None,
            unprivileged: bool) -> Callable[[], None]:
    def apply() -> None:
        if address_space is not None:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
        if file_size is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
            # Soft limit only: the child may raise it again, as if space had been freed.
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, resource.RLIM_INFINITY))
        if unprivileged and os.geteuid() == 0:
            # Root keeps its uid but loses the capabilities that bypass file permissions
            # (dropped from the bounding set, so the exec'd interpreter never has them).
            libc = ctypes.CDLL(None, use_errno=True)
            for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER):
                if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                    raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")
    return apply


def run_python(code: str, *args: object, address_space: int | None = None,
               file_size: int | None = None, unprivileged: bool = False,
               timeout: float = 60) -> Limited:
    """Run ``code`` (with ``sys.argv[1:] = args``) in a fresh interpreter under limits.

    ``address_space`` caps virtual memory (RLIMIT_AS), so a huge allocation fails at once;
    ``file_size`` caps every file written (RLIMIT_FSIZE; SIGXFSZ ignored, so writes fail with
    EFBIG as on a full disk); ``unprivileged`` takes from root the capabilities that bypass
    file permissions, so that a read-only folder is read-only for the child too. The child
    should print one JSON object as its last line.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), str(ROOT / "tests"),
                                                    env.get("PYTHONPATH")) if p)
    env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = "1"  # few threads under RLIMIT_AS
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd="/",
                          preexec_fn=_limits(address_space, file_size, unprivileged))
    result = None
    for line in reversed(proc.stdout.splitlines()):
        try:
            result = json.loads(line)
            break
        except ValueError:
            continue
    return Limited(proc.returncode, result, proc.stdout, proc.stderr)


def copy_store(src: Path, dst: Path) -> Path:
    """A copy of a store folder (symbolic links kept as links)."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


def recorder(out: dict[str, Any]) -> Callable[[str, Callable[[], Any]], None]:
    """For child scripts: ``attempt(name, fn)`` stores fn's result, or the exception it raised
    (class names and message) or the exit code it asked for, under ``out[name]``."""
    def attempt(name: str, fn: Callable[[], Any]) -> None:
        try:
            out[name] = fn() or "ok"
        except SystemExit as exc:
            out[name] = {"exit": exc.code}
        except Exception as exc:
            out[name] = {"mro": [c.__name__ for c in type(exc).__mro__],
                         "message": str(exc)[:300]}
    return attempt
