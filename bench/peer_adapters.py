"""Data sources and one adapter per replay buffer for bench/peers.py.

Every adapter takes the same transitions (numpy arrays, as an environment or a vectorized
collector hands them over) and does what its library's user would do with them: build
TensorDicts for TorchRL, call ``add`` with keyword arrays for cpprb, pass ``(1, ...)`` arrays
and info dicts to Stable-Baselines3. Converting is part of the timed add; generating the data
is not. Peer libraries are imported inside their adapter only, so each subprocess loads just
the library it measures.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from workloads import VECTOR_FIELDS, MovingShapes, vector_batches

EPISODE = 1000  # steps per episode in both workloads (truncated at the end, as a time limit)
STACK = 4
FRAME = (84, 84)
ALPHA, BETA = 0.6, 0.4


# --------------------------------------------------------------------------- data sources

class VectorSource:
    """Hopper-like rows from workloads.vector_batches; row ``g`` depends only on its 1k block."""

    kind = "vector"
    shapes: ClassVar[dict] = {name: spec[0] for name, spec in VECTOR_FIELDS.items()}
    dtypes: ClassVar[dict] = {name: np.dtype(spec[1]) for name, spec in VECTOR_FIELDS.items()}
    action_shape = VECTOR_FIELDS["action"][0]
    action_dtype = np.dtype(VECTOR_FIELDS["action"][1])

    def __init__(self, work: Path) -> None:
        self.work = work

    def batch(self, first: int, n: int) -> dict[str, np.ndarray]:
        """Rows ``first .. first+n``: obs, next_obs, action, reward, terminated, truncated."""
        assert first % EPISODE == 0, "blocks start at episode boundaries"
        return next(vector_batches(n, n, seed=first))

    @staticmethod
    def rows(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """The batch as single steps: numpy observations, Python float and bool scalars."""
        return [{"obs": batch["obs"][i], "next_obs": batch["next_obs"][i],
                 "action": batch["action"][i], "reward": float(batch["reward"][i]),
                 "terminated": bool(batch["terminated"][i]),
                 "truncated": bool(batch["truncated"][i])} for i in range(len(batch["reward"]))]


class ImageSource:
    """Atari-like rows: obs/next_obs uint8[4, 84, 84] stacks of moving-shape frames.

    Episode ``e`` owns frames ``e*(EPISODE+1) .. (e+1)*(EPISODE+1)-1`` (its reset frame and
    one frame per step) of a frame file the parent writes once. The stack of step ``j`` holds
    frames ``j-3 .. j`` of its episode, the first frame repeating before the start (as
    Gymnasium's FrameStackObservation does); next_obs is the stack of step ``j+1``.
    """

    kind = "image"
    shapes: ClassVar[dict] = {"obs": (STACK, *FRAME), "next_obs": (STACK, *FRAME), "action": ()}
    dtypes: ClassVar[dict] = {"obs": np.dtype(np.uint8), "next_obs": np.dtype(np.uint8),
                              "action": np.dtype(np.int64)}
    action_shape = ()
    action_dtype = np.dtype(np.int64)
    frame_bytes = FRAME[0] * FRAME[1]

    def __init__(self, work: Path) -> None:
        self.path = work / "frames.u8"

    @staticmethod
    def frames_needed(rows: int) -> int:
        return -(-rows // EPISODE) * (EPISODE + 1)

    @classmethod
    def write_frames(cls, path: Path, rows: int) -> None:
        shapes = MovingShapes(size=FRAME[0])
        with open(path, "wb") as f:
            for _ in range(cls.frames_needed(rows)):
                f.write(shapes.next().tobytes())

    def _frame_index(self, rows: np.ndarray, offset: int) -> np.ndarray:
        """Frame numbers of the stacks of ``rows`` shifted by ``offset`` steps (0 obs, 1 next)."""
        episode, step = np.divmod(rows, EPISODE)
        k = np.arange(STACK) - (STACK - 1)
        return episode[:, None] * (EPISODE + 1) + np.maximum(step[:, None] + offset + k, 0)

    def stacks(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """obs and next_obs stacks of arbitrary rows (for checking what a store returns)."""
        rows = np.asarray(rows)
        obs_i, next_i = self._frame_index(rows, 0), self._frame_index(rows, 1)
        frames = np.memmap(self.path, np.uint8, "r").reshape(-1, *FRAME)
        return np.asarray(frames[obs_i]), np.asarray(frames[next_i])

    def batch(self, first: int, n: int) -> dict[str, np.ndarray]:
        rows = np.arange(first, first + n)
        obs_i, next_i = self._frame_index(rows, 0), self._frame_index(rows, 1)
        lo, hi = int(obs_i.min()), int(next_i.max()) + 1
        # Plain reads, not a memmap: the source's pages must not count in the adapter's RSS.
        span = np.fromfile(self.path, np.uint8, (hi - lo) * self.frame_bytes,
                           offset=lo * self.frame_bytes).reshape(-1, *FRAME)
        step = rows % EPISODE
        return {"obs": span[obs_i - lo], "next_obs": span[next_i - lo],
                "action": (rows * 7 // 3) % 6,
                "reward": (step % 50 == 49).astype(np.float32),
                "terminated": np.zeros(n, bool), "truncated": step == EPISODE - 1}

    @staticmethod
    def rows(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        return [{"obs": batch["obs"][i], "next_obs": batch["next_obs"][i],
                 "action": int(batch["action"][i]), "reward": float(batch["reward"][i]),
                 "terminated": bool(batch["terminated"][i]),
                 "truncated": bool(batch["truncated"][i])} for i in range(len(batch["reward"]))]


def source_for(kind: str, work: Path) -> VectorSource | ImageSource:
    return VectorSource(work) if kind == "vector" else ImageSource(work)


# --------------------------------------------------------------------------- adapters

class Adapter:
    """One replay buffer. Subclasses set what they support; ``None`` methods mean n/a."""

    name = ""
    batched_add = True
    prioritized = True

    def __init__(self, source: VectorSource | ImageSource, work: Path, capacity: int) -> None:
        self.source = source
        self.work = work
        self.capacity = capacity
        self.work.mkdir(parents=True, exist_ok=True)

    # filling
    def add_one(self, row: dict[str, Any]) -> None:
        raise NotImplementedError

    def add_batch(self, batch: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    # durability
    def save(self) -> None:
        """Make everything added so far durable (a commit, or the library's save)."""
        raise NotImplementedError

    def close(self) -> None:
        """Drop the live buffer (before reopening, so two copies never share the RSS)."""

    def reopen(self) -> None:
        """Load what ``save`` wrote into a fresh buffer, ready to sample."""
        raise NotImplementedError

    def saved_paths(self) -> list[Path]:
        """What ``save`` wrote (its bytes on disk)."""
        raise NotImplementedError

    # reading
    def sample(self, n: int) -> Any:
        """A uniform batch of ``n`` transitions, every field materialized."""
        raise NotImplementedError

    def prioritized_setup(self, fill) -> None:
        """Prepare prioritized sampling over ``capacity`` rows; ``fill(add_batch)`` refills."""
        raise NotImplementedError

    def prioritized_step(self, n: int, priorities: np.ndarray) -> Any:
        """Sample ``n`` transitions by priority, read them, write new priorities."""
        raise NotImplementedError

    def check(self) -> dict[str, Any]:
        """Optional self-check after filling (replaystore: returned rows equal the source)."""
        return {}


def _torch_one_thread() -> None:
    import torch

    torch.set_num_threads(1)


# replaystore ----------------------------------------------------------------

class ReplayStore(Adapter):
    name = "replaystore"
    dedup = False

    def _fields(self) -> dict[str, Any]:
        if self.source.kind == "vector":
            return dict(VECTOR_FIELDS)
        if self.dedup:
            return {"obs": {"shape": FRAME, "dtype": "uint8", "stack": STACK},
                    "next_obs": {"next_of": "obs"}, "action": ((), "int64")}
        return {"obs": ((STACK, *FRAME), "uint8"), "next_obs": ((STACK, *FRAME), "uint8"),
                "action": ((), "int64")}

    def __init__(self, source, work, capacity) -> None:
        super().__init__(source, work, capacity)
        import replaystore as rs

        self.rs = rs
        self.path = work / "store"
        self.store = rs.create(self.path, self._fields(), capacity=capacity)
        self.uniform = rs.UniformSampler(self.store, seed=0)

    def _frames(self, values: dict[str, Any]) -> dict[str, Any]:
        if self.dedup:  # one frame a row: the newest of each stack
            return {**values, "obs": values["obs"][..., -1, :, :],
                    "next_obs": values["next_obs"][..., -1, :, :]}
        return values

    def add_one(self, row) -> None:
        self.store.append(self._frames(row))

    def add_batch(self, batch) -> None:
        self.store.extend(self._frames(batch))

    def save(self) -> None:
        self.store.commit()

    def sample(self, n: int):
        return self.store.get(self.uniform.sample(n).indices)

    def close(self) -> None:
        self.store.close()

    def reopen(self) -> None:
        self.store = self.rs.open(self.path)
        self.uniform = self.rs.UniformSampler(self.store, seed=1)

    def saved_paths(self) -> list[Path]:
        return [self.path]

    def prioritized_setup(self, fill) -> None:
        # The trainer's store, opened for writing; the index starts every row at priority 1.
        self.store.close()
        self.store = self.rs.open(self.path, "a")
        self.per = self.rs.PrioritizedSampler(self.store, alpha=ALPHA, beta=BETA, seed=0)

    def prioritized_step(self, n: int, priorities: np.ndarray):
        batch = self.per.sample(n)
        rows = self.store.get(batch.indices)
        self.per.update_priorities(batch.indices, priorities)
        return rows

    def check(self) -> dict[str, Any]:
        if self.source.kind != "image":
            return {}
        rng = np.random.default_rng(7)
        rows = rng.integers(0, len(self.store), 128)
        got = self.store.get(rows)  # slots = rows before the ring wraps
        obs, next_obs = self.source.stacks(rows)
        ok = bool(np.array_equal(got["obs"], obs) and np.array_equal(got["next_obs"], next_obs))
        if not ok:
            raise AssertionError(f"{self.name}: stored stacks differ from the source")
        return {"lossless_check": ok}


class ReplayStoreDedup(ReplayStore):
    name = "replaystore-dedup"
    dedup = True


# TorchRL --------------------------------------------------------------------

class TorchRL(Adapter):
    name = "torchrl-memmap"

    def __init__(self, source, work, capacity) -> None:
        super().__init__(source, work, capacity)
        _torch_one_thread()
        import torch
        from tensordict import TensorDict
        from torchrl.data import LazyMemmapStorage, ReplayBuffer

        self.torch, self.TensorDict = torch, TensorDict
        self.Storage, self.Buffer = LazyMemmapStorage, ReplayBuffer
        self.rb = self._buffer("storage")
        self.dump = work / "dump"
        self._dumps = 0

    def _buffer(self, scratch: str, sampler=None):
        storage = self.Storage(self.capacity, scratch_dir=str(self.work / scratch))
        return self.Buffer(storage=storage, sampler=sampler, batch_size=256)

    def _td(self, values, batch_size):
        t = self.torch
        done = np.logical_or(values["terminated"], values["truncated"])
        return self.TensorDict({"obs": t.as_tensor(values["obs"]),
                                "next_obs": t.as_tensor(values["next_obs"]),
                                "action": t.as_tensor(values["action"]),
                                "reward": t.as_tensor(values["reward"], dtype=t.float32),
                                "done": t.as_tensor(done)}, batch_size=batch_size)

    def add_one(self, row) -> None:
        self.rb.add(self._td(row, []))

    def add_batch(self, batch) -> None:
        self.rb.extend(self._td(batch, [len(batch["reward"])]))

    def save(self) -> None:
        shutil.rmtree(self.dump, ignore_errors=True)
        self.rb.dumps(str(self.dump))

    def sample(self, n: int):
        return self.rb.sample(n)

    def close(self) -> None:
        del self.rb
        shutil.rmtree(self.work / "storage", ignore_errors=True)

    def reopen(self) -> None:
        self._dumps += 1
        scratch = f"reopened-{self._dumps}"
        shutil.rmtree(self.work / scratch, ignore_errors=True)
        self.rb = self._buffer(scratch)
        self.rb.loads(str(self.dump))

    def saved_paths(self) -> list[Path]:
        return [self.dump]

    def prioritized_setup(self, fill) -> None:
        from torchrl.data import PrioritizedSampler

        del self.rb
        self.rb = self._buffer("per", PrioritizedSampler(self.capacity, ALPHA, BETA))
        fill(self.add_batch)

    def prioritized_step(self, n: int, priorities: np.ndarray):
        data, info = self.rb.sample(n, return_info=True)
        self.rb.update_priority(info["index"], self.torch.from_numpy(priorities))
        return data


# cpprb ----------------------------------------------------------------------

class Cpprb(Adapter):
    name = "cpprb-ram"
    mmap = False

    def __init__(self, source, work, capacity) -> None:
        super().__init__(source, work, capacity)
        import cpprb

        self.cpprb = cpprb
        self.env_dict = {
            "obs": {"shape": source.shapes["obs"], "dtype": source.dtypes["obs"]},
            "next_obs": {"shape": source.shapes["next_obs"], "dtype": source.dtypes["next_obs"]},
            "act": {"shape": source.action_shape or 1, "dtype": source.action_dtype},
            "rew": {}, "done": {}}
        self.rb = self._buffer(cpprb.ReplayBuffer, "rb")
        self.file = work / "transitions.npz"
        self._reopens = 0

    def _buffer(self, cls, prefix: str, **kwargs):
        if self.mmap:
            kwargs["mmap_prefix"] = str(self.work / prefix)
        return cls(self.capacity, self.env_dict, **kwargs)

    def add_one(self, row) -> None:
        self.rb.add(obs=row["obs"], act=row["action"], rew=row["reward"],
                    next_obs=row["next_obs"], done=row["terminated"] or row["truncated"])

    def add_batch(self, batch) -> None:
        self.rb.add(obs=batch["obs"], act=batch["action"], rew=batch["reward"],
                    next_obs=batch["next_obs"],
                    done=np.logical_or(batch["terminated"], batch["truncated"]))

    def save(self) -> None:
        self.rb.save_transitions(str(self.file))

    def sample(self, n: int):
        return self.rb.sample(n)

    def close(self) -> None:
        del self.rb

    def reopen(self) -> None:
        self._reopens += 1
        self.rb = self._buffer(self.cpprb.ReplayBuffer, f"reopened-{self._reopens}")
        self.rb.load_transitions(str(self.file))

    def saved_paths(self) -> list[Path]:
        return [self.file]

    def prioritized_setup(self, fill) -> None:
        del self.rb
        self.rb = self._buffer(self.cpprb.PrioritizedReplayBuffer, "per", alpha=ALPHA)
        fill(self.add_batch)

    def prioritized_step(self, n: int, priorities: np.ndarray):
        data = self.rb.sample(n, beta=BETA)
        self.rb.update_priorities(data["indexes"], priorities)
        return data


class CpprbMmap(Cpprb):
    name = "cpprb-mmap"
    mmap = True


# Stable-Baselines3 -----------------------------------------------------------

class SB3(Adapter):
    name = "sb3"
    batched_add = False
    prioritized = False

    def __init__(self, source, work, capacity) -> None:
        super().__init__(source, work, capacity)
        _torch_one_thread()
        from gymnasium import spaces
        from stable_baselines3.common.buffers import ReplayBuffer

        if source.kind == "vector":
            obs = spaces.Box(-np.inf, np.inf, source.shapes["obs"], np.float32)
            action = spaces.Box(-1, 1, source.action_shape, np.float32)
        else:
            obs = spaces.Box(0, 255, source.shapes["obs"], np.uint8)
            action = spaces.Discrete(6)
        self.rb = ReplayBuffer(capacity, obs, action, device="cpu", n_envs=1)
        self.file = work / "replay_buffer.pkl"

    def add_one(self, row) -> None:
        # What a 1-env VecEnv hands over: (1, ...) arrays and a list of info dicts.
        self.rb.add(row["obs"][None], row["next_obs"][None], np.asarray([row["action"]]),
                    np.asarray([row["reward"]], np.float32),
                    np.asarray([row["terminated"] or row["truncated"]]),
                    [{"TimeLimit.truncated": row["truncated"]}])

    def save(self) -> None:
        from stable_baselines3.common.save_util import save_to_pkl

        save_to_pkl(self.file, self.rb)  # what OffPolicyAlgorithm.save_replay_buffer does

    def sample(self, n: int):
        return self.rb.sample(n)

    def close(self) -> None:
        del self.rb

    def reopen(self) -> None:
        from stable_baselines3.common.save_util import load_from_pkl

        self.rb = load_from_pkl(self.file)

    def saved_paths(self) -> list[Path]:
        return [self.file]


# the floor ------------------------------------------------------------------

class Memmap(Adapter):
    """Raw np.memmap files, one per field: the floor for disk-backed uniform reads."""

    name = "np.memmap"
    prioritized = False

    def __init__(self, source, work, capacity) -> None:
        super().__init__(source, work, capacity)
        self.layout = {"obs": (source.shapes["obs"], source.dtypes["obs"]),
                       "next_obs": (source.shapes["next_obs"], source.dtypes["next_obs"]),
                       "action": (source.action_shape, source.action_dtype),
                       "reward": ((), np.dtype(np.float32)), "done": ((), np.dtype(bool))}
        self.arrays = self._open("w+")
        self.pos = 0
        self.full = False
        self.rng = np.random.default_rng(0)

    def _open(self, mode: str) -> dict[str, np.memmap]:
        return {k: np.memmap(self.work / f"{k}.bin", dtype, mode, shape=(self.capacity, *shape))
                for k, (shape, dtype) in self.layout.items()}

    def add_batch(self, batch) -> None:
        n = len(batch["reward"])
        values = {"obs": batch["obs"], "next_obs": batch["next_obs"], "action": batch["action"],
                  "reward": batch["reward"],
                  "done": np.logical_or(batch["terminated"], batch["truncated"])}
        first = 0
        while first < n:
            run = min(n - first, self.capacity - self.pos)
            for k, a in self.arrays.items():
                a[self.pos:self.pos + run] = values[k][first:first + run]
            first += run
            self.pos = (self.pos + run) % self.capacity
            self.full = self.full or self.pos == 0

    def add_one(self, row) -> None:
        values = {"obs": row["obs"], "next_obs": row["next_obs"], "action": row["action"],
                  "reward": row["reward"], "done": row["terminated"] or row["truncated"]}
        for k, a in self.arrays.items():
            a[self.pos] = values[k]
        self.pos = (self.pos + 1) % self.capacity
        self.full = self.full or self.pos == 0

    def save(self) -> None:
        for a in self.arrays.values():
            a.flush()
        (self.work / "meta.pkl").write_bytes(pickle.dumps((self.pos, self.full)))

    def sample(self, n: int):
        size = self.capacity if self.full else self.pos
        idx = self.rng.integers(0, size, n)
        return {k: a[idx] for k, a in self.arrays.items()}

    def close(self) -> None:
        del self.arrays

    def reopen(self) -> None:
        self.pos, self.full = pickle.loads((self.work / "meta.pkl").read_bytes())
        self.arrays = self._open("r")

    def saved_paths(self) -> list[Path]:
        return [self.work]


ADAPTERS: dict[str, type[Adapter]] = {
    cls.name: cls for cls in (ReplayStore, ReplayStoreDedup, TorchRL, Cpprb, CpprbMmap, SB3,
                              Memmap)}
