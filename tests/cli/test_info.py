"""``replaystore info`` through click's CliRunner and through the installed entry point."""

from __future__ import annotations

import json
import math
import os
import subprocess

import click
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import rows_for
from hypothesis import given, settings
from hypothesis import strategies as st

import replaystore as rs
from replaystore_cli.main import cli
from replaystore_cli.output import emit_json


@pytest.fixture
def store_path(make_store):
    store = make_store({"obs": ((3,), "float32"), "frame": ((32, 32), "uint8")})
    store.extend(rows_for(store.schema, 0, 100))
    store.commit()
    store.close()
    return store.path


def test_info_table(store_path):
    result = CliRunner().invoke(cli, ["info", str(store_path)])
    assert result.exit_code == 0, result.output
    assert "100 (unbounded)" in result.output
    assert "frame" in result.output and "lz4hc:5/rows" in result.output
    assert "writer      none" in result.output


def test_info_json(store_path):
    result = CliRunner().invoke(cli, ["info", str(store_path), "--json"])
    doc = json.loads(result.output)
    assert doc["rows"] == 100 and doc["episodes"]["count"] == len(rs.open(store_path).episodes)
    assert {f["name"] for f in doc["fields"]} == {"obs", "frame", "reward", "terminated",
                                                  "truncated"}


def test_info_usage_errors_exit_2(tmp_path):
    result = CliRunner().invoke(cli, ["info", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "not a directory" in result.output
    result = CliRunner().invoke(cli, ["info", str(tmp_path)])
    assert result.exit_code == 2 and "manifest.json is missing" in result.output


def test_help_shows_examples():
    result = CliRunner().invoke(cli, ["info", "--help"])
    assert result.exit_code == 0 and "replaystore info runs/cartpole" in result.output


def test_installed_entry_point(store_path, replaystore_exe):
    out = subprocess.run([replaystore_exe, "info", str(store_path), "--json"], capture_output=True,
                         text=True, check=True)
    assert json.loads(out.stdout)["rows"] == 100
    (store_path / "_replaystore" / "manifest.json").write_text("{broken")
    bad = subprocess.run([replaystore_exe, "info", str(store_path)], capture_output=True, text=True)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "manifest" in bad.stderr


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, which Python writes but JSON does not have."""
    def refuse(constant: str):
        raise ValueError(f"invalid JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


def info_json(path) -> dict:
    result = CliRunner().invoke(cli, ["info", str(path), "--json"])
    assert result.exit_code == 0, result.output
    return strict_json(result.output)


def test_info_json_is_strict_json_for_empty_and_ordinary_stores(make_store, store_path):
    empty = make_store()
    empty.close()
    doc = info_json(empty.path)
    assert doc["rows"] == 0 and doc["episodes"]["return"] is None
    assert info_json(store_path)["episodes"]["return"]["mean"] is not None


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("rewards,expected", [
    ([float("nan")], {"mean": None, "std": None, "min": None, "max": None}),
    ([float("inf"), -float("inf")], {"mean": None, "std": None, "min": None, "max": None}),
    ([float("inf"), 1.0], {"mean": None, "std": None, "min": 1.0, "max": None}),
    ([3e38, 3e38], {"mean": 3e38, "std": 0.0, "min": 3e38, "max": 3e38}),
])
def test_non_finite_statistics_are_null_in_json(make_store, rewards, expected):
    """NaN, Infinity and -Infinity are not JSON: jq and every strict parser rejected the output."""
    store = make_store({"obs": ((2,), "float32")})
    for reward in rewards:
        store.append(obs=[0, 0], reward=reward, terminated=True, truncated=False)
    store.commit()
    store.close()
    stats = info_json(store.path)["episodes"]["return"]
    assert {k: v for k, v in stats.items() if v is None} == \
        {k: v for k, v in expected.items() if v is None}
    assert {k: v for k, v in stats.items() if v is not None} == pytest.approx(
        {k: v for k, v in expected.items() if v is not None}, rel=1e-6)
    table = CliRunner().invoke(cli, ["info", str(store.path)])
    assert table.exit_code == 0, table.output
    assert "return mean" in table.output


@pytest.mark.parametrize("bad_time", [1e300, -1e18, float("nan"), "yesterday", None, True])
def test_malformed_commit_time_prints_no_traceback(store_path, bad_time):
    """A manifest without a checksum (older stores) is not checked field by field, and
    time.localtime raised OverflowError, ValueError or TypeError on these."""
    manifest = store_path / "_replaystore" / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc.pop("crc32c", None)
    doc["commit_time"] = bad_time
    manifest.write_text(json.dumps(doc))
    result = CliRunner().invoke(cli, ["info", str(store_path)])
    assert result.exit_code == 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "last commit #" in result.output and "unknown time" in result.output
    info_json(store_path)  # strict JSON: NaN becomes null


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
    | st.floats(width=32).map(np.float32) | st.integers(-5, 5).map(np.int64),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner,
                                                                   max_size=4),
    max_leaves=20)


@settings(max_examples=100, deadline=None)
@given(doc=json_values)
def test_emitted_json_is_strict_and_keeps_finite_values(doc):
    """Every command's --json goes through emit_json: non-finite floats become null, the rest
    reads back as it was."""
    @click.command()
    def show():
        emit_json(doc)

    back = strict_json(CliRunner().invoke(show, []).output)

    def expected(value):
        if isinstance(value, dict):
            return {k: expected(v) for k, v in value.items()}
        if isinstance(value, list):
            return [expected(v) for v in value]
        if isinstance(value, np.generic):
            value = value.item()
        return None if isinstance(value, float) and not math.isfinite(value) else value

    assert back == expected(doc)


@pytest.mark.parametrize("command", ["info", "verify"])
def test_a_fifo_in_place_of_the_manifest_fails_at_once(tmp_path, replaystore_exe, command):
    """info and verify used to block forever opening a FIFO planted in a store."""
    path = tmp_path / "s"
    rs.create(path, {"obs": ((2,), "float32")}).close()
    manifest = path / "_replaystore" / "manifest.json"
    manifest.unlink()
    os.mkfifo(manifest)
    proc = subprocess.run([replaystore_exe, command, str(path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "not a regular file" in proc.stderr + proc.stdout
