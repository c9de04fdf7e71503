"""PyTorch input pipeline: whole batches from a replay store through ``DataLoader`` workers.

This is the only module of replaystore that imports torch; ``import replaystore`` never does.

* :class:`ReplayDataset` is an ``IterableDataset`` that yields *whole batches*, each a dict of
  tensors: the store's fields plus ``"indices"`` (int64 slots), ``"rows"`` (int64 global row
  numbers), ``"weights"`` (float32) and ``"probabilities"`` (float64) for prioritized
  sampling, ``"mask"`` (bool) for sequences. Use
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
resuming at batch ``b`` reproduces the rest of the epoch exactly. :class:`ReplayLoader`'s
workers deal runs of consecutive batches the same way (worker ``w`` takes runs ``w, w + K,
...``), each run one ``DataLoader`` item.

Copies and pinned memory. ``store.get`` returns fresh numpy arrays and ``torch.from_numpy``
wraps them without a copy. Handing a batch from a worker to the main process costs copies:

* :class:`ReplayLoader` with workers (``shared_slots=True``, the default): the worker reads
  the whole batch into a reusable shared-memory slot and the dict's tensors are views of that
  slot, which goes back to the worker once they are all garbage. With ``pin_memory=True`` the
  main process copies the slot into page-locked memory instead (one copy, no more), on a
  background thread a couple of batches ahead of the training loop, split over up to 4
  threads where cores are idle.
* A bare ``DataLoader``: its own transport moves every tensor into a new shared-memory
  segment; ``DataLoader(pin_memory=True)`` then pins each tensor in its pin thread (a second
  copy). Workers never pin (that would need CUDA in every worker).

Priorities. Open the store for writing in the training process and update priorities there;
the workers map the same priority index read-only and sample from the new priorities from
their next batch on (batches already prefetched keep the old ones). Pass the batch's
``"rows"`` with its ``"indices"``: a slot the ring has overwritten since a worker read it then
keeps its new row's priority instead of taking the old row's TD error (``indices`` alone
name whatever rows those slots hold when the update is made)::

    writer = rs.open(path, "a")
    updater = rs.PrioritizedSampler(writer, alpha=0.6)
    for batch in loader:
        td = learner.step(batch)
        updater.update_priorities(batch["indices"], td.abs().detach().cpu(), rows=batch["rows"])

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

from .dataset import EXTRA_KEYS, SAMPLERS, ReplayDataset
from .loader import ReplayLoader
from .world import World

__all__ = ["EXTRA_KEYS", "SAMPLERS", "ReplayDataset", "ReplayLoader", "World"]
