"""Prune, compact, verify and repair: exact contents after the rewrite, and problems found."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import rows_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import replaystore as rs
from replaystore.layout import META

FRAMES = {"obs": {"shape": (8, 8), "dtype": "uint8", "codec": "lz4hc:5/rows", "chunk_rows": 64},
          "next_obs": {"next_of": "obs"}, "action": ((), "int64")}


def fill(store: rs.Store, count: int, first: int = 0) -> None:
    store.extend(rows_for(store.schema, first, count))
    store.commit()


def snapshot(path) -> dict[str, np.ndarray]:
    """Every field of every committed row, oldest first, as reads return them."""
    with rs.open(path) as store:
        return store.get(store.slots())


def test_keep_last_episodes_keeps_exact_rows_episodes_and_priorities(make_store):
    store = make_store(FRAMES)
    fill(store, 500)
    per = rs.PrioritizedSampler(store, seed=0)
    per.update_priorities(store.slots(), np.arange(500) + 1.0)
    store.commit()
    before, episodes = snapshot(store.path), store.episodes
    store.close()

    report = rs.prune(store.path, keep_last=10)

    first = int(episodes["start"][-10])
    kept = slice(first, 500)
    after = snapshot(store.path)
    for name, values in before.items():
        np.testing.assert_array_equal(after[name], values[kept], err_msg=name)
    with rs.open(store.path) as pruned:
        table = pruned.episodes
        np.testing.assert_array_equal(table["length"], episodes["length"][-10:])
        np.testing.assert_allclose(table["return"], episodes["return"][-10:])
        np.testing.assert_allclose(pruned.priority_index().priorities(pruned.slots()),
                                   np.arange(first, 500) + 1.0)
    assert (report.rows_before, report.rows_after) == (500, 500 - first)
    assert report.episodes_after == 10 and rs.verify(store.path).ok


def test_row_level_cuts_become_truncated_ends_with_the_right_next_obs(make_store):
    store = make_store(FRAMES)
    fill(store, 300)
    before = snapshot(store.path)
    store.close()
    rs.prune(store.path, keep_last=100, by="rows")
    rs.prune(store.path, keep_last=70, by="rows")
    after = snapshot(store.path)
    np.testing.assert_array_equal(after["obs"], before["obs"][230:])
    np.testing.assert_array_equal(after["next_obs"], before["next_obs"][230:])
    assert rs.verify(store.path).ok


def test_gaps_inside_episodes_end_them_as_truncated(make_store):
    store = make_store(FRAMES)
    fill(store, 60)
    before = snapshot(store.path)
    store.close()
    keep = np.r_[0:3, 10:20, 40:60]
    rs.rewrite(store.path, lambda s: keep)
    after = snapshot(store.path)
    np.testing.assert_array_equal(after["next_obs"], before["next_obs"][keep])
    ends = after["terminated"] | after["truncated"]
    assert ends[2] and ends[12]  # cut before a dropped successor
    assert after["truncated"][2] and after["truncated"][12] and not ends[-1]


def test_return_and_id_selectors(make_store):
    store = make_store()
    data = rows_for(store.schema, 0, 400)
    data["reward"] = np.random.default_rng(1).normal(size=400).astype(np.float32)
    store.extend(data)
    store.commit()
    episodes = store.episodes
    store.close()
    ret = episodes["return"]
    drop = (ret < -1) | (ret > 2)
    drop[[0, 5]] = True
    report = rs.prune(store.path, min_return=-1, max_return=2, episodes=[0, 5])
    with rs.open(store.path) as pruned:
        np.testing.assert_allclose(pruned.episodes["return"], ret[~drop], rtol=1e-6)
    assert report.episodes_after == int((~drop).sum())


def test_lowest_priority_drops_the_lowest_episodes(make_store):
    store = make_store()
    fill(store, 210)  # 30 episodes of 7 rows
    per = rs.PrioritizedSampler(store, seed=0, alpha=1.0)
    episode = np.arange(210) // 7
    per.update_priorities(store.slots(), (episode * 37 % 30) + 1.0)
    store.commit()
    store.close()
    rs.prune(store.path, lowest_priority=0.5)
    with rs.open(store.path) as pruned:
        kept = np.unique(pruned.priority_index().priorities(pruned.slots()))
    np.testing.assert_allclose(kept, np.arange(16, 31), rtol=1e-6)


def test_prune_in_a_wrapped_ring_keeps_the_newest_rows(make_store):
    store = make_store(capacity=100)
    fill(store, 350)
    before = snapshot(store.path)
    store.close()
    rs.prune(store.path, keep_last=50, by="rows")
    after = snapshot(store.path)
    np.testing.assert_array_equal(after["obs"], before["obs"][-50:])
    with rs.open(store.path, "a") as again:  # the pruned ring keeps its capacity and grows on
        assert again.capacity == 100
        again.extend(rows_for(again.schema, 350, 80))
    assert len(rs.open(store.path)) == 100


def test_readers_of_a_replaced_store_are_told_to_reopen(make_store):
    store = make_store()
    fill(store, 100)
    store.close()
    reader = rs.open(store.path, cache_bytes=0)
    rs.compact(store.path)
    with pytest.raises(rs.StoreReplacedError, match="open it again"):
        reader.get([0])
    with pytest.raises(rs.StoreReplacedError):
        reader.refresh()


def test_prune_refuses_while_a_writer_holds_the_store(make_store):
    store = make_store()
    fill(store, 50)
    with pytest.raises(rs.WriterLockedError):
        rs.prune(store.path, keep_last=1)
    store.close()
    assert len(rs.open(store.path)) == 50


def test_bad_selections_name_the_problem(make_store):
    store = make_store()
    fill(store, 50)
    store.close()
    with pytest.raises(IndexError, match="no finished episode with id 99"):
        rs.prune(store.path, episodes=[99])
    with pytest.raises(rs.SchemaError, match="lowest_priority"):
        rs.prune(store.path, lowest_priority=1.5)
    with pytest.raises(rs.SchemaError, match="no priority index"):
        rs.prune(store.path, lowest_priority=0.5)
    with pytest.raises(rs.SchemaError, match=r"\['nope'\]"):
        rs.compact(store.path, codecs={"nope": "zstd:3"})
    assert len(rs.open(store.path)) == 50 and rs.verify(store.path).ok


def test_dry_run_changes_nothing(make_store):
    store = make_store()
    fill(store, 70)
    store.close()
    before = sorted(p.name for p in store.path.rglob("*"))
    report = rs.prune(store.path, keep_last=2, dry_run=True)
    assert report.dry_run and report.rows_after < 70
    assert sorted(p.name for p in store.path.rglob("*")) == before


def test_compact_with_a_new_codec_keeps_every_byte(make_store):
    store = make_store({"frame": ((32, 32), "uint8"), "action": ((), "int64")})
    fill(store, 300)
    before = snapshot(store.path)
    store.close()
    report = rs.compact(store.path, codecs={"frame": "zstd:5/rows"})
    after = snapshot(store.path)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])
    assert str(rs.open(store.path).schema["frame"].codec) == "zstd:5/rows"
    assert report.disk_bytes_after is not None


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(1, 120), capacity=st.sampled_from([None, 40, 64]),
       keep=st.lists(st.integers(0, 119), max_size=60))
def test_any_kept_rows_read_back_exactly(make_store, rows, capacity, keep):
    store = make_store(FRAMES, capacity=capacity)
    fill(store, rows)
    before = snapshot(store.path)
    m = store.manifest
    store.close()
    chosen = np.unique(np.array([k for k in keep if k < m.rows], dtype=np.int64))
    rs.rewrite(store.path, lambda s: m.start + chosen)
    after = snapshot(store.path)
    for name in ("obs", "next_obs", "action", "reward", "terminated"):
        np.testing.assert_array_equal(after[name], before[name][chosen], err_msg=name)
    assert rs.verify(store.path).ok


# -- verify and repair ----------------------------------------------------------------------

def corrupt(path, key: str, how: str = "flip") -> None:
    file = path / key
    data = bytearray(file.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x10
        file.write_bytes(bytes(data))
    elif how == "truncate":
        file.write_bytes(bytes(data[: len(data) // 3]))
    else:
        file.unlink()


@pytest.fixture
def frames_store(make_store):
    store = make_store({**FRAMES, "action": {"shape": (), "dtype": "int64", "codec": "raw",
                                             "chunk_rows": 64}})
    fill(store, 400)
    rs.PrioritizedSampler(store, seed=0)
    store.commit()
    store.close()
    return store.path


@pytest.mark.parametrize("how", ["flip", "truncate", "delete"])
def test_verify_names_each_damaged_chunk(frames_store, how):
    corrupt(frames_store, "action/c.2", how)
    corrupt(frames_store, "obs/c.0.0.0", how)
    report = rs.verify(frames_store)
    assert not report.ok
    assert {p.key for p in report.problems} == {"action/c.2", "obs/c.0.0.0"}
    # A per-row shard is checked row by row: a flipped payload byte costs the rows it touches
    # (and the row before, whose next frame it is), not the whole shard.
    assert report.first_bad_row is not None and report.first_bad_row < 64


def test_verify_reports_a_damaged_episode_table_index_and_manifest(frames_store):
    corrupt(frames_store, f"{META}/episodes.0")
    assert [p.key for p in rs.verify(frames_store).problems] == [f"{META}/episodes.0"]
    tree = next(p for p in (frames_store / META).iterdir() if p.suffix == ".tree")
    data = bytearray(tree.read_bytes())
    data[8 * 3: 8 * 4] = np.float64(123.0).tobytes()  # an inner node of the sum tree
    tree.write_bytes(bytes(data))
    keys = {p.key for p in rs.verify(frames_store).problems}
    assert f"{META}/{tree.name}" in keys
    (frames_store / META / "manifest.json").write_text("{not json")
    report = rs.verify(frames_store)
    assert [p.key for p in report.problems] == [f"{META}/manifest.json"]


def test_repair_rolls_back_to_the_rows_before_the_damage(frames_store):
    before = snapshot(frames_store)
    corrupt(frames_store, "action/c.3")  # rows 192..255
    result = rs.repair(frames_store, rollback=True)
    assert result.rewrite.rows_after == 192
    after = snapshot(frames_store)
    for name in ("obs", "next_obs", "action"):
        np.testing.assert_array_equal(after[name][:-1], before[name][:191], err_msg=name)
    assert rs.verify(frames_store).ok


def test_repair_salvage_drops_only_damaged_episodes(frames_store):
    before = snapshot(frames_store)
    corrupt(frames_store, "action/c.3")
    rs.repair(frames_store, salvage=True)
    after = snapshot(frames_store)
    ends = np.flatnonzero(before["terminated"] | before["truncated"])
    first = ends[ends < 192][-1] + 1  # the episode holding row 192 starts here ...
    last = ends[ends >= 255][0]  # ... and the one holding row 255 ends here
    keep = np.r_[0:first, last + 1:400]
    np.testing.assert_array_equal(after["action"], before["action"][keep])
    assert rs.verify(frames_store).ok


def test_repair_rebuilds_a_corrupt_index(frames_store):
    corrupt(frames_store, f"{META}/priority.json")
    result = rs.repair(frames_store)
    assert result.index_reset and rs.verify(frames_store).ok
    with rs.open(frames_store) as store:
        assert len(store) == 400 and store.priority_index().total > 0


def test_without_an_atomic_exchange_the_two_rename_swap_is_finished_by_open(make_store,
                                                                           monkeypatch):
    import replaystore.storage.local as backend_module

    store = make_store()
    fill(store, 140)
    store.close()
    monkeypatch.setattr(backend_module, "_exchange", lambda a, b: False)
    rs.prune(store.path, keep_last=30, by="rows")  # file systems without RENAME_EXCHANGE
    assert len(rs.open(store.path)) == 30
    siblings = sorted(p.name for p in store.path.parent.iterdir())
    assert siblings == [store.path.name]  # intent and old folder cleaned up

    # A crash between the two renames: the store folder is gone, the intent says where the
    # new one is; the next open (any process) finishes the swap. Readers delete nothing: the
    # intent and the old folder go with the next rewrite, under the writer lock.
    expected = snapshot(store.path)
    staged = store.path.parent / f".{store.path.name}.rewrite"
    old = store.path.parent / f".{store.path.name}.old"
    shutil.copytree(store.path, staged)
    store.path.rename(old)
    (store.path.parent / f".{store.path.name}.replace").write_bytes(b"")
    after = snapshot(store.path)
    for name, values in expected.items():
        np.testing.assert_array_equal(after[name], values)
    assert not staged.exists() and old.exists()
    rs.compact(store.path)
    assert sorted(p.name for p in store.path.parent.iterdir()) == [store.path.name]
    after = snapshot(store.path)
    for name, values in expected.items():
        np.testing.assert_array_equal(after[name], values)


def test_an_old_folder_that_cannot_be_deleted_yet_does_not_block_later_rewrites(make_store,
                                                                               monkeypatch):
    """On NFS a deleted file that another process still holds open becomes ``.nfsXXXX`` and
    keeps its folder until it is closed: the old store's folder may outlive a swap."""
    import replaystore.storage.local as backend_module

    store = make_store()
    fill(store, 140)
    store.close()
    monkeypatch.setattr(backend_module, "_exchange", lambda a, b: False)
    held = {"open": True}
    real_rmtree = shutil.rmtree

    def rmtree(path, ignore_errors=False, **kwargs):
        if not held["open"] or not any(p.name.startswith(".nfs") for p in Path(path).rglob("*")):
            return real_rmtree(path, ignore_errors=ignore_errors, **kwargs)
        for file in [p for p in Path(path).rglob("*") if p.is_file()]:
            if not file.name.startswith(".nfs"):
                file.unlink()
        if not ignore_errors:
            raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY), str(path))

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    (store.path / ".nfs0001").write_bytes(b"")  # a reader's open file, deleted with the store
    rs.prune(store.path, keep_last=100, by="rows")
    rs.prune(store.path, keep_last=60, by="rows")
    rs.compact(store.path)
    assert len(rs.open(store.path)) == 60 and rs.verify(store.path).ok
    held["open"] = False  # the reader closed its file: the next rewrite clears what is left
    rs.compact(store.path)
    assert sorted(p.name for p in store.path.parent.iterdir()) == [store.path.name]
