"""``replaystore record``: CliRunner for options and errors, the installed entry point for
signals and SIGKILL + ``--append``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import replaystore as rs
from replaystore_cli.main import cli

gym = pytest.importorskip("gymnasium")

ROOT = Path(__file__).resolve().parents[2]
EXE = shutil.which("replaystore", path=str(Path(sys.executable).parent)) or shutil.which(
    "replaystore")


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def all_rows(store: rs.Store) -> dict[str, np.ndarray]:
    return store.get(store.slots())


def check_episodes(store: rs.Store) -> None:
    """Every row belongs to a finished episode; within one, next_obs is the next row's obs;
    each episode starts from a CartPole reset state (no transition crosses a boundary)."""
    rows = all_rows(store)
    assert store.manifest.open_episode is None
    episodes = store.episodes
    assert episodes["length"].sum() == len(store)
    for start, length in zip(episodes["start"], episodes["length"], strict=True):
        sl = slice(int(start), int(start + length))
        obs, nxt = rows["obs"][sl], rows["next_obs"][sl]
        np.testing.assert_array_equal(nxt[:-1], obs[1:])
        assert np.all(np.abs(obs[0]) <= 0.05), "an episode must start at a reset observation"
        done = rows["terminated"][sl] | rows["truncated"][sl]
        assert done[-1] and not done[:-1].any()
    assert np.all(rows["reward"] == 1.0)


def manual_rollout(seed: int, steps: int, action: int = 1) -> dict[str, list]:
    """The transitions of one CartPole env stepped by hand with a constant action."""
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=seed)
    out: dict[str, list] = {"obs": [], "next_obs": [], "terminated": []}
    for _ in range(steps):
        nxt, _, term, trunc, _ = env.step(action)
        out["obs"].append(obs)
        out["next_obs"].append(nxt)
        out["terminated"].append(term)
        obs = env.reset()[0] if term or trunc else nxt
    return out


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "pol.py"
    path.write_text(textwrap.dedent("""
        import numpy as np

        def push_right(observations, rng):
            return np.ones(len(observations), dtype=np.int64)

        def wrong_shape(observations, rng):
            return np.ones((len(observations), 2), dtype=np.int64)

        def broken(observations, rng):
            raise RuntimeError("policy bug")
    """))
    return path


def test_steps_exact_and_transitions_match_a_manual_rollout(tmp_path, policy_file):
    out = tmp_path / "s"
    result = invoke("record", "CartPole-v1", out, "--steps", 60, "--seed", 3,
                    "--policy", f"{policy_file}:push_right", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["rows"] == 60 and doc["stop_reason"] == "steps" and doc["partial_episodes"] == 1
    store = rs.open(out)
    rows = all_rows(store)
    expected = manual_rollout(3, 60)
    np.testing.assert_array_equal(rows["obs"], np.array(expected["obs"]))
    np.testing.assert_array_equal(rows["next_obs"], np.array(expected["next_obs"]))
    np.testing.assert_array_equal(rows["terminated"], np.array(expected["terminated"]))
    assert np.all(rows["action"] == 1)
    assert rows["truncated"][-1] and not rows["terminated"][-1]  # the cut episode
    assert store.schema["next_obs"].next_of is None  # 16-byte rows: a full field is smaller
    check_episodes(store)


@pytest.mark.parametrize("num_envs", [1, 3])
def test_vector_envs_store_whole_episodes(tmp_path, num_envs):
    out = tmp_path / "v"
    result = invoke("record", "CartPole-v1", out, "--steps", 500, "--num-envs", num_envs,
                    "--seed", 0, "-q")
    assert result.exit_code == 0, result.output
    store = rs.open(out)
    assert len(store) == 500
    check_episodes(store)
    assert store.episodes["truncated"].sum() <= num_envs  # only the cut ones


@pytest.mark.parametrize("mode", ["SAME_STEP", "NEXT_STEP"])
def test_ready_vector_env_any_autoreset_mode_without_copies(tmp_path, mode):
    # copy=False: the env hands out the same arrays at every step; the recorder must copy.
    env = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync",
                       vector_kwargs={"autoreset_mode": getattr(gym.vector.AutoresetMode, mode),
                                      "copy": False})
    result = rs.record(tmp_path / "v", env, steps=300, seed=1)
    env.close()
    assert result.autoreset_mode == getattr(gym.vector.AutoresetMode, mode).value
    assert result.rows == 300
    check_episodes(rs.open(tmp_path / "v"))
    with pytest.raises(rs.recording.RecordingError, match="VectorEnv"):
        rs.record(tmp_path / "w", gym.make("CartPole-v1"), steps=5)


def test_episodes_target_drops_unfinished(tmp_path):
    out = tmp_path / "e"
    result = invoke("record", "CartPole-v1", out, "--episodes", 7, "--num-envs", 4,
                    "--seed", 0, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    store = rs.open(out)
    assert doc["episodes"] == 7 and doc["partial_episodes"] == 0
    assert len(store.episodes) == 7 and store.episodes["terminated"].all()
    assert doc["mean_return"] == pytest.approx(float(store.episodes["return"].mean()))
    check_episodes(store)


def test_same_seed_same_store(tmp_path):
    for name in ("a", "b"):
        assert invoke("record", "CartPole-v1", tmp_path / name, "--steps", 200,
                      "--num-envs", 2, "--seed", 5, "-q").exit_code == 0
    a, b = all_rows(rs.open(tmp_path / "a")), all_rows(rs.open(tmp_path / "b"))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_codec_capacity_and_append(tmp_path):
    out = tmp_path / "c"
    result = invoke("record", "CartPole-v1", out, "--steps", 100, "--capacity", 150,
                    "--codec", "obs=zstd:3", "--seed", 0)
    assert result.exit_code == 0, result.output
    assert "recorded 100 steps" in result.output and "(new)" in result.output
    store = rs.open(out)
    assert str(store.schema["obs"].codec) == "zstd:3" and store.capacity == 150
    result = invoke("record", "CartPole-v1", out, "--steps", 100, "--append", "--seed", 1)
    assert result.exit_code == 0, result.output
    assert "(appended)" in result.output
    store = rs.open(out)
    assert len(store) == 150 and store.manifest.end == 200
    assert store.manifest.open_episode is None


def test_append_refuses_a_different_env_or_capacity(tmp_path):
    out = tmp_path / "m"
    assert invoke("record", "CartPole-v1", out, "--steps", 20).exit_code == 0
    result = invoke("record", "Pendulum-v1", out, "--steps", 5, "--append")
    assert result.exit_code == 1 and isinstance(result.exception, rs.SchemaError)
    assert "field 'obs'" in str(result.exception)
    result = invoke("record", "CartPole-v1", out, "--steps", 5, "--append", "--capacity", 9)
    assert result.exit_code == 1 and "capacity" in str(result.exception)
    result = invoke("record", "CartPole-v1", out, "--steps", 5, "--append",
                    "--codec", "obs=zstd:3")
    assert result.exit_code == 1 and "codec" in str(result.exception)
    assert len(rs.open(out)) == 20


def test_append_refuses_a_store_ending_mid_episode(tmp_path):
    fields = rs.recording.env_fields(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2))
    with rs.create(tmp_path / "open", fields) as store:
        store.append(obs=np.zeros(4), action=0, next_obs=np.zeros(4), reward=1.0,
                     terminated=False, truncated=False)
    result = invoke("record", "CartPole-v1", tmp_path / "open", "--steps", 5, "--append")
    assert result.exit_code == 1 and "unfinished episode" in str(result.exception)


def test_policy_errors(tmp_path, policy_file):
    out = tmp_path / "p"
    result = invoke("record", "CartPole-v1", out, "--steps", 50,
                    "--policy", f"{policy_file}:wrong_shape")
    assert result.exit_code == 1 and isinstance(result.exception, rs.recording.PolicyError)
    assert "expected (1,)" in str(result.exception)
    result = invoke("record", "CartPole-v1", tmp_path / "q", "--steps", 50,
                    "--policy", f"{policy_file}:broken")
    assert result.exit_code == 1 and "RuntimeError: policy bug" in str(result.exception)


@pytest.mark.parametrize("args, needle", [
    (["Nope-v0", "{tmp}/x", "--steps", "5"], "ENV_ID"),
    (["CartPole-v1", "{tmp}/x", "--steps", "5", "--policy", "nosuchmod:fn"], "--policy"),
    (["CartPole-v1", "{tmp}/x", "--steps", "5", "--policy", "{tmp}/none.py:fn"], "--policy"),
    (["CartPole-v1", "{tmp}/x", "--steps", "5", "--policy", "json:nope"], "--policy"),
    (["CartPole-v1", "{tmp}/x", "--steps", "5", "--policy", "nocolon"], "--policy"),
    (["CartPole-v1", "{tmp}/x"], "--steps"),
    (["CartPole-v1", "{tmp}/x", "--steps", "5", "--episodes", "5"], "--steps"),
    (["CartPole-v1", "{tmp}/x", "--steps", "-1"], "--steps"),
    (["CartPole-v1", "{tmp}/x", "--steps", "5", "--num-envs", "0"], "--num-envs"),
    (["CartPole-v1", "{tmp}/x", "--steps", "5", "--codec", "obz=raw"], "--codec"),
    (["CartPole-v1", "{tmp}/x", "--steps", "5", "--codec", "obs=zip"], "--codec"),
    (["CartPole-v1", "{tmp}/x", "--steps", "5", "--codec", "obs"], "--codec"),
    (["CartPole-v1", "{tmp}", "--steps", "5"], "PATH"),
])
def test_usage_errors_exit_2(tmp_path, args, needle):
    (tmp_path / "occupied").write_text("x")  # tmp_path itself is a non-empty folder
    result = invoke("record", *(a.format(tmp=tmp_path) for a in args))
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert not (tmp_path / "x").exists()


def test_help_shows_examples_and_the_policy_contract():
    result = invoke("record", "--help")
    assert result.exit_code == 0
    assert "replaystore record CartPole-v1 runs/cartpole --steps 50000" in result.output
    assert "(num_envs, *obs_shape)" in result.output and "truncated=True" in result.output


def test_example_policy_follows_the_contract(tmp_path):
    result = invoke("record", "CartPole-v1", tmp_path / "ex", "--episodes", 3, "--num-envs", 2,
                    "--policy", ROOT / "examples" / "cartpole_policy.py:policy", "--seed", 0)
    assert result.exit_code == 0, result.output


# -- through the installed entry point ---------------------------------------------------------

needs_exe = pytest.mark.skipif(EXE is None, reason="replaystore entry point not installed")


def start(args: list, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen([EXE, "record", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd)


def wait_for_rows(path: Path, proc: subprocess.Popen, minimum: int = 1) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if len(rs.open(path)) >= minimum:
                return
        except rs.ReplayStoreError:
            pass
        time.sleep(0.05)
    raise AssertionError("the recorder committed nothing")


@needs_exe
def test_module_policy_from_the_working_directory(tmp_path):
    (tmp_path / "mypolicies.py").write_text(
        "import numpy as np\n"
        "def left(obs, rng):\n    return np.zeros(len(obs), dtype=np.int64)\n")
    proc = subprocess.run([EXE, "record", "CartPole-v1", "out", "--steps", "30",
                           "--policy", "mypolicies:left", "--json"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert np.all(rs.open(tmp_path / "out").get(np.arange(30))["action"] == 0)


@needs_exe
def test_failure_exits_1_without_traceback(tmp_path, policy_file):
    proc = subprocess.run([EXE, "record", "CartPole-v1", str(tmp_path / "f"), "--steps", "9",
                           "--policy", f"{policy_file}:broken"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "policy bug" in proc.stderr


@needs_exe
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_commits_and_exits_0(tmp_path, sig):
    out = tmp_path / "sig"
    proc = start(["CartPole-v1", out, "--steps", 10**9, "--num-envs", 2,
                  "--commit-every", 0.1])
    wait_for_rows(out, proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert f"stopped by {signal.Signals(sig).name}" in stdout
    store = rs.open(out)
    recorded = int(stdout.split("recorded ")[1].split(" steps")[0].replace(",", ""))
    assert len(store) == recorded
    check_episodes(store)


@needs_exe
def test_sigkill_then_append_keeps_committed_rows(tmp_path):
    out = tmp_path / "kill"
    proc = start(["CartPole-v1", out, "--steps", 10**9, "--num-envs", 2, "--seed", 0,
                  "--commit-every", 0.05])
    wait_for_rows(out, proc, minimum=200)
    time.sleep(0.1 + np.random.default_rng().random() * 0.2)  # kill at a random moment
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    before = rs.open(out)
    committed, snapshot = len(before), all_rows(before)
    episodes = before.episodes.copy()
    assert committed >= 200
    check_episodes(before)

    done = subprocess.run([EXE, "record", "CartPole-v1", str(out), "--steps", "300",
                           "--append", "--seed", "1", "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["appended"] is True
    after = rs.open(out)
    assert len(after) == committed + 300
    rows = after.get(np.arange(committed))
    for name, values in snapshot.items():
        np.testing.assert_array_equal(rows[name], values)
    np.testing.assert_array_equal(after.episodes[:len(episodes)], episodes)
    check_episodes(after)


def test_next_obs_is_derived_only_where_that_is_smaller():
    from gymnasium import spaces

    from replaystore.recording import env_fields

    small = env_fields(spaces.Box(-1, 1, (4,)), spaces.Discrete(2))
    frames = env_fields(spaces.Box(0, 255, (84, 84), np.uint8), spaces.Discrete(6))
    assert "next_of" not in small["next_obs"] and small["next_obs"]["shape"] == (4,)
    assert frames["next_obs"] == {"next_of": "obs"}
