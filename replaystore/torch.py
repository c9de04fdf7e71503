"""PyTorch input pipeline: whole batches from a replay store through ``DataLoader`` workers.

This is the only module of replaystore that imports torch; ``import replaystore`` never does.

* :class:`ReplayDataset` is an ``IterableDataset`` that yields *whole batches*, each a dict of
  tensors: the store's fields plus ``"indices"`` (int64 slots), ``"weights"`` (float32) and
  ``"probabilities"`` (float64) for prioritized sampling, ``"mask"`` (bool) for sequences. Use
  it with ``DataLoader(dataset, batch_size=None, num_workers=K)``. It holds the store's path
  and options only, so it pickles in a few hundred bytes (spawn start method); every worker
  opens its own read-only store on first use and calls ``refresh()`` before each batch, so it
  sees new commits.
* :class:`ReplayLoader` wraps a ``DataLoader`` around a dataset, counts the batches it hands
  out and offers ``state_dict()`` / ``load_state_dict()`` to resume mid-epoch. Prefer it to a
  bare ``DataLoader``: workers cannot report progress back, the loader can.
* :class:`World` says which rank and which worker a piece of code runs in and derives seeds.

Sampling modes (``sampler=``):

``"uniform"``, ``"prioritized"``, ``"sequence"``
    With replacement, from the rows committed when the batch is drawn. Infinite by default;
    ``batches_per_epoch=n`` makes each epoch ``n`` batches (per rank).
``"epoch"``
    Without replacement: each epoch is a permutation (from ``seed`` and the epoch number) of
    the slots committed when the epoch began, cut into batches that are dealt out to ranks
    and workers so that every slot is read exactly once per epoch across all of them.

Determinism. Batch ``b`` of epoch ``e`` on rank ``r`` depends only on ``(seed, e, r, b)`` and
the store's contents, never on the number of workers or on which worker computed it: the
sampler's generator is re-seeded from those numbers for every batch. Worker ``w`` of ``K``
computes batches ``first + w, first + w + K, ...``, which is exactly the round-robin order in
which ``DataLoader`` hands worker results out, so batches arrive in order ``0, 1, 2, ...`` and
resuming at batch ``b`` reproduces the rest of the epoch exactly.

Pinned memory. Pass ``pin_memory=True`` to :class:`ReplayLoader` (or to ``DataLoader``): the
loader's pin thread in the main process pins every tensor of the dict. Workers never pin (that
would need CUDA in every worker).

Copies. ``store.get`` returns fresh numpy arrays; ``torch.from_numpy`` wraps them without a
copy. With workers, ``DataLoader`` moves each tensor into shared memory once to hand it over.

Priorities. Open the store for writing in the training process and update priorities there;
the workers map the same priority index read-only and sample from the new priorities from
their next batch on (batches already prefetched keep the old ones)::

    writer = rs.open(path, "a")
    updater = rs.PrioritizedSampler(writer, alpha=0.6)
    for batch in loader:
        td = learner.step(batch)
        updater.update_priorities(batch["indices"], td.abs().detach().cpu())

Examples
--------
>>> import replaystore as rs
>>> from replaystore.torch import ReplayDataset, ReplayLoader
>>> dataset = ReplayDataset("runs/atari", batch_size=256, sampler="prioritized",
...                         beta=rs.Linear(0.4, 1.0, 100_000), seed=1)  # doctest: +SKIP
>>> loader = ReplayLoader(dataset, num_workers=2, pin_memory=True)  # doctest: +SKIP
>>> for step, batch in zip(range(1000), loader):  # doctest: +SKIP
...     frames, weights = batch["frame"], batch["weights"]
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .errors import StaleReadError
from .sampling import Linear, PrioritizedSampler, Sampler, SequenceSampler, UniformSampler
from .store import DEFAULT_CACHE_BYTES, Store
from .store import open as open_store

SamplerKind = Literal["uniform", "prioritized", "sequence", "epoch"]
SAMPLERS: tuple[str, ...] = ("uniform", "prioritized", "sequence", "epoch")
EXTRA_KEYS = ("indices", "weights", "probabilities", "mask")

# Tags that keep the seed spaces of different uses apart (first entry of every spawn key).
_SAMPLE, _PERMUTE, _WORKER = 0, 1, 2
# Attempts at drawing a batch whose slots this worker's snapshot can read (see _draw).
_ATTEMPTS = 8

Batch = dict[str, torch.Tensor]


# -- who am I -------------------------------------------------------------------------------


def _distributed() -> tuple[int, int]:
    """(rank, world_size) from an initialised process group, else from torchrun's variables."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    # torchrun sets these before the script runs; they also reach spawned DataLoader workers,
    # where the process group of the parent is not initialised.
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        return 0, 1


@dataclass(frozen=True)
class World:
    """Where this code runs: the distributed rank and the ``DataLoader`` worker.

    ``rank``/``world_size`` come from ``torch.distributed`` when a process group is initialised
    (else from torchrun's ``RANK``/``WORLD_SIZE``, else 0 of 1); ``worker``/``num_workers``
    from ``torch.utils.data.get_worker_info()`` (0 of 1 in the main process).

    Examples
    --------
    >>> world = World(rank=1, world_size=2, worker=0, num_workers=2)
    >>> world.stream, world.streams
    (2, 4)
    >>> int(world.worker_rng(seed=7).integers(100)) == int(world.worker_rng(seed=7).integers(100))
    True
    """

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size={self.world_size}), got {self.rank}")
        if not 0 <= self.worker < self.num_workers:
            raise ValueError(f"worker must be in [0, num_workers={self.num_workers}), "
                             f"got {self.worker}")

    @classmethod
    def detect(cls, rank: int | None = None, world_size: int | None = None) -> World:
        """The world of the calling process; ``rank``/``world_size`` override the detection."""
        if rank is None or world_size is None:
            found_rank, found_size = _distributed()
            rank = found_rank if rank is None else rank
            world_size = found_size if world_size is None else world_size
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return cls(int(rank), int(world_size), worker, workers)

    @property
    def stream(self) -> int:
        """A number for this (rank, worker) pair, unique across the whole job."""
        return self.rank * self.num_workers + self.worker

    @property
    def streams(self) -> int:
        """How many (rank, worker) pairs the job has."""
        return self.world_size * self.num_workers

    def rank_rng(self, seed: int, *key: int) -> np.random.Generator:
        """A generator seeded from ``(seed, rank, *key)``: equal in every worker of a rank."""
        return _rng(seed, _SAMPLE, self.rank, *key)

    def worker_rng(self, seed: int, *key: int) -> np.random.Generator:
        """A generator seeded from ``(seed, rank, worker, *key)``: distinct for every worker
        of every rank (for your own augmentations, say)."""
        return _rng(seed, _WORKER, self.rank, self.worker, *key)

    def my_batches(self, first: int, stop: int | None) -> Iterator[int]:
        """This worker's share of batches ``first, first + 1, ... < stop`` (None: no end).

        Worker ``w`` takes ``first + w, first + w + num_workers, ...``: ``DataLoader`` collects
        results from its workers round-robin starting with worker 0, so the batches reach the
        training loop in order ``first, first + 1, ...``.
        """
        start = first + self.worker
        if stop is None:
            return itertools.count(start, self.num_workers)
        return iter(range(start, stop, self.num_workers))


def _rng(seed: int, *key: int) -> np.random.Generator:
    # SeedSequence spawn keys give statistically independent streams for distinct keys.
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


# -- the dataset ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _EpochPlan:
    """How an epoch without replacement is dealt: global batch ``g`` is rows
    ``perm[g * B:(g + 1) * B]``; rank ``r`` takes global batches ``r, r + W, r + 2W, ...``."""

    start: int
    rows: int
    batch_size: int
    world_size: int
    drop_last: bool

    def batches(self, rank: int) -> int:
        if self.drop_last:
            return (self.rows // self.batch_size) // self.world_size
        total = -(-self.rows // self.batch_size)
        return len(range(rank, total, self.world_size))

    def positions(self, perm: np.ndarray, rank: int, batch: int) -> np.ndarray:
        g = batch * self.world_size + rank
        return perm[g * self.batch_size:(g + 1) * self.batch_size]


class ReplayDataset(IterableDataset):  # type: ignore[type-arg]
    """Batches sampled from a replay store, for ``DataLoader(dataset, batch_size=None)``.

    Each item is one whole batch: ``{field: tensor}`` with a leading batch axis (``(B, L)`` for
    sequences), plus ``"indices"`` (int64 slots, pass them back to ``update_priorities``),
    ``"weights"`` (float32) and ``"probabilities"`` (float64) in prioritized mode and
    ``"mask"`` (bool, False on padded steps) in sequence mode.

    The dataset holds the path and options only; the store is opened lazily, read-only, in the
    process that iterates (each ``DataLoader`` worker), and refreshed before every
    ``refresh_every`` batches so new commits are seen.

    Parameters
    ----------
    path
        The store's folder.
    batch_size
        Rows (or sequences) per batch.
    sampler
        ``"uniform"``, ``"prioritized"`` or ``"sequence"`` (with replacement), or ``"epoch"``
        (every committed slot once per epoch, shuffled).
    batches_per_epoch
        With-replacement modes: None samples forever; ``n`` ends each epoch after ``n``
        batches per rank. Must be None in ``"epoch"`` mode.
    fields
        Fields to read (default: all).
    seed
        Base seed (a non-negative integer); batch ``b`` of epoch ``e`` on rank ``r`` is
        sampled with a generator seeded from ``(seed, r, e, b)``.
    alpha
        Prioritized mode: the store's index alpha; None accepts the store's. A different value
        raises the library's :class:`~replaystore.SchemaError`.
    beta
        Prioritized mode: importance-sampling exponent, a number or a schedule such as
        :class:`~replaystore.Linear`, evaluated at this rank's batch count.
    length, pad
        Sequence mode: steps per sequence, and whether sequences may run past an episode's end
        (padded steps repeat the last slot and are False in ``"mask"``).
    drop_last
        Epoch mode: every rank gets the same number of full batches and the leftover slots
        (fewer than ``world_size * batch_size``) are skipped this epoch. Without it every slot
        is read exactly once; the last batch may be short and, with several ranks, ranks may
        get one batch more than others (mind ``DistributedDataParallel``'s collectives).
    rank, world_size
        Override the detection (see :class:`World`), which happens when the dataset is built
        (and again at each epoch by :class:`ReplayLoader`).
    refresh_every
        Call ``store.refresh()`` before every this many batches of a worker (0: never).
    cache_bytes
        Read cache of each worker's store.

    Examples
    --------
    >>> import torch
    >>> from replaystore.torch import ReplayDataset
    >>> dataset = ReplayDataset("runs/hopper", batch_size=256, seed=0)  # doctest: +SKIP
    >>> loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)  # doctest: +SKIP
    >>> batch = next(iter(loader))  # doctest: +SKIP
    >>> batch["obs"].shape, batch["indices"].dtype  # doctest: +SKIP
    (torch.Size([256, 17]), torch.int64)
    """

    def __init__(self, path: str | os.PathLike[str], batch_size: int, *,
                 sampler: SamplerKind = "uniform", batches_per_epoch: int | None = None,
                 fields: Sequence[str] | None = None, seed: int = 0, alpha: float | None = None,
                 beta: float | Linear = 0.4, length: int | None = None, pad: bool = False,
                 drop_last: bool = False, rank: int | None = None, world_size: int | None = None,
                 refresh_every: int = 1, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        super().__init__()
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(map(repr, SAMPLERS))}, "
                             f"got {sampler!r}")
        _positive("batch_size", batch_size)
        if batches_per_epoch is not None:
            _positive("batches_per_epoch", batches_per_epoch)
            if sampler == "epoch":
                raise ValueError("batches_per_epoch does not apply to sampler='epoch': an epoch "
                                 "there is one pass over the committed slots")
        if sampler == "sequence":
            _positive("length", length)
        elif length is not None or pad:
            raise ValueError("length and pad apply to sampler='sequence' only")
        if not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if not isinstance(refresh_every, int) or refresh_every < 0:
            raise ValueError(f"refresh_every must be a non-negative integer, got {refresh_every!r}")
        self.path = os.fspath(path)
        self.batch_size = int(batch_size)
        self.sampler = sampler
        self.batches_per_epoch = batches_per_epoch
        self.fields = None if fields is None else tuple(fields)
        self.seed = int(seed)
        self.alpha = alpha
        self.beta = beta
        self.length = length
        self.pad = pad
        self.drop_last = drop_last
        self.refresh_every = refresh_every
        self.cache_bytes = cache_bytes
        self._explicit_world = (rank, world_size)
        world = World.detect(rank, world_size)
        self.rank, self.world_size = world.rank, world.world_size
        # Where iteration starts: the epoch, its first batch, and (epoch mode) the pinned
        # committed window [start, end) of global row numbers. Set by set_epoch and by
        # ReplayLoader before each DataLoader is built, so workers get them with the dataset.
        self.epoch = 0
        self.first_batch = 0
        self.window: tuple[int, int] | None = None
        self._local: dict[str, Any] = {}
        # Open the store once here, so that a wrong path, an unknown field or a missing
        # priority index fails now, in the caller's process, not inside a worker.
        with open_store(self.path, cache_bytes=0) as store:
            self._check(store)

    # -- configuration --------------------------------------------------------------------

    def set_epoch(self, epoch: int, *, batch: int = 0,
                  window: tuple[int, int] | None = None) -> None:
        """Start the next iteration at ``batch`` of ``epoch``.

        In epoch mode, ``window`` is the committed ``(start, end)`` range of global rows that
        the epoch permutes; None pins the store's current one now (call this in the main
        process, before the ``DataLoader`` is iterated, so every worker gets the same).
        """
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        if not isinstance(batch, int) or batch < 0:
            raise ValueError(f"batch must be a non-negative integer, got {batch!r}")
        self.epoch, self.first_batch = epoch, batch
        if self.sampler == "epoch":
            self.window = ((int(window[0]), int(window[1])) if window is not None
                           else self.current_window())

    def current_window(self) -> tuple[int, int]:
        """The store's committed ``(start, end)`` range of global row numbers, read now."""
        with open_store(self.path, cache_bytes=0) as store:
            m = store.manifest
            return m.start, m.end

    def batches(self, window: tuple[int, int] | None = None) -> int | None:
        """Batches per epoch on this rank (None: infinite). Epoch mode counts ``window``
        (default: the pinned one, else the store's current one)."""
        if self.sampler != "epoch":
            return self.batches_per_epoch
        start, end = window or self.window or self.current_window()
        return self._plan(start, end).batches(self.rank)

    def _plan(self, start: int, end: int) -> _EpochPlan:
        return _EpochPlan(start, end - start, self.batch_size, self.world_size, self.drop_last)

    def _check(self, store: Store) -> None:
        names = store.schema.names if self.fields is None else self.fields
        for name in names:
            store.schema[name]  # KeyError naming the unknown field and the known ones
        clash = sorted(set(names) & set(EXTRA_KEYS))
        if clash:
            raise ValueError(f"field(s) {clash} of store {self.path!r} would collide with the "
                             f"keys this dataset adds ({', '.join(EXTRA_KEYS)}); pass fields= "
                             "without them")
        if self.sampler == "prioritized":
            store.priority_index(self.alpha)  # the library's errors: no index, other alpha

    def __getstate__(self) -> dict[str, Any]:
        # Never pickle an open store (spawned workers, user pickling): path and options only.
        state = self.__dict__.copy()
        state["_local"] = {}
        return state

    # -- iteration ------------------------------------------------------------------------

    def _open(self) -> dict[str, Any]:
        """This process's store and sampler, opened on first use.

        A forked worker inherits the parent's dataset object, open store included; it must
        not share it (file offsets, caches), so the owner's pid is checked.
        """
        local = self._local
        if local.get("pid") != os.getpid():
            store = open_store(self.path, cache_bytes=self.cache_bytes)
            self._check(store)
            local.clear()
            local.update(pid=os.getpid(), store=store, sampler=self._make_sampler(store),
                         perm=None)
        return local

    def _make_sampler(self, store: Store) -> Sampler | None:
        if self.sampler == "uniform":
            return UniformSampler(store)
        if self.sampler == "prioritized":
            alpha = self.alpha if self.alpha is not None else store.priority_index().header.alpha
            return PrioritizedSampler(store, alpha=alpha, beta=self.beta)
        if self.sampler == "sequence":
            assert self.length is not None
            return SequenceSampler(store, self.length, pad=self.pad)
        return None

    def __iter__(self) -> Iterator[Batch]:
        world = World.detect(self.rank, self.world_size)
        local = self._open()
        store: Store = local["store"]
        if self.refresh_every:
            store.refresh()
        epoch = self.epoch
        if self.sampler == "epoch":
            window = self.window
            if window is None:
                # No pinned window (a bare DataLoader without set_epoch): every worker uses
                # its own snapshot, which agrees across workers only if no writer commits.
                window = (store.manifest.start, store.manifest.end)
            plan = self._plan(*window)
            perm = self._permutation(epoch, plan)
            stop: int | None = plan.batches(world.rank)
        else:
            stop = self.batches_per_epoch
        for count, batch in enumerate(world.my_batches(self.first_batch, stop)):
            if self.refresh_every and count and count % self.refresh_every == 0:
                store.refresh()
            if self.sampler == "epoch":
                yield self._epoch_batch(store, plan, plan.positions(perm, world.rank, batch))
            else:
                yield self._draw(world.rank_rng(self.seed, epoch, batch), store, local,
                                 step=epoch * (stop or 0) + batch)

    def _permutation(self, epoch: int, plan: _EpochPlan) -> np.ndarray:
        # Cached per (epoch, window): the same for every rank and worker, computed in each
        # (8 bytes a row, 4 below 2**31 rows) rather than shipped to them.
        local = self._local
        key = (self.seed, epoch, plan.start, plan.rows)
        if local.get("perm") is None or local["perm"][0] != key:
            order = np.arange(plan.rows, dtype=np.int32 if plan.rows < 2**31 else np.int64)
            _rng(self.seed, _PERMUTE, epoch).shuffle(order)
            local["perm"] = (key, order)
        return local["perm"][1]

    def _epoch_batch(self, store: Store, plan: _EpochPlan, positions: np.ndarray) -> Batch:
        rows = plan.start + positions.astype(np.int64)
        for attempt in range(2):
            m = store.manifest
            if len(rows) and (rows.min() < m.start or rows.max() >= m.end):
                if attempt == 0 and store.refresh():
                    continue
                raise StaleReadError(
                    f"epoch rows {plan.start}..{plan.start + plan.rows - 1} of {self.path!r} are "
                    f"not all committed in this reader (it holds rows {m.start}..{m.end - 1}): "
                    "a ring writer overwrote some since the epoch began; epochs without "
                    "replacement need rows that stay put for the epoch")
            slots = rows if m.capacity is None else rows % m.capacity
            try:
                data = store.get(slots, self.fields)
            except StaleReadError:
                if attempt == 0 and store.refresh():
                    continue
                raise
            return _tensors(data, indices=slots)
        raise AssertionError("unreachable")

    def _draw(self, rng: np.random.Generator, store: Store, local: dict[str, Any], *,
              step: int) -> Batch:
        sampler = local["sampler"]
        # The generator is replaced per batch: batch b depends on (seed, rank, epoch, b) only,
        # whichever worker draws it, so streams are reproducible and resumable.
        sampler.rng = rng
        for _ in range(_ATTEMPTS):
            if isinstance(sampler, PrioritizedSampler):
                # An unbounded store's index moves to a bigger file as it grows; a sampler
                # keeps the index it was built with, so give it the store's current one.
                sampler.index = store.priority_index()
            sampler.steps = step  # beta schedules follow this rank's batch count
            batch = sampler.sample(self.batch_size)
            slots = batch.indices
            # The priority index is live while this reader's snapshot is not: a writer gives
            # new rows their priority just before it publishes them, so a slot may not be
            # readable here yet. Move to the newest commit and draw again if so.
            if not store.committed_mask(slots.reshape(-1)).all():
                store.refresh()
                if not store.committed_mask(slots.reshape(-1)).all():
                    continue
            try:
                data = store.get(slots, self.fields)
            except StaleReadError:  # a ring writer replaced rows of our snapshot: move on
                store.refresh()
                continue
            mask = batch.mask
            if isinstance(sampler, SequenceSampler) and mask is None:
                mask = np.ones(slots.shape, bool)
            return _tensors(data, indices=slots, weights=batch.weights,
                            probabilities=batch.probabilities, mask=mask)
        raise StaleReadError(f"could not draw a readable batch from {self.path!r} in "
                             f"{_ATTEMPTS} attempts: the writer kept replacing the sampled rows")

    def __repr__(self) -> str:
        return (f"ReplayDataset({self.path!r}, batch_size={self.batch_size}, "
                f"sampler={self.sampler!r}, seed={self.seed}, rank={self.rank}/"
                f"{self.world_size}, epoch={self.epoch}, first_batch={self.first_batch})")


def _tensors(data: dict[str, np.ndarray], *, indices: np.ndarray,
             weights: np.ndarray | None = None, probabilities: np.ndarray | None = None,
             mask: np.ndarray | None = None) -> Batch:
    # store.get returns fresh, writable arrays, so from_numpy can share their memory.
    out = {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in data.items()}
    out["indices"] = torch.from_numpy(np.ascontiguousarray(indices, dtype=np.int64))
    if weights is not None:
        out["weights"] = torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32))
    if probabilities is not None:
        out["probabilities"] = torch.from_numpy(
            np.ascontiguousarray(probabilities, dtype=np.float64))
    if mask is not None:
        out["mask"] = torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))
    return out


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


# -- the loader -----------------------------------------------------------------------------


class ReplayLoader:
    """A ``DataLoader`` over a :class:`ReplayDataset` that knows how far it got.

    Iterating yields the dataset's batches in order and counts them; ``state_dict()`` records
    the epoch and the number of batches delivered, ``load_state_dict()`` makes the next
    iteration continue exactly there (the same batches an uninterrupted run would have seen,
    whatever ``num_workers``). An iteration that is stopped early continues, next time, at the
    first batch it did not deliver; one that runs to the end of an epoch moves to the next
    epoch. In epoch mode the committed window is pinned when an epoch starts (broadcast from
    rank 0 when a process group is initialised, so every rank must start epochs together) and
    kept in the state.

    Parameters
    ----------
    dataset
        The dataset; the loader sets its position before each iteration.
    num_workers, pin_memory, multiprocessing_context, prefetch_factor, timeout
        Passed to ``DataLoader`` (``batch_size=None``). ``pin_memory=True`` pins batches in
        the main process. Workers are started for every iteration (``persistent_workers``
        would keep datasets that cannot learn the next epoch's position).
        ``multiprocessing_context`` and ``prefetch_factor`` are ignored when
        ``num_workers=0``.
    worker_init_fn, pin_memory_device
        Passed to ``DataLoader`` too.

    Examples
    --------
    >>> loader = ReplayLoader(ReplayDataset("runs/d4rl", 512, sampler="epoch"),
    ...                       num_workers=2)  # doctest: +SKIP
    >>> for epoch in range(10):  # doctest: +SKIP
    ...     for batch in loader:
    ...         train(batch)
    ...         if time_to_save():
    ...             torch.save({"loader": loader.state_dict(), ...}, "ckpt.pt")
    >>> loader.load_state_dict(torch.load("ckpt.pt")["loader"])  # doctest: +SKIP
    """

    def __init__(self, dataset: ReplayDataset, *, num_workers: int = 0, pin_memory: bool = False,
                 multiprocessing_context: Any = None, prefetch_factor: int | None = None,
                 timeout: float = 0, worker_init_fn: Callable[[int], None] | None = None,
                 pin_memory_device: str = "") -> None:
        if not isinstance(dataset, ReplayDataset):
            raise TypeError(f"ReplayLoader needs a ReplayDataset, got {type(dataset).__name__}")
        self.dataset = dataset
        self._loader_options: dict[str, Any] = dict(
            num_workers=num_workers, pin_memory=pin_memory, timeout=timeout,
            worker_init_fn=worker_init_fn, pin_memory_device=pin_memory_device)
        if num_workers:
            # DataLoader refuses these without workers; dropping them lets a configuration
            # switch num_workers to 0 (for debugging, say) and change nothing else.
            self._loader_options.update(multiprocessing_context=multiprocessing_context,
                                        prefetch_factor=prefetch_factor)
        self.epoch = 0
        self.batch = 0  # batches of this epoch delivered so far
        self.window: tuple[int, int] | None = None  # epoch mode: pinned at the epoch's start

    def _sync_world(self) -> None:
        # The process group may have been initialised after the dataset was built.
        rank, size = self.dataset._explicit_world
        world = World.detect(rank, size)
        self.dataset.rank, self.dataset.world_size = world.rank, world.world_size

    def _pin_window(self) -> tuple[int, int]:
        if self.window is None:
            window = self.dataset.current_window()
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                # Ranks may open the store at different commits; rank 0's view decides.
                box: list[Any] = [window]
                dist.broadcast_object_list(box, src=0)
                window = tuple(box[0])
            self.window = window
        return self.window

    def __len__(self) -> int:
        """Batches per epoch on this rank; TypeError for an infinite stream."""
        self._sync_world()
        window = self._pin_window() if self.dataset.sampler == "epoch" else None
        batches = self.dataset.batches(window)
        if batches is None:
            raise TypeError("an infinite ReplayLoader (batches_per_epoch=None) has no length")
        return batches

    def __iter__(self) -> Iterator[Batch]:
        self._sync_world()
        dataset = self.dataset
        window = self._pin_window() if dataset.sampler == "epoch" else None
        total = dataset.batches(window)
        if total is not None and self.batch >= total:  # stopped right after an epoch's end
            self._next_epoch()
            window = self._pin_window() if dataset.sampler == "epoch" else None
            total = dataset.batches(window)
        dataset.set_epoch(self.epoch, batch=self.batch, window=window)
        # The loader must deliver batches in worker round-robin order (in_order=True, the
        # default), which is what makes batch numbers line up with delivery order.
        loader = DataLoader(dataset, batch_size=None, **self._loader_options)
        for batch in loader:
            self.batch += 1
            yield batch
        if total is not None and self.batch >= total:
            self._next_epoch()

    def _next_epoch(self) -> None:
        self.epoch += 1
        self.batch = 0
        self.window = None

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch at the next iteration."""
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch, self.batch, self.window = epoch, 0, None

    def state_dict(self) -> dict[str, Any]:
        """The position after the batches delivered so far, as JSON-able values."""
        d = self.dataset
        return {"version": 1, "epoch": self.epoch, "batch": self.batch,
                "window": None if self.window is None else list(self.window),
                "sampler": d.sampler, "seed": d.seed, "batch_size": d.batch_size,
                "world_size": d.world_size, "batches_per_epoch": d.batches_per_epoch,
                "drop_last": d.drop_last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at the position ``state`` records (from :meth:`state_dict`).

        The settings that decide which batches are drawn (sampler, seed, batch size, world
        size, epoch length) must match: a resumed run with other settings would not continue
        the same stream, so that raises ValueError.
        """
        if state.get("version") != 1:
            raise ValueError(f"unknown ReplayLoader state version {state.get('version')!r}")
        self._sync_world()
        d = self.dataset
        mine = {"sampler": d.sampler, "seed": d.seed, "batch_size": d.batch_size,
                "world_size": d.world_size, "batches_per_epoch": d.batches_per_epoch,
                "drop_last": d.drop_last}
        wrong = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if wrong:
            detail = ", ".join(f"{k} saved {a!r} but this loader has {b!r}"
                               for k, (a, b) in wrong.items())
            raise ValueError(f"cannot resume this ReplayLoader from that state: {detail}")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        window = state.get("window")
        self.window = None if window is None else (int(window[0]), int(window[1]))

    def __repr__(self) -> str:
        return (f"ReplayLoader({self.dataset!r}, num_workers="
                f"{self._loader_options['num_workers']}, epoch={self.epoch}, batch={self.batch})")


__all__ = ["EXTRA_KEYS", "SAMPLERS", "ReplayDataset", "ReplayLoader", "World"]
