"""The episode table: one record per finished episode, maintained incrementally as rows arrive.

Finished episodes are stored in fixed-size binary blocks (4096 records, crc32c-protected), so a
commit rewrites at most the last block and opening a store reads no block at all until someone
asks for the table. The episode in progress lives in the manifest.
"""

from __future__ import annotations

import numpy as np

from .codecs import CHECKSUM_BYTES, crc_bytes
from .errors import CorruptStoreError
from .layout import episode_block_key
from .storage.base import Storage

BLOCK = 4096
RECORD = np.dtype([("start", "<i8"), ("length", "<i8"), ("return", "<f8"),
                   ("terminated", "?"), ("truncated", "?"), ("_pad", "V6")])
PUBLIC_FIELDS = ["start", "length", "return", "terminated", "truncated"]


class EpisodeTable:
    """Finished episodes ``[0, count)`` plus the episode in progress.

    ``start`` of a record is the global row number of its first step; episodes whose first rows
    were overwritten by the ring are left out of :meth:`finished`.
    """

    def __init__(self, count: int = 0, open_episode: tuple[int, int, float] | None = None,
                 persisted: int | None = None) -> None:
        self.count = count
        self.persisted = count if persisted is None else persisted
        self.open_start, self.open_length, self.open_return = open_episode or (0, 0, 0.0)
        self._tail_base = (self.persisted // BLOCK) * BLOCK
        self._tail = np.zeros(0, RECORD)  # records [tail_base, count), loaded lazily
        self._tail_loaded = self._tail_base == self.persisted

    @property
    def open_episode(self) -> tuple[int, int, float] | None:
        if self.open_length == 0:
            return None
        return (self.open_start, self.open_length, self.open_return)

    def observe_one(self, row: int, reward: float, terminated: bool, truncated: bool) -> None:
        """Account for one appended row with global number ``row``."""
        if self.open_length == 0:
            self.open_start, self.open_return = row, 0.0
        self.open_length += 1
        self.open_return += reward
        if terminated or truncated:
            self._finish([(self.open_start, self.open_length, self.open_return,
                           bool(terminated), bool(truncated), b"")])

    def observe(self, first_row: int, rewards: np.ndarray, terminated: np.ndarray,
                truncated: np.ndarray) -> None:
        """Account for a batch of rows with global numbers ``first_row, first_row + 1, ...``."""
        ends = np.flatnonzero(terminated | truncated)
        if len(ends) == 0:
            if self.open_length == 0:
                self.open_start, self.open_return = first_row, 0.0
            self.open_length += len(rewards)
            self.open_return += float(rewards.sum(dtype=np.float64))
            return
        starts = np.concatenate(([0], ends[:-1] + 1))
        returns = np.add.reduceat(rewards[: ends[-1] + 1].astype(np.float64), starts)
        records = np.zeros(len(ends), RECORD)
        records["start"] = first_row + starts
        records["length"] = ends - starts + 1
        records["return"] = returns
        if self.open_length:
            records["start"][0] = self.open_start
            records["length"][0] += self.open_length
            records["return"][0] += self.open_return
        records["terminated"] = terminated[ends]
        records["truncated"] = truncated[ends]
        self._finish(records)
        rest = rewards[ends[-1] + 1:]
        self.open_start = first_row + int(ends[-1]) + 1
        self.open_length = len(rest)
        self.open_return = float(rest.sum(dtype=np.float64))

    def _finish(self, records: object) -> None:
        new = np.array(records, RECORD) if not isinstance(records, np.ndarray) else records
        self._tail = np.concatenate((self._tail, new))
        self.count += len(new)
        self.open_length, self.open_return = 0, 0.0

    def persist(self, backend: Storage) -> list[str]:
        """Write the blocks holding unpersisted episodes (not durable: the caller syncs the keys)."""
        if self.count == self.persisted:
            return []
        self._load_tail(backend)
        keys = []
        for block in range(self._tail_base // BLOCK, (self.count - 1) // BLOCK + 1):
            lo = block * BLOCK - self._tail_base
            payload = self._tail[lo:lo + BLOCK].tobytes()
            key = episode_block_key(block)
            backend.put(key, payload + crc_bytes(payload))
            keys.append(key)
        self.persisted = self.count
        keep_from = (self.count // BLOCK) * BLOCK
        self._tail = self._tail[keep_from - self._tail_base:]
        self._tail_base = keep_from
        return keys

    def _load_tail(self, backend: Storage) -> None:
        if not self._tail_loaded:
            block = read_block(backend, self._tail_base // BLOCK)[: self.persisted - self._tail_base]
            self._tail = np.concatenate((block, self._tail))
            self._tail_loaded = True

    def finished(self, backend: Storage, first_row: int = 0, *,
                 clip: bool = False) -> np.ndarray:
        """Finished episodes whose first row is still stored (global row >= ``first_row``).

        With ``clip``, also the episode whose first rows were overwritten, shortened to the rows
        still stored.
        """
        self._load_tail(backend)
        blocks = []
        tail = self._tail[: self.count - self._tail_base]
        # Episodes are contiguous, so the blocks before one that starts at or before
        # ``first_row`` hold none of the wanted episodes (a ring's writer deletes them).
        older = range(self._tail_base // BLOCK - 1, -1, -1)
        if len(tail) and tail["start"][0] <= first_row:
            older = range(0)
        for block in older:
            records = read_block(backend, block)
            blocks.append(records)
            if records["start"][0] <= first_row:
                break
        table = np.concatenate([*reversed(blocks), tail])
        if not clip:
            return table[table["start"] >= first_row][PUBLIC_FIELDS]
        table = table[table["start"] + table["length"] > first_row]
        cut = np.maximum(first_row - table["start"], 0)
        table["start"] += cut
        table["length"] -= cut
        return table[PUBLIC_FIELDS]


def retire_blocks(backend: Storage, table: EpisodeTable, first_row: int, oldest: int,
                  oldest_end: int | None = None) -> tuple[int, int | None]:
    """Delete the persisted blocks, from block ``oldest`` on, whose episodes all end at or before
    global row ``first_row`` (a ring's window start), so that a ring's episode table stays
    bounded. The block holding unpersisted records is kept.

    ``oldest_end`` is where block ``oldest``'s last episode ends, if known (from the previous
    call): the block is then not read again at every commit. Returns the oldest block kept and
    its end (None where unknown). Call it only after a manifest whose window starts at
    ``first_row`` is durable.
    """
    last_full = table.persisted // BLOCK  # blocks below this one are full and final
    while oldest < last_full:
        if oldest_end is None:
            records = read_block(backend, oldest)
            oldest_end = int(records["start"][-1] + records["length"][-1])
        if oldest_end > first_row:
            break
        backend.delete(episode_block_key(oldest))
        oldest, oldest_end = oldest + 1, None
    return oldest, oldest_end


def read_block(backend: Storage, block: int) -> np.ndarray:
    key = episode_block_key(block)
    try:
        data = backend.get(key, limit=BLOCK * RECORD.itemsize + CHECKSUM_BYTES)
    except FileNotFoundError:
        raise CorruptStoreError(f"episode block {key!r} is missing", key=key) from None
    payload = data[:-CHECKSUM_BYTES]
    if (len(data) < CHECKSUM_BYTES or len(payload) % RECORD.itemsize
            or crc_bytes(payload) != data[-CHECKSUM_BYTES:]):
        raise CorruptStoreError(f"episode block {key!r} is truncated or fails its checksum",
                                key=key)
    return np.frombuffer(payload, RECORD).copy()
