"""Bad input through the API and the CLI, fuzzed: a documented error, and the store unchanged.

API calls get garbage arguments (None, strings, bytes, huge or negative integers, NaN,
arrays of the wrong shape or dtype, object arrays, nested lists, ...). Each call must either
succeed or raise a documented error: a ``rs.ReplayStoreError`` subclass, or the builtin
``ValueError``, ``TypeError``, ``IndexError`` or ``KeyError``. After a failed call the store
folder is byte-for-byte what it was, and the writer's state is untouched (a valid row appended
and committed afterwards lands right after the old rows).

CLI invocations get random options and values; each exits 0, or 2 with one ``Error:`` line
(a usage error), never a traceback, and a failed one leaves the store folder unchanged.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rel_common import build_store, changed, content, rows, snapshot

import replaystore as rs
from replaystore_cli.main import main

ALLOWED = (rs.ReplayStoreError, ValueError, TypeError, IndexError, KeyError)


def documented(op: str, exc: BaseException) -> bool:
    """A documented error for bad input (``op`` names the call, for the failure message)."""
    return isinstance(exc, ALLOWED) and not isinstance(exc, OverflowError | MemoryError)


COUNT = 300

huge_ints = st.sampled_from([-(2**70), -(2**63), -(2**31), -1, 0, 2**31, 2**63 - 1, 2**64,
                             2**70])
# Sizes (batch sizes, lengths, n) never include large valid ones such as 2**31: asking for a
# 2**31-row batch is a request to allocate 16 GiB, which the library rightly attempts.
bad_sizes = st.sampled_from([-(2**70), -(2**63), -(2**31), -1, 0, 2**64, 2**70])
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10),
    st.floats(allow_nan=True, allow_infinity=True), st.complex_numbers(max_magnitude=10),
    st.text(max_size=6), st.binary(max_size=6),
    st.lists(st.integers(-3, 3), max_size=4), st.lists(st.lists(st.floats(), max_size=2),
                                                       max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from([
        np.array([[1, 2], [3, 4]]), np.array(["a", "b"]), np.array([object(), 1], dtype=object),
        np.zeros((2, 3, 4), np.float32), np.array([1.5, 2.5]), np.array([True, False]),
        np.float64("nan"), np.int64(-5), np.uint64(2**63), np.array([], dtype=np.int64),
        np.zeros((0, 4)), np.full(3, 2**40), slice(1, 3), Ellipsis, object(), float("inf"),
        "obs", "reward", ["obs"], ("nope",), range(3), {"obs": 1}]),
)
garbage = st.one_of(scalars, huge_ints)
sizes = st.one_of(st.integers(-3, 70), bad_sizes, scalars)


def good_row(store: rs.Store) -> dict[str, np.ndarray]:
    """A valid row for the store, right after its committed and pending rows."""
    batch = rows(store.manifest.end + store.pending, 1)
    return {k: v[0] for k, v in batch.items() if k in store.schema.names}


def bad_row(data: st.DataObject, store: rs.Store) -> dict[str, Any]:
    row = good_row(store)
    for name in data.draw(st.lists(st.sampled_from(sorted(row)), min_size=1, max_size=3,
                                   unique=True), label="fields spoiled"):
        how = data.draw(st.sampled_from(["garbage", "drop", "rename"]), label=f"{name} how")
        if how == "garbage":
            row[name] = data.draw(garbage, label=f"{name} value")
        elif how == "drop":
            del row[name]
        else:
            row[name + "x"] = row.pop(name)
    return row


def bad_batch(data: st.DataObject, store: rs.Store) -> Any:
    if data.draw(st.booleans(), label="not a mapping"):
        return data.draw(garbage, label="batch")
    batch = {k: v for k, v in rows(store.manifest.end, 5).items() if k in store.schema.names}
    name = data.draw(st.sampled_from(sorted(batch)), label="field")
    batch[name] = data.draw(st.one_of(garbage, st.sampled_from(
        [batch[name][:3], batch[name][None], batch[name].astype(np.float64) + 0.5,
         batch[name].astype(object), np.repeat(batch[name], 2, axis=0)])), label="value")
    return batch


# Each operation takes (data, store) and makes one call with fuzzed arguments.
API: dict[str, Callable[[st.DataObject, rs.Store], Any]] = {
    "append": lambda d, s: s.append(bad_row(d, s)),
    "append_kwargs": lambda d, s: s.append(**bad_row(d, s)),
    "extend": lambda d, s: s.extend(bad_batch(d, s)),
    "get": lambda d, s: s.get(d.draw(garbage, label="indices")),
    "get_fields": lambda d, s: s.get([0, 1], d.draw(garbage, label="fields")),
    "get_out": lambda d, s: s.get([0, 1], ["obs"], out={"obs": d.draw(garbage, label="out")}),
    "get_out_key": lambda d, s: s.get([0], ["obs"], out=d.draw(garbage, label="out")),
    "committed_mask": lambda d, s: s.committed_mask(d.draw(garbage, label="indices")),
    "priority_index": lambda d, s: s.priority_index(d.draw(garbage, label="alpha")),
    "uniform": lambda d, s: rs.UniformSampler(s, seed=d.draw(garbage, label="seed")).sample(
        d.draw(sizes, label="batch size")),
    "prioritized": lambda d, s: rs.PrioritizedSampler(
        s, alpha=0.6, beta=d.draw(garbage, label="beta"), eps=d.draw(
            st.one_of(st.just(1e-6), garbage), label="eps")).sample(
        d.draw(sizes, label="batch size")),
    "update_priorities": lambda d, s: rs.PrioritizedSampler(s, alpha=0.6).update_priorities(
        d.draw(garbage, label="indices"), d.draw(garbage, label="priorities")),
    "update_priorities_values": lambda d, s: rs.PrioritizedSampler(s, alpha=0.6)
        .update_priorities([0, 1, 2], d.draw(garbage, label="priorities")),
    "sequence": lambda d, s: rs.SequenceSampler(
        s, d.draw(sizes, label="length"), pad=d.draw(garbage, label="pad")).sample(
        d.draw(sizes, label="batch size")),
    "episodes": lambda d, s: rs.EpisodeSampler(s, seed=0).sample_episodes(
        d.draw(sizes, label="count")),
    "nstep": lambda d, s: rs.nstep(s, d.draw(st.one_of(st.just([0, 5]), garbage),
                                             label="indices"),
                                   n=d.draw(sizes, label="n"),
                                   gamma=d.draw(st.one_of(st.just(0.9), garbage),
                                                label="gamma")),
    "sampler_state": lambda d, s: rs.UniformSampler(s).load_state_dict(
        d.draw(st.one_of(garbage, st.fixed_dictionaries(
            {"kind": st.just("UniformSampler"), "steps": garbage,
             "bit_generator": garbage})), label="state")),
    "episode_table": lambda d, s: s.episode_table(clip=d.draw(garbage, label="clip")),
}


ORIGINALS: dict[str, dict[str, np.ndarray]] = {}  # contents of the pristine stores


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("fuzz")
    stores = {"unbounded": build_store(base / "unbounded", count=COUNT),
              "ring": build_store(base / "ring", count=COUNT, capacity=200)}
    ORIGINALS.update({kind: content(path) for kind, path in stores.items()})
    return stores


def fresh(pristine: dict[str, Path], kind: str, tmp: Path) -> Path:
    target = tmp / f"{kind}-{next(_counter)}"
    shutil.copytree(pristine[kind], target)
    return target


_counter = iter(range(10**9))


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(data=st.data())
def test_api_bad_input(pristine: dict[str, Path], tmp_path: Path, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(sorted(pristine)), label="store")
    mode = data.draw(st.sampled_from(["r", "a"]), label="mode")
    op = data.draw(st.sampled_from(sorted(API)), label="operation")
    path = fresh(pristine, kind, tmp_path)
    store = rs.open(path, mode)
    try:
        pending = store.pending
        before = snapshot(path)
        try:
            API[op](data, store)
        except Exception as exc:
            assert documented(op, exc), (op, repr(exc))
            after = snapshot(path)
            assert not changed(before, after), (op, type(exc).__name__, changed(before, after))
            assert store.pending == pending, (op, exc)
        added = store.pending - pending  # rows a call that succeeded appended
        if mode == "a":
            # The writer state is untouched: a valid row lands right after the old ones.
            store.append(good_row(store))
            store.commit()
    finally:
        store.close()
    now, want = content(path), ORIGINALS[kind]
    assert now["_row"][-1] == want["_row"][-1] + (added + 1 if mode == "a" else 0)
    common = np.isin(want["_row"], now["_row"])
    offset = int(np.searchsorted(now["_row"], want["_row"][common][0]))
    for name in ("obs", "action", "frame", "reward", "terminated", "truncated"):
        np.testing.assert_array_equal(now[name][offset:offset + common.sum()],
                                      want[name][common], err_msg=name)
    assert rs.verify(path).ok
    shutil.rmtree(path)


MAINTENANCE: dict[str, Callable[[st.DataObject, Path], Any]] = {
    "prune": lambda d, p: rs.prune(p, **d.draw(st.dictionaries(st.sampled_from(
        ["keep_last", "episodes", "min_return", "max_return", "lowest_priority", "by",
         "dry_run", "nope"]), garbage, min_size=1, max_size=3), label="criteria")),
    "selection": lambda d, p: rs.prune(p, rs.Selection(**d.draw(st.dictionaries(
        st.sampled_from(["keep_last", "episodes", "min_return", "lowest_priority", "by"]),
        garbage, min_size=1, max_size=2), label="selection"))),
    "compact": lambda d, p: rs.compact(p, codecs=d.draw(st.one_of(garbage, st.dictionaries(
        st.sampled_from(["obs", "nope", "frame"]), st.one_of(st.sampled_from(
            ["zstd:3", "raw", "lz4:99", "evil", "zstd:3/rows", ""]), garbage),
        max_size=2)), label="codecs")),
    "rewrite": lambda d, p: rs.rewrite(p, lambda store: d.draw(garbage, label="keep")),
    "open": lambda d, p: rs.open(p, d.draw(st.one_of(st.sampled_from(["r", "a"]), garbage),
                                           label="mode"),
                                 cache_bytes=d.draw(st.one_of(st.just(1 << 20), garbage),
                                                    label="cache"),
                                 commit_every_rows=d.draw(st.one_of(st.just(10), garbage),
                                                          label="rows")).close(),
    "create_existing": lambda d, p: rs.create(p, d.draw(garbage, label="fields")),
    "repair": lambda d, p: rs.repair(p, salvage=d.draw(garbage, label="salvage")),
    "verify": lambda d, p: rs.verify(p, progress=d.draw(garbage, label="progress")),
}


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(data=st.data())
def test_maintenance_bad_input(pristine: dict[str, Path], tmp_path: Path,
                               data: st.DataObject) -> None:
    op = data.draw(st.sampled_from(sorted(MAINTENANCE)), label="operation")
    path = fresh(pristine, data.draw(st.sampled_from(sorted(pristine)), label="store"),
                 tmp_path)
    before = snapshot(path)
    try:
        MAINTENANCE[op](data, path)
    except Exception as exc:
        assert documented(op, exc), (op, repr(exc))
        assert not changed(before, snapshot(path)), (op, exc)
        siblings = [p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}")]
        assert not siblings, siblings  # no staging folder left behind
    assert rs.verify(path).ok
    shutil.rmtree(path)


NAMES = st.one_of(st.text(max_size=8), st.integers(), st.none(), st.sampled_from(
    ["obs", "reward", "terminated", "../x", "a/b", "_x", "x" * 70, "con", "obs "]))
FIELD_SPECS = st.one_of(
    st.tuples(st.one_of(st.lists(st.integers(-2, 2**20), max_size=3), garbage),
              st.one_of(st.sampled_from(["float32", "uint8", "object", "<U3", ">f4", "f8",
                                         "complex64", "V8", "int128"]), garbage)),
    st.fixed_dictionaries({"shape": st.one_of(st.just((2,)), garbage)}, optional={
        "dtype": st.one_of(st.just("float32"), garbage),
        "codec": st.one_of(st.sampled_from(["zstd:3", "lz4hc:9/rows", "raw/rows", "evil"]),
                           garbage),
        "chunk_rows": st.one_of(st.integers(-2, 2**25), garbage),
        "next_of": st.one_of(st.just("obs"), garbage),
        "stack": st.one_of(st.integers(-1, 100), garbage),
        "nope": garbage}))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=st.one_of(garbage, st.dictionaries(NAMES, garbage, min_size=1, max_size=3),
                        st.dictionaries(NAMES, FIELD_SPECS, min_size=1, max_size=3)),
       capacity=st.one_of(st.none(), garbage))
def test_create_with_bad_input_leaves_nothing(tmp_path: Path, fields: Any,
                                              capacity: Any) -> None:
    path = tmp_path / f"new-{next(_counter)}"
    try:
        rs.create(path, fields, capacity=capacity).close()
    except Exception as exc:
        assert documented("create", exc), repr(exc)
        assert not path.exists(), "a failed create left files behind"
    else:
        assert rs.verify(path).ok


# -- the CLI ---------------------------------------------------------------------------------------

VALUES = ["-1", "0", "1", "3", "10", "999999999999999999999", "1e999", "nan", "-inf", "0.5",
          "abc", "", " ", "obs", "obs,nope", "obs=zstd:3", "obs=evil", "nope=raw", "1-2",
          "5-3", "x" * 300, "rows", "episodes", "png", "--json", "-n", "CartPole-v1",
          "NoSuchEnv-v9", "random", "nope:fn"]
OPTIONS = {
    "info": ["--json"],
    "sample": ["-n", "--prioritized", "--fields", "--seed", "--beta", "--json"],
    "verify": ["--repair", "--salvage", "--json"],
    "prune": ["--keep-last", "--by", "--episodes", "--min-return", "--max-return",
              "--lowest-priority", "--dry-run", "--json"],
    "compact": ["--codec", "--json"],
    "export": ["--format", "--compress", "--overwrite", "--json"],
    "import": ["--format", "--capacity", "--json"],
    "merge": ["--capacity", "--json"],
    "inspect": ["--plot", "--max-rows", "--json"],
    "record": ["--steps", "--episodes", "--policy", "--num-envs", "--seed", "--append",
               "--capacity", "--codec", "--commit-every", "-q", "--json", "--nope"],
}
FLAGS = {"--json", "--prioritized", "--repair", "--salvage", "--dry-run", "--compress",
         "--overwrite", "--append", "-q"}
POSITIONALS = {"info": 1, "sample": 1, "verify": 1, "prune": 1, "compact": 1, "export": 2,
               "import": 2, "merge": 3, "inspect": 1, "record": 2}


def run_cli(argv: list[str]) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, err.getvalue()


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(data=st.data())
def test_cli_bad_input(pristine: dict[str, Path], tmp_path: Path, data: st.DataObject) -> None:
    command = data.draw(st.sampled_from(sorted(OPTIONS)), label="command")
    path = fresh(pristine, data.draw(st.sampled_from(sorted(pristine)), label="store"),
                 tmp_path)
    places = {"store": str(path), "missing": str(tmp_path / "missing" / "x"),
              "new": str(tmp_path / f"new-{next(_counter)}"),
              "file": str(tmp_path / "notes.txt"), "png": str(tmp_path / "plot.png"),
              "npz": str(tmp_path / f"out-{next(_counter)}.npz")}
    (tmp_path / "notes.txt").write_text("not a store")
    positionals = [data.draw(st.one_of(st.sampled_from(sorted(places)).map(places.get),
                                       st.sampled_from(VALUES)), label=f"arg {i}")
                   for i in range(data.draw(st.integers(0, POSITIONALS[command] + 1),
                                            label="positionals"))]
    options: list[str] = []
    for option in data.draw(st.lists(st.sampled_from(OPTIONS[command]), max_size=4),
                            label="options"):
        options.append(option)
        if option not in FLAGS:
            options.append(data.draw(st.one_of(st.sampled_from(VALUES), st.sampled_from(
                sorted(places)).map(places.get)), label=option))
    argv = [command, *positionals, *options]
    before = snapshot(path)
    code, err = run_cli(argv)
    assert "Traceback" not in err, (argv, err)
    if code != 0:  # exit 1 is for failures that are not the input's fault: none expected here
        assert code == 2, (argv, code, err)
        assert len([line for line in err.splitlines() if line.startswith("Error")]) == 1, \
            (argv, err)
        assert not changed(before, snapshot(path)), (argv, changed(before, snapshot(path)))
    assert rs.verify(path).ok
    shutil.rmtree(path, ignore_errors=True)


# -- regressions: each reproduces a bug this suite found (fixed since) ----------------------------


def test_load_state_dict_refuses_a_non_mapping(pristine: dict[str, Path]) -> None:
    with rs.open(pristine["unbounded"]) as store, pytest.raises(ALLOWED):
        rs.UniformSampler(store).load_state_dict(None)  # type: ignore[arg-type]


def test_get_refuses_out_that_is_not_a_mapping(pristine: dict[str, Path]) -> None:
    with rs.open(pristine["unbounded"]) as store, pytest.raises(ALLOWED):
        store.get([0], out=3)  # type: ignore[arg-type]


@pytest.mark.parametrize("call", ["committed_mask", "rewrite"])
def test_indices_beyond_int64_are_refused(pristine: dict[str, Path], tmp_path: Path,
                                          call: str) -> None:
    path = fresh(pristine, "unbounded", tmp_path)
    with pytest.raises(ALLOWED) as info:
        if call == "committed_mask":
            with rs.open(path) as store:
                store.committed_mask([2**70])
        else:
            rs.rewrite(path, lambda store: [2**70])
    assert not isinstance(info.value, OverflowError)


def test_too_long_store_path_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / ("x" * 300)
    with pytest.raises(rs.StoreNotFoundError):
        rs.open(path)
    assert run_cli(["info", str(path)])[0] == 2
