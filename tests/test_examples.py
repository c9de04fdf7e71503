"""Every example runs, in its smoke mode, in a real subprocess, so none of them rots.

The README's main job (``examples/main_job.sh --smoke``: the installed ``replaystore record``
entry point, then ``offline_dqn.py``) runs once per module; the resume check reuses its store.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import replaystore as rs

pytest.importorskip("torch")
pytest.importorskip("gymnasium")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent
EXE = shutil.which("replaystore", path=str(BIN)) or shutil.which("replaystore")
needs_exe = pytest.mark.skipif(EXE is None, reason="replaystore entry point not installed")


def run(*command: str | Path, timeout: float = 120, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    """Run a command from the repository root; fail with its output if it fails."""
    proc = subprocess.run([str(c) for c in command], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, f"{command} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def main_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The README's main job in smoke mode: record CartPole with the installed CLI, train."""
    if EXE is None:
        pytest.skip("replaystore entry point not installed")
    runs = tmp_path_factory.mktemp("runs")
    env = {**os.environ, "RUNS": str(runs), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = run("bash", EXAMPLES / "main_job.sh", "--smoke", env=env)
    return runs, proc.stdout


def test_behaviour_policy_follows_the_record_contract() -> None:
    spec = importlib.util.spec_from_file_location("cartpole_policy",
                                                  EXAMPLES / "cartpole_policy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    obs = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    actions = module.policy(obs, np.random.default_rng(1))
    assert actions.shape == (64,) and actions.dtype == np.int64
    assert set(np.unique(actions)) <= {0, 1}
    # The same generator state gives the same actions; the noise flips some of the controller's.
    assert np.array_equal(actions, module.policy(obs, np.random.default_rng(1)))
    greedy = module.controller(obs)
    assert 0 < np.count_nonzero(actions != greedy) < 64
    assert np.array_equal(module.good_policy(obs, np.random.default_rng(0)), greedy)


@needs_exe
def test_main_job_records_and_trains(main_job: tuple[Path, str]) -> None:
    runs, stdout = main_job
    assert "final greedy evaluation over 2 episodes" in stdout
    result = json.loads((runs / "dqn" / "result.json").read_text())
    assert result["steps"] == 300 and result["eval_episodes"] == 2
    assert result["behaviour_return"] > 0
    # Training wrote TD-error priorities and its sampler state into the store.
    store = rs.open(runs / "cartpole")
    assert len(store) == 3000
    assert store.sampler_state("offline_dqn")["steps"] == 300
    assert len(np.unique(store.priority_index().priorities(store.slots()))) > 100
    store.close()
    # The same command again finds the run finished: it resumes at the end and only evaluates.
    again = run(sys.executable, EXAMPLES / "offline_dqn.py", runs / "cartpole", "--run-dir",
                runs / "dqn", "--smoke")
    assert "resuming at step 300 of 300" in again.stdout
    assert json.loads((runs / "dqn" / "result.json").read_text())["weights_sha256"] \
        == result["weights_sha256"]


@needs_exe
def test_resume_after_sigkill_smoke(main_job: tuple[Path, str], tmp_path: Path) -> None:
    proc = run(sys.executable, EXAMPLES / "resume.py", main_job[0] / "cartpole", "--work-dir",
               tmp_path / "w", "--smoke")
    assert "resume check: PASSED" in proc.stdout, proc.stdout
    assert "0 differ" in proc.stdout and "(identical)" in proc.stdout


def test_larger_than_ram_smoke(tmp_path: Path) -> None:
    proc = run(sys.executable, EXAMPLES / "larger_than_ram.py", tmp_path / "frames", "--smoke")
    assert "peak RSS" in proc.stdout and "cache budget 2 MB" in proc.stdout
    store = rs.open(tmp_path / "frames")
    assert len(store) == 3000
    assert store.get([5])["obs"].shape == (1, 4, 84, 84)
