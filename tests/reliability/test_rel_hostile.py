"""Hostile and malformed stores: refused with a specific error, without large allocations.

Extends tests/test_bad_stores.py (which covers malformed manifests, schema-hash mismatches,
damaged chunks and a symlinked chunk) with stores crafted to hurt: absurd shapes, chunk sizes
and row counts, negative sizes, path traversal in field names, unknown codecs and dtypes,
manifests pointing past the data, chunk files with a valid checksum but lying headers, priority
headers with impossible sizes, symbolic links out of the store, and import files carrying
pickled objects.

Every case is opened, read, verified and opened for writing in one child process under
RLIMIT_AS = 1 GiB, so an attempt to allocate a huge buffer fails there (as MemoryError) instead
of swapping the machine; the parent then checks each case's outcome.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rel_common import GIB, ROOT, build_store, run_python, snapshot

import replaystore as rs
from replaystore.codecs import crc_bytes
from replaystore.layout import MANIFEST, chunk_key
from replaystore.priority import HEADER
from replaystore.schema import Schema

ROWS = 600
TREE = "_replaystore/priority-65536.tree"

# The child: for each case, run the named operations and record "ok" or the exception.
PROBE = r"""
import json, signal, sys, traceback
sys.path.insert(0, sys.argv[2])
import numpy as np
import replaystore as rs
from rel_common import rows

def read(path):
    with rs.open(path) as store:
        store.get(store.slots())

def episodes(path):
    with rs.open(path) as store:
        store.episodes

def verify(path):
    report = rs.verify(path)
    return {"ok": report.ok, "keys": [p.key for p in report.problems]}

def write(path):
    store = rs.open(path, "a")
    try:
        store.extend(rows(store.manifest.end, 40))
        store.commit()
    finally:
        store.close()

def priority(path):
    with rs.open(path) as store:
        store.priority_index().leaf(store.slots())

def sampler(path):
    store = rs.open(path, "a")
    try:
        rs.PrioritizedSampler(store, name="per")
    finally:
        store.close()

def import_npz(path):
    rs.import_store(path, path + ".store", format="npz")

OPS = {"open": lambda p: rs.open(p).close(), "read": read, "episodes": episodes,
       "verify": verify, "write": write, "priority": priority, "sampler": sampler,
       "import": import_npz}
def hung(signum, frame):
    raise TimeoutError("hung for 20 s")

signal.signal(signal.SIGALRM, hung)
results = {}
for name, (path, ops) in json.loads(sys.argv[1]).items():
    outcome = {}
    for op in ops:
        signal.alarm(20)  # a FIFO planted in a store must not hang the probe
        try:
            outcome[op] = OPS[op](path) or "ok"
        except BaseException as exc:
            outcome[op] = {"mro": [c.__name__ for c in type(exc).__mro__],
                           "message": str(exc)[:300],
                           "key": getattr(exc, "key", None)}
        finally:
            signal.alarm(0)
    results[name] = outcome
print(json.dumps(results))
"""


@dataclass(frozen=True)
class Case:
    """A way to make a store hostile, and the operations to try on it."""

    mutate: Callable[[Path], None]
    ops: tuple[str, ...] = ("open", "read", "verify", "write")


def _json_edit(key: str, edit: Callable[[dict[str, Any]], None],
               rehash: bool = False) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        doc = json.loads((path / key).read_text())
        edit(doc)
        (path / key).write_text(json.dumps(doc))
        if rehash:  # keep the manifest's schema hash in step, as a crafted store would
            try:
                digest = Schema.from_json(doc["attributes"]["replaystore"]["schema"]).hash
            except Exception:
                return
            manifest_edit(schema_hash=digest)(path)
    return mutate


def field_edit(index: int, **changes: Any) -> Callable[[Path], None]:
    """Change field ``index`` of the schema in zarr.json (and the manifest's schema hash)."""
    return _json_edit("zarr.json", lambda doc: doc["attributes"]["replaystore"]["schema"]
                      ["fields"][index].update(changes), rehash=True)


def schema_edit(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    return _json_edit("zarr.json", lambda doc: edit(doc["attributes"]["replaystore"]),
                      rehash=True)


def manifest_edit(**changes: Any) -> Callable[[Path], None]:
    """A crafted manifest: edited, and without the checksum that would give a damaged one away
    (manifests written before the checksum have none), so it is judged on its content."""
    return _json_edit(MANIFEST, lambda doc: (doc.pop("crc32c", None), doc.update(changes)))


def header_edit(**changes: Any) -> Callable[[Path], None]:
    """A crafted index header, without the checksum that would give a damaged one away."""
    return _json_edit(HEADER, lambda doc: (doc.pop("crc32c", None), doc.update(changes)))


def many_fields(meta: dict[str, Any]) -> None:
    fields = meta["schema"]["fields"]
    fields += [dict(fields[0], name=f"extra{i}") for i in range(300)]


def replace_with_crc(key: str, payload: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    """Replace a chunk file by crafted bytes that carry a *valid* crc32c."""
    def mutate(path: Path) -> None:
        body = payload((path / key).read_bytes()[:-4])
        (path / key).write_bytes(body + crc_bytes(body))
    return mutate


def lying_blosc_header(body: bytes) -> bytes:
    header = bytearray(body)
    header[4:8] = (1 << 31).to_bytes(4, "little")  # claims 2 GiB decoded
    return bytes(header)


def shard_index_out_of_range(path: Path) -> None:
    key = "frame/c.0.0.0"
    data = bytearray((path / key).read_bytes())
    rows = rs.open(path).schema["frame"].chunk_rows
    index_at = len(data) - (rows * 16 + 4)
    index = np.frombuffer(bytes(data[index_at:-4]), "<u8").reshape(rows, 2).copy()
    index[3] = (1 << 60, 1 << 40)
    body = bytes(data[:index_at]) + index.tobytes()
    (path / key).write_bytes(body + crc_bytes(index.tobytes()))


def symlink_out(relative: str) -> Callable[[Path], None]:
    """Move a file or folder of the store outside it and leave a symbolic link behind."""
    def mutate(path: Path) -> None:
        outside = path.parent / f"{path.name}.outside"
        outside.mkdir()
        shutil.move(path / relative, outside / "target")
        os.symlink(outside / "target", path / relative)
    return mutate


def npz_with(**arrays: Any) -> Callable[[Path], None]:
    """Replace the case's store folder by an npz file holding ``arrays`` (numpy's writer)."""
    def mutate(path: Path) -> None:
        shutil.rmtree(path)
        base = {"reward": np.zeros(2, np.float32), "terminated": np.zeros(2, bool),
                "truncated": np.zeros(2, bool)}
        with zipfile.ZipFile(path, "w") as zf:
            for key, value in {**base, **arrays}.items():
                buffer = io.BytesIO()
                if isinstance(value, bytes):
                    buffer.write(value)
                else:
                    np.lib.format.write_array(buffer, np.asarray(value), allow_pickle=True)
                zf.writestr(f"{key}.npy", buffer.getvalue())
    return mutate


class Pickled:
    """Unpickling this creates a marker file: proof that something was unpickled."""

    marker = Path("/nonexistent")

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def huge_npy_header() -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f8", "fortran_order": False, "shape": (1 << 37,)})
    return buffer.getvalue() + bytes(64)


# -- special files planted in place of store files ---------------------------------------------

UNDO = "_replaystore/priority.undo"
LOCK = "_replaystore/writer.lock"
EPISODES = "_replaystore/episodes.0"


def planted(key: str, kind: str) -> Callable[[Path], None]:
    """Replace the file at ``key`` by a FIFO, a 3 GiB sparse file, a /dev/zero node, a folder
    or a hard link to a file outside the store."""
    def mutate(path: Path) -> None:
        target = path / key
        if kind == "sparse":
            with open(target, "r+b") as f:
                f.truncate(3 << 30)
            return
        content = target.read_bytes()
        target.unlink()
        if kind == "fifo":
            os.mkfifo(target)
        elif kind == "devzero":
            os.mknod(target, 0o600 | stat.S_IFCHR, os.makedev(1, 5))
        elif kind == "folder":
            target.mkdir()
        elif kind == "hardlink":
            outside = path.parent / "outside.bin"
            outside.write_bytes(content or b"precious")
            os.link(outside, target)
    return mutate


def tree_symlink_before_create(path: Path) -> None:
    """No index yet, and a symbolic link to an outside file where the tree will be made."""
    for key in (HEADER, TREE, UNDO):
        (path / key).unlink()
    outside = path.parent / "outside.bin"
    outside.write_bytes(b"precious" * 1000)
    os.symlink(outside, path / TREE)


def manifest_text(pattern: str, replacement: str) -> Callable[[Path], None]:
    """Edit the manifest as text (for what json.dumps cannot write), dropping its checksum."""
    def mutate(path: Path) -> None:
        text = re.sub(r'\s*"crc32c": "[0-9a-f]+",?', "", (path / MANIFEST).read_text())
        edited = re.sub(pattern, replacement, text, count=1)
        assert edited != text, pattern
        (path / MANIFEST).write_text(edited)
    return mutate


def deep_manifest(path: Path) -> None:
    (path / MANIFEST).write_text("[" * 200_000 + "]" * 200_000)


def empty_newest_chunks(path: Path) -> None:
    """A manifest claiming 2^40 rows, with an empty file where each field's newest chunk is."""
    manifest_edit(end=1 << 40)(path)
    meta = json.loads((path / "zarr.json").read_text())["attributes"]["replaystore"]
    for field in Schema.from_json(meta["schema"]):
        (path / chunk_key(field, ((1 << 40) - 1) // field.chunk_rows)).write_bytes(b"")


CASES: dict[str, Case] = {
    # -- schema (zarr.json attributes) --------------------------------------------------------
    "shape-2^31-squared": Case(field_edit(0, shape=[1 << 31, 1 << 31])),
    "shape-9-dims": Case(field_edit(0, shape=[1] * 9)),
    "shape-negative": Case(field_edit(0, shape=[-4])),
    "shape-zero": Case(field_edit(0, shape=[0])),
    "shape-not-ints": Case(field_edit(0, shape="abc")),
    "chunk-rows-negative": Case(field_edit(0, chunk_rows=-5)),
    "chunk-rows-2^30": Case(field_edit(0, chunk_rows=1 << 30)),
    "name-traversal": Case(field_edit(0, name="../../outside")),
    "name-absolute": Case(field_edit(0, name="/tmp/outside")),
    "name-slash": Case(field_edit(0, name="a/b")),
    "name-dot": Case(field_edit(0, name=".hidden")),
    "next-of-traversal": Case(field_edit(3, next_of="../x")),
    "codec-unknown": Case(field_edit(0, codec={"name": "evil", "level": 5, "per_row": False})),
    "codec-level-99": Case(field_edit(0, codec={"name": "zstd", "level": 99,
                                                "per_row": False})),
    "codec-not-a-mapping": Case(field_edit(0, codec="zstd")),
    "dtype-object": Case(field_edit(0, dtype="object")),
    "dtype-unicode": Case(field_edit(0, dtype="<U8")),
    "stack-10^9": Case(field_edit(2, stack=10**9)),
    "too-many-fields": Case(schema_edit(many_fields)),
    "schema-not-a-mapping": Case(schema_edit(lambda meta: meta.update(schema=[1, 2]))),
    "group-format-99": Case(schema_edit(lambda meta: meta.update(format_version=99))),
    # -- manifest ---------------------------------------------------------------------------
    "end-2^49": Case(manifest_edit(end=1 << 49)),
    "end-negative": Case(manifest_edit(end=-5)),
    "end-float": Case(manifest_edit(end=600.0)),
    "end-string": Case(manifest_edit(end="600")),
    "start-negative": Case(manifest_edit(start=-1)),
    "start-after-end": Case(manifest_edit(start=700)),
    "capacity-zero": Case(manifest_edit(capacity=0)),
    "capacity-negative": Case(manifest_edit(capacity=-10)),
    "window-wider-than-capacity": Case(manifest_edit(capacity=100)),
    "commit-seq-negative": Case(manifest_edit(commit_seq=-1)),
    "generation-10^30": Case(manifest_edit(generation=10**30)),
    "open-episode-short": Case(manifest_edit(open_episode=[1])),
    "open-episode-string": Case(manifest_edit(open_episode="abc")),
    "format-version-string": Case(manifest_edit(format_version="1")),
    # -- manifests pointing past the data, crafted chunks with valid checksums ---------------
    "end-past-the-data": Case(manifest_edit(end=5000), ("open", "read", "verify")),
    "episodes-past-the-blocks": Case(manifest_edit(episodes=5000),
                                     ("open", "episodes", "verify")),
    "episodes-2^40": Case(manifest_edit(episodes=1 << 40), ("open", "episodes", "verify")),
    "raw-chunk-wrong-length": Case(replace_with_crc("obs/c.0.0", lambda body: body[:10]),
                                   ("read", "verify")),
    "blosc-header-claims-2GiB": Case(replace_with_crc("action/c.0", lying_blosc_header),
                                     ("read", "verify")),
    "shard-index-out-of-range": Case(shard_index_out_of_range, ("read", "verify")),
    # -- priority index header -------------------------------------------------------------
    "index-slots-2^40": Case(header_edit(slots=1 << 40), ("priority", "verify", "write")),
    "index-slots-negative": Case(header_edit(slots=-1), ("priority", "verify", "write")),
    "index-unknown-key": Case(header_edit(evil=1), ("priority", "verify", "write")),
    "index-tree-symlink": Case(symlink_out(TREE), ("priority", "verify", "write")),
    # -- import files ----------------------------------------------------------------------
    "npz-object-column": Case(npz_with(obs=np.array([Pickled(), 1], dtype=object)),
                              ("import",)),
    # -- bugs this suite found, fixed since (regression tests at the end) -------------------
    "end-2^40": Case(manifest_edit(end=1 << 40)),
    "chunk-of-16TiB": Case(field_edit(0, shape=[1 << 16], chunk_rows=1 << 24)),
    "shape-2^70": Case(field_edit(0, shape=[1 << 70])),
    "state-checkpoint-string": Case(manifest_edit(state={"priority": {"checkpoint": "x"}}),
                                    ("open", "verify", "write")),
    "state-sampler-garbage": Case(manifest_edit(state={"samplers": {"per": {
        "kind": "PrioritizedSampler", "steps": "x", "bit_generator": "os.system"}}}),
        ("verify", "sampler")),
    "index-alpha-nan": Case(header_edit(alpha=float("nan")), ("verify",)),
    "index-alpha-string": Case(header_edit(alpha="x"), ("verify",)),
    "symlinked-chunk": Case(symlink_out("obs/c.0.0"), ("read", "verify")),
    "symlinked-manifest": Case(symlink_out(MANIFEST), ("open", "verify")),
    "symlinked-group": Case(symlink_out("zarr.json"), ("open", "verify")),
    "symlinked-episode-block": Case(symlink_out("_replaystore/episodes.0"),
                                    ("episodes", "verify")),
    "symlinked-index-header": Case(symlink_out(HEADER), ("priority", "verify")),
    "symlinked-lock": Case(symlink_out("_replaystore/writer.lock"), ("write", "verify")),
    "symlinked-field-folder": Case(symlink_out("obs"), ("read", "write", "verify")),
    "symlinked-meta-folder": Case(symlink_out("_replaystore"), ("open", "write", "verify")),
    "npz-object-meta": Case(npz_with(_meta=np.array([Pickled()], dtype=object)), ("import",)),
    "npz-object-priority": Case(npz_with(_priority=np.array([Pickled(), Pickled()],
                                                            dtype=object)), ("import",)),
    "npz-priority-header-1TiB": Case(npz_with(_priority=huge_npy_header()), ("import",)),
    # -- special files in place of store files, crafted JSON (the defects issue) -------------
    **{f"{kind}-at-{key.replace('/', ':')}": Case(planted(key, kind), ops)
       for kind in ("fifo", "sparse", "devzero", "folder")
       for key, ops in ((MANIFEST, ("open", "verify")), ("zarr.json", ("open", "verify")),
                        ("obs/c.0.0", ("read", "verify")), ("frame/c.0.0.0", ("read", "verify")),
                        (EPISODES, ("episodes", "verify")), (HEADER, ("priority", "verify")),
                        (TREE, ("priority", "verify", "write")), (UNDO, ("write",)),
                        (LOCK, ("write",)))
       if (kind, key) != ("sparse", LOCK)},  # a lock file's size means nothing
    "hardlink-at-_replaystore:writer.lock": Case(planted(LOCK, "hardlink"), ("write",)),
    "hardlink-at-_replaystore:priority.undo": Case(planted(UNDO, "hardlink"), ("write",)),
    "index-tree-symlink-before-create": Case(tree_symlink_before_create, ("sampler",)),
    "end-2^40-empty-newest-chunks": Case(empty_newest_chunks),
    "manifest-nested-200000-deep": Case(deep_manifest),
    "manifest-5000-digit-end": Case(manifest_text(r'"end": \d+', '"end": ' + "9" * 5000)),
    "manifest-open-episode-infinity": Case(manifest_text(
        r'"open_episode": (null|\[[^\]]*\])', '"open_episode": [0, Infinity, 0.0]')),
}


@dataclass
class Probed:
    """A case after the child tried its operations."""

    path: Path
    outcome: dict[str, Any]
    outside_before: dict[str, bytes]
    outside_after: dict[str, bytes]
    marker: Path


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Probed]:
    """Every case built from one pristine store and probed by one child under RLIMIT_AS."""
    base = tmp_path_factory.mktemp("hostile")
    pristine = build_store(base / "pristine", count=ROWS)
    Pickled.marker = base / "UNPICKLED"
    jobs, paths, outside = {}, {}, {}
    for name, case in CASES.items():
        path = base / name / "store"
        path.parent.mkdir()
        shutil.copytree(pristine, path)
        case.mutate(path)
        outside[name] = _outside(path)
        paths[name] = path
        jobs[name] = [str(path), list(case.ops)]
    child = run_python(PROBE, json.dumps(jobs), Path(__file__).resolve().parent,
                       address_space=GIB, timeout=120)
    assert child.returncode == 0 and child.result is not None, child.stderr[-3000:]
    return {name: Probed(paths[name], child.result[name], outside[name],
                         _outside(paths[name]), Pickled.marker) for name in CASES}


def _outside(path: Path) -> dict[str, bytes]:
    """Everything in the case's folder except the store itself (what a leak would touch)."""
    files = {}
    for entry in path.parent.iterdir():
        if entry.name == "store":
            continue
        if entry.is_dir():
            files.update({f"{entry.name}/{k}": v for k, v in snapshot(entry).items()})
        elif entry.is_file():
            files[entry.name] = entry.read_bytes()
    return files


def refused(outcome: Any, error: str = "CorruptStoreError") -> bool:
    """The operation raised ``error`` (a ReplayStoreError subclass)."""
    return isinstance(outcome, dict) and "mro" in outcome and error in outcome["mro"] \
        and "ReplayStoreError" in outcome["mro"]


def reported(outcome: Any, *keys: str) -> bool:
    """verify returned a report naming (at least) these storage keys."""
    return isinstance(outcome, dict) and outcome.get("ok") is False and \
        all(k in outcome["keys"] for k in keys)


def check_refused(case: Probed, error: str = "CorruptStoreError", *, key: str) -> None:
    for op, outcome in case.outcome.items():
        if op == "verify":
            assert reported(outcome, key), outcome
        else:
            assert refused(outcome, error), (op, outcome)
    assert case.outside_after == case.outside_before


SCHEMA_CASES = [name for name in CASES if list(CASES).index(name) <
                list(CASES).index("end-2^49")]
MANIFEST_CASES = ["end-2^49", "end-negative", "end-float", "end-string", "start-negative",
                  "start-after-end", "capacity-zero", "capacity-negative",
                  "window-wider-than-capacity", "commit-seq-negative", "generation-10^30",
                  "open-episode-short", "open-episode-string", "format-version-string"]


@pytest.mark.parametrize("name", SCHEMA_CASES)
def test_hostile_schema_is_refused(probed: dict[str, Probed], name: str) -> None:
    case = probed[name]
    if name == "group-format-99":  # FormatVersionError has no key: verify names the folder
        check_refused(case, "FormatVersionError", key="_replaystore")
    else:
        check_refused(case, key="zarr.json")
    for folder in (case.path.parent, case.path.parent.parent, Path("/tmp")):
        assert not (folder / "outside").exists()


@pytest.mark.parametrize("name", MANIFEST_CASES)
def test_hostile_manifest_is_refused(probed: dict[str, Probed], name: str) -> None:
    check_refused(probed[name], key=MANIFEST)


def test_manifest_pointing_past_the_data(probed: dict[str, Probed]) -> None:
    case = probed["end-past-the-data"]
    original = rs.open(case.path).get(np.arange(ROWS))
    assert case.outcome["open"] == "ok"
    read = case.outcome["read"]
    assert refused(read, "CorruptChunkError") and read["key"] == "obs/c.3.0", read
    missing = ["obs/c.3.0", "obs/c.19.0", "frame/c.5.0.0", "frame/c.39.0.0",
               "frame/c.4.0.0"]  # shard 4 lacks rows 600..639
    assert reported(case.outcome["verify"], *missing), case.outcome["verify"]
    # Repair rolls back to a prefix the store passed through: at most the 600 real rows (the
    # rows of shard 4 before 600 may go with it: problems are reported per chunk file, and so
    # may row 511, whose next frame is the shard's first).
    report = rs.repair(case.path)
    assert report.rewrite is not None and 511 <= report.rewrite.rows_after <= ROWS
    assert rs.verify(case.path).ok
    with rs.open(case.path) as store:
        kept = store.get(store.slots())
    for name in ("obs", "action", "frame", "reward", "terminated"):
        np.testing.assert_array_equal(kept[name], original[name][:len(kept[name])])


@pytest.mark.parametrize("name", ["episodes-past-the-blocks", "episodes-2^40"])
def test_episode_count_pointing_past_the_blocks(probed: dict[str, Probed], name: str) -> None:
    case = probed[name]
    assert case.outcome["open"] == "ok"
    assert refused(case.outcome["episodes"])
    assert case.outcome["verify"]["ok"] is False
    assert all(k.startswith("_replaystore/episodes.") for k in case.outcome["verify"]["keys"])


@pytest.mark.parametrize("name, key", [("raw-chunk-wrong-length", "obs/c.0.0"),
                                       ("blosc-header-claims-2GiB", "action/c.0"),
                                       ("shard-index-out-of-range", "frame/c.0.0.0")])
def test_crafted_chunk_with_a_valid_checksum(probed: dict[str, Probed], name: str,
                                             key: str) -> None:
    """The crc32c guards against accidents only: a crafted chunk that passes it is still
    refused by its structure (length, blosc header sizes, shard index bounds)."""
    case = probed[name]
    assert refused(case.outcome["read"], "CorruptChunkError"), case.outcome["read"]
    assert case.outcome["read"]["key"] == key
    assert reported(case.outcome["verify"], key)


@pytest.mark.parametrize("name, key", [("index-slots-2^40", "_replaystore/priority-"),
                                       ("index-slots-negative", HEADER),
                                       ("index-unknown-key", HEADER),
                                       ("index-tree-symlink", TREE)])
def test_hostile_priority_index_is_refused(probed: dict[str, Probed], name: str,
                                           key: str) -> None:
    case = probed[name]
    for op in ("priority", "write"):
        outcome = case.outcome[op]
        assert refused(outcome) and outcome["key"].startswith(key), (op, outcome)
    verify = case.outcome["verify"]
    assert verify["ok"] is False and any(k.startswith(key) for k in verify["keys"]), verify


def test_npz_object_arrays_are_skipped_not_unpickled(probed: dict[str, Probed]) -> None:
    case = probed["npz-object-column"]
    assert case.outcome["import"] == "ok"
    assert not case.marker.exists()
    with rs.open(str(case.path) + ".store") as store:
        assert "obs" not in store.schema.names and len(store) == 2


def test_the_library_never_unpickles_or_evaluates() -> None:
    """No reader of the format may unpickle or evaluate: numpy's pickle paths are off and no
    module imports pickle-like loaders (replaystore.torch pickles datasets for DataLoader
    workers, not store content; recording loads the user's --policy file on purpose)."""
    banned = ("import pickle", "import marshal", "import shelve", "import dill",
              "allow_pickle=True", "eval(", "exec(", "np.load(", "numpy.load(")
    for file in sorted((ROOT / "replaystore").glob("*.py")) + sorted((ROOT / "cli").glob("*.py")):
        text = file.read_text()
        for needle in banned:
            assert needle not in text, f"{file.name} contains {needle!r}"


# -- regressions: each reproduces a bug this suite found (fixed since) ----------------------------


def test_manifest_claiming_2_40_rows_is_refused_without_allocating(
        probed: dict[str, Probed]) -> None:
    check_refused(probed["end-2^40"], key=MANIFEST)


def test_schema_with_a_16_tib_chunk_is_refused(probed: dict[str, Probed]) -> None:
    check_refused(probed["chunk-of-16TiB"], key="zarr.json")


def test_shape_overflowing_int64_is_refused(probed: dict[str, Probed]) -> None:
    check_refused(probed["shape-2^70"], key="zarr.json")


@pytest.mark.parametrize("name", ["state-checkpoint-string", "state-sampler-garbage"])
def test_malformed_manifest_state_is_refused(probed: dict[str, Probed], name: str) -> None:
    outcome = probed[name].outcome
    for op, result in outcome.items():
        if op == "verify":
            assert reported(result, MANIFEST), result
        elif op != "open":
            assert refused(result), (op, result)


@pytest.mark.parametrize("name", ["index-alpha-nan", "index-alpha-string"])
def test_priority_header_with_a_bad_alpha_is_reported(probed: dict[str, Probed],
                                                      name: str) -> None:
    assert reported(probed[name].outcome["verify"], HEADER)


@pytest.mark.parametrize("name, key", [("symlinked-chunk", "obs/c.0.0"),
                                       ("symlinked-manifest", MANIFEST),
                                       ("symlinked-group", "zarr.json"),
                                       ("symlinked-episode-block", "_replaystore/episodes.0"),
                                       ("symlinked-index-header", HEADER),
                                       ("symlinked-lock", "_replaystore/writer.lock")])
def test_symlinked_file_is_refused_naming_it(probed: dict[str, Probed], name: str,
                                             key: str) -> None:
    check_refused(probed[name], key=key)


@pytest.mark.parametrize("name", ["symlinked-field-folder", "symlinked-meta-folder"])
def test_symlinked_folder_is_refused(probed: dict[str, Probed], name: str) -> None:
    case = probed[name]
    assert case.outside_after == case.outside_before, "files outside the store were written"
    assert all(refused(outcome) or (op == "verify" and outcome["ok"] is False)
               for op, outcome in case.outcome.items()), case.outcome


@pytest.mark.parametrize("name", ["npz-object-meta", "npz-object-priority"])
def test_npz_pickled_metadata_is_refused(probed: dict[str, Probed], name: str) -> None:
    case = probed[name]
    assert not case.marker.exists()
    assert refused(case.outcome["import"], "TransferError"), case.outcome["import"]


def test_npz_priority_with_a_huge_header_is_refused(probed: dict[str, Probed]) -> None:
    assert refused(probed["npz-priority-header-1TiB"].outcome["import"], "TransferError")


# -- special files and crafted JSON (the defects issue) --------------------------------------------

SPECIAL = [name for name in CASES if name.split("-at-")[0] in ("fifo", "sparse", "devzero",
                                                              "folder", "hardlink")
           and name != "sparse-at-_replaystore:priority.undo"]


@pytest.mark.parametrize("name", SPECIAL)
def test_special_file_in_place_of_a_store_file_is_refused(probed: dict[str, Probed],
                                                           name: str) -> None:
    """A FIFO (which would block open forever), a huge sparse file or a /dev/zero node (read
    whole: gigabytes), a folder, or a hard link to an outside file (written through) in place
    of a store file: refused at once with CorruptStoreError naming the key."""
    case = probed[name]
    key = name.split("-at-", 1)[1].replace(":", "/")
    check_refused(case, key=key)


@pytest.mark.parametrize("name", ["end-2^40-empty-newest-chunks", "manifest-nested-200000-deep",
                                  "manifest-5000-digit-end", "manifest-open-episode-infinity"])
def test_crafted_manifest_json_is_refused(probed: dict[str, Probed], name: str) -> None:
    """Past the row-count guard with empty files where the newest chunks would be; JSON that
    makes the parser recurse, refuse a huge integer or overflow an int(): each a
    CorruptStoreError naming the manifest, never the parser's own error or an allocation."""
    check_refused(probed[name], key=MANIFEST)


def test_a_link_planted_where_the_index_is_made_is_replaced_not_followed(
        probed: dict[str, Probed]) -> None:
    """Making the index wrote through a symbolic link at its key: the outside file became
    zeros. It is now built under a new name and renamed over whatever was planted."""
    case = probed["index-tree-symlink-before-create"]
    outcome = case.outcome["sampler"]
    # A tree without its header reads as a damaged index (refused, naming a key), or the
    # index is made by replacing the link: either way nothing outside is written.
    assert outcome == "ok" or refused(outcome), outcome
    assert case.outside_after == case.outside_before


def test_a_huge_sparse_undo_log_is_not_read_whole(probed: dict[str, Probed]) -> None:
    """The undo log has no size its format bounds (it grows between commits), so it is read a
    piece at a time: a 3 GiB sparse file planted there no longer ends in a MemoryError under
    a 1 GiB address space. It names no checkpoint, so the writer rebuilds the index from its
    leaves and starts a new log."""
    case = probed["sparse-at-_replaystore:priority.undo"]
    assert case.outcome["write"] == "ok", case.outcome
    assert (case.path / UNDO).stat().st_size < 1 << 20
    assert rs.verify(case.path).ok
