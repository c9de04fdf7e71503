"""``replaystore info`` through click's CliRunner and through the installed entry point."""

from __future__ import annotations

import json
import subprocess

import pytest
from click.testing import CliRunner
from conftest import rows_for

import replaystore as rs
from replaystore_cli.main import cli


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
