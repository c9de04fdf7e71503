"""Record transitions from a Gymnasium environment into a store (``replaystore record``).

The store keeps one open episode at a time (an episode's rows are contiguous), so with several
environments stepping in parallel each environment's transitions are buffered in memory and an
episode is appended whole when it ends. Commits happen only between episodes, so a crash (even
SIGKILL) leaves a store of whole episodes that ``record(..., append=True)`` continues.

Gymnasium 1.x vector environments reset an environment that finished automatically. In the
default ``NEXT_STEP`` mode the step *after* the one that ended an episode returns the reset
observation (reward 0, the action ignored); that step is not a transition and is skipped. In
``SAME_STEP`` mode the reset observation comes at once and the real final observation is in
``info["final_obs"]``, which becomes that step's ``next_obs``. No stored transition crosses an
episode boundary either way.

Policies follow one contract::

    fn(observations: np.ndarray,      # (num_envs, *obs_shape), the current observations
       rng: np.random.Generator,      # seeded from the recording's seed
       ) -> np.ndarray                # (num_envs, *action_shape) actions

Examples
--------
>>> import replaystore as rs
>>> result = rs.record("runs/cartpole", "CartPole-v1", steps=10_000, seed=0)  # doctest: +SKIP
>>> result.rows, result.episodes  # doctest: +SKIP
(10000, 446)
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .codecs import Codec
from .errors import ReplayStoreError, SchemaError, StoreNotFoundError
from .optional import require
from .schema import Schema
from .store import Store, create, open

Policy = Callable[[np.ndarray, np.random.Generator], Any]

#: Fields of a recorded store; ``next_obs`` is derived from ``obs`` (stored at episode ends only).
FIELD_NAMES = ("obs", "action", "next_obs", "reward", "terminated", "truncated")
_NEVER_ROWS = 1 << 62  # disable the store's own auto-commits: commits happen between episodes


class RecordingError(ReplayStoreError, ValueError):
    """Recording cannot start or go on (environment, spaces, policy output)."""


class PolicyError(RecordingError):
    """A ``--policy`` cannot be loaded, raised an exception, or returned malformed actions."""


class EnvNotFoundError(RecordingError, LookupError):
    """Gymnasium does not know the environment id."""


class Stop(threading.Event):
    """A stop request for :func:`record`, with a reason (``"SIGINT"``, ``"SIGTERM"``, ...)."""

    reason: str = "stopped"

    def request(self, reason: str) -> None:
        self.reason = reason
        self.set()


@contextlib.contextmanager
def stop_on_signals(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)
                    ) -> Iterator[Stop]:
    """Turn SIGINT (Ctrl-C) and SIGTERM into a graceful :class:`Stop` while the block runs.

    The first signal sets the returned event (``record`` then writes what it recorded, commits
    and returns); a second SIGINT raises KeyboardInterrupt at once, abandoning what was not
    committed. Outside the main thread no handler can be installed and the event is returned
    unchanged. Previous handlers are restored on exit.
    """
    stop = Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: object) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.request(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield stop
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


@dataclass
class Progress:
    """What :func:`record` reports to its ``progress`` callback after every vector step."""

    steps: int = 0                      # transitions recorded (written or buffered)
    target_steps: int | None = None
    episodes: int = 0                   # episodes finished and written
    target_episodes: int | None = None
    elapsed: float = 0.0                # seconds since the first step
    recent_returns: list[float] = field(default_factory=list)  # the last 100 episode returns

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def mean_return(self) -> float | None:
        """Mean return of the last 100 finished episodes (None before the first)."""
        return float(np.mean(self.recent_returns)) if self.recent_returns else None


@dataclass(frozen=True)
class RecordResult:
    """What a :func:`record` call wrote."""

    path: str
    env_id: str
    rows: int                    # transitions written by this call
    episodes: int                # episodes that ended by themselves (terminated or truncated)
    partial_episodes: int        # episodes cut by the stop, written with truncated=True
    mean_return: float | None    # over the `episodes` that ended by themselves
    rows_in_store: int
    episodes_in_store: int
    seconds: float
    stop_reason: str             # "steps", "episodes", "SIGINT", "SIGTERM", ...
    appended: bool
    num_envs: int
    seed: int | None
    autoreset_mode: str

    @property
    def steps_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "steps_per_second": self.steps_per_second}


# -- environments and schemas ---------------------------------------------------------------

def make_env(env_id: str, num_envs: int = 1, **kwargs: Any) -> Any:
    """A Gymnasium vector environment of ``num_envs`` copies of ``env_id`` (synchronous).

    Raises :class:`EnvNotFoundError` for an id Gymnasium does not know; ``kwargs`` go to
    ``gymnasium.make``.
    """
    gym = check_env_id(env_id)
    if not isinstance(num_envs, int) or num_envs < 1:
        raise RecordingError(f"num_envs must be a positive integer, got {num_envs!r}")
    return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync", **kwargs)


def check_env_id(env_id: str) -> Any:
    """Raise :class:`EnvNotFoundError` unless Gymnasium knows ``env_id``; returns gymnasium."""
    gym = require("gymnasium", "gym", "recording from an environment")
    try:
        gym.spec(env_id)
    except gym.error.Error as exc:
        raise EnvNotFoundError(f"unknown environment {env_id!r}: {exc}") from None
    return gym


def space_spec(space: Any, what: str) -> dict[str, Any]:
    """``{"shape", "dtype"}`` of a field holding one value of a Gymnasium space.

    Box keeps its shape and dtype (float64 becomes float32, as RL libraries store it);
    Discrete is a scalar int64; MultiDiscrete an int64 vector; MultiBinary an int8 vector.
    """
    from gymnasium import spaces

    if isinstance(space, spaces.Box):
        dtype = np.dtype(space.dtype)
        return {"shape": tuple(space.shape), "dtype": "float32" if dtype == np.float64
                else dtype.name}
    if isinstance(space, spaces.Discrete):
        return {"shape": (), "dtype": "int64"}
    if isinstance(space, spaces.MultiDiscrete):
        return {"shape": tuple(space.nvec.shape), "dtype": "int64"}
    if isinstance(space, spaces.MultiBinary):
        return {"shape": tuple(np.atleast_1d(space.n)), "dtype": "int8"}
    raise RecordingError(f"{what} space {space} is not supported: use a Box, Discrete, "
                         "MultiDiscrete or MultiBinary space (wrap dict or tuple spaces with "
                         "gymnasium.wrappers.FlattenObservation)")


NEXT_OF_MIN_BYTES = 64


def env_fields(observation_space: Any, action_space: Any,
               codecs: Mapping[str, str | Codec] | None = None) -> dict[str, Any]:
    """The store fields for an environment's (single, not batched) spaces.

    ``next_obs`` is declared ``next_of="obs"`` (stored only where an episode ends and otherwise
    read from the next row's ``obs``) for observations of ``NEXT_OF_MIN_BYTES`` or more; the
    per-row layout this needs keeps a 16-byte index entry a row, so smaller observations
    (CartPole's 16 bytes) are cheaper stored in full. ``codecs`` maps field names to codec
    specs.
    """
    obs = space_spec(observation_space, "observation")
    row_nbytes = int(np.prod(obs["shape"], dtype=np.int64)) * np.dtype(obs["dtype"]).itemsize
    fields: dict[str, Any] = {
        "obs": obs,
        "action": space_spec(action_space, "action"),
        "next_obs": {"next_of": "obs"} if row_nbytes >= NEXT_OF_MIN_BYTES else dict(obs),
        "reward": {"shape": (), "dtype": "float32"},
        "terminated": {"shape": (), "dtype": "bool"},
        "truncated": {"shape": (), "dtype": "bool"},
    }
    for name, spec in (codecs or {}).items():
        if name not in fields:
            raise SchemaError(f"codec given for unknown field {name!r}; a recorded store has "
                              f"{', '.join(FIELD_NAMES)}")
        fields[name] = {**fields[name], "codec": Codec.parse(spec)}
    return fields


def _check_compatible(store: Store, wanted: Schema, env_id: str, capacity: int | None,
                      codecs: Mapping[str, str | Codec] | None) -> None:
    """Refuse to append to a store whose fields do not hold what this environment produces."""
    have = store.schema
    missing = [n for n in wanted.names if n not in have.names]
    extra = [n for n in have.names if n not in wanted.names]
    if missing or extra:
        raise SchemaError(
            f"store {str(store.path)!r} does not match {env_id}: it has fields "
            f"{', '.join(have.names)}; a recording writes {', '.join(wanted.names)}")
    for f in wanted:
        h = have[f.name]
        if (h.shape, h.dtype) != (f.shape, f.dtype):
            raise SchemaError(f"store {str(store.path)!r} does not match {env_id}: field "
                              f"{f.name!r} is {h.describe()} in the store but {f.describe()} "
                              "from the environment")
    for name, spec in (codecs or {}).items():
        if have[name].codec != Codec.parse(spec):
            raise SchemaError(f"field {name!r} of {str(store.path)!r} is stored with codec "
                              f"{have[name].codec}; a codec is fixed when the store is created")
    if capacity is not None and capacity != store.capacity:
        raise SchemaError(f"store {str(store.path)!r} has capacity "
                          f"{store.capacity or 'unbounded'}, not "
                          f"{capacity}; the capacity is fixed when the store is created")
    if store.manifest.open_episode is not None:
        raise RecordingError(
            f"store {str(store.path)!r} ends in an unfinished episode of "
            f"{store.manifest.open_episode[1]} rows; appended rows would continue it across "
            "an episode boundary (stores written by 'record' end between episodes)")


def _open_store(path: str | os.PathLike[str], fields: dict[str, Any], *, append: bool,
                capacity: int | None, env_id: str,
                codecs: Mapping[str, str | Codec] | None) -> tuple[Store, bool]:
    """The store to record into, and whether it existed."""
    options = {"commit_every_rows": _NEVER_ROWS, "commit_every_seconds": float("inf")}
    if append:
        try:
            store = open(path, "a", **options)
        except StoreNotFoundError:
            pass  # nothing there yet, or a create() that died before its first commit
        else:
            try:
                _check_compatible(store, Schema.from_fields(fields), env_id, capacity, codecs)
            except BaseException:
                store.close()
                raise
            return store, True
    return create(path, fields, capacity=capacity, **options), False


# -- policies ------------------------------------------------------------------------------

def load_policy(spec: str | Policy | None) -> Policy | None:
    """Resolve ``"random"`` (returns None), ``"pkg.module:fn"`` or ``"path/file.py:fn"``.

    A console script does not have the working directory on ``sys.path``, so a module that
    cannot be imported is looked up in the working directory too; a file path is loaded
    directly (its folder is put on ``sys.path`` so it can import its neighbours).
    ``fn`` may be a dotted attribute path (``module:Class.method``).
    """
    if spec is None or spec == "random":
        return None
    if callable(spec):
        return spec
    source, sep, attr = str(spec).rpartition(":")
    if not sep or not source or not attr:
        raise PolicyError(f"policy {spec!r}: expected 'random', MODULE:CALLABLE or "
                          "FILE.py:CALLABLE")
    if source.endswith(".py") or "/" in source or os.sep in source:
        module = _load_file(Path(source))
    else:
        module = _import(source)
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise PolicyError(f"policy {spec!r}: {source} has no attribute {attr!r}") from None
    if not callable(target):
        raise PolicyError(f"policy {spec!r}: {attr} is a {type(target).__name__}, not callable")
    return target


def _load_file(path: Path) -> Any:
    if not path.is_file():
        raise PolicyError(f"policy file {str(path)!r} does not exist")
    resolved = path.resolve()
    name = f"_replaystore_policy_{resolved.stem}_{abs(hash(str(resolved))):x}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise PolicyError(f"cannot load policy file {str(path)!r} as Python")
    module = importlib.util.module_from_spec(spec)
    if str(resolved.parent) not in sys.path:
        sys.path.insert(0, str(resolved.parent))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise PolicyError(f"loading policy file {str(path)!r} failed: "
                          f"{type(exc).__name__}: {exc}") from exc
    return module


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        if exc.name is None or name.split(".")[0] != exc.name.split(".")[0] or cwd in sys.path:
            raise PolicyError(f"importing policy module {name!r} failed: {exc}") from exc
        sys.path.insert(0, cwd)
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError:
            sys.path.remove(cwd)
            raise PolicyError(f"no policy module {name!r} (neither importable nor in the "
                              f"working directory {cwd}); a file path works too: "
                              f"path/to/{name.replace('.', '/')}.py") from None
        except Exception as exc:
            raise PolicyError(f"importing policy module {name!r} failed: "
                              f"{type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        raise PolicyError(f"importing policy module {name!r} failed: "
                          f"{type(exc).__name__}: {exc}") from exc


class RandomPolicy:
    """Uniform random actions from the vector environment's batched action space."""

    def __init__(self, action_space: Any, seed: int | None) -> None:
        self.space = action_space
        self.space.seed(seed)

    def __call__(self, observations: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.space.sample()


# -- the recording loop --------------------------------------------------------------------

def record(path: str | os.PathLike[str], env: str | Any, *, steps: int | None = None,
           episodes: int | None = None, policy: str | Policy | None = "random",
           num_envs: int = 1, seed: int | None = None, append: bool = False,
           capacity: int | None = None, codecs: Mapping[str, str | Codec] | None = None,
           commit_every_seconds: float = 10.0, stop: threading.Event | None = None,
           progress: Callable[[Progress], None] | None = None) -> RecordResult:
    """Run a policy in an environment and store every transition.

    Parameters
    ----------
    path
        The store to create (or, with ``append``, to continue; created when missing).
    env
        A Gymnasium id (``"CartPole-v1"``; ``num_envs`` synchronous copies are made and closed
        at the end) or a ready ``gymnasium.vector.VectorEnv`` (any autoreset mode but
        DISABLED; left open).
    steps, episodes
        Stop after exactly this many transitions, or after this many finished episodes (give
        one). With ``steps``, the episodes still running at the end are written cut short,
        their last step marked ``truncated=True``; with ``episodes``, they are dropped.
    policy
        ``"random"``, ``"module:callable"``, ``"path/to/file.py:callable"`` or a callable
        ``fn(observations (num_envs, *obs_shape), rng: np.random.Generator) -> actions
        (num_envs, *action_shape)``.
    num_envs
        Environments stepped together (when ``env`` is an id).
    seed
        Seeds the environments (``reset(seed=seed)``, copy ``i`` gets ``seed + i``), the
        random policy and the ``rng`` handed to the policy. None: fresh entropy.
    append
        Continue an existing store (also after a crash): its fields must match the
        environment's spaces and it must end between episodes.
    capacity
        Ring size of a new store (None: unbounded).
    codecs
        ``{field: codec spec}`` for a new store, e.g. ``{"obs": "zstd:3/rows"}``.
    commit_every_seconds
        Commit (between episodes) at least this often; a crash loses at most this much.
    stop
        An event (see :func:`stop_on_signals`): when set, the episodes in progress are written
        cut short (``truncated=True`` on their last step), everything is committed and the call
        returns. Its ``reason`` attribute, if any, becomes ``stop_reason``.
    progress
        Called with a :class:`Progress` after every vector step.

    Returns
    -------
    RecordResult
        Rows and episodes written, mean return, speed, and why recording stopped.

    Examples
    --------
    >>> import replaystore as rs
    >>> rs.record("runs/cartpole", "CartPole-v1", episodes=100, num_envs=4,
    ...           policy="examples/cartpole_policy.py:policy", seed=0)  # doctest: +SKIP
    """
    if (steps is None) == (episodes is None):
        raise RecordingError("give exactly one of steps and episodes")
    for name, value in (("steps", steps), ("episodes", episodes)):
        if value is not None and (not isinstance(value, int | np.integer) or value < 0):
            raise RecordingError(f"{name} must be a non-negative integer, got {value!r}")
    if not commit_every_seconds > 0:
        raise RecordingError(f"commit_every_seconds must be positive, got "
                             f"{commit_every_seconds!r}")
    fn = load_policy(policy)
    owns_env = isinstance(env, str)
    if not owns_env and not hasattr(env, "num_envs"):
        raise RecordingError("env must be a Gymnasium id or a gymnasium.vector.VectorEnv (wrap "
                             "a single env: gymnasium.vector.SyncVectorEnv([lambda: env]))")
    venv = make_env(env, num_envs) if owns_env else env
    try:
        env_id = env if owns_env else _env_name(venv)
        mode = _autoreset_mode(venv)
        fields = env_fields(venv.single_observation_space, venv.single_action_space, codecs)
        store, existed = _open_store(path, fields, append=append, capacity=capacity,
                                     env_id=env_id, codecs=codecs)
        try:
            recorder = _Recorder(store, venv, fn, seed=seed, mode=mode,
                                 commit_every=commit_every_seconds)
            reason = recorder.run(steps, episodes, stop, progress)
            return RecordResult(
                path=str(path), env_id=env_id, rows=recorder.rows_written,
                episodes=len(recorder.returns), partial_episodes=recorder.partial,
                mean_return=float(np.mean(recorder.returns)) if recorder.returns else None,
                rows_in_store=len(store), episodes_in_store=store.manifest.episodes,
                seconds=recorder.elapsed, stop_reason=reason, appended=existed,
                num_envs=venv.num_envs, seed=seed, autoreset_mode=mode)
        finally:
            store.close()
    finally:
        if owns_env:
            venv.close()


def _env_name(venv: Any) -> str:
    spec = getattr(venv, "spec", None)
    return getattr(spec, "id", None) or type(venv).__name__


def _autoreset_mode(venv: Any) -> str:
    mode = venv.metadata.get("autoreset_mode", "NextStep")
    name = getattr(mode, "value", mode)
    if name not in ("NextStep", "SameStep"):
        raise RecordingError(f"vector environment autoreset mode {name!r} is not supported: "
                             "use NEXT_STEP (the default) or SAME_STEP")
    return str(name)


class _Recorder:
    """The loop: step all environments, buffer each one's episode, append finished ones."""

    def __init__(self, store: Store, venv: Any, policy: Policy | None, *, seed: int | None,
                 mode: str, commit_every: float) -> None:
        self.store = store
        self.venv = venv
        self.k = int(venv.num_envs)
        self.policy = policy or RandomPolicy(venv.action_space, seed)
        self.policy_name = getattr(policy, "__qualname__", repr(policy)) if policy else "random"
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.same_step = mode == "SameStep"
        self.commit_every = commit_every
        self.action_shape = (self.k, *venv.single_action_space.shape)
        self.buffers: list[list[tuple[Any, ...]]] = [[] for _ in range(self.k)]
        self.ready: list[dict[str, np.ndarray]] = []  # finished episodes not yet appended
        self.ready_rows = 0
        self.rows_written = 0
        self.partial = 0
        self.returns: list[float] = []
        self.elapsed = 0.0

    def run(self, steps: int | None, episodes: int | None, stop: threading.Event | None,
            progress: Callable[[Progress], None] | None) -> str:
        report = Progress(target_steps=steps, target_episodes=episodes)
        start = time.monotonic()
        last_commit = start
        recorded = 0
        reason = ""
        try:
            if steps == 0 or episodes == 0:
                reason = "steps" if steps == 0 else "episodes"
            else:
                obs, _ = self.venv.reset(seed=self.seed)
            awaiting_reset = np.zeros(self.k, bool)
            while not reason:
                if stop is not None and stop.is_set():
                    reason = getattr(stop, "reason", "stopped")
                    break
                # Copies: a vector env made with copy=False reuses its arrays at every step.
                obs_now = np.array(obs, copy=True)
                actions = self._act(obs_now)
                try:
                    next_obs, rewards, terms, truncs, infos = self.venv.step(actions)
                except Exception as exc:
                    raise RecordingError(f"the environment's step() failed with the "
                                         f"policy's actions: {type(exc).__name__}: {exc}") from exc
                real_next = np.array(next_obs, copy=True)
                if self.same_step and "final_obs" in infos:
                    for i in np.flatnonzero(infos.get("_final_obs", terms | truncs)):
                        real_next[i] = infos["final_obs"][i]
                for i in range(self.k):
                    if awaiting_reset[i]:
                        continue  # NEXT_STEP: this step only reset env i
                    if steps is not None and recorded >= steps:
                        break
                    term, trunc = bool(terms[i]), bool(truncs[i])
                    self.buffers[i].append((obs_now[i], actions[i], rewards[i], real_next[i],
                                            term, trunc))
                    recorded += 1
                    if term or trunc:
                        rows = self.buffers[i]
                        self.buffers[i] = []
                        if episodes is None or len(self.returns) < episodes:
                            self._finish(rows, cut=False)
                            report.recent_returns = self.returns[-100:]
                if not self.same_step:
                    awaiting_reset = np.asarray(terms | truncs, bool)
                obs = next_obs
                if steps is not None and recorded >= steps:
                    reason = "steps"
                elif episodes is not None and len(self.returns) >= episodes:
                    reason = "episodes"
                now = time.monotonic()
                if self.ready_rows >= 4096 or (self.ready and now - last_commit
                                               >= self.commit_every):
                    self._append_ready()
                    if now - last_commit >= self.commit_every:
                        self.store.commit()
                        last_commit = now
                if progress is not None:
                    report.steps, report.episodes = recorded, len(self.returns)
                    report.elapsed = now - start
                    progress(report)
            if reason != "episodes":
                for i in range(self.k):
                    if self.buffers[i]:
                        self._finish(self.buffers[i], cut=True)
                        self.buffers[i] = []
            self._append_ready()
            self.store.commit()
        except Exception:
            # A policy or environment error: keep the episodes that finished before it.
            with contextlib.suppress(Exception):
                self._append_ready()
                self.store.commit()
            raise
        finally:
            self.elapsed = time.monotonic() - start
        if progress is not None:
            report.steps, report.episodes = recorded, len(self.returns)
            report.elapsed = self.elapsed
            progress(report)
        return reason

    def _act(self, obs: Any) -> np.ndarray:
        try:
            actions = self.policy(obs, self.rng)
        except Exception as exc:
            raise PolicyError(f"policy {self.policy_name} raised {type(exc).__name__}: "
                              f"{exc}") from exc
        actions = np.array(actions, copy=True)
        if actions.shape != self.action_shape:
            raise PolicyError(
                f"policy {self.policy_name} returned actions of shape {actions.shape}; "
                f"expected {self.action_shape} (num_envs, *action_shape)")
        return actions

    def _finish(self, rows: list[tuple[Any, ...]], *, cut: bool) -> None:
        obs, actions, rewards, next_obs, terms, truncs = zip(*rows, strict=True)
        episode = {"obs": np.stack(obs), "action": np.stack(actions),
                   "next_obs": np.stack(next_obs),
                   "reward": np.asarray(rewards, dtype=np.float32),
                   "terminated": np.asarray(terms, bool), "truncated": np.asarray(truncs, bool)}
        if cut:
            episode["truncated"][-1] = True
            self.partial += 1
        else:
            self.returns.append(float(np.sum(rewards, dtype=np.float64)))
        self.ready.append(episode)
        self.ready_rows += len(rows)

    def _append_ready(self) -> None:
        if not self.ready:
            return
        batch = {name: np.concatenate([e[name] for e in self.ready]) for name in FIELD_NAMES}
        self.store.extend(batch)
        self.rows_written += self.ready_rows
        self.ready, self.ready_rows = [], 0
