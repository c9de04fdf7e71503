"""``replaystore prune``, ``compact`` and ``verify`` through click's CliRunner and the real script."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import rows_for
from test_verify import live_ring_writer

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
    fixed = run("verify", store_path, "--repair")  # one chunk holds every row
    assert fixed.exit_code == 0, fixed.output
    assert "repair will drop 500 of 500 rows" in fixed.output
    assert "repaired: kept 0 of 500 rows" in fixed.output
    assert run("verify", store_path).exit_code == 0


@pytest.fixture
def chunked_path(make_store):
    """500 rows in chunks of 64 rows: damage to one chunk spares the others."""
    store = make_store({"obs": {"shape": (3,), "dtype": "float32", "chunk_rows": 64},
                        "action": {"shape": (), "dtype": "int64", "chunk_rows": 64}})
    store.extend(rows_for(store.schema, 0, 500))
    store.commit()
    store.close()
    flip = store.path / "action" / "c.3"  # rows 192..255
    data = bytearray(flip.read_bytes())
    data[len(data) // 2] ^= 0x10
    flip.write_bytes(bytes(data))
    return store.path


def files(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes()
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_verify_repair_prints_what_it_drops_before_dropping_it(chunked_path):
    plan = rs.repair(chunked_path, dry_run=True)
    assert 0 < plan.rows_before - plan.rows_after < 100  # the damaged episodes only
    result = run("verify", chunked_path, "--repair")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    will = next(i for i, line in enumerate(lines) if line.startswith("repair will drop"))
    done = next(i for i, line in enumerate(lines) if line.startswith("repaired: kept"))
    assert lines[0].startswith("1 problem(s)") and will < done
    first, last = plan.dropped[0][0], plan.dropped[-1][1] - 1
    assert lines[will].startswith(f"repair will drop {500 - plan.rows_after} of 500 rows in "
                                  f"{plan.episodes_dropped} episodes")
    assert f"(rows {first}..{last})" in lines[will]
    assert lines[done].startswith(f"repaired: kept {plan.rows_after} of 500 rows")
    assert len(rs.open(chunked_path)) == plan.rows_after and rs.verify(chunked_path).ok


def test_verify_repair_dry_run_changes_nothing(chunked_path):
    before = files(chunked_path)
    text = run("verify", chunked_path, "--repair", "--dry-run")
    assert text.exit_code == 1  # the store still has its problem
    assert "repair would drop" in text.output and "dry run: nothing was changed" in text.output
    assert "repaired" not in text.output
    doc = json.loads(run("verify", chunked_path, "--repair", "--dry-run", "--json").stdout)
    assert doc["repair"]["dry_run"] and doc["ok_after_repair"] is None
    assert doc["repair"]["rows_after"] == rs.repair(chunked_path, dry_run=True).rows_after
    assert files(chunked_path) == before


def test_verify_repair_rollback_and_salvage(chunked_path, tmp_path):
    import shutil

    copy = shutil.copytree(chunked_path, tmp_path / "copy")
    rolled = run("verify", chunked_path, "--repair", "--rollback", "--json")
    assert rolled.exit_code == 0, rolled.output
    doc = json.loads(rolled.stdout)
    assert doc["repair"]["rollback"] and doc["repair"]["rows_after"] == 192
    assert doc["repair"]["dropped"] == [[192, 500]] and doc["ok_after_repair"]
    salvaged = run("verify", copy, "--repair", "--salvage")
    assert salvaged.exit_code == 0 and len(rs.open(copy)) > 400


@pytest.mark.parametrize("args", [("--dry-run",), ("--rollback",), ("--salvage",),
                                  ("--repair", "--salvage", "--rollback")])
def test_verify_repair_options_usage_errors(chunked_path, args):
    before = files(chunked_path)
    result = run("verify", chunked_path, *args)
    assert result.exit_code == 2, result.output
    assert files(chunked_path) == before


def test_verify_beside_a_live_ring_writer(tmp_path, replaystore_exe, capsys):
    """verify runs fine while a ring writer overwrites rows; --repair is refused, naming it."""
    path = tmp_path / "ring"
    with live_ring_writer(path):
        deadline, runs = time.monotonic() + 2.0, 0
        while time.monotonic() < deadline or runs < 3:
            result = run("verify", path)
            assert result.exit_code == 0 and "\nok:" in result.output, result.output
            assert "Error" not in result.output
            runs += 1
        script = subprocess.run([replaystore_exe, "verify", path], capture_output=True,
                                text=True, timeout=120)
        assert script.returncode == 0 and script.stdout.startswith("ok:"), script.stderr
        assert "is writing the store" in script.stderr
        with pytest.raises(SystemExit) as exit_info:
            main(["verify", str(path), "--repair"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 1 and err.startswith("Error: cannot repair"), err
        assert "is writing it" in err and "Traceback" not in err
        assert str(os.getpid()) not in err.split("process ")[1].split()[0]


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
