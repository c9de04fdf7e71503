"""``replaystore export``, ``import`` and ``merge`` through click's CliRunner."""

from __future__ import annotations

import importlib
import itertools
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import rows_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import capacities, schemas

import replaystore as rs
from replaystore.transfer import priority_values
from replaystore_cli.main import cli

h5py = importlib.util.find_spec("h5py")
needs_h5py = pytest.mark.skipif(h5py is None, reason="h5py not installed")
FORMATS = ["npz", pytest.param("h5", marks=needs_h5py)]


def invoke(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def fill(store: rs.Store, count: int, first: int = 0) -> rs.Store:
    if count:
        store.extend(rows_for(store.schema, first, count))
    store.commit()
    return store


def assert_same_store(a: rs.Store, b: rs.Store) -> None:
    """Same schema, capacity, committed rows (as read), episodes and priorities."""
    assert a.schema == b.schema and a.capacity == b.capacity and len(a) == len(b)
    ra, rb = a.get(a.slots()), b.get(b.slots())
    for name in a.schema.names:
        np.testing.assert_array_equal(ra[name], rb[name], err_msg=name)
    ta, tb = a.episode_table(clip=True), b.episode_table(clip=True)
    np.testing.assert_array_equal(ta["start"] - a.manifest.start, tb["start"] - b.manifest.start)
    for key in ("length", "terminated", "truncated"):
        np.testing.assert_array_equal(ta[key], tb[key])
    # The ring may have cut the oldest episode: its return in `a` counts the overwritten rows.
    cut = len(ta) - len(a.episodes)
    np.testing.assert_array_equal(ta["return"][cut:], tb["return"][cut:])
    assert a.manifest.open_episode is None or b.manifest.open_episode is not None
    pa, pb = priority_values(a), priority_values(b)
    assert (pa is None) == (pb is None)
    if pa is not None:
        np.testing.assert_allclose(pa[0], pb[0])
        assert pa[1] == pb[1]


def no_partials(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".partial-" in p.name]


counter = itertools.count()


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> Path:
    """A 5-row store that tests only read (created once: creating a store costs fsyncs)."""
    path = tmp_path_factory.mktemp("small") / "s"
    fill(rs.create(path, {"obs": ((3,), "float32"), "action": ((), "int64")}), 5).close()
    return path


@settings(max_examples=int(os.environ.get("RS_TRANSFER_EXAMPLES", 12)), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=schemas, capacity=capacities, count=st.integers(0, 150),
       fmt=st.sampled_from(["npz", "h5"] if h5py else ["npz"]))
def test_export_import_round_trip(tmp_path, fields, capacity, count, fmt):
    n = next(counter)
    store = fill(rs.create(tmp_path / f"src{n}", fields, capacity=capacity), count)
    out = tmp_path / f"out{n}.{fmt}"
    result = invoke("export", store.path, out)
    assert result.exit_code == 0, result.output
    result = invoke("import", out, tmp_path / f"back{n}")
    assert result.exit_code == 0, result.output
    assert_same_store(store, rs.open(tmp_path / f"back{n}"))
    store.close()
    assert no_partials(tmp_path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_derived_fields_and_priorities_round_trip(tmp_path, fmt):
    fields = {"obs": {"shape": (6, 6), "dtype": "uint8", "stack": 3},
              "next_obs": {"next_of": "obs"}, "action": ((), "int64")}
    store = fill(rs.create(tmp_path / "img", fields, capacity=80), 130)
    per = rs.PrioritizedSampler(store, alpha=0.7, seed=0)
    per.update_priorities(store.slots()[:20], np.linspace(0.1, 9, 20))
    store.commit()
    store.close()
    result = invoke("export", tmp_path / "img", tmp_path / f"img.{fmt}", "--compress", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["rows"] == 80 and doc["priorities"] is True
    result = invoke("import", tmp_path / f"img.{fmt}", tmp_path / "back")
    assert result.exit_code == 0, result.output
    assert "with priorities" in result.output
    assert_same_store(rs.open(tmp_path / "img"), rs.open(tmp_path / "back"))


def test_export_streams_valid_npz(tmp_path, make_store):
    store = fill(make_store(), 50)
    store.close()
    assert invoke("export", store.path, tmp_path / "a.npz").exit_code == 0
    with np.load(tmp_path / "a.npz", allow_pickle=False) as data:
        rows = rs.open(store.path).get(np.arange(50))
        for name, values in rows.items():
            np.testing.assert_array_equal(data[name], values)
        meta = json.loads(str(data["_meta"]))
        assert meta["schema"] == rs.open(store.path).schema.to_json()


@needs_h5py
def test_d4rl_file_imports_with_inferred_schema(tmp_path):
    import h5py

    rng = np.random.default_rng(0)
    n = 40
    with h5py.File(tmp_path / "d4rl.hdf5", "w") as f:
        f["observations"] = rng.normal(size=(n, 5)).astype(np.float32)
        f["actions"] = rng.normal(size=(n, 2)).astype(np.float32)
        f["rewards"] = rng.normal(size=n)  # float64 in many D4RL files
        f["terminals"] = (np.arange(n) % 10 == 9).astype(np.float32)
        f["timeouts"] = np.zeros(n, bool)
        f["infos/qpos"] = np.zeros((n, 3))
        f["metadata/algorithm"] = "sac"
    result = invoke("import", tmp_path / "d4rl.hdf5", tmp_path / "s", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["rows"] == n and doc["episodes"] == 4
    assert set(doc["fields"]) == {"obs", "action", "reward", "terminated", "truncated"}
    assert any("infos" in note for note in doc["notes"])
    store = rs.open(tmp_path / "s")
    with h5py.File(tmp_path / "d4rl.hdf5") as f:
        np.testing.assert_array_equal(store.get(np.arange(n))["obs"], f["observations"][:])


def test_plain_npz_imports_and_missing_arrays_fail(tmp_path):
    n = 12
    np.savez(tmp_path / "plain.npz", obs=np.arange(n * 2).reshape(n, 2),
             reward=np.ones(n), terminated=np.arange(n) % 4 == 3, truncated=np.zeros(n, bool),
             note=np.array("not a row array"))
    result = invoke("import", tmp_path / "plain.npz", tmp_path / "p")
    assert result.exit_code == 0, result.output
    assert "skipped 'note'" in result.output
    assert len(rs.open(tmp_path / "p").episodes) == 3
    np.savez(tmp_path / "bad.npz", obs=np.zeros((3, 2)))
    result = invoke("import", tmp_path / "bad.npz", tmp_path / "q")
    assert result.exit_code == 1 and "'reward'" in str(result.exception)
    assert not (tmp_path / "q").exists() and no_partials(tmp_path)


def test_failed_import_leaves_nothing(tmp_path, make_store):
    store = fill(make_store(), 30)
    store.close()
    assert invoke("export", store.path, tmp_path / "ok.npz").exit_code == 0
    # Cut the obs member short: its header still promises 30 rows.
    with zipfile.ZipFile(tmp_path / "ok.npz") as src, \
            zipfile.ZipFile(tmp_path / "cut.npz", "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, data[:-40] if info.filename == "obs.npy" else data)
    stale = tmp_path / f".back.partial-{2**22 + 12345}"  # left by a dead process
    stale.mkdir()
    result = invoke("import", tmp_path / "cut.npz", tmp_path / "back")
    assert result.exit_code == 1 and "truncated" in str(result.exception)
    assert not (tmp_path / "back").exists() and no_partials(tmp_path)


def test_export_refuses_existing_output_unless_overwrite(tmp_path, small_store):
    out = tmp_path / "x.npz"
    out.write_bytes(b"old")
    result = invoke("export", small_store, out)
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert out.read_bytes() == b"old"
    assert invoke("export", small_store, out, "--overwrite").exit_code == 0
    assert zipfile.is_zipfile(out)


@pytest.mark.parametrize("args, needle", [
    (["export", "{store}", "{tmp}/x.txt"], "OUT"),
    (["export", "{store}", "{tmp}/nowhere/x.npz"], "does not exist"),
    (["export", "{tmp}/missing", "{tmp}/x.npz"], "PATH"),
    (["import", "{tmp}/missing.npz", "{tmp}/s"], "SRC"),
    (["import", "{tmp}/x.txt", "{tmp}/s"], "SRC"),
    (["import", "{tmp}/x.txt", "{store}", "--format", "npz"], "PATH"),
    (["import", "{tmp}/x.txt", "{tmp}/s", "--format", "csv"], "--format"),
    (["merge", "{store}", "{tmp}/m"], "two source stores"),
    (["merge", "{store}", "{store}", "{store}"], "OUT"),
    (["merge", "{store}", "{tmp}/missing", "{tmp}/m"], "missing"),
])
def test_usage_errors_exit_2(tmp_path, small_store, args, needle):
    (tmp_path / "x.txt").write_text("x")
    result = invoke(*(a.format(tmp=tmp_path, store=small_store) for a in args))
    assert result.exit_code == 2, result.output
    assert needle in result.output


def test_missing_h5py_is_a_clear_failure(tmp_path, small_store, monkeypatch):
    real = importlib.import_module

    def fake(name, *args, **kwargs):
        if name == "h5py":
            raise ModuleNotFoundError("No module named 'h5py'", name="h5py")
        return real(name, *args, **kwargs)

    monkeypatch.setattr("replaystore.optional.importlib.import_module", fake)
    result = invoke("export", small_store, tmp_path / "x.h5")
    assert result.exit_code == 1 and "replaystore[hdf5]" in str(result.exception)
    assert not (tmp_path / "x.h5").exists() and no_partials(tmp_path)


def test_minari_folder(tmp_path):
    minari = pytest.importorskip("minari")
    gym = pytest.importorskip("gymnasium")
    from minari.data_collector.episode_buffer import EpisodeBuffer
    from minari.dataset.minari_storage import MinariStorage

    env = gym.make("CartPole-v1")
    (tmp_path / "ds").mkdir()
    storage = MinariStorage.new((tmp_path / "ds" / "data").resolve(), data_format="hdf5",
                                observation_space=env.observation_space,
                                action_space=env.action_space)
    rng = np.random.default_rng(0)
    episodes = []
    for seed in range(3):
        obs = [env.reset(seed=seed)[0]]
        actions, rewards, terms, truncs = [], [], [], []
        while True:
            action = int(rng.integers(2))
            o, r, term, trunc, _ = env.step(action)
            obs.append(o), actions.append(action), rewards.append(r)
            terms.append(term), truncs.append(trunc)
            if term or trunc:
                break
        episodes.append(EpisodeBuffer(observations=np.array(obs), actions=np.array(actions),
                                      rewards=np.array(rewards), terminations=np.array(terms),
                                      truncations=np.array(truncs), infos={}))
    storage.update_episodes(episodes)
    storage.update_metadata({"dataset_id": "test/cartpole-v0",
                             "minari_version": minari.__version__})
    result = invoke("import", tmp_path / "ds", tmp_path / "s", "--json")
    assert result.exit_code == 0, result.output
    store = rs.open(tmp_path / "s")
    assert len(store) == sum(len(e.rewards) for e in episodes) == json.loads(result.output)["rows"]
    rows = store.get(store.slots())
    np.testing.assert_array_equal(rows["obs"][: len(episodes[0].rewards)],
                                  episodes[0].observations[:-1])
    np.testing.assert_array_equal(rows["next_obs"][: len(episodes[0].rewards)],
                                  episodes[0].observations[1:])
    assert len(store.episodes) == 3


def test_merge_keeps_episodes_whole(tmp_path, make_store):
    a = fill(make_store(), 40)  # ends mid-episode: rows 35..39 are open
    b = fill(make_store(capacity=30), 98, first=1000)  # a ring, also ending mid-episode
    per = rs.PrioritizedSampler(a, alpha=0.5, seed=0)
    per.update_priorities(a.slots()[:3], [4.0, 5.0, 6.0])
    a.commit()
    rs.PrioritizedSampler(b, alpha=0.5, seed=0)
    b.commit()
    a.close(), b.close()
    result = invoke("merge", a.path, b.path, tmp_path / "ab", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["rows"] == 70 and doc["priorities"] is True
    assert sum("truncated=True" in note for note in doc["notes"]) == 2
    a, b, ab = rs.open(a.path), rs.open(b.path), rs.open(tmp_path / "ab")
    rows = ab.get(ab.slots())
    ra, rb = a.get(a.slots()), b.get(b.slots())
    for name in ab.schema.names:
        expected = np.concatenate([ra[name], rb[name]])
        if name == "truncated":
            expected[[39, 69]] = True  # the open episodes of a and b are closed
        np.testing.assert_array_equal(rows[name], expected, err_msg=name)
    assert a.manifest.open_episode and b.manifest.open_episode
    assert ab.manifest.open_episode is None
    assert ab.episodes["length"].sum() == 70  # the ring's cut episode is whole in ab
    prio = priority_values(ab)
    np.testing.assert_allclose(prio[0][:3], [4.0, 5.0, 6.0], rtol=1e-5)
    np.testing.assert_allclose(prio[0][40:], priority_values(b)[0])


def test_merge_schema_mismatch_names_the_field(tmp_path, make_store):
    a = fill(make_store({"obs": ((3,), "float32")}), 5)
    b = fill(make_store({"obs": ((4,), "float32")}), 5)
    c = fill(make_store({"obs": ((3,), "float32"), "extra": ((), "int8")}), 5)
    for s in (a, b, c):
        s.close()
    result = invoke("merge", a.path, b.path, tmp_path / "ab")
    assert result.exit_code == 1 and "field 'obs'" in str(result.exception)
    assert "(4,)" in str(result.exception)
    result = invoke("merge", a.path, c.path, tmp_path / "ac")
    assert result.exit_code == 1 and "field 'extra'" in str(result.exception)
    assert not (tmp_path / "ab").exists() and not (tmp_path / "ac").exists()
    assert no_partials(tmp_path)


def test_library_functions_take_paths(tmp_path, make_store):
    store = fill(make_store(), 20)
    store.close()
    assert rs.export_store(store.path, tmp_path / "e.npz").rows == 20
    assert rs.import_store(tmp_path / "e.npz", tmp_path / "i").rows == 20
    assert rs.merge_stores([store.path, tmp_path / "i"], tmp_path / "m").rows == 40
    with pytest.raises(rs.StoreExistsError):
        rs.import_store(tmp_path / "e.npz", tmp_path / "i")
    assert sorted(os.listdir(tmp_path / "i")) == sorted(os.listdir(tmp_path / "m"))


@pytest.mark.parametrize("command", ["export", "import", "merge"])
def test_help_shows_examples(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0 and f"replaystore {command} " in result.output
