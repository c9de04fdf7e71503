"""``replaystore sample`` through click's CliRunner."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import rows_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import replaystore as rs
from replaystore_cli.main import cli
from replaystore_cli.sample import MAX_COUNT, MAX_JSON_VALUES, MAX_READ_BYTES, fmt


def invoke(*args: object, env: dict | None = None):
    return CliRunner().invoke(cli, ["sample", *map(str, args)], env=env)


@pytest.fixture
def store_path(make_store):
    store = make_store({"obs": ((3,), "float32"), "frame": ((8, 8), "uint8"),
                        "action": ((), "int64")})
    store.extend(rows_for(store.schema, 0, 60))
    store.commit()
    store.close()
    return store.path


def test_table_and_determinism(store_path):
    result = invoke(store_path, "-n", 4, "--seed", 7, env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["slot", "row", "obs", "frame", "action", "reward", "terminated",
                                "truncated"]
    assert len(lines) == 2 + 4
    assert "uint8 8x8: min" in result.output  # big arrays are summarised
    assert invoke(store_path, "-n", 4, "--seed", 7, env={"COLUMNS": "400"}).output == \
        result.output


def test_narrow_terminal_prints_blocks(store_path):
    result = invoke(store_path, "-n", 2, "--seed", 0, env={"COLUMNS": "60"})
    assert result.exit_code == 0
    assert "-- sample 1 of 2" in result.output and "-- sample 2 of 2" in result.output


def test_json_rows_match_the_store(store_path):
    result = invoke(store_path, "-n", 5, "--seed", 3, "--json", "--fields", "obs,action")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    store = rs.open(store_path)
    assert doc["count"] == 5 and len(doc["rows"]) == 5
    for row in doc["rows"]:
        assert set(row) == {"slot", "row", "obs", "action"}
        expected = store.get([row["slot"]])
        assert row["obs"] == expected["obs"][0].tolist()
        assert row["action"] == int(expected["action"][0])


def test_prioritized_follows_the_index(store_path):
    with rs.open(store_path, "a") as store:
        per = rs.PrioritizedSampler(store, alpha=1.0, seed=0)
        priorities = np.zeros(60)
        priorities[[5, 9]] = [1.0, 3.0]
        per.update_priorities(np.arange(60), priorities)
    result = invoke(store_path, "-n", 200, "--prioritized", "--seed", 1, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    slots = [r["slot"] for r in rows]
    assert set(slots) == {5, 9} and slots.count(9) > slots.count(5)
    assert all(0 < r["weight"] <= 1 and r["probability"] > 0 for r in rows)
    table = invoke(store_path, "-n", 3, "--prioritized", env={"COLUMNS": "400"})
    assert "probability" in table.output and "weight" in table.output


def test_errors(store_path, make_store):
    result = invoke(store_path, "--fields", "obs,acton")
    assert result.exit_code == 2 and "--fields" in result.output and "'action'" in result.output
    result = invoke(store_path, "-n", 0)
    assert result.exit_code == 2 and "-n" in result.output
    result = invoke(store_path, "--prioritized")
    assert result.exit_code == 1 and "no priority index" in result.output
    empty = make_store()
    empty.close()
    result = invoke(empty.path)
    assert result.exit_code == 1 and "no committed rows" in result.output
    result = invoke(store_path.parent / "missing")
    assert result.exit_code == 2


def test_non_finite_floats_are_null_in_json(make_store):
    store = make_store({"obs": ((2,), "float32")})
    store.append(obs=[np.nan, np.inf], reward=1.0, terminated=True, truncated=False)
    store.commit()
    store.close()
    doc = json.loads(invoke(store.path, "-n", 1, "--json").output)
    assert doc["rows"][0]["obs"] == [None, None]


def test_fmt():
    assert fmt(np.float32(0.5)) == "0.5" and fmt(np.bool_(True)) == "True"
    assert fmt(np.array([1, 2])) == "[1 2]"
    assert fmt(np.zeros((3, 3), bool)) == "bool 3x3: 0 true"


def test_help_shows_examples():
    result = invoke("--help")
    assert result.exit_code == 0 and "replaystore sample runs/cartpole -n 5" in result.output


def one_error_line(result, *needles: str) -> None:
    """Exit status 2 and, as ``replaystore`` prints it, a single ``Error:`` line naming it all."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def run_sample(exe: str, *args: object):
    return subprocess.run([exe, "sample", *map(str, args)], capture_output=True, text=True,
                          timeout=60)


def test_huge_count_is_a_usage_error_naming_the_limit(store_path, replaystore_exe):
    """-n 10**12 tried to allocate 7 TiB of slots and printed a MemoryError traceback."""
    one_error_line(run_sample(replaystore_exe, store_path, "-n", 10 ** 12), "-n",
                   f"{MAX_COUNT}")
    for count in (MAX_COUNT + 1, 10 ** 30):
        result = invoke(store_path, "-n", count)
        assert result.exit_code == 2 and "-n" in result.output and str(MAX_COUNT) in \
            result.output, result.output
    assert invoke(store_path, "-n", MAX_COUNT, "--fields", "action", "--json").exit_code == 0


@pytest.mark.parametrize("count", ["0", "-1", "-5", "1.5", "ten", ""])
def test_count_must_be_a_positive_integer(store_path, count):
    result = invoke(store_path, "-n", count)
    assert result.exit_code == 2 and "'-n'" in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_count_times_row_size_is_bounded(make_store, replaystore_exe):
    """Rows wide enough that -n rows would not fit memory: refused before reading anything."""
    store = make_store({"frame": ((1024, 1024), "uint8")})
    store.append(frame=np.zeros((1024, 1024), np.uint8), reward=0.0, terminated=True,
                 truncated=False)
    store.commit()
    store.close()
    most = MAX_READ_BYTES // (1024 * 1024 + 1 + 1 + 4)
    one_error_line(run_sample(replaystore_exe, store.path, "-n", most + 1), "-n", f"{most:,}")
    result = invoke(store.path, "-n", most + 1, "--fields", "reward")
    assert result.exit_code == 0, result.output  # the limit counts the fields that are read


@pytest.mark.parametrize("args,option", [
    (["--seed", "-1"], "--seed"),
    (["--seed", "1.5"], "--seed"),
    (["--prioritized", "--beta", "nan"], "--beta"),
    (["--prioritized", "--beta", "-0.5"], "--beta"),
    (["--prioritized", "--beta", "inf"], "--beta"),
])
def test_bad_seed_and_beta_are_usage_errors(store_path, args, option):
    with rs.open(store_path, "a") as store:
        rs.PrioritizedSampler(store, seed=0)
    result = invoke(store_path, "-n", 2, *args)
    assert result.exit_code == 2 and option in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_prioritized_with_every_priority_zero_is_an_error_not_a_traceback(store_path):
    with rs.open(store_path, "a") as store:
        per = rs.PrioritizedSampler(store, alpha=1.0, eps=0.0, seed=0)
        per.update_priorities(np.arange(60), np.zeros(60))
    result = invoke(store_path, "-n", 2, "--prioritized")
    assert result.exit_code == 1 and "priority 0" in result.output, result.output
    assert isinstance(result.exception, SystemExit)


def test_json_values_are_bounded(make_store):
    store = make_store({"obs": ((1000,), "float32")})
    store.append(obs=np.zeros(1000), reward=0.0, terminated=True, truncated=False)
    store.commit()
    store.close()
    most = MAX_JSON_VALUES // 1003
    result = invoke(store.path, "-n", most + 1, "--json")
    assert result.exit_code == 2 and "'-n'" in result.output and f"{most:,}" in result.output
    assert "--fields" in result.output, result.output
    result = invoke(store.path, "-n", most + 1, "--json", "--fields", "reward")
    assert result.exit_code == 0, result.output


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(count=st.integers(-(10 ** 30), 0) | st.integers(1, 40)
       | st.integers(MAX_COUNT + 1, 10 ** 30))
def test_any_count_samples_or_is_a_usage_error(store_path, count):
    result = invoke(store_path, "-n", count, "--fields", "action", "--seed", 0, "--json")
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    if 1 <= count <= MAX_COUNT:
        assert result.exit_code == 0 and len(json.loads(result.output)["rows"]) == count
    else:
        assert result.exit_code == 2 and "'-n'" in result.output
