"""Smaller image stores: next_obs kept at episode ends only, frame stacks rebuilt on read.

Each test writes the same random episodes into a derived store and computes, from the raw
frames, what an uncompressed store of full stacks and next_obs would hold.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import rows_for

import replaystore as rs

SHAPE = (3, 3)


def episodes(rng: np.random.Generator, count: int) -> list[int]:
    return [int(n) for n in rng.integers(1, 9, count)]


def write(store: rs.Store, lengths: list[int], rng: np.random.Generator, batch: bool):
    """Append episodes of frames whose pixels encode (row, episode); return reference rows."""
    frames, nexts, firsts = [], [], []
    g = 0
    for ep, length in enumerate(lengths):
        first = g
        for t in range(length):
            last = t == length - 1
            frame = np.full(SHAPE, g % 200, np.uint8)
            nxt = np.full(SHAPE, 200 + ep % 50, np.uint8) if last else np.full(
                SHAPE, (g + 1) % 200, np.uint8)
            frames.append(frame), nexts.append(nxt), firsts.append(first)
            g += 1
    term = np.zeros(g, bool)
    ends = np.cumsum(lengths) - 1
    term[ends] = True
    trunc = np.zeros(g, bool)
    trunc[ends[1::3]], term[ends[1::3]] = True, False  # some episodes end by truncation
    rows = {"obs": np.stack(frames), "next_obs": np.stack(nexts), "reward": np.ones(g),
            "terminated": term, "truncated": trunc}
    if batch:
        done = 0
        while done < g:
            n = int(rng.integers(1, 12))
            store.extend({k: v[done:done + n] for k, v in rows.items()})
            done += n
            if rng.random() < 0.3:
                store.commit()
    else:
        for i in range(g):
            store.append({k: v[i] for k, v in rows.items()})
            if rng.random() < 0.05:
                store.commit()
    store.commit()
    return rows, np.array(firsts)


def expected_stacks(rows, firsts, k, window):
    obs, nexts = rows["obs"], rows["next_obs"]
    out_obs, out_next = [], []
    for g in window:
        idx = [max(g - k + 1 + j, firsts[g]) for j in range(k)]
        out_obs.append(obs[idx])
        later = [max(g - k + 2 + j, firsts[g]) for j in range(k - 1)]
        out_next.append(np.concatenate([obs[later], nexts[g][None]]))
    return np.stack(out_obs), np.stack(out_next)


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("capacity", [None, 37])
def test_derived_reads_match_full_storage(tmp_path, k, batch, capacity):
    rng = np.random.default_rng(k * 10 + batch + (capacity or 0))
    fields = {"obs": {"shape": SHAPE, "dtype": "uint8", "stack": k, "codec": "lz4:1/rows",
                      "chunk_rows": 8},
              "next_obs": {"next_of": "obs", "chunk_rows": 8}}
    store = rs.create(tmp_path / "s", fields, capacity=capacity)
    rows, firsts = write(store, episodes(rng, 25), rng, batch)
    m = store.manifest
    window = np.arange(m.start, m.end)
    # In a ring, an episode's first frames may be gone: stacks then clip at the oldest row.
    firsts = np.maximum(firsts, m.start)
    exp_obs, exp_next = expected_stacks(rows, firsts, k, window)
    for reader in (store, rs.open(tmp_path / "s")):
        got = reader.get(reader.slots())
        if k == 1:
            np.testing.assert_array_equal(got["obs"], rows["obs"][window])
            np.testing.assert_array_equal(got["next_obs"], rows["next_obs"][window])
        else:
            assert got["obs"].shape == (len(window), k, *SHAPE)
            np.testing.assert_array_equal(got["obs"], exp_obs)
            np.testing.assert_array_equal(got["next_obs"], exp_next)


def test_next_obs_is_stored_only_at_episode_ends(tmp_path):
    fields = {"obs": ((32, 32), "uint8"), "next_obs": {"next_of": "obs"}}
    store = rs.create(tmp_path / "s", fields)
    n = 4000
    done = np.arange(n) % 100 == 99
    frames = np.random.default_rng(0).integers(0, 255, (n + 1, 32, 32), np.uint8)
    store.extend({"obs": frames[:-1], "next_obs": frames[1:], "reward": np.zeros(n),
                  "terminated": done, "truncated": np.zeros(n, bool)})
    store.commit()
    sizes = {f["name"]: f["disk_bytes"] for f in rs.summarize(store)["fields"]}
    assert sizes["next_obs"] < sizes["obs"] / 20  # 40 stored frames and the shard index


@pytest.mark.parametrize("batched", [False, True])
def test_a_given_next_obs_is_never_returned_differently(tmp_path, batched):
    """Rows of two environments appended alternately, each with its own next_obs: the next_obs
    of a row is not the obs of the row after it, so it must be stored, not derived."""
    fields = {"obs": {"shape": (4,), "dtype": "float32", "codec": "lz4hc:5/rows",
                      "chunk_rows": 16}, "next_obs": {"next_of": "obs"}}
    path = tmp_path / "s"
    store = rs.create(path, fields)
    rng = np.random.default_rng(1)
    n, envs = 101, 2
    streams = rng.normal(size=(envs, n + 1, 4)).astype(np.float32)
    rows = [(streams[e, t], streams[e, t + 1], t % 10 == 9 and e == 0)
            for t in range(n) for e in range(envs)]
    batch = {"obs": np.stack([r[0] for r in rows]), "next_obs": np.stack([r[1] for r in rows]),
             "reward": np.zeros(len(rows)), "terminated": np.array([r[2] for r in rows]),
             "truncated": np.zeros(len(rows), bool)}
    for part in np.array_split(np.arange(len(rows)), 7):
        if batched:
            store.extend({k: v[part] for k, v in batch.items()})
        else:
            for i in part:
                store.append({k: v[i] for k, v in batch.items()})
        if part[0] % 3 == 0:
            store.commit()
    store.commit()
    store.close()
    got = rs.open(path).get(np.arange(len(rows)))
    np.testing.assert_array_equal(got["obs"], batch["obs"])
    np.testing.assert_array_equal(got["next_obs"], batch["next_obs"])


@pytest.mark.parametrize("spec,message", [
    ({"next_obs": {"next_of": "missing"}}, "must name another stored field"),
    ({"next_obs": {"next_of": "obs", "shape": (2, 2)}}, "is next_of 'obs' but has"),
    ({"next_obs": {"next_of": "obs", "codec": "raw"}}, "needs the per-row layout"),
    ({"obs": {"shape": SHAPE, "dtype": "uint8", "stack": 0}}, "stack must be an integer"),
])
def test_bad_derived_declarations(tmp_path, spec, message):
    fields = {"obs": {"shape": SHAPE, "dtype": "uint8"}, **spec}
    with pytest.raises(rs.SchemaError, match=message):
        rs.create(tmp_path / "s", fields)


def test_an_empty_selection_reads_empty_arrays(make_store):
    store = make_store({"obs": {"shape": (8, 8), "dtype": "uint8", "codec": "lz4hc:5/rows"},
                        "next_obs": {"next_of": "obs"}})
    store.extend(rows_for(store.schema, 0, 5))
    store.commit()
    out = store.get(np.zeros(0, np.int64))
    assert out["obs"].shape == (0, 8, 8) and out["next_obs"].shape == (0, 8, 8)
