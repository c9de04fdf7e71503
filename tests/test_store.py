"""Round trips, reopen exactness, ring wrap, episodes and read semantics of the Store."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import IMAGE, VECTOR, rows_for

import replaystore as rs


def test_append_commit_reopen_round_trip(make_store, tmp_path):
    store = make_store()
    expected = rows_for(store.schema, 0, 500)
    for i in range(500):
        store.append({k: v[i] for k, v in expected.items()})
    assert len(store) == 0 and store.pending == 500  # not visible before commit
    store.commit()
    assert len(store) == 500 and store.pending == 0
    path = store.path
    store.close()
    reader = rs.open(path)
    got = reader.get(np.arange(500))
    for name, values in expected.items():
        np.testing.assert_array_equal(got[name], values)
        assert got[name].dtype == reader.schema[name].dtype


@pytest.mark.parametrize("fields", [VECTOR, IMAGE], ids=["vector", "image"])
def test_extend_matches_append(make_store, fields):
    a = make_store(fields, )
    b = make_store(fields)
    rows = rows_for(a.schema, 0, 3000)
    for i in range(3000):
        a.append({k: v[i] for k, v in rows.items()})
    for lo in range(0, 3000, 700):
        b.extend({k: v[lo:lo + 700] for k, v in rows.items()})
    a.commit(), b.commit()
    idx = np.random.default_rng(0).integers(0, 3000, 1000)
    ga, gb = a.get(idx), b.get(idx)
    for name in a.schema.names:
        np.testing.assert_array_equal(ga[name], gb[name])
        np.testing.assert_array_equal(ga[name], rows[name][idx])


def test_get_random_sorted_repeated_and_shaped(make_store):
    store = make_store({"obs": {"shape": (2,), "dtype": "float32", "chunk_rows": 8}})
    rows = rows_for(store.schema, 0, 100)
    store.extend(rows)
    store.commit()
    for idx in ([5, 5, 5], [99, 0, 50], np.arange(100), np.array([[1, 2], [3, 4]]), []):
        got = store.get(idx, fields=["obs"])
        np.testing.assert_array_equal(got["obs"], rows["obs"][np.asarray(idx, dtype=int)])
    assert set(store.get([0], fields=["obs"])) == {"obs"}


def test_get_rejects_uncommitted_and_out_of_range(make_store):
    store = make_store()
    store.extend(rows_for(store.schema, 0, 10))
    store.commit()
    store.extend(rows_for(store.schema, 10, 5))
    with pytest.raises(IndexError, match="slot 10 holds no committed row"):
        store.get([3, 10])
    with pytest.raises(IndexError, match="slot -1"):
        store.get([-1])
    with pytest.raises(TypeError, match="integers"):
        store.get([0.5])
    with pytest.raises(KeyError, match="did you mean 'obs'"):
        store.get([0], fields=["ob"])


def test_uncommitted_rows_are_discarded_on_close_and_failed_with_block(make_store):
    store = make_store()
    store.extend(rows_for(store.schema, 0, 10))
    store.commit()
    path = store.path
    store.close()
    with pytest.raises(RuntimeError), rs.open(path, "a") as s:
        s.extend(rows_for(store.schema, 10, 10))
        raise RuntimeError("training crashed")
    assert len(rs.open(path)) == 10  # a failed block publishes nothing
    with rs.open(path, "a") as s:
        s.extend(rows_for(store.schema, 10, 10))
    assert len(rs.open(path)) == 20  # a clean block commits


def test_writer_resumes_after_reopen(make_store):
    store = make_store({"obs": {"shape": (2,), "dtype": "int32", "chunk_rows": 16}})
    schema, path = store.schema, store.path
    store.extend(rows_for(schema, 0, 21))  # ends mid-chunk
    store.commit()
    store.close()
    with rs.open(path, "a") as again:
        again.extend(rows_for(schema, 21, 30))
    reader = rs.open(path)
    assert len(reader) == 51
    np.testing.assert_array_equal(reader.get(np.arange(51))["obs"], rows_for(schema, 0, 51)["obs"])


@pytest.mark.parametrize("capacity,chunk_rows,total", [(100, 16, 1000), (64, 64, 300),
                                                       (10, 32, 95), (1000, 128, 1000)])
@pytest.mark.parametrize("fields", [VECTOR, IMAGE], ids=["vector", "image"])
def test_ring_keeps_the_newest_rows(make_store, capacity, chunk_rows, total, fields):
    spec = {k: {"shape": s, "dtype": d, "chunk_rows": chunk_rows} for k, (s, d) in fields.items()}
    store = make_store(spec, capacity=capacity)
    schema = store.schema
    rng = np.random.default_rng(capacity)
    done = 0
    while done < total:
        n = int(rng.integers(1, 40))
        n = min(n, total - done)
        store.extend(rows_for(schema, done, n))
        done += n
        if rng.random() < 0.3:
            store.commit()
    store.commit()
    assert len(store) == min(capacity, total)
    assert store.manifest.start == max(0, total - capacity) and store.manifest.end == total
    first = total - len(store)
    slots = store.slots()
    np.testing.assert_array_equal(slots, np.arange(first, total) % capacity)
    expected = rows_for(schema, first, len(store))
    for reader in (store, rs.open(store.path)):
        got = reader.get(slots)
        for name in schema.names:
            np.testing.assert_array_equal(got[name], expected[name])


def test_batch_larger_than_capacity(make_store):
    store = make_store({"obs": {"shape": (1,), "dtype": "int64", "chunk_rows": 4}}, capacity=10)
    store.extend(rows_for(store.schema, 0, 37))
    store.commit()
    assert len(store) == 10
    np.testing.assert_array_equal(store.get(store.slots())["obs"],
                                  rows_for(store.schema, 27, 10)["obs"])


def test_episode_table_tracks_returns_and_flags(make_store):
    store = make_store({"obs": ((1,), "float32")})
    rewards = [1.0, 2.0, 3.0, 0.5, 0.5, 4.0]
    ends = [(False, False), (False, False), (True, False), (False, False), (False, True),
            (False, False)]
    for r, (term, trunc) in zip(rewards[:3], ends[:3], strict=True):
        store.append(obs=[0.0], reward=r, terminated=term, truncated=trunc)
    store.extend({"obs": np.zeros((3, 1)), "reward": rewards[3:],
                  "terminated": [e[0] for e in ends[3:]], "truncated": [e[1] for e in ends[3:]]})
    store.commit()
    eps = rs.open(store.path).episodes
    assert eps["start"].tolist() == [0, 3]
    assert eps["length"].tolist() == [3, 2]
    assert eps["return"].tolist() == [6.0, 1.0]
    assert eps["terminated"].tolist() == [True, False]
    assert eps["truncated"].tolist() == [False, True]
    assert store.manifest.open_episode == (5, 1, 4.0)


def test_episode_spanning_commits_and_reopen(make_store):
    store = make_store({"obs": ((1,), "float32")})
    path = store.path
    store.extend({"obs": np.zeros((4, 1)), "reward": np.ones(4), "terminated": [False] * 4,
                  "truncated": [False] * 4})
    store.commit()
    store.close()
    with rs.open(path, "a") as s:
        s.extend({"obs": np.zeros((2, 1)), "reward": [1.0, 1.0], "terminated": [False, True],
                  "truncated": [False, False]})
    eps = rs.open(path).episodes
    assert eps["length"].tolist() == [6] and eps["return"].tolist() == [6.0]


def test_many_episodes_span_blocks(make_store):
    store = make_store({"obs": ((1,), "float32")})
    n = 10_000  # > 2 blocks of 4096 episodes, one-step episodes
    store.extend({"obs": np.zeros((n, 1)), "reward": np.arange(n, dtype=np.float32),
                  "terminated": np.ones(n, bool), "truncated": np.zeros(n, bool)})
    store.commit()
    store.extend({"obs": np.zeros((5, 1)), "reward": np.ones(5), "terminated": np.ones(5, bool),
                  "truncated": np.zeros(5, bool)})
    store.commit()
    eps = rs.open(store.path).episodes
    assert len(eps) == n + 5
    np.testing.assert_array_equal(eps["start"], np.arange(n + 5))
    np.testing.assert_array_equal(eps["return"][:n], np.arange(n))


def test_ring_drops_overwritten_episodes(make_store):
    store = make_store({"obs": {"shape": (1,), "dtype": "float32", "chunk_rows": 8}}, capacity=20)
    done = np.zeros(50, bool)
    done[4::5] = True  # episodes of 5 steps
    store.extend({"obs": np.zeros((50, 1)), "reward": np.ones(50), "terminated": done,
                  "truncated": np.zeros(50, bool)})
    store.commit()
    eps = store.episodes
    assert eps["start"].tolist() == [30, 35, 40, 45]
    assert (eps["length"] == 5).all()


def test_auto_commit_by_rows(make_store):
    store = make_store(commit_every_rows=100)
    store.extend(rows_for(store.schema, 0, 250))
    assert len(rs.open(store.path)) == 250  # the 250-row batch crossed the threshold
    for row in range(250, 349):
        store.append({k: v[0] for k, v in rows_for(store.schema, row, 1).items()})
    assert len(rs.open(store.path)) == 250 and store.pending == 99
    store.append({k: v[0] for k, v in rows_for(store.schema, 349, 1).items()})
    assert len(rs.open(store.path)) == 350


def test_auto_commit_by_time(make_store):
    store = make_store(commit_every_seconds=0.05)
    store.extend(rows_for(store.schema, 0, 3))
    import time

    time.sleep(0.06)
    store.extend(rows_for(store.schema, 3, 1))
    assert len(rs.open(store.path)) == 4


def test_read_only_and_closed_errors(make_store):
    store = make_store()
    store.commit()
    reader = rs.open(store.path)
    with pytest.raises(rs.ReadOnlyError, match="mode='a'"):
        reader.append(obs=[0, 0, 0])
    store.close()
    with pytest.raises(rs.ClosedError):
        store.commit()
    with pytest.raises(rs.ClosedError):
        store.get([0])


def test_empty_extend_is_a_no_op(make_store):
    store = make_store()
    store.extend({k: np.zeros((0, *f.shape), f.dtype) for k, f in
                  ((f.name, f) for f in store.schema)})
    assert store.pending == 0


def test_cache_budget_bounds_decoded_bytes(tmp_path):
    fields = {"obs": {"shape": (64,), "dtype": "float32", "chunk_rows": 256}}
    store = rs.create(tmp_path / "s", fields)
    store.extend(rows_for(store.schema, 0, 20_000))
    store.commit()
    budget = 300_000
    reader = rs.open(tmp_path / "s", cache_bytes=budget)
    rng = np.random.default_rng(0)
    expected = rows_for(store.schema, 0, 20_000)["obs"]
    for _ in range(50):
        idx = rng.integers(0, 20_000, 256)
        np.testing.assert_array_equal(reader.get(idx)["obs"], expected[idx])
        assert reader.cached_bytes <= budget + 256 * 64 * 4


@pytest.mark.parametrize("fields", [
    {"obs": ((3,), "float32"), "frame": ((16, 16), "uint8")},
    {"frame": {"shape": (16, 16), "dtype": "uint8", "stack": 3}, "next_frame": {"next_of": "frame"}},
])
def test_get_reads_into_given_arrays(make_store, fields):
    store = make_store(fields)
    store.extend(rows_for(store.schema, 0, 300))
    store.commit()
    slots = np.random.default_rng(0).integers(0, 300, (4, 8))
    expected = store.get(slots)
    out = {name: np.empty_like(values) for name, values in expected.items()
           if name in ("frame", "next_frame", "obs")}
    got = store.get(slots, out=out)
    for name, values in expected.items():
        np.testing.assert_array_equal(got[name], values)
    assert all(got[name] is dest for name, dest in out.items())


def test_get_out_mismatch_names_field_shape_and_dtype(make_store):
    store = make_store()
    store.extend(rows_for(store.schema, 0, 10))
    store.commit()
    with pytest.raises(rs.SchemaError, match=r"out\['obs'\] must be .* shape \(2, 3\) float32, "
                                             r"got shape \(2, 3\) float64"):
        store.get([0, 1], out={"obs": np.empty((2, 3))})
    with pytest.raises(rs.SchemaError, match="got shape \\(3, 3\\) float32"):
        store.get([0, 1], out={"obs": np.empty((3, 3), np.float32)})
    with pytest.raises(KeyError, match="not read"):
        store.get([0, 1], ["action"], out={"obs": np.empty((2, 3), np.float32)})


def test_small_fields_beside_frames_keep_their_chunks_decoded(tmp_path):
    fields = {"frame": ((84, 84), "uint8"), "action": ((), "int64")}
    store = rs.create(tmp_path / "s", fields)
    store.extend(rows_for(store.schema, 0, 3000))
    store.commit()
    reader = rs.open(tmp_path / "s", cache_bytes=64 << 20)
    loads = []
    cache = reader._reader._caches["action"]
    original = cache._load
    cache._load = lambda chunk, load: loads.append(chunk) or original(chunk, load)
    rng = np.random.default_rng(0)
    for _ in range(20):
        reader.get(rng.integers(0, 3000, 64))
    assert loads == [0]  # decoded once, then served from the pool
    assert reader.cached_bytes <= 64 << 20


# -- the defects issue ------------------------------------------------------------------------


@pytest.mark.parametrize("capacity", [True, False, 0, -1, 1.5, "10", 2**60, np.int64(2**49)])
def test_bad_capacity_is_refused_before_anything_is_made(tmp_path, capacity):
    path = tmp_path / "s"
    with pytest.raises(rs.SchemaError, match="capacity"):
        rs.create(path, {"obs": ((4,), "float32")}, capacity=capacity)
    assert not path.exists()


def test_a_ring_keeps_its_episode_table_bounded(tmp_path):
    """The episode table kept every finished episode a ring ever saw: 30 MiB for 2M rows into a
    1,000-row ring. Blocks whose episodes all left the window are deleted at commit."""
    path = tmp_path / "ring"
    store = rs.create(path, {"obs": ((2,), "float32")}, capacity=1000)
    n = 50_000
    for _ in range(6):
        g = store.manifest.end + np.arange(n)
        store.extend({"obs": np.stack([g, -g], 1).astype(np.float32),
                      "reward": np.ones(n, np.float32), "terminated": g % 3 == 2,
                      "truncated": np.zeros(n, bool)})
        store.commit()
    blocks = sorted((path / "_replaystore").glob("episodes.*"))
    assert len(blocks) <= 2, blocks
    m = store.manifest
    ends = np.array([g for g in range(m.start, m.end) if g % 3 == 2])
    starts = np.concatenate(([m.start], ends[:-1] + 1))
    table = store.episode_table(clip=True)
    np.testing.assert_array_equal(table["start"], starts)
    np.testing.assert_array_equal(table["length"], ends - starts + 1)
    np.testing.assert_array_equal(table["return"][1:], 3.0)
    store.close()
    with rs.open(path) as reader:
        np.testing.assert_array_equal(reader.episodes, rs.open(path).episodes)
        assert len(reader.episodes) == 333
    assert rs.verify(path).ok
