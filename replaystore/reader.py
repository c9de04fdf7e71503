"""The read path: slots → chunk and offset → cached or decoded chunk → numpy gather.

A reader works on one committed snapshot (a manifest). :meth:`Reader.refresh` moves it to the
newest commit and drops from the caches exactly the chunks that the newer rows rewrote.

A reader in another process may fall behind a ring writer that overwrites rows of the reader's
snapshot. A chunk read from disk is therefore checked against the current manifest once it is
decoded: if rows of the snapshot in that chunk may have been replaced, the read raises
:class:`~replaystore.errors.StaleReadError` instead of returning a mix of two commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from .cache import ChunkPool, ShardCache
from .codecs import decode_chunk, max_stored_bytes
from .errors import CorruptChunkError, StaleReadError, StoreReplacedError
from .layout import chunk_key
from .manifest import Manifest, load_manifest
from .schema import Field, Schema
from .storage.base import Storage
from .storage.local import folder_identity


class Reader:
    """Reads committed rows of one snapshot through byte-budgeted caches."""

    def __init__(self, backend: Storage, schema: Schema, manifest: Manifest,
                 cache_bytes: int) -> None:
        self.backend = backend
        self.schema = schema
        self.manifest = manifest
        # Only a store of local files can have its folder swapped by prune, compact or repair.
        self._folder = backend.capabilities.local_path
        self._identity = None if self._folder is None else folder_identity(self._folder)
        self._caches: dict[str, ChunkPool | ShardCache] = {
            f.name: (ShardCache if f.codec.per_row else ChunkPool)(f, budget)
            for f, budget in zip(schema, split_budget(schema, cache_bytes), strict=True)}
        self._reserve()

    @property
    def cached_bytes(self) -> int:
        """Bytes held by the caches now."""
        return sum(c.nbytes for c in self._caches.values())

    def _reserve(self) -> None:
        extent = self.manifest.extent
        for field in self.schema:
            cache = self._caches[field.name]
            if isinstance(cache, ChunkPool):
                cache.reserve(-(-extent // field.chunk_rows))

    def committed_mask(self, slots: np.ndarray) -> np.ndarray:
        """True where a slot holds a committed row of this snapshot."""
        m = self.manifest
        if m.capacity is None or m.end <= m.capacity:  # slots are rows: no wrap (yet)
            return (slots >= m.start) & (slots < m.end)
        if m.rows == m.capacity:  # a full ring: every slot (the modulo costs more)
            return (slots >= 0) & (slots < m.capacity)
        return (slots >= 0) & (slots < m.capacity) & ((slots - m.start) % m.capacity < m.rows)

    def check_slots(self, slots: np.ndarray) -> None:
        """Raise IndexError unless every slot holds a committed row of this snapshot."""
        bad = ~self.committed_mask(slots)
        if bad.any():
            first = slots[np.argmax(bad)]
            raise IndexError(f"slot {int(first)} holds no committed row: the store has "
                             f"{self.manifest.rows} rows ({self.describe_window()})")

    def describe_window(self) -> str:
        m = self.manifest
        if m.rows == 0:
            return "empty"
        if m.capacity is None:
            return f"slots {m.start}..{m.end - 1}"
        first, last = m.start % m.capacity, (m.end - 1) % m.capacity
        return f"slots {first}..{last}" + (" wrapping around the ring" if last < first else "")

    def get(self, slots: np.ndarray, names: Iterable[str],
            out: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Stored rows of committed ``slots`` (any shape) for the given fields, written into
        the arrays of ``out`` (checked by the caller) where it has the field."""
        flat = slots.reshape(-1)
        self.check_slots(flat)
        out = out or {}
        result = {}
        for name in names:
            shape = slots.shape + self.schema[name].shape
            dest = out.get(name)
            values = self.gather(name, flat, out=None if dest is None else
                                 dest.reshape(len(flat), *self.schema[name].shape))
            result[name] = values.reshape(shape) if dest is None else dest
        return result

    def gather(self, name: str, slots: np.ndarray, missing: np.ndarray | None = None,
               out: np.ndarray | None = None) -> np.ndarray:
        """Stored rows of one field at checked 1-D ``slots``, into ``out`` if given (a
        contiguous (len(slots), *shape) array); see ShardCache for ``missing``."""
        field = self.schema[name]
        cache = self._caches[name]
        if isinstance(cache, ChunkPool):
            return cache.gather(slots, lambda chunk, dest: self._load(field, chunk, dest), out)
        return cache.gather(slots, lambda chunk: self._load_shard(field, chunk), missing, out)

    def _read(self, field: Field, chunk: int) -> tuple[bytes, str]:
        key = chunk_key(field, chunk)
        try:
            data = self.backend.get(key, limit=max_stored_bytes(field.codec, field.chunk_rows,
                                                                 field.row_nbytes))
        except FileNotFoundError:
            self.check_identity()
            raise CorruptChunkError(f"chunk file {key!r} of field {field.name!r} is missing "
                                    "but holds committed rows", key=key, field=field.name) from None
        self.check_identity()  # after the read: a replacement before it is caught here
        return data, key

    def check_identity(self) -> None:
        """Raise StoreReplacedError if prune, compact or repair replaced the store's folder
        (a storage without a local folder has none to replace: nothing to check)."""
        if self._folder is None:
            return
        try:
            same = folder_identity(self._folder) == self._identity
        except FileNotFoundError:
            same = False
        if not same:
            raise StoreReplacedError(
                f"the store at {str(self._folder)!r} was replaced (pruned, compacted or "
                "repaired) after this reader opened it: its slots changed; open it again")

    def _load(self, field: Field, chunk: int, dest: np.ndarray) -> None:
        data, key = self._read(field, chunk)
        decode_chunk(field.codec, data, dest, key=key, field=field.name)
        self._check_fresh(field, chunk)

    def _load_shard(self, field: Field, chunk: int) -> tuple[bytes, str]:
        data, key = self._read(field, chunk)
        self._check_fresh(field, chunk)
        return data, key

    def _check_fresh(self, field: Field, chunk: int) -> None:
        """Refuse a chunk read after the ring writer began replacing this snapshot's rows in it."""
        m = self.manifest
        if m.capacity is None:
            return  # rows are never overwritten
        # A ring: even a snapshot from before the first wrap may have been overwritten since.
        current = load_manifest(self.backend)
        if current.generation == m.generation and current.start <= m.start:
            return
        lost_slots = _slot_ranges(m.start, max(m.start, min(current.start, m.end)), m.capacity)
        lo = chunk * field.chunk_rows
        hi = lo + field.chunk_rows
        if current.generation != m.generation or any(a < hi and lo < b for a, b in lost_slots):
            raise StaleReadError(
                f"rows of this reader's snapshot in field {field.name!r} chunk {chunk} were "
                "overwritten by the writer; call refresh() and read again")

    def refresh(self, manifest: Manifest | None = None) -> bool:
        """Move to ``manifest`` (default: the newest on disk); True if anything changed."""
        self.check_identity()
        new = manifest if manifest is not None else load_manifest(self.backend)
        if new.commit_seq == self.manifest.commit_seq:
            return False
        old, self.manifest = self.manifest, new
        self._reserve()
        if new.generation != old.generation:
            for cache in self._caches.values():
                cache.clear()
            return True
        if new.end == old.end:
            return new.start != old.start
        changed = _slot_ranges(old.end, new.end, new.capacity)
        for field in self.schema:
            chunks = [np.arange(a // field.chunk_rows, (b - 1) // field.chunk_rows + 1)
                      for a, b in changed]
            self._caches[field.name].invalidate(np.concatenate(chunks))
        return True


MIN_CHUNKS = 4  # decoded chunks each chunked field keeps when the budget allows
NEXT_OF_SHARE = 16  # a next_of field stores about one row in an episode


def split_budget(schema: Schema, cache_bytes: int) -> list[int]:
    """Each field's share of ``cache_bytes``, which the shares never exceed together.

    Shares follow the bytes a field stores per row: its row size, or a sixteenth of it for a
    ``next_of`` field, which stores only episode ends. Split that way alone, a field of small
    rows next to frames would get less than one of its chunks (8-byte actions beside 7 KB
    frames: 0.1%) and decode a chunk for every read. So each chunked field first gets
    ``MIN_CHUNKS`` chunks (~1 MiB each by default) when all of those fit in half the budget.
    """
    weights = [f.row_nbytes // NEXT_OF_SHARE if f.next_of else f.row_nbytes for f in schema]
    total = max(1, sum(weights))
    floors = [0 if f.codec.per_row else MIN_CHUNKS * f.chunk_rows * f.row_nbytes
              for f in schema]
    if not 0 < sum(floors) <= cache_bytes // 2:
        floors = [0] * len(floors)
    rest = cache_bytes - sum(floors)
    return [floor + rest * weight // total
            for weight, floor in zip(weights, floors, strict=True)]


def _slot_ranges(first: int, stop: int, capacity: int | None) -> list[tuple[int, int]]:
    """The slot intervals ``[a, b)`` holding global rows ``[first, stop)``."""
    if stop <= first:
        return []
    if capacity is None:
        return [(first, stop)]
    if stop - first >= capacity:
        return [(0, capacity)]
    a, b = first % capacity, stop % capacity
    if a < b:
        return [(a, b)]
    return [(a, capacity)] + ([(0, b)] if b else [])
