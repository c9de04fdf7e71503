"""Damaged stores: flipped bits, truncated and deleted files; verify names each, repair recovers.

Damage lands on chunk files (raw, compressed, per-row shards, a ``next_of`` field), episode
blocks, the manifest and the priority index. ``rs.verify`` must report every damaged file by
its storage key (``Problem.key``), reading a damaged chunk must raise
``rs.CorruptChunkError`` naming it, and ``rs.repair`` must leave a store that verifies and
holds exactly the committed rows it keeps (or, for the manifest, say there is no committed
state left to go back to).

Run as a script, this file measures the detection rate per kind of file and damage:

    python tests/reliability/test_rel_corruption.py [--trials 200]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rel_common import build_store, content, copy_store

import replaystore as rs
from replaystore.layout import MANIFEST
from replaystore.priority import HEADER, UNDO

DAMAGES = ("flip", "truncate", "delete")
# verify must catch every damage: chunks, shards, episode blocks, the manifest and the index
# header carry a crc32c, and the trees are checked node by node.
ALWAYS = {kind: DAMAGES for kind in ("chunk", "episodes", "manifest", "tree", "header")}


def category(key: str) -> str:
    """Which kind of store file a storage key is."""
    name = key.rsplit("/", 1)[-1]
    if key == MANIFEST:
        return "manifest"
    if key == HEADER:
        return "header"
    if key == UNDO:
        return "undo"
    if name.endswith(".tree"):
        return "tree"
    if name.startswith("episodes."):
        return "episodes"
    if name.startswith("c."):
        return "chunk"
    return "other"  # zarr.json documents, the lock


def store_files(path: Path) -> dict[str, list[str]]:
    """The storage keys of a store, by category."""
    by_kind: dict[str, list[str]] = {}
    for file in sorted(path.rglob("*")):
        if file.is_file():
            key = file.relative_to(path).as_posix()
            by_kind.setdefault(category(key), []).append(key)
    return by_kind


def damage(path: Path, key: str, how: str, rng: random.Random) -> str:
    """Damage one file of the store; returns a description."""
    file = path / key
    data = bytearray(file.read_bytes())
    if how == "delete":
        file.unlink()
        return f"deleted {key}"
    if how == "truncate":
        size = rng.randrange(len(data))
        file.write_bytes(bytes(data[:size]))
        return f"truncated {key} from {len(data)} to {size} bytes"
    if key.endswith(".tree"):
        # The tree is a sparse file: flip a bit in the part that holds something.
        leaves = len(data) // 32
        tree = rng.randrange(2)
        node = rng.randrange(1, 2 * min(leaves, 16384))
        offset = (tree * 2 * leaves + node) * 8 + rng.randrange(8)
    else:
        offset = rng.randrange(len(data))
    bit = rng.randrange(8)
    data[offset] ^= 1 << bit
    file.write_bytes(bytes(data))
    return f"flipped bit {bit} of byte {offset} of {key}"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One unbounded store and one ring that wrapped, built once and copied per example."""
    base = tmp_path_factory.mktemp("pristine")
    return {"unbounded": build_store(base / "unbounded"),
            "ring": build_store(base / "ring", capacity=5_000)}


def fresh_copy(pristine: dict[str, Path], kind: str) -> Path:
    target = Path(tempfile.mkdtemp(prefix="rel-corrupt-")) / "store"
    return copy_store(pristine[kind], target)


def expect_read_errors(path: Path, key: str, kind: str, how: str,
                       problem: rs.Problem) -> None:
    """Reading the damaged file raises the specific error naming it; other rows still read."""
    if kind == "manifest":
        with pytest.raises(rs.ReplayStoreError) as info:
            rs.open(path)
        if how == "delete":
            assert isinstance(info.value, rs.StoreNotFoundError) and MANIFEST in str(info.value)
        else:
            assert isinstance(info.value, rs.CorruptStoreError) and info.value.key == MANIFEST
        return
    if kind == "tree" and how == "flip":
        return  # the index maps fine: only verify's node-by-node check can tell
    with rs.open(path) as store:
        if kind == "chunk":
            with pytest.raises(rs.CorruptChunkError) as info:
                store.get(store.slots())
            assert info.value.key == key and key in str(info.value)
            assert problem.rows is not None
            m = store.manifest
            survivors = np.arange(m.start, m.end)
            survivors = survivors[(survivors < problem.rows[0]) | (survivors >= problem.rows[1])]
            field = key.split("/")[0]
            readable = [f for f in store.schema.names if f not in (field, "next_frame")]
            store.get(m.slot_of(survivors), readable)  # other chunks stay readable
        elif kind == "episodes":
            with pytest.raises(rs.CorruptStoreError) as info:
                _ = store.episodes
            assert info.value.key == key
        else:  # the priority index (a deleted header beside its tree is damage, not "no index")
            with pytest.raises(rs.CorruptStoreError) as info:
                store.priority_index()
            assert info.value.key == key


def expect_repaired(path: Path, original: dict[str, np.ndarray], kind: str,
                    report: rs.VerifyReport, mode: str) -> None:
    """After repair (``mode``: "default", "salvage", the old name of the default, or
    "rollback"): the store verifies and holds exactly the committed rows it kept."""
    if kind == "manifest":
        with pytest.raises(rs.CorruptStoreError, match="cannot repair"):
            rs.repair(path)
        return
    rollback = mode == "rollback"
    plan = rs.repair(path, rollback=rollback, dry_run=True)
    result = rs.repair(path, rollback=rollback, salvage=True if mode == "salvage" else None)
    after = rs.verify(path)
    assert after.ok, [str(p) for p in after.problems]
    now = content(path)
    rows_before = original["_row"]
    if kind != "chunk":
        keep = np.ones(len(rows_before), bool)
    elif rollback:
        keep = rows_before < report.first_bad_row
    elif report.problems[0].key.split("/")[0] in ("terminated", "truncated"):
        keep = ~report.unreadable(rows_before)  # no done flags: only the bad rows go
    else:
        bad = report.unreadable(rows_before)
        ends = original["terminated"] | original["truncated"]
        segment = np.concatenate(([0], np.cumsum(ends[:-1])))
        keep = ~np.isin(segment, segment[bad])
    assert len(now["_row"]) == keep.sum() == result.rows_after == plan.rows_after
    assert result.dropped == plan.dropped
    assert sum(b - a for a, b in result.dropped) == (~keep).sum()
    for name, values in original.items():
        if name == "_row":
            continue
        want, got = values[keep], now[name]
        if name == "truncated" and len(want) and rollback and not keep.all():
            # The last kept row becomes the truncated end of its cut episode.
            want = want.copy()
            want[-1] |= ~original["terminated"][keep][-1]
        np.testing.assert_array_equal(got, want, err_msg=name)
    with rs.open(path) as store:
        index = store.priority_index()
        leaves = index.leaf(store.slots())
        assert (leaves > 0).all()
        assert result.index_reset == (kind in ("tree", "header"))


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damage_is_reported_naming_the_file_and_repaired(pristine: dict[str, Path],
                                                         data: st.DataObject) -> None:
    store_kind = data.draw(st.sampled_from(["unbounded", "ring"]), label="store")
    path = fresh_copy(pristine, store_kind)
    files = store_files(path)
    kind = data.draw(st.sampled_from(sorted(ALWAYS)), label="kind")
    key = data.draw(st.sampled_from(files[kind]), label="key")
    how = data.draw(st.sampled_from(ALWAYS[kind]), label="damage")
    mode = data.draw(st.sampled_from(["default", "salvage", "rollback"]), label="repair")
    original = content(path)
    what = damage(path, key, how, random.Random(data.draw(st.integers(0, 2**32), label="seed")))

    report = rs.verify(path)
    named = [p for p in report.problems if p.key == key]
    assert named, f"{what}: verify reported {[str(p) for p in report.problems]}"
    expect_read_errors(path, key, kind, how, named[0])
    expect_repaired(path, original, kind, report, mode)


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_undo_log_of_a_clean_index_is_harmless(pristine: dict[str, Path],
                                                       how: str) -> None:
    """The undo log of a cleanly closed index holds only its checkpoint: losing it costs
    nothing (the next writer rebuilds the trees from the leaves)."""
    path = fresh_copy(pristine, "ring")
    with rs.open(path) as store:
        before = store.priority_index().leaf(store.slots()).copy()
    damage(path, UNDO, how, random.Random(3))
    assert rs.verify(path).ok
    rs.open(path, "a").close()
    assert rs.verify(path).ok
    with rs.open(path) as store:
        np.testing.assert_array_equal(store.priority_index().leaf(store.slots()), before)


def test_every_damaged_chunk_of_one_field_is_reported(pristine: dict[str, Path]) -> None:
    """Several damaged files at once: one problem per file, each naming it, rows spanning it."""
    path = fresh_copy(pristine, "unbounded")
    chunks = [k for k in store_files(path)["chunk"] if k.startswith("frame/")]
    rng = random.Random(5)
    hit = rng.sample(chunks, 6)
    for key, how in zip(hit, DAMAGES * 2, strict=True):
        damage(path, key, how, rng)
    report = rs.verify(path)
    assert sorted(p.key for p in report.problems) == sorted(hit)
    for problem in report.problems:
        chunk = int(problem.key.split("/")[-1].split(".")[1])
        # 'frame' is the next_of target of 'next_frame': the row before the chunk reads its
        # next value from the chunk's first frame, so it is unreadable too.
        whole = (max(0, chunk * 128 - 1), chunk * 128 + 128)
        if hit.index(problem.key) % 3 == 0:  # a flipped bit: in one row's entry, only that
            assert whole[0] <= problem.rows[0] < problem.rows[1] <= whole[1]  # row is lost
        else:
            assert problem.rows == whole


@pytest.mark.parametrize("store_kind", ["unbounded", "ring"])
@pytest.mark.parametrize("how", ["flip", "empty"])
def test_repair_drops_only_the_episodes_a_damaged_chunk_touches(pristine: dict[str, Path],
                                                                store_kind: str,
                                                                how: str) -> None:
    """One flipped byte in the oldest obs chunk used to roll a store back to 0 rows; a chunk
    left empty by a power cut (renamed before its data reached the disk) likewise."""
    path = fresh_copy(pristine, store_kind)
    original = content(path)
    with rs.open(path) as store:
        chunk = int(store.manifest.slot_of(np.array([store.manifest.start]))[0]) // 256
    key = f"obs/c.{chunk}.0"
    if how == "flip":
        damage(path, key, "flip", random.Random(1))
    else:
        (path / key).write_bytes(b"")
    report = rs.verify(path)
    assert [p.key for p in report.problems] == [key]
    bad = report.unreadable(original["_row"])
    assert bad.sum() == 256 and bad[0]  # the oldest rows: rolling back kept none
    result = rs.repair(path)
    ends = original["terminated"] | original["truncated"]
    segment = np.concatenate(([0], np.cumsum(ends[:-1])))
    keep = ~np.isin(segment, segment[bad])
    assert result.rows_after == keep.sum() >= len(bad) - 256 - 2  # two-row episodes
    assert rs.verify(path).ok
    kept = content(path)
    for name in ("obs", "action", "frame", "reward", "terminated", "truncated"):
        np.testing.assert_array_equal(kept[name], original[name][keep], err_msg=name)


# -- regressions: each reproduces a bug this suite found (fixed since) ----------------------------


def test_truncated_or_deleted_manifest_cannot_be_repaired(pristine: dict[str, Path]) -> None:
    path = fresh_copy(pristine, "unbounded")
    (path / MANIFEST).write_bytes(b'{"format_version": 1, "sch')
    report = rs.verify(path)
    assert [p.key for p in report.problems] == [MANIFEST]
    with pytest.raises(rs.CorruptStoreError, match="cannot repair"):
        rs.repair(path)


def test_bit_flip_in_the_manifest_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with rs.create(path, {"obs": {"shape": (4,), "dtype": "float32", "chunk_rows": 16}}) as s:
        s.extend({"obs": np.ones((40, 4)), "reward": np.zeros(40),
                  "terminated": np.zeros(40, bool), "truncated": np.zeros(40, bool)})
    raw = bytearray((path / MANIFEST).read_bytes())
    raw[raw.index(b'"end": 40') + len(b'"end": 4')] ^= 0x01  # '0' -> '1'
    (path / MANIFEST).write_bytes(bytes(raw))
    with pytest.raises(rs.CorruptStoreError, match="crc32c"):  # not a phantom 41st row
        rs.open(path)
    assert [p.key for p in rs.verify(path).problems] == [MANIFEST]


def test_bit_flip_in_the_manifest_checksum_key_is_detected(pristine: dict[str, Path]) -> None:
    path = fresh_copy(pristine, "unbounded")
    raw = bytearray((path / MANIFEST).read_bytes())
    raw[raw.index(b'"crc32c"') + 1] ^= 0x01  # 'c' -> 'b'
    (path / MANIFEST).write_bytes(bytes(raw))
    assert [p.key for p in rs.verify(path).problems] == [MANIFEST]


@pytest.mark.parametrize("old, new", [(b'"alpha": 0.6', b'"alpha": 0.7'),
                                      (b'"slots": 65536', b'"slots": 64536')])
def test_bit_flip_in_the_priority_header_is_detected(pristine: dict[str, Path], old: bytes,
                                                     new: bytes) -> None:
    path = fresh_copy(pristine, "unbounded")
    raw = (path / HEADER).read_bytes()
    assert old in raw
    (path / HEADER).write_bytes(raw.replace(old, new))  # a one-bit difference each
    assert [p.key for p in rs.verify(path).problems] == [HEADER]


@pytest.mark.parametrize("where", ["sum-leaf", "sum-inner", "min-leaf"])
def test_sign_flip_of_an_empty_tree_node_is_detected(pristine: dict[str, Path],
                                                     where: str) -> None:
    path = fresh_copy(pristine, "unbounded")  # slots 8200.. are empty
    tree = next(k for k in store_files(path)["tree"])
    data = bytearray((path / tree).read_bytes())
    leaves = len(data) // 32
    node = {"sum-leaf": leaves + 9000, "sum-inner": (leaves + 16384) // 2,
            "min-leaf": 3 * leaves + 9000}[where]
    data[node * 8 + 7] ^= 0x80  # the sign bit
    (path / tree).write_bytes(bytes(data))
    assert [p.key for p in rs.verify(path).problems] == [tree]


@pytest.mark.parametrize("where", ["sum-leaf-low-bit", "min-tree-root", "min-tree-leaf"])
def test_bit_flip_in_the_priority_tree_is_detected(pristine: dict[str, Path],
                                                   where: str) -> None:
    path = fresh_copy(pristine, "unbounded")
    tree = next(k for k in store_files(path)["tree"])
    data = bytearray((path / tree).read_bytes())
    leaves = len(data) // 32
    offset = {"sum-leaf-low-bit": (leaves + 5) * 8,  # lowest mantissa bit of slot 5's leaf
              "min-tree-root": (2 * leaves + 1) * 8 + 6,
              "min-tree-leaf": (3 * leaves + 5) * 8 + 6}[where]
    data[offset] ^= 0x08
    (path / tree).write_bytes(bytes(data))
    assert not rs.verify(path).ok


def test_deleted_priority_header_is_detected(pristine: dict[str, Path]) -> None:
    path = fresh_copy(pristine, "unbounded")
    (path / HEADER).unlink()
    assert not rs.verify(path).ok


def test_repair_keeps_rows_before_a_damaged_next_of_target(tmp_path: Path) -> None:
    path = tmp_path / "s"
    fields = {"frame": {"shape": (8, 8), "dtype": "uint8", "codec": "lz4hc:5/rows",
                        "chunk_rows": 128},
              "next_frame": {"next_of": "frame", "chunk_rows": 128}}
    g = np.arange(600)
    with rs.create(path, fields) as store:
        store.extend({"frame": np.broadcast_to((g % 256).astype(np.uint8)[:, None, None],
                                               (600, 8, 8)),
                      "next_frame": np.zeros((600, 8, 8), np.uint8), "reward": np.zeros(600),
                      "terminated": g % 3 == 2, "truncated": np.zeros(600, bool)})
    (path / "frame" / "c.1.0.0").unlink()  # rows 128..255; row 127 needs frame 128 as next
    assert rs.verify(path).first_bad_row == 127
    copy = copy_store(path, path.with_name("copy"))
    assert rs.repair(path, rollback=True).rewrite.rows_after == 127
    # By default only the episodes (three rows each) holding rows 127..255 go: 126..257.
    assert rs.repair(copy).rewrite.rows_after == 600 - 132


def test_salvage_in_a_ring_drops_only_the_damaged_episodes(pristine: dict[str, Path]) -> None:
    path = fresh_copy(pristine, "ring")  # window: rows 3200..8199 in 5,000 slots
    (path / "obs" / "c.12.0").unlink()  # slots 3072..3327: rows 8072..8199 and 3200..3327
    kept = rs.repair(path, salvage=True).rewrite.rows_after
    assert kept == 5_000 - 128 - 128


def test_deleted_manifest_is_reported(pristine: dict[str, Path]) -> None:
    path = fresh_copy(pristine, "unbounded")
    (path / MANIFEST).unlink()
    report = rs.verify(path)
    assert [p.key for p in report.problems] == [MANIFEST]


def test_create_does_not_wipe_a_store_that_lost_its_manifest(pristine: dict[str, Path]) -> None:
    path = fresh_copy(pristine, "unbounded")
    (path / MANIFEST).unlink()
    with pytest.raises(rs.StoreExistsError):
        rs.create(path, {"obs": ((1,), "float32")})


CRASH_BEFORE_MANIFEST = """
import os, signal, sys
sys.path.insert(0, sys.argv[2])
import replaystore as rs, replaystore.writer as writer
from rel_common import rows
store = rs.open(sys.argv[1], "a")
rs.PrioritizedSampler(store)
store.extend(rows(store.manifest.end, 5))
# Die exactly like a SIGKILL between the new rows' priorities and the manifest replacement.
writer.commit_manifest = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
store.commit()
"""


def test_verify_accepts_a_store_killed_inside_commit(pristine: dict[str, Path]) -> None:
    path = fresh_copy(pristine, "unbounded")
    with rs.open(path) as store:
        before = store.priority_index().leaf(store.slots()).copy()
    child = subprocess.run([sys.executable, "-c", CRASH_BEFORE_MANIFEST, str(path),
                            str(Path(__file__).resolve().parent)], capture_output=True)
    assert child.returncode == -signal.SIGKILL, child.stderr
    report = rs.verify(path)
    try:
        assert report.ok, [str(p) for p in report.problems]
    finally:
        rs.repair(path)  # what 'replaystore verify --repair' does with that report
        with rs.open(path) as store:
            np.testing.assert_array_equal(store.priority_index().leaf(store.slots()), before)


def test_failed_writer_open_releases_the_lock(pristine: dict[str, Path]) -> None:
    path = fresh_copy(pristine, "unbounded")
    (path / next(k for k in store_files(path)["tree"])).unlink()
    try:
        rs.open(path, "a")
    except rs.CorruptStoreError:
        rs.repair(path)  # raises WriterLockedError today
    assert rs.verify(path).ok


# -- detection rates (run this file as a script) --------------------------------------------------


def measure(trials: int, seed: int) -> dict[str, dict[str, list[int]]]:
    """For each kind of file and damage: [reported naming the file, trials]."""
    rng = random.Random(seed)
    counts: dict[str, dict[str, list[int]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        pristine = {"unbounded": build_store(base / "unbounded"),
                    "ring": build_store(base / "ring", capacity=5_000)}
        for trial in range(trials):
            for kind in ("chunk", "episodes", "manifest", "tree", "header"):
                for how in DAMAGES:
                    store_kind = rng.choice(sorted(pristine))
                    path = copy_store(pristine[store_kind], base / f"t{trial}-{kind}-{how}")
                    key = rng.choice(store_files(path)[kind])
                    damage(path, key, how, rng)
                    try:
                        found = any(p.key == key for p in rs.verify(path).problems)
                    except rs.ReplayStoreError:
                        found = False  # raised instead of reporting
                    cell = counts.setdefault(kind, {}).setdefault(how, [0, 0])
                    cell[0] += found
                    cell[1] += 1
                    _rmtree(path)
    return counts


def _rmtree(path: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames:
            os.unlink(os.path.join(dirpath, name))
        for name in dirnames:
            os.rmdir(os.path.join(dirpath, name))
    os.rmdir(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure verify's detection rate.")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    counts = measure(args.trials, args.seed)
    if args.json:
        print(json.dumps(counts))
        return 0

    def show(cell: list[int]) -> str:
        return f"{cell[0]}/{cell[1]} ({100 * cell[0] / cell[1]:.0f}%)"

    print(f"{'file':10s} " + " ".join(f"{how:>16s}" for how in DAMAGES))
    for kind, cells in counts.items():
        print(f"{kind:10s} " + " ".join(f"{show(cells[how]):>16s}" for how in DAMAGES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
