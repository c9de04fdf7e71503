"""``replaystore prune``, ``compact`` and ``verify`` through click's CliRunner and the real script."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import rows_for

import replaystore as rs
from replaystore_cli.main import cli, main


@pytest.fixture
def store_path(make_store):
    store = make_store({"obs": ((3,), "float32"), "action": ((), "int64")})
    store.extend(rows_for(store.schema, 0, 500))
    rs.PrioritizedSampler(store, seed=0)
    store.commit()
    store.close()
    return store.path


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_prune_dry_run_then_prune(store_path):
    episodes = len(rs.open(store_path).episodes)
    dry = run("prune", store_path, "--keep-last", 5, "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    doc = json.loads(dry.stdout)
    assert doc["dry_run"] and doc["episodes_after"] == 5 and doc["episodes_before"] == episodes
    assert len(rs.open(store_path)) == 500
    done = run("prune", store_path, "--keep-last", 5)
    assert done.exit_code == 0 and f"kept {doc['rows_after']} of 500 rows" in done.output
    assert len(rs.open(store_path).episodes) == 5


@pytest.mark.parametrize("args, message", [
    ((), "give at least one of --keep-last"),
    (("--episodes", "4-2"), "'4-2' is not an episode id"),
    (("--episodes", "999"), "no finished episode with id 999"),
    (("--lowest-priority", "0"), "--lowest-priority"),
    (("--episodes", "1", "--by", "rows"), "drop --by rows"),
])
def test_prune_usage_errors_exit_2_and_change_nothing(store_path, args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", str(store_path), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err
    assert len([line for line in err.splitlines() if line.startswith("Error")]) == 1
    assert len(rs.open(store_path)) == 500


def test_missing_store_is_a_usage_error(tmp_path):
    for command in ("prune", "compact", "verify"):
        result = run(command, tmp_path / "nope", *(["--keep-last", 1] if command == "prune"
                                                  else []))
        assert result.exit_code == 2 and "nope" in result.output


def test_compact_with_codec_and_unknown_field(store_path):
    result = run("compact", store_path, "--codec", "obs=zstd:3", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows_after"] == 500
    assert str(rs.open(store_path).schema["obs"].codec) == "zstd:3"
    bad = run("compact", store_path, "--codec", "nope=zstd:3")
    assert bad.exit_code == 2 and "no field 'nope'" in bad.output
    bad = run("compact", store_path, "--codec", "obs=nonsense:3")
    assert bad.exit_code == 2 and "'--codec'" in bad.output


def test_verify_reports_damage_and_repair_fixes_it(store_path):
    ok = run("verify", store_path)
    assert ok.exit_code == 0 and ok.output.startswith("ok:")
    chunk = store_path / "action" / "c.0"
    data = bytearray(chunk.read_bytes())
    data[-10] ^= 0xFF
    chunk.write_bytes(bytes(data))
    bad = run("verify", store_path, "--json")
    assert bad.exit_code == 1
    assert [p["key"] for p in json.loads(bad.stdout)["problems"]] == ["action/c.0"]
    text = run("verify", store_path)
    assert text.exit_code == 1 and "action/c.0" in text.output and "crc32c" in text.output
    fixed = run("verify", store_path, "--repair")
    assert fixed.exit_code == 0 and "repaired: kept 0 of 500 rows" in fixed.output
    assert run("verify", store_path).exit_code == 0
    assert run("verify", store_path, "--salvage").exit_code == 2


def test_help_shows_examples():
    for command in ("prune", "compact", "verify"):
        result = run(command, "--help")
        assert result.exit_code == 0 and f"replaystore {command} runs/" in result.output


def test_session_through_the_installed_script(tmp_path, replaystore_exe):
    """record -> info -> prune -> verify, as a user types them."""
    path = tmp_path / "cartpole"

    def sh(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([replaystore_exe, *map(str, args)], capture_output=True,
                              text=True, timeout=120)

    recorded = sh("record", "CartPole-v1", path, "--episodes", 30, "--seed", 0)
    assert recorded.returncode == 0, recorded.stderr
    info = json.loads(sh("info", path, "--json").stdout)
    assert info["episodes"]["count"] == 30
    pruned = sh("prune", path, "--keep-last", 10, "--json")
    assert pruned.returncode == 0, pruned.stderr
    assert json.loads(pruned.stdout)["episodes_after"] == 10
    returns = rs.open(path).episodes["return"]
    np.testing.assert_allclose(returns, rs.open(path).episodes["length"])  # CartPole: 1 per step
    verified = sh("verify", path)
    assert verified.returncode == 0 and "ok:" in verified.stdout
    usage = sh("prune", path, "--keep-last", "-3")
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
