"""ReplayDataset: whole batches from a replay store, for DataLoader workers."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import StaleReadError
from ..sampling import Linear, PrioritizedSampler, Sampler, SequenceSampler, UniformSampler
from ..store import DEFAULT_CACHE_BYTES, Store
from ..store import open as open_store
from .slots import Batch, _arrays, _Destination, _SlotRef, _SlotRing, _tensors
from .world import _PERMUTE, World, _rng

# Arrays to read a batch of slots of the given shape into (Store.get's out), or None.
OutFor = Callable[[tuple[int, ...]], dict[str, np.ndarray] | None]
SamplerKind = Literal["uniform", "prioritized", "sequence", "epoch"]
SAMPLERS: tuple[str, ...] = ("uniform", "prioritized", "sequence", "epoch")
EXTRA_KEYS = ("indices", "rows", "weights", "probabilities", "mask")
# Attempts at drawing a batch whose slots this worker's snapshot can read (see _draw).
_ATTEMPTS = 8

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
    sequences), plus ``"indices"`` (int64 slots), ``"rows"`` (int64 global row numbers of
    those slots, as read), ``"weights"`` (float32) and ``"probabilities"`` (float64) in
    prioritized mode and ``"mask"`` (bool, False on padded steps) in sequence mode. Pass
    ``"indices"`` and ``"rows"`` back to ``update_priorities(batch["indices"], td,
    rows=batch["rows"])`` so that rows the ring overwrote since the batch was drawn are
    skipped.

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
        Read cache of the store each worker opens (every worker keeps its own, so the memory
        it may take grows with ``num_workers``).

    With workers, prefer :class:`ReplayLoader` to a bare ``DataLoader``: it resumes mid-epoch
    and hands batches over through shared-memory slots, 2-3x cheaper than DataLoader's own
    transport for batches of frames.

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
        self.batches_per_epoch = None if batches_per_epoch is None else int(batches_per_epoch)
        self.fields = None if fields is None else tuple(fields)
        self.seed = int(seed)
        self.alpha = alpha
        self.beta = beta
        self.length = None if length is None else int(length)
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
        # Set on ReplayLoader's copy for its workers: the shared slots, and how many batches
        # one DataLoader item carries through them.
        self._ring: _SlotRing | None = None
        self._run = 1
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

    def batch_nbytes(self) -> int:
        """Bytes of one whole batch (fields and extras), measured on a committed row when
        there is one, else from the schema."""
        with open_store(self.path, cache_bytes=0) as store:
            names = store.schema.names if self.fields is None else self.fields
            if len(store):
                row = store.get(store.slots()[:1], names)
                per_row = sum(array.nbytes for array in row.values())
            else:  # a guess (derived fields may be larger); a batch too big goes as tensors
                per_row = sum(store.schema[name].row_nbytes for name in names)
        rows = self.batch_size * (self.length or 1)
        extras = 8 + 8 + 4 + 8 + 1  # indices, rows, weights, probabilities, mask
        return rows * (per_row + extras) + 64 * (len(names) + len(EXTRA_KEYS))

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
        # Through ReplayLoader's shared slots when it set them up (and the batch fits),
        # else as tensors through DataLoader's own transport.
        dest = None
        if self._ring is not None and get_worker_info() is not None:
            names = self.fields or store.schema.names
            dest = _Destination(self._ring, world.worker, [
                (n, store.schema[n].dtype, store.schema[n].read_shape) for n in names])
        out = dest.out if dest is not None else None
        # Through the slots, a DataLoader item is a list of `_run` consecutive batches: what
        # DataLoader spends per item (queues, feeder threads, waking processes) is paid once
        # for them all. Otherwise an item is one batch, as a bare DataLoader expects.
        run_size = self._run if dest is not None else 1
        count = 0
        for run in world.my_runs(self.first_batch, stop, run_size):
            # An error drops the whole run: a partial run would put the next worker's run
            # where the rest of this one belongs, out of order.
            item: list[_SlotRef | Batch] = []
            for batch in run:
                if self.refresh_every and count and count % self.refresh_every == 0:
                    store.refresh()
                count += 1
                if self.sampler == "epoch":
                    arrays = self._epoch_batch(store, plan,
                                               plan.positions(perm, world.rank, batch), out)
                else:
                    arrays = self._draw(world.rank_rng(self.seed, epoch, batch), store, local,
                                        step=epoch * (stop or 0) + batch, out=out)
                ref = dest.send(batch, arrays) if dest is not None else None
                item.append(ref if ref is not None else _tensors(arrays))
            yield item if dest is not None else item[0]

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

    def _epoch_batch(self, store: Store, plan: _EpochPlan, positions: np.ndarray,
                     out: OutFor | None = None) -> dict[str, np.ndarray]:
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
            slots = m.slot_of(rows)
            try:
                data = store.get(slots, self.fields, out=out(slots.shape) if out else None)
            except StaleReadError:
                if attempt == 0 and store.refresh():
                    continue
                raise
            return _arrays(data, indices=slots)
        raise AssertionError("unreachable")

    def _draw(self, rng: np.random.Generator, store: Store, local: dict[str, Any], *,
              step: int, out: OutFor | None = None) -> dict[str, np.ndarray]:
        sampler = local["sampler"]
        # The generator is replaced per batch: batch b depends on (seed, rank, epoch, b) only,
        # whichever worker draws it, so streams are reproducible and resumable.
        sampler.rng = rng
        for _ in range(_ATTEMPTS):
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
                data = store.get(slots, self.fields, out=out(slots.shape) if out else None)
            except StaleReadError:  # a ring writer replaced rows of our snapshot: move on
                store.refresh()
                continue
            mask = batch.mask
            if isinstance(sampler, SequenceSampler) and mask is None:
                mask = np.ones(slots.shape, bool)
            # The rows just read (the snapshot may have moved since the sample): the main
            # process's update_priorities(..., rows=) skips those the ring overwrites later.
            rows = (store.manifest.row_of(slots) if isinstance(sampler, PrioritizedSampler)
                    else None)
            return _arrays(data, indices=slots, rows=rows, weights=batch.weights,
                           probabilities=batch.probabilities, mask=mask)
        raise StaleReadError(f"could not draw a readable batch from {self.path!r} in "
                             f"{_ATTEMPTS} attempts: the writer kept replacing the sampled rows")

    def __repr__(self) -> str:
        return (f"ReplayDataset({self.path!r}, batch_size={self.batch_size}, "
                f"sampler={self.sampler!r}, seed={self.seed}, rank={self.rank}/"
                f"{self.world_size}, epoch={self.epoch}, first_batch={self.first_batch})")


def _can_pin() -> bool:
    available = (torch.accelerator.is_available() if hasattr(torch, "accelerator")
                 else torch.cuda.is_available())
    if not available:
        warnings.warn("pin_memory=True but no accelerator is available: batches are not "
                      "pinned", stacklevel=3)
    return available


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


# -- the loader -----------------------------------------------------------------------------


