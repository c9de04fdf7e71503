"""Byte-budgeted caches between chunk files and ``get``: decoded chunks, or compressed shards.

``ChunkPool`` keeps decoded chunks of one field in a single preallocated array of "pool slots"
(untouched slots cost no memory), with a chunk → pool-slot table. A warm gather is then a few
vectorised numpy operations whatever the number of chunks a batch touches, which is what lets
a 256-row random batch cost microseconds. Eviction is least-recently-used. When every chunk
of the field fits the budget, chunk ``c`` goes to pool slot ``c``; once all are loaded the
pool *is* the field, and a gather is a single ``take`` by slot.

``ShardCache`` keeps the *compressed* shards of a per-row field (a few times smaller than the
decoded rows) and decodes only the rows a read asks for.

Both are keyed by chunk number only; the reader invalidates chunks that a refresh shows were
rewritten, and drops everything when the store's generation changes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .codecs import buffer_address, decode_rows, parse_shard
from .schema import Field

ChunkLoader = Callable[[int, np.ndarray], None]
ShardLoader = Callable[[int], tuple[bytes, str]]


class ChunkPool:
    """Decoded chunks of one ``chunks``-layout field, at most ``budget`` bytes of them."""

    def __init__(self, field: Field, budget: int) -> None:
        self.field = field
        self.rows = field.chunk_rows
        self.chunk_nbytes = self.rows * field.row_nbytes
        self.max_slots = budget // self.chunk_nbytes  # 0: decode on every read, keep nothing
        self._data = np.empty((0, self.rows, *field.shape), field.dtype)
        self._flat = self._data.reshape(-1, *field.shape)
        rows = self.rows
        self._shift = rows.bit_length() - 1 if rows & (rows - 1) == 0 else None
        self._table = np.full(0, -1, np.int64)
        self._owner = np.full(0, -1, np.int64)
        self._used = np.zeros(0, np.int64)
        self._tick = 0
        self._chunks = 0  # chunks of the field's extent (see reserve)
        self._direct: bool | None = False  # pool slot c holds chunk c for every chunk; None: unknown

    @property
    def nbytes(self) -> int:
        """Bytes of decoded chunks held now."""
        return int(np.count_nonzero(self._owner >= 0)) * self.chunk_nbytes

    def gather(self, slots: np.ndarray, load: ChunkLoader,
               out: np.ndarray | None = None) -> np.ndarray:
        """Rows at ``slots`` (store slots), loading missing chunks with ``load(chunk, dest)``;
        into ``out`` (rows, *shape) when given.

        The caller guarantees ``0 <= slots`` and has sized the table with :meth:`reserve`.
        """
        if self._direct is None:
            n = self._chunks
            self._direct = bool(n) and np.array_equal(self._table[:n], np.arange(n))
        if self._direct:
            return self._flat.take(slots, axis=0, out=out)
        if self._shift is not None:
            chunks, offsets = slots >> self._shift, slots & (self.rows - 1)
        else:
            chunks, offsets = np.divmod(slots, self.rows)
        pool = self._table[chunks]
        self._tick += 1
        if pool.size and pool.min() < 0:
            needed = np.unique(chunks)
            if len(needed) > self.max_slots:
                return self._gather_in_passes(chunks, offsets, needed, load, out)
            self._used[self._table[needed][self._table[needed] >= 0]] = self._tick
            for chunk in needed[self._table[needed] < 0]:
                self._load(int(chunk), load)
            pool = self._table[chunks]
            if pool.min() < 0:  # a load moved out a chunk this batch needs (see _slot_for)
                return self._gather_in_passes(chunks, offsets, needed, load, out)
        self._used[pool] = self._tick
        # One flat take is ~4x faster than indexing the 2-D (pool slot, offset) pair.
        return self._flat.take(pool * self.rows + offsets, axis=0, out=out)

    def reserve(self, chunks: int) -> None:
        """Make room in the chunk table for chunk numbers below ``chunks`` (the extent)."""
        if chunks != self._chunks:
            self._chunks, self._direct = chunks, None
        if chunks > len(self._table):
            extra = max(chunks, 2 * len(self._table)) - len(self._table)
            self._table = np.concatenate((self._table, np.full(extra, -1, np.int64)))

    def _gather_in_passes(self, chunks: np.ndarray, offsets: np.ndarray, needed: np.ndarray,
                          load: ChunkLoader, out: np.ndarray | None) -> np.ndarray:
        # A batch touching more chunks than the budget holds: serve it chunk by chunk.
        if out is None:
            out = np.empty((len(chunks), *self.field.shape), self.field.dtype)
        scratch = None if self.max_slots else np.empty(self._data.shape[1:], self._data.dtype)
        for chunk in needed:
            mask = chunks == chunk
            if scratch is not None:
                load(int(chunk), scratch)
                out[mask] = scratch[offsets[mask]]
                continue
            slot = self._table[chunk]
            if slot < 0:
                slot = self._load(int(chunk), load)
            out[mask] = self._data[slot, offsets[mask]]
            self._used[slot] = self._tick
        return out

    def _load(self, chunk: int, load: ChunkLoader) -> int:
        self._direct = None
        slot = self._slot_for(chunk)
        load(chunk, self._data[slot])
        self._table[chunk] = slot
        self._owner[slot] = chunk
        self._used[slot] = self._tick
        return slot

    def _slot_for(self, chunk: int) -> int:
        """Pool slot ``chunk`` when every chunk of the extent fits, else any free slot (LRU)."""
        if self._chunks > self.max_slots:
            return self._free_slot()
        if chunk >= len(self._owner):
            self._grow_pool(min(self.max_slots, max(chunk + 1, 4, 2 * len(self._owner))))
        if self._owner[chunk] >= 0:  # filled before the extent fit: move its chunk out
            self._table[self._owner[chunk]] = -1
        self._owner[chunk] = -1
        return chunk

    def _free_slot(self) -> int:
        free = np.flatnonzero(self._owner < 0)
        if len(free):
            return int(free[0])
        if len(self._owner) < self.max_slots:
            self._grow_pool(min(self.max_slots, max(4, 2 * len(self._owner))))
            return self._free_slot()
        slot = int(np.argmin(self._used))
        self._table[self._owner[slot]] = -1
        self._owner[slot] = -1
        return slot

    def _grow_pool(self, slots: int) -> None:
        data = np.empty((slots, self.rows, *self.field.shape), self.field.dtype)
        data[: len(self._data)] = self._data
        self._data = data
        self._flat = data.reshape(-1, *self.field.shape)
        grow = slots - len(self._owner)
        self._owner = np.concatenate((self._owner, np.full(grow, -1, np.int64)))
        self._used = np.concatenate((self._used, np.zeros(grow, np.int64)))

    def invalidate(self, chunks: np.ndarray) -> None:
        """Forget the given chunks (their files changed)."""
        self._direct = None
        chunks = chunks[chunks < len(self._table)]
        slots = self._table[chunks]
        slots = slots[slots >= 0]
        self._owner[slots] = -1
        self._used[slots] = 0
        self._table[chunks] = -1

    def clear(self) -> None:
        self.invalidate(np.arange(len(self._table)))


@dataclass
class _Shard:
    """A shard's compressed bytes and the (offset, length) of each row; length 0: missing."""

    key: str
    data: memoryview
    address: int
    offsets: list[int]
    lengths: list[int]
    verified: bytearray  # rows whose crc32c was checked (on first decode)


class ShardCache:
    """Compressed shards of one ``rows``-layout field, at most ``budget`` bytes of them."""

    def __init__(self, field: Field, budget: int) -> None:
        self.field = field
        self.rows = field.chunk_rows
        self.budget = budget
        self._shards: OrderedDict[int, _Shard] = OrderedDict()
        self.nbytes = 0

    def gather(self, slots: np.ndarray, load: ShardLoader, missing: np.ndarray | None = None,
               out: np.ndarray | None = None) -> np.ndarray:
        """Rows at ``slots``, decoding only those rows from their (cached) compressed shards,
        straight into ``out`` when given.

        Rows a shard does not hold raise, or with ``missing`` (a bool array) are flagged there.
        """
        if out is None:
            out = np.empty((len(slots), *self.field.shape), self.field.dtype)
        chunks, offsets = np.divmod(slots, self.rows)
        chunk_list = chunks.tolist()
        # Look each shard up (or load it) once per batch; holding them here keeps a shard
        # usable even if a later load of this batch evicts it from the cache.
        shards = {chunk: self._get(chunk, load) for chunk in dict.fromkeys(chunk_list)}
        decode_rows([shards[c] for c in chunk_list], offsets.tolist(), out,
                    field=self.field.name, missing=missing)
        return out

    def _get(self, chunk: int, load: ShardLoader) -> _Shard:
        shard = self._shards.get(chunk)
        if shard is None:
            return self._load(chunk, load)
        self._shards.move_to_end(chunk)
        return shard

    def _load(self, chunk: int, load: ShardLoader) -> _Shard:
        data, key = load(chunk)
        offsets, lengths = parse_shard(data, self.rows, self.field.row_nbytes, key=key,
                                       field=self.field.name)
        shard = _Shard(key, memoryview(data), buffer_address(data), offsets, lengths,
                       bytearray(self.rows))
        self._shards[chunk] = shard
        self.nbytes += len(data)
        while self.nbytes > self.budget and len(self._shards) > 1:
            _, old = self._shards.popitem(last=False)
            self.nbytes -= len(old.data)
        return shard

    def invalidate(self, chunks: np.ndarray) -> None:
        for chunk in chunks.tolist():
            old = self._shards.pop(chunk, None)
            if old is not None:
                self.nbytes -= len(old.data)

    def clear(self) -> None:
        self._shards.clear()
        self.nbytes = 0
