"""``replaystore inspect --plot`` through click's CliRunner."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import rows_for

import replaystore as rs
from replaystore_cli.main import cli

pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"


def invoke(*args: object):
    return CliRunner().invoke(cli, ["inspect", *map(str, args)])


@pytest.fixture
def store_path(make_store):
    store = make_store({"obs": ((3,), "float32")})
    batch = rows_for(store.schema, 0, 300)
    batch["reward"] = np.random.default_rng(0).normal(size=300).astype(np.float32)
    store.extend(batch)
    store.commit()
    store.close()
    return store.path


def test_plot_png(store_path, tmp_path):
    out = tmp_path / "fig.png"
    result = invoke(store_path, "--plot", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 20_000
    assert "Episode return histogram" in result.output
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_plot_with_priorities_and_json(store_path, tmp_path):
    with rs.open(store_path, "a") as store:
        per = rs.PrioritizedSampler(store, seed=0)
        batch = per.sample(64)
        per.update_priorities(batch.indices, np.geomspace(0.01, 50, 64))
    out = tmp_path / "fig.svg"
    result = invoke(store_path, "--plot", out, "--json", "--max-rows", 100)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["has_priorities"] and doc["panels"][-1] == "Priority"
    assert doc["rows"] == 300 and doc["sampled_rows"] == 100
    assert doc["episodes"] == len(rs.open(store_path).episodes)
    assert out.read_text().lstrip().startswith("<?xml")


def test_empty_store_still_plots(make_store, tmp_path):
    store = make_store()
    store.close()
    result = invoke(store.path, "--plot", tmp_path / "empty.png")
    assert result.exit_code == 0, result.output


def test_usage_errors(store_path, tmp_path):
    result = invoke(store_path, "--plot", tmp_path / "fig.gif")
    assert result.exit_code == 2 and "--plot" in result.output
    result = invoke(store_path, "--plot", tmp_path / "nowhere" / "fig.png")
    assert result.exit_code == 2 and "does not exist" in result.output
    result = invoke(store_path)
    assert result.exit_code == 2 and "--plot" in result.output


def test_missing_matplotlib_is_a_clear_failure(store_path, tmp_path, monkeypatch):
    real = importlib.import_module

    def fake(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr("replaystore.optional.importlib.import_module", fake)
    result = invoke(store_path, "--plot", tmp_path / "fig.png")
    assert result.exit_code == 1
    assert isinstance(result.exception, rs.MissingDependencyError)
    assert "pip install 'replaystore[plot]'" in str(result.exception)
    assert not (tmp_path / "fig.png").exists()


def test_help_shows_examples():
    result = invoke("--help")
    assert result.exit_code == 0
    assert "replaystore inspect runs/cartpole --plot cartpole.png" in result.output
