"""The write path: rows buffered in RAM per open chunk, written as whole chunk files, committed.

Each field keeps the one chunk (or shard) that rows are going into as a numpy buffer. A chunk is
written when it fills, and at every commit while partly filled (later rewritten, atomically,
when it fills). Commit order: chunk files and episode blocks fsynced, then the manifest replaced
atomically; the manifest is the only thing that makes rows visible.

Ring capacity: row ``g`` goes to slot ``g % capacity``. Before a chunk file that replaces
committed rows is written, the committed window is shrunk past them with a manifest-only commit
(:meth:`Writer._guard`), so no reachable state shows a committed row whose bytes were replaced.
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np

from .codecs import (
    decode_chunk,
    encode_chunk,
    encode_row,
    encode_shard,
    max_stored_bytes,
    parse_shard,
)
from .episodes import EpisodeTable, retire_blocks
from .errors import CorruptChunkError, CorruptStoreError, SyncError, WriterFailedError
from .layout import META, array_document, array_key, chunk_key, dumps, episode_block_key
from .manifest import Manifest, commit_manifest
from .schema import Field, Schema
from .storage.base import Storage


class _FieldBuffer:
    """The open chunk of one field: rows ``[base, base + len)`` of the slot space."""

    def __init__(self, field: Field, slot_count: int | None, source: int = -1) -> None:
        self.field = field
        # A next_of field: the schema position of the field it is derived from, else -1.
        self.source = source
        self.rows = field.chunk_rows
        self.slot_count = slot_count
        self.buffer = np.zeros((self.rows, *field.shape), field.dtype)
        self.chunk = -1
        self.base = 0
        self.end = 0  # first slot past this chunk
        self.newest = -1  # newest global row written into the buffer
        self.dirty = False
        # Per-row layout: each row's encoded bytes (None: never written) and which rows
        # changed since they were last encoded.
        self.encoded: list[bytes | None] = [None] * self.rows
        self.stale = np.zeros(self.rows, bool)
        # Rows to store; a next_of field keeps only episode ends and the newest row.
        self.keep = np.ones(self.rows, bool)

    def open(self, chunk: int, backend: Storage) -> None:
        """Start filling ``chunk``, keeping whatever committed rows its file already holds."""
        self.chunk, self.base = chunk, chunk * self.rows
        self.end = self.base + self.rows
        if self.slot_count is not None:
            self.end = min(self.end, self.slot_count)
        self.newest, self.dirty = -1, False
        self.buffer[:] = 0
        self.encoded = [None] * self.rows
        self.stale[:] = False
        key = chunk_key(self.field, chunk)
        try:
            data = backend.get(key, limit=max_stored_bytes(self.field.codec, self.rows,
                                                            self.field.row_nbytes))
        except FileNotFoundError:
            return
        except CorruptStoreError:
            return  # not a chunk the writer made (verify names it): start the chunk afresh
        try:
            if self.field.codec.per_row:
                offsets, lengths = parse_shard(data, self.rows, self.field.row_nbytes, key=key,
                                               field=self.field.name)
                self.encoded = [data[o:o + n] if n else None
                                for o, n in zip(offsets, lengths, strict=True)]
            else:
                decode_chunk(self.field.codec, data, self.buffer, key=key, field=self.field.name)
        except CorruptChunkError:
            # A chunk we cannot read holds no committed row we could keep (verify reports it);
            # start it afresh rather than refuse to write.
            self.buffer[:] = 0
            self.encoded = [None] * self.rows

    def encode(self) -> bytes:
        if not self.field.codec.per_row:
            return encode_chunk(self.field.codec, self.buffer)
        for i in np.flatnonzero(self.stale).tolist():
            self.encoded[i] = encode_row(self.field.codec, self.buffer[i]) if self.keep[i] else None
        self.stale[:] = False
        return encode_shard(self.encoded)


def _rows_differ(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, whether two arrays of rows differ in any byte (NaN payloads and -0.0 count)."""
    n = len(a)
    a = np.ascontiguousarray(a).reshape(n, -1).view(np.uint8)
    b = np.ascontiguousarray(b).reshape(n, -1).view(np.uint8)
    return np.any(a != b, axis=1)


class PublishHooks(Protocol):
    """What the store does around each manifest replacement (priority index, samplers)."""

    def before_publish(self, old: Manifest, new: Manifest, full: bool) -> Manifest: ...

    def after_publish(self, manifest: Manifest, full: bool) -> None: ...


class Writer:
    """Appends rows to a store and commits them; one per store at a time (see lock.py)."""

    def __init__(self, backend: Storage, schema: Schema, manifest: Manifest, *,
                 commit_every_rows: int, commit_every_seconds: float,
                 hooks: PublishHooks) -> None:
        self.backend = backend
        self.schema = schema
        self.manifest = manifest
        self.capacity = manifest.capacity
        self.position = manifest.end
        self.episodes = EpisodeTable(manifest.episodes, manifest.open_episode)
        self.commit_every_rows = commit_every_rows
        self.commit_every_seconds = commit_every_seconds
        self._hooks = hooks
        self._fields = [_FieldBuffer(f, self.capacity,
                                     -1 if f.next_of is None else schema.names.index(f.next_of))
                        for f in schema]
        self._reward = schema.names.index("reward")
        self._terminated = schema.names.index("terminated")
        self._truncated = schema.names.index("truncated")
        self._unsynced: set[str] = set()
        self._last_commit = time.monotonic()
        self._extent_written = -1
        self._failed: SyncError | None = None
        # The oldest episode block on disk and where its episodes end (None: not known yet).
        self._oldest_block: tuple[int | None, int | None] = (None, None)

    @property
    def pending(self) -> int:
        """Rows appended since the last commit."""
        return self.position - self.manifest.end

    def slot(self, row: int) -> int:
        return row if self.capacity is None else row % self.capacity

    def append(self, values: list[np.ndarray]) -> None:
        """Append one validated row (values in schema order)."""
        if self._failed is not None:
            self._check_usable()
        try:
            self._append(values)
        except SyncError as exc:
            self._failed = exc
            raise

    def _append(self, values: list[np.ndarray]) -> None:
        row = self.position
        slot = self.slot(row)
        done = bool(values[self._terminated]) or bool(values[self._truncated])
        for buf, value in zip(self._fields, values, strict=True):
            if buf.source >= 0:
                self._check_previous(buf, values)
            if not buf.base <= slot < buf.end:
                self._switch(buf, slot)
            i = slot - buf.base
            buf.buffer[i] = value
            buf.stale[i] = True
            if buf.source >= 0:
                buf.keep[i] = done
            buf.newest, buf.dirty = row, True
            if slot + 1 == buf.end:
                self._flush(buf)
        self.position = row + 1
        self.episodes.observe_one(row, float(values[self._reward]),
                                  bool(values[self._terminated]),
                                  bool(values[self._truncated]))
        self._maybe_autocommit()

    def extend(self, values: list[np.ndarray], count: int) -> None:
        """Append ``count`` validated rows (arrays in schema order, leading axis = rows)."""
        self._check_usable()
        try:
            self._extend(values, count)
        except SyncError as exc:
            self._failed = exc
            raise

    def _extend(self, values: list[np.ndarray], count: int) -> None:
        first = self.position
        ends = values[self._terminated] | values[self._truncated]
        keeps = {i: self._next_kept(buf, values[i], values, ends)
                 for i, buf in enumerate(self._fields) if buf.source >= 0}
        copied = 0
        while copied < count:
            slot = self.slot(first + copied)
            # Rows until the ring wraps; each field then splits the run at its chunk ends.
            run = count - copied
            if self.capacity is not None:
                run = min(run, self.capacity - slot)
            part = slice(copied, copied + run)
            for i, (buf, array) in enumerate(zip(self._fields, values, strict=True)):
                keep = keeps.get(i)
                self._copy_run(buf, array[part], None if keep is None else keep[part],
                               first + copied, slot)
            copied += run
        self.position = first + count
        self.episodes.observe(first, values[self._reward], values[self._terminated],
                              values[self._truncated])
        self._maybe_autocommit()

    def _next_kept(self, buf: _FieldBuffer, given: np.ndarray, values: list[np.ndarray],
                   ends: np.ndarray) -> np.ndarray:
        """Which new rows of a ``next_of`` field must be stored: episode ends, and rows whose
        given value is not the following row's target value (which is what a read would
        return in its place), so that no given value is ever returned differently.

        The row appended before these is checked too: it is still in the field's buffer (a
        buffer's newest row is always stored when the buffer is written; see _flush).
        """
        source = values[buf.source]
        keep = ends.copy()
        if len(given) > 1:
            keep[:-1] |= _rows_differ(given[:-1], source[1:])
        self._check_previous(buf, [v[0] for v in values])
        return keep

    def _check_previous(self, buf: _FieldBuffer, row: list[np.ndarray]) -> None:
        """Store the previous row's given value of ``next_of`` field ``buf`` where the new
        ``row`` (values in schema order) does not continue it."""
        previous = self.slot(self.position - 1) if self.position else -1
        if buf.base <= previous < buf.end:
            i = previous - buf.base
            source = np.asarray(row[buf.source])
            if not buf.keep[i] and _rows_differ(buf.buffer[i:i + 1], source[None])[0]:
                buf.keep[i] = buf.stale[i] = buf.dirty = True

    def _check_usable(self) -> None:
        """Refuse to go on after a failed fsync: the kernel may have dropped pages that this
        writer no longer holds, and a later fsync would report success over them."""
        if self._failed is not None:
            raise WriterFailedError(
                f"this writer cannot commit any more: {self._failed}; the rows appended since "
                "the last commit may be lost. Close the store and open it again to continue "
                "from the last commit") from self._failed

    def _copy_run(self, buf: _FieldBuffer, rows: np.ndarray, keep: np.ndarray | None,
                  first_row: int, slot: int) -> None:
        k = 0
        while k < len(rows):
            if not buf.base <= slot + k < buf.end:
                self._switch(buf, slot + k)
            i = slot + k - buf.base
            n = min(len(rows) - k, buf.end - (slot + k))
            buf.buffer[i:i + n] = rows[k:k + n]
            buf.stale[i:i + n] = True
            if keep is not None:
                buf.keep[i:i + n] = keep[k:k + n]
            buf.newest, buf.dirty = first_row + k + n - 1, True
            k += n
            if slot + k == buf.end:
                self._flush(buf)

    def _switch(self, buf: _FieldBuffer, slot: int) -> None:
        if buf.dirty:
            self._flush(buf)
        buf.open(slot // buf.rows, self.backend)

    def _flush(self, buf: _FieldBuffer) -> None:
        if not buf.dirty:
            return
        if buf.field.next_of is not None:
            # The newest row's successor is not in this buffer (it comes later, or goes to
            # another chunk): keep its given value, which a read returns while it is stored.
            i = self.slot(buf.newest) - buf.base
            buf.keep[i] = buf.stale[i] = True
        self._guard(buf.newest)
        key = chunk_key(buf.field, buf.chunk)
        self.backend.put(key, buf.encode())
        self._unsynced.add(key)
        buf.dirty = False

    def _guard(self, newest_row: int) -> None:
        """Shrink the committed window past the rows a write up to ``newest_row`` replaces."""
        if self.capacity is None:
            return
        first_kept = min(newest_row + 1 - self.capacity, self.manifest.end)
        if first_kept > self.manifest.start:
            self._publish(self.manifest.replace(start=first_kept))

    def _maybe_autocommit(self) -> None:
        pending = self.position - self.manifest.end
        if pending >= self.commit_every_rows or (
                pending and time.monotonic() - self._last_commit >= self.commit_every_seconds):
            self.commit()

    def commit(self) -> Manifest:
        """Make every appended row durable and visible; returns the new manifest."""
        self._check_usable()
        try:
            return self._commit()
        except SyncError as exc:
            self._failed = exc
            raise

    def _commit(self) -> Manifest:
        self._guard(self.position - 1)  # one shrink for all the flushes below
        for buf in self._fields:
            self._flush(buf)
        self._unsynced.update(self.episodes.persist(self.backend))
        self.backend.sync(sorted(self._unsynced))
        self._unsynced.clear()
        end = self.position
        start = self.manifest.start if self.capacity is None else max(
            self.manifest.start, end - self.capacity)
        self._publish(self.manifest.replace(
            start=start, end=end, episodes=self.episodes.count,
            open_episode=self.episodes.open_episode), full=True)
        self._last_commit = time.monotonic()
        self.sync_array_shapes()
        if self.capacity is not None:
            self._retire_episode_blocks()
        return self.manifest

    def _retire_episode_blocks(self) -> None:
        """Delete episode blocks the ring has left behind: without this a ring's disk use grows
        with every episode it ever saw."""
        oldest, end = self._oldest_block
        if oldest is None:
            prefix = episode_block_key(0).rsplit(".", 1)[0]
            numbers = [int(key.rsplit(".", 1)[1]) for key in self.backend.list(META)
                       if key.rsplit(".", 1)[0] == prefix]
            oldest = min(numbers, default=0)
        self._oldest_block = retire_blocks(self.backend, self.episodes, self.manifest.start,
                                           oldest, end)

    def _publish(self, manifest: Manifest, *, full: bool = False) -> None:
        """Replace the manifest; ``full`` for a commit (not a ring guard's shrink)."""
        manifest = self._hooks.before_publish(self.manifest, manifest, full)
        self.manifest = commit_manifest(self.backend, manifest)
        self._hooks.after_publish(self.manifest, full)

    def sync_array_shapes(self) -> None:
        """Bring each zarr array's shape to the committed extent (after a commit or a crash).

        zarr readers then see exactly the committed slots. The shapes are derived data, so they
        are written after the manifest and repaired when a writer opens the store.
        """
        extent = self.manifest.extent
        if extent == self._extent_written:
            return
        for field in self.schema:
            self.backend.put(array_key(field.name), dumps(array_document(field, extent)))
        self._extent_written = extent
