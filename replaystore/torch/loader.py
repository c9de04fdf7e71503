"""ReplayLoader: a DataLoader that counts what it delivered, so training can resume mid-epoch."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import torch.distributed as dist
from torch.utils.data import DataLoader

from .dataset import ReplayDataset, _can_pin
from .pinning import _PinCopier, in_background
from .slots import Batch, _SlotRef, _SlotRing
from .world import World


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
    num_workers, multiprocessing_context, timeout, worker_init_fn
        Passed to ``DataLoader`` (``batch_size=None``); ``multiprocessing_context`` is
        ignored when ``num_workers=0``. Workers are started for every iteration
        (``persistent_workers`` would keep datasets that cannot learn the next epoch's
        position). With shared slots, ``timeout`` bounds the wait for a whole run of batches.
    prefetch_factor
        Batches each worker may draw ahead of the caller (ignored when ``num_workers=0``);
        batches already drawn do not see later priority updates. None: DataLoader's default
        (2), or with shared slots two runs of up to 8 batches (up to 32 MiB a run), except for
        ``sampler="prioritized"``, which keeps 2 so that batches follow the priorities closely.
    pin_memory
        Deliver batches in page-locked memory, for fast ``.to("cuda", non_blocking=True)``;
        pinning happens in the main process, on a background thread for batches that come
        through shared slots (ignored, with a warning, without an accelerator).
    shared_slots
        With workers, hand batches over through reusable shared-memory slots: a worker copies
        its batch into a free slot and the batch's tensors are views of that slot, which is
        freed for reuse once they are all garbage (keeping many batches alive makes workers
        fall back to tensors). Workers send runs of consecutive batches as one ``DataLoader``
        item, which makes DataLoader's cost per item (queues, waking processes) a small share
        of a batch; an error while drawing a batch is raised where its run would start. False
        uses ``DataLoader``'s own transport (a new shared-memory segment per tensor per
        batch), which costs more than decoding a batch of frames.

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
                 shared_slots: bool = True) -> None:
        if not isinstance(dataset, ReplayDataset):
            raise TypeError(f"ReplayLoader needs a ReplayDataset, got {type(dataset).__name__}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be a non-negative integer, got {num_workers!r}")
        if prefetch_factor is not None and (not isinstance(prefetch_factor, int)
                                            or prefetch_factor < 1):
            raise ValueError(f"prefetch_factor must be a positive integer or None, got "
                             f"{prefetch_factor!r}")
        self.dataset = dataset
        self.num_workers = num_workers
        self.pin_memory = pin_memory and _can_pin()
        self.shared_slots = shared_slots and num_workers > 0
        self._prefetch = prefetch_factor
        self._loader_options: dict[str, Any] = dict(
            num_workers=num_workers, timeout=timeout, worker_init_fn=worker_init_fn,
            # Batches through shared slots are pinned when copied out of them (one copy, not
            # two); DataLoader's pin thread only pins the batches that come as tensors.
            pin_memory=self.pin_memory and not self.shared_slots)
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
        if total and self.batch >= total:  # stopped right after the end of an epoch
            self._next_epoch()
            window = self._pin_window() if dataset.sampler == "epoch" else None
            total = dataset.batches(window)
        dataset.set_epoch(self.epoch, batch=self.batch, window=window)
        ring = None
        if self.shared_slots:
            # Fresh slots for every iteration: workers of an abandoned iteration may still be
            # writing into the previous ones. A copy of the dataset carries them to the workers
            # (the caller's dataset stays light to pickle).
            nbytes = dataset.batch_nbytes()
            prefetch = self._prefetch
            if prefetch is None and dataset.sampler == "prioritized":
                # Prioritized batches should see recent priority updates: draw no further
                # ahead than DataLoader's own default.
                prefetch = 2
            run, items = _runs(nbytes, prefetch)
            # A worker never has more than `items` runs requested but not yet delivered, one
            # of them being filled; one more run and a few slots cover the batches the caller
            # still holds. Slots cost memory only once used, and a worker that finds none
            # free sends its batch as tensors.
            ring = _SlotRing(self.num_workers, (items + 1) * run + 3, nbytes)
            dataset = copy.copy(dataset)
            dataset._ring, dataset._run = ring, run
            options = {**self._loader_options, "prefetch_factor": items}
        else:
            options = self._loader_options
        # The loader must deliver batches in worker round-robin order (in_order=True, the
        # default), which is what makes batch numbers line up with delivery order.
        items = iter(DataLoader(dataset, batch_size=None, **options))
        if ring is None:  # DataLoader pins, if asked to
            batches: Iterator[Batch] = items
        elif self.pin_memory:
            # Copying batches into pinned memory is CPU work that would stall the training
            # loop: a thread does it (and waits for the workers) a couple of batches ahead.
            batches = in_background(
                _from_slots(items, ring, _PinCopier.for_workers(self.num_workers)))
        else:
            batches = _from_slots(items, ring, None)
        for batch in batches:
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
        return (f"ReplayLoader({self.dataset!r}, num_workers={self.num_workers}, "
                f"epoch={self.epoch}, batch={self.batch})")


def _from_slots(items: Iterator[Any], ring: _SlotRing,
                copier: _PinCopier | None) -> Iterator[Batch]:
    """The batches of DataLoader items that came through ``ring``, pinned if ``copier``."""
    for item in items:
        # An item is a run: a list of consecutive batches, as slot references or, where a
        # worker found no free slot, as tensors.
        for batch in item:
            if isinstance(batch, _SlotRef):
                yield ring.take(batch, pin=copier)
            elif copier is not None:
                yield {name: tensor.pin_memory() for name, tensor in batch.items()}
            else:
                yield batch


# Batches per run at most, and the bytes of a run: longer runs save little more of
# DataLoader's cost per item, and hold more memory and more batches drawn ahead.
MAX_RUN = 8
RUN_BYTES = 32 << 20


def _runs(batch_nbytes: int, prefetch: int | None) -> tuple[int, int]:
    """(batches per run, runs each worker prefetches) for ``prefetch`` batches a worker
    (None: two runs of the longest length)."""
    run = max(1, min(MAX_RUN, RUN_BYTES // max(1, batch_nbytes)))
    if prefetch is None:
        return run, 2
    run = min(run, prefetch)
    return run, prefetch // run
