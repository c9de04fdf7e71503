"""Shared-memory slots that carry whole batches from DataLoader workers to the main process.

DataLoader's own transport creates a new shared-memory segment per tensor per batch (~2.8 ms
for 1.8 MB here), which costs more than decoding the batch; each worker here reuses a few
slots and sends only a small reference."""

from __future__ import annotations

import functools
import math
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from .pinning import _PinCopier

Batch = dict[str, torch.Tensor]
Spec = tuple[str, np.dtype, tuple[int, ...]]  # a field of a batch: name, dtype, shape
Layout = tuple[tuple[str, str, tuple[int, ...], int], ...]  # name, dtype, shape, offset


def _arrays(data: dict[str, np.ndarray], *, indices: np.ndarray,
            rows: np.ndarray | None = None, weights: np.ndarray | None = None,
            probabilities: np.ndarray | None = None,
            mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The batch as contiguous numpy arrays, the sampler's extras in their documented dtypes."""
    out = {name: np.ascontiguousarray(array) for name, array in data.items()}
    out["indices"] = np.ascontiguousarray(indices, dtype=np.int64)
    if rows is not None:
        out["rows"] = np.ascontiguousarray(rows, dtype=np.int64)
    if weights is not None:
        out["weights"] = np.ascontiguousarray(weights, dtype=np.float32)
    if probabilities is not None:
        out["probabilities"] = np.ascontiguousarray(probabilities, dtype=np.float64)
    if mask is not None:
        out["mask"] = np.ascontiguousarray(mask, dtype=bool)
    return out


def _tensors(arrays: dict[str, np.ndarray]) -> Batch:
    # store.get returns fresh, writable arrays, so from_numpy shares their memory (no copy).
    return {name: torch.from_numpy(array) for name, array in arrays.items()}


# -- shared slots: how ReplayLoader's workers hand batches over ------------------------------


@functools.cache
def _torch_dtype(dtype: str) -> torch.dtype:
    return torch.from_numpy(np.empty(0, np.dtype(dtype))).dtype


def _shared_bytes(nbytes: int) -> torch.Tensor:
    """``nbytes`` of shared memory as a uint8 tensor, without touching (committing) them."""
    try:
        storage = torch.UntypedStorage._new_shared(nbytes)
    except AttributeError:  # a torch without this helper: allocate, then move (touches pages)
        return torch.zeros(nbytes, dtype=torch.uint8).share_memory_()
    return torch.empty(0, dtype=torch.uint8).set_(storage)


@dataclass(frozen=True)
class _SlotRef:
    """What a worker sends instead of a batch: where in the shared slots the batch lies."""

    worker: int
    slot: int
    batch: int
    nbytes: int
    layout: Layout


class _SlotRing:
    """Per-worker rings of reusable shared-memory slots, each holding one whole batch.

    DataLoader's own transport moves every tensor of every batch through a fresh shared-memory
    segment (created, faulted in, passed by file descriptor, mapped and unmapped again); for a
    batch of frames that costs more than decoding it. Here each worker copies the batch into
    one of its slots, which every process mapped once, and sends a small :class:`_SlotRef`;
    the main process lends the slot to the caller as tensors (or copies it into pinned memory)
    and frees it when those tensors are gone.

    A slot's header holds ``[state, batch]``: state 1 from the moment a worker filled it until
    the main process is done with it, 0 when free. A worker only fills a free slot; when none
    is free (the caller holds on to many batches) or a batch does not fit, it sends the batch
    as tensors instead, so a slot is never overwritten while anything can still read it.
    """

    HEADER = 64  # bytes; every array starts on a 64-byte boundary

    def __init__(self, workers: int, slots: int, slot_bytes: int) -> None:
        self.workers, self.slots = workers, slots
        self.slot_bytes = -(-slot_bytes // self.HEADER) * self.HEADER
        self.buffer = _shared_bytes(workers * slots * self.slot_bytes).view(
            workers, slots, self.slot_bytes)
        self._local()
        self._heads[:] = 0

    def _local(self) -> None:
        # Views of the buffer and the layouts seen so far (a handful of batch shapes), made
        # once per process instead of per batch: ~13 µs less per batch in a worker.
        self._view: np.ndarray = self.buffer.numpy()
        self._heads: np.ndarray = self._view[:, :, :16].view(np.int64)  # (workers, slots, 2)
        self._layouts: dict[tuple[Spec, ...], tuple[Layout, int]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # The tensor travels as shared memory; the views and layouts are rebuilt.
        return {name: self.__dict__[name] for name in ("workers", "slots", "slot_bytes",
                                                        "buffer")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local()

    def _layout(self, specs: tuple[Spec, ...]) -> tuple[Layout, int]:
        """Each field's ``(name, dtype, shape, offset)`` in a slot, and the end offset."""
        known = self._layouts.get(specs)
        if known is not None:
            return known
        layout, offset = [], self.HEADER
        for name, dtype, shape in specs:
            layout.append((name, dtype.str, shape, offset))
            offset += -(-math.prod(shape) * dtype.itemsize // self.HEADER) * self.HEADER
        self._layouts[specs] = known = tuple(layout), offset
        return known

    def _free_slot(self, worker: int) -> int | None:
        states = self._heads[worker, :, 0].tolist()
        return states.index(0) if 0 in states else None

    def reserve(self, worker: int, specs: tuple[Spec, ...]
                ) -> tuple[int, dict[str, np.ndarray]] | None:
        """A free slot of ``worker`` and, for each ``(name, dtype, shape)``, the array of it
        where :meth:`put` will place that field when the batch starts with these fields.

        Reading a batch straight into these arrays saves ``put`` a copy. Nothing is marked:
        the worker fills one slot at a time and the main process frees only full ones.
        None when no slot is free or the fields do not fit.
        """
        layout, end = self._layout(specs)
        slot = self._free_slot(worker)
        if slot is None or end > self.slot_bytes:
            return None
        memory = self._view[worker, slot]
        return slot, {name: memory[start:start + math.prod(shape) * np.dtype(dtype).itemsize]
                      .view(dtype).reshape(shape) for name, dtype, shape, start in layout}

    def put(self, worker: int, batch: int, arrays: dict[str, np.ndarray],
            slot: int | None = None) -> _SlotRef | None:
        """Copy ``arrays`` into ``slot`` (from :meth:`reserve`; arrays already in place are not
        copied) or a free slot of ``worker``; None if none is free or it won't fit."""
        layout, end = self._layout(tuple((n, a.dtype, a.shape) for n, a in arrays.items()))
        if slot is None:
            slot = self._free_slot(worker)
        if slot is None or end > self.slot_bytes:
            return None
        memory = self._view[worker, slot]
        base = memory.ctypes.data
        for (_, _, _, start), array in zip(layout, arrays.values(), strict=True):
            if array.ctypes.data != base + start:
                memory[start:start + array.nbytes] = array.reshape(-1).view(np.uint8)
        self._heads[worker, slot] = (1, batch)  # after the data: "a whole batch is here"
        return _SlotRef(worker, slot, batch, end - self.HEADER, layout)

    def take(self, ref: _SlotRef, pin: _PinCopier | None = None) -> Batch:
        """The batch ``ref`` points to, as a dict of tensors that are views of one buffer.

        Without ``pin`` the buffer is the slot itself, lent to the caller: the slot is freed
        when the last of those tensors is garbage, so nothing is copied (a worker that finds
        no free slot sends its batch as tensors). With ``pin`` the batch is copied out into
        page-locked memory by that copier and the slot freed at once.
        """
        header = self._heads[ref.worker, ref.slot]
        if tuple(header) != (1, ref.batch):
            raise RuntimeError(f"shared slot {ref.slot} of worker {ref.worker} holds "
                               f"{tuple(header)} instead of batch {ref.batch} (a replaystore bug)")
        # A new ndarray object for this batch only; torch.from_numpy keeps it alive exactly as
        # long as the storage that every field's tensor below shares.
        region = self._view[ref.worker, ref.slot, self.HEADER:self.HEADER + ref.nbytes]
        if pin is not None:
            out = torch.empty(ref.nbytes, dtype=torch.uint8, pin_memory=True)
            pin.copy(out.numpy(), region)
            header[0] = 0  # free: the worker may fill it again
        else:
            out = torch.from_numpy(region)
            release = weakref.finalize(region, _release_slot, self._heads, ref.worker,
                                       ref.slot, ref.batch)
            release.atexit = False
        # One reinterpretation of the buffer per dtype, then a slice per field: fewer torch
        # calls than viewing each field's bytes (offsets are multiples of 64, so they divide).
        typed: dict[str, torch.Tensor] = {}
        batch = {}
        for name, dtype, shape, offset in ref.layout:
            view = typed.get(dtype)
            if view is None:
                view = typed[dtype] = out.view(_torch_dtype(dtype))
            start = (offset - self.HEADER) // view.element_size()
            batch[name] = view[start:start + math.prod(shape)].view(shape)
        return batch


class _Destination:
    """Where a worker reads its next batch: straight into a free slot of its ring, so the
    batch's fields are decoded into shared memory with no copy in between."""

    def __init__(self, ring: _SlotRing, worker: int, fields: list[Spec]) -> None:
        self.ring, self.worker, self.fields = ring, worker, fields
        self.slot: int | None = None

    def out(self, shape: tuple[int, ...]) -> dict[str, np.ndarray] | None:
        """Arrays in a free slot for a batch of slots of ``shape`` (``Store.get``'s ``out``)."""
        reserved = self.ring.reserve(self.worker,
                                     tuple((n, d, shape + row) for n, d, row in self.fields))
        self.slot = None if reserved is None else reserved[0]
        return None if reserved is None else reserved[1]

    def send(self, batch: int, arrays: dict[str, np.ndarray]) -> _SlotRef | None:
        ref = self.ring.put(self.worker, batch, arrays, self.slot)
        self.slot = None
        return ref


def _release_slot(headers: np.ndarray, worker: int, slot: int, batch: int) -> None:
    if headers[worker, slot, 1] == batch:
        headers[worker, slot, 0] = 0


