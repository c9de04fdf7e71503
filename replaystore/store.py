"""The Store: create or open a replay store, append and commit rows, read them back."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import frames, priority
from .codecs import decode_chunk, max_stored_bytes, parse_shard
from .commitstate import CommitState
from .episodes import EpisodeTable
from .errors import (
    ClosedError,
    CorruptStoreError,
    FormatVersionError,
    ReadOnlyError,
    SchemaError,
    StaleReadError,
    StoreExistsError,
    StoreNotFoundError,
)
from .layout import (
    FORMAT_VERSION,
    GROUP,
    JSON_LIMIT,
    LOCK,
    MANIFEST,
    META_GROUP,
    array_document,
    array_key,
    chunk_key,
    dumps,
    group_document,
    loads,
    meta_group_document,
)
from .lock import WriterLock
from .manifest import MAX_ROWS, Manifest, commit_manifest, load_manifest
from .priority import PriorityIndex
from .reader import Reader
from .schema import FieldSpec, Schema
from .storage import LocalStorage, open_storage
from .writer import Writer

DEFAULT_CACHE_BYTES = 512 << 20
DEFAULT_COMMIT_ROWS = 100_000
DEFAULT_COMMIT_SECONDS = 30.0
MANY_CHUNKS = 1 << 22  # chunks per field past which open() checks the newest one exists


class Store:
    """A replay store on disk. Make one with :func:`create`, reopen it with :func:`open`.

    Rows are addressed by *slot*: the position of a row in the field arrays. Without a capacity
    slot ``i`` is the ``i``-th row ever appended; with ``capacity=N`` row ``g`` lives in slot
    ``g % N`` (as in TorchRL's and cpprb's ring buffers), so a slot returned by a sampler keeps
    naming the same row until the ring overwrites it.

    Reads (``len``, ``get``, ``episodes``) see committed rows only. ``commit()`` makes every
    appended row durable and visible; rows are also committed automatically every
    ``commit_every_rows`` rows or ``commit_every_seconds`` seconds, and when a ``with`` block
    that opened the store for writing ends without an exception.

    Examples
    --------
    >>> import replaystore as rs, numpy as np, tempfile
    >>> path = tempfile.mkdtemp() + "/demo"
    >>> with rs.create(path, {"obs": ((3,), "float32"), "action": ((), "int64")}) as store:
    ...     store.append(obs=np.zeros(3), action=1, reward=1.0, terminated=False, truncated=False)
    >>> rs.open(path).get([0])["action"]
    array([1])
    """

    def __init__(self, backend: LocalStorage, schema: Schema, manifest: Manifest, *,
                 mode: Literal["r", "a"], cache_bytes: int, lock: WriterLock | None = None,
                 commit_every_rows: int = DEFAULT_COMMIT_ROWS,
                 commit_every_seconds: float = DEFAULT_COMMIT_SECONDS) -> None:
        self._backend = backend
        self.schema = schema
        self.mode = mode
        self._lock = lock
        self._cache_bytes = cache_bytes
        self._reader = Reader(backend, schema, manifest, cache_bytes)
        self._state = CommitState(backend, self._reader, writable=mode == "a")
        self._writer: Writer | None = None
        self._closed = False
        self._segments: tuple[int, np.ndarray, np.ndarray] = (-1, np.empty(0), np.empty(0))
        if mode == "a":
            self._writer = Writer(backend, schema, manifest, commit_every_rows=commit_every_rows,
                                  commit_every_seconds=commit_every_seconds, hooks=self._state)
            self._writer.sync_array_shapes()
            if priority.exists(backend):
                self._state.priority_index(None)  # repairs the index after a crash

    # -- description ---------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._backend.root

    @property
    def capacity(self) -> int | None:
        """Maximum rows kept (the ring size), or None for a store that grows without bound."""
        return self._reader.manifest.capacity

    @property
    def manifest(self) -> Manifest:
        """The committed snapshot this store object reads."""
        return self._reader.manifest

    def __len__(self) -> int:
        return self._reader.manifest.rows

    @property
    def pending(self) -> int:
        """Rows appended but not yet committed (0 for a reader)."""
        return self._writer.pending if self._writer else 0

    @property
    def cached_bytes(self) -> int:
        """Bytes of decoded chunks and compressed shards held in the read cache."""
        return self._reader.cached_bytes

    def __repr__(self) -> str:
        cap = f"capacity={self.capacity}" if self.capacity else "unbounded"
        state = "closed" if self._closed else f"mode={self.mode!r}"
        return (f"<replaystore.Store {str(self.path)!r}: {len(self)} rows, {cap}, "
                f"fields {', '.join(self.schema.names)}, {state}>")

    # -- writing ------------------------------------------------------------------------

    def _require_open(self) -> None:
        if self._closed:
            raise ClosedError(f"store {str(self.path)!r} is closed")

    def _require_writer(self) -> Writer:
        self._require_open()
        if self._writer is None:
            raise ReadOnlyError(f"store {str(self.path)!r} is open for reading; "
                                "open it with mode='a' to append")
        if self._lock is not None and not self._lock.owned:
            raise ReadOnlyError(f"store {str(self.path)!r} was opened for writing by another "
                                f"process (this one, {os.getpid()}, was forked from it); a "
                                "store has one writer: open it with mode='r' here to read")
        return self._writer

    def append(self, row: Mapping[str, Any] | None = None, /, **values: Any) -> None:
        """Append one transition, given as keyword arguments or a mapping.

        Every field of the schema is required. Values are checked (shape, lossless dtype)
        before anything is stored; a bad row raises :class:`~replaystore.SchemaError` and
        leaves the store unchanged.
        """
        writer = self._require_writer()
        if row is not None:
            values = {**row, **values}
        writer.append(self.schema.check_row(values))

    def extend(self, batch: Mapping[str, Any]) -> None:
        """Append a batch: a mapping of field name to array with a leading row axis."""
        writer = self._require_writer()
        arrays, count = self.schema.check_batch(batch)
        if count:
            writer.extend(arrays, count)

    def commit(self) -> Manifest:
        """Make all appended rows durable and visible to readers; returns the manifest."""
        return self._require_writer().commit()

    # -- reading ------------------------------------------------------------------------

    def get(self, indices: Any, fields: Iterable[str] | None = None, *,
            out: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Rows at the given slots, as ``{field: array}`` with shape ``indices.shape + field.shape``
        (``(stack, *shape)`` per row for stacked fields).

        ``indices`` may be any integer array-like (random, sorted, repeated). Slots that hold no
        committed row raise IndexError; ``fields`` limits the fields read. ``out`` maps fields
        to C-contiguous arrays of exactly that shape and dtype to read into (as numpy's
        ``out=``), e.g. pinned or shared memory; the result then holds those arrays.
        """
        self._require_open()
        slots = as_slots(indices)
        names = self.schema.names if fields is None else tuple(fields)
        if out is not None and not isinstance(out, Mapping):
            raise TypeError(f"out must map field names to arrays, got {type(out).__name__}")
        if out:
            self._check_out(out, names, slots.shape)
        if any(self.schema[name].derived for name in names):  # KeyError names unknown fields
            return frames.gather(self._reader, self.episode_segments()[0], slots, names, out)
        return self._reader.get(slots, names, out)

    def _check_out(self, out: Mapping[str, np.ndarray], names: tuple[str, ...],
                   shape: tuple[int, ...]) -> None:
        for name, dest in out.items():
            if name not in names:
                raise KeyError(f"out has field {name!r}, which is not read "
                               f"(fields: {', '.join(names)})")
            field = self.schema[name]
            want = shape + field.read_shape
            if not isinstance(dest, np.ndarray) or dest.shape != want or \
                    dest.dtype != field.dtype or not dest.flags.c_contiguous or \
                    not dest.flags.writeable:
                got = (f"shape {dest.shape} {dest.dtype}" if isinstance(dest, np.ndarray)
                       else type(dest).__name__)
                raise SchemaError(f"out[{name!r}] must be a writable C-contiguous array of "
                                  f"shape {want} {field.dtype}, got {got}")

    def slots(self) -> np.ndarray:
        """The slots of all committed rows, oldest first."""
        m = self._reader.manifest
        rows = np.arange(m.start, m.end, dtype=np.int64)
        return m.slot_of(rows)

    @property
    def episodes(self) -> np.ndarray:
        """Finished episodes still fully stored: a structured array with fields
        ``start`` (global row number of the first step), ``length``, ``return``,
        ``terminated`` and ``truncated``. ``start % capacity`` is its first slot in a ring."""
        return self.episode_table()

    def episode_table(self, *, clip: bool = False) -> np.ndarray:
        """Like :attr:`episodes`; with ``clip``, also the oldest episode's surviving rows when
        the ring overwrote its beginning.

        Raises StoreReplacedError when the store was pruned, compacted or repaired since this
        reader opened it (the episode blocks then describe other rows).
        """
        self._require_open()
        m = self._reader.manifest
        try:
            table = EpisodeTable(m.episodes, m.open_episode).finished(self._backend, m.start,
                                                                      clip=clip)
        except CorruptStoreError:
            self._reader.check_identity()  # a replaced store, rather than a damaged one
            if m.capacity is not None and load_manifest(self._backend).start > m.start:
                raise StaleReadError(
                    "the ring writer has moved past this reader's snapshot and retired the "
                    "episode records it named; call refresh() and read again") from None
            raise
        self._reader.check_identity()  # after the read: a replacement before it is caught
        return table

    def episode_segments(self) -> tuple[np.ndarray, np.ndarray]:
        """(first global row, length) of each run of committed rows within one episode, oldest
        first: the surviving tail of an episode the ring overwrote, finished episodes, and the
        episode in progress."""
        m = self._reader.manifest
        if self._segments[0] != m.commit_seq:
            table = self.episode_table(clip=True)
            starts = table["start"].astype(np.int64)
            lengths = table["length"].astype(np.int64)
            done = int(starts[-1] + lengths[-1]) if len(starts) else m.start
            if done < m.end:  # the episode in progress
                starts, lengths = np.append(starts, done), np.append(lengths, m.end - done)
            if len(starts) and starts[0] > m.start:  # rows before the first table entry
                starts = np.insert(starts, 0, m.start)
                lengths = np.insert(lengths, 0, int(starts[1] - m.start))
            self._segments = (m.commit_seq, starts, lengths)
        return self._segments[1], self._segments[2]

    def committed_mask(self, indices: Any) -> np.ndarray:
        """True for each slot that holds a committed row."""
        return self._reader.committed_mask(as_slots(indices))

    def refresh(self) -> bool:
        """Move this reader to the newest commit; True if it changed."""
        if self._writer is not None:
            return False
        changed = self._reader.refresh()
        if changed:
            self._state.refreshed()
        return changed

    # -- priorities and samplers ----------------------------------------------------------

    def has_priority_index(self) -> bool:
        """Whether the store has a priority index (made by a first prioritized sampler)."""
        return priority.exists(self._backend)

    def priority_index(self, alpha: float | None = None) -> PriorityIndex:
        """The store's memory-mapped priority index (see :mod:`replaystore.priority`).

        A store opened for writing creates it on first use, giving every committed row the
        priority 1; ``alpha`` (default 0.6) is fixed when it is created. Readers map it
        read-only and see the writer's updates as they happen.
        """
        self._require_open()
        return self._state.priority_index(alpha)

    def sampler_state(self, name: str) -> dict[str, Any] | None:
        """The state a sampler named ``name`` had at the last commit, if any."""
        return self._reader.manifest.state.get("samplers", {}).get(name)

    def register_sampler(self, name: str, sampler: Any) -> None:
        """Save ``sampler.state_dict()`` under ``name`` with every commit (writers only)."""
        if self._writer is not None:
            self._state.samplers[name] = sampler

    # -- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        """Release the writer lock; uncommitted rows are discarded (call commit() first).

        In a process forked from the writer's, closing only drops this copy: the lock and the
        priority index stay the writer's.
        """
        if self._closed:
            return
        try:
            if self._lock is None or self._lock.owned:
                self._state.close()
        finally:  # a failed index write (disk full) must not leave the store locked
            if self._lock is not None:
                self._lock.release()
                self._lock = None
            self._writer = None
            self._closed = True

    def __enter__(self) -> Store:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        # Commit only when the block succeeded: a failed block must not publish half its rows.
        if exc_type is None and self._writer is not None and not self._closed:
            self._writer.commit()
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_lock", None) is not None:
            self._lock.release()  # type: ignore[union-attr]

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """A store pickles as a *reader* of the same path: a writer is never duplicated (its
        lock and uncommitted rows stay in the process that opened it). Unpickling opens the
        store's newest commit with ``mode="r"``."""
        return _open_reader, (os.path.abspath(self.path), self._cache_bytes)


def _open_reader(path: str, cache_bytes: int) -> Store:
    return open(path, "r", cache_bytes=cache_bytes)


def as_slots(indices: Any) -> np.ndarray:
    """``indices`` as an int64 array; TypeError for non-integer values (2.9 is not a slot)."""
    slots = np.asarray(indices)
    if slots.dtype.kind not in "iu" and slots.size:
        raise TypeError(f"indices must be integers, got dtype {slots.dtype}")
    if slots.dtype == np.uint64 and slots.size and slots.max() > np.iinfo(np.int64).max:
        raise IndexError(f"slot {int(slots.max())} is out of range")
    return slots.astype(np.int64, copy=False)


def create(path: str | os.PathLike[str], fields: Mapping[str, FieldSpec] | Schema, *,
           capacity: int | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES,
           commit_every_rows: int = DEFAULT_COMMIT_ROWS,
           commit_every_seconds: float = DEFAULT_COMMIT_SECONDS,
           overwrite: bool = False) -> Store:
    """Create a new store at ``path`` and open it for writing.

    Parameters
    ----------
    path
        Directory to create; it must not exist or be empty (unless ``overwrite``).
    fields
        ``{name: (shape, dtype)}``, or ``{name: {"shape", "dtype", "codec", "chunk_rows"}}``.
        ``reward`` (float32), ``terminated`` and ``truncated`` (bool) are added when missing.
        Codecs default to raw chunks for small rows and per-row lz4hc shards for rows of
        1 KiB or more (see :mod:`replaystore.codecs`).
    capacity
        Ring size: once full, each new row replaces the oldest. None grows without bound.
    cache_bytes
        Budget of the read cache (decoded chunks, compressed shards), split across fields by
        row size.
    commit_every_rows, commit_every_seconds
        Auto-commit thresholds: a crash loses at most this window of appended rows.
    overwrite
        Delete an existing store at ``path`` first.

    Examples
    --------
    >>> import replaystore as rs, tempfile
    >>> store = rs.create(tempfile.mkdtemp() + "/hopper",
    ...                   {"obs": ((17,), "float32"), "action": ((6,), "float32"),
    ...                    "next_obs": ((17,), "float32")}, capacity=1_000_000)
    >>> store.schema.names
    ('obs', 'action', 'next_obs', 'reward', 'terminated', 'truncated')
    """
    schema = Schema.from_fields(fields)
    if capacity is not None and (not isinstance(capacity, int | np.integer)
                                 or isinstance(capacity, bool | np.bool_)
                                 or not 0 < capacity <= MAX_ROWS):
        raise SchemaError(f"capacity must be a positive integer up to {MAX_ROWS:,} (2**48) or "
                          f"None, got {capacity!r}")
    capacity = None if capacity is None else int(capacity)
    _check_thresholds(cache_bytes, commit_every_rows, commit_every_seconds)
    backend = open_storage(path)
    backend.finish_replace()  # a swap a crash interrupted: the store it left is the one here
    if not backend.is_empty():
        if not (overwrite or _interrupted_create(backend)):
            raise StoreExistsError(f"cannot create a store at {str(path)!r}: it exists and is "
                                   "not empty (pass overwrite=True to replace it)")
        if not any(backend.exists(key) for key in (MANIFEST, GROUP, LOCK)):
            raise StoreExistsError(f"refusing to overwrite {str(path)!r}: it holds files but "
                                   "no replay store")
        # The old store's writer lock first (WriterLockedError while a writer is live), held
        # until its folder has been moved out of the way in one rename.
        old_lock = backend.lock(LOCK)
        try:
            backend.finish_replace(locked=True)
            backend.discard()
        finally:
            old_lock.release()
    made = not backend.root.exists()
    backend.make_container()
    lock = backend.lock(LOCK)
    try:
        backend.put(GROUP, dumps(group_document(schema, capacity)))
        backend.put(META_GROUP, dumps(meta_group_document()))
        for f in schema:
            backend.put(array_key(f.name), dumps(array_document(f, 0)))
        backend.sync([GROUP, META_GROUP, *(array_key(f.name) for f in schema)])
        manifest = commit_manifest(backend, Manifest(schema.hash, capacity))
    except BaseException:
        if made:  # never leave a half-created store behind (a full disk, an interrupt)
            backend.destroy()
        lock.release()
        raise
    return Store(backend, schema, manifest, mode="a", cache_bytes=cache_bytes, lock=lock,
                 commit_every_rows=commit_every_rows, commit_every_seconds=commit_every_seconds)


def open(path: str | os.PathLike[str], mode: Literal["r", "a"] = "r", *,
         cache_bytes: int = DEFAULT_CACHE_BYTES, commit_every_rows: int = DEFAULT_COMMIT_ROWS,
         commit_every_seconds: float = DEFAULT_COMMIT_SECONDS) -> Store:
    """Open an existing store: ``mode="r"`` to read, ``mode="a"`` to append (takes the lock).

    A reader sees the last committed snapshot and moves to newer commits with
    :meth:`Store.refresh`. A writer continues after the last committed row, also after a crash.

    Examples
    --------
    >>> import replaystore as rs, tempfile
    >>> path = tempfile.mkdtemp() + "/s"
    >>> rs.create(path, {"obs": ((2,), "float32")}).close()
    >>> len(rs.open(path))
    0
    """
    if mode not in ("r", "a"):
        raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
    _check_thresholds(cache_bytes, commit_every_rows, commit_every_seconds)
    backend = open_storage(path)
    try:
        backend.finish_replace()
        found = backend.is_container()
    except OSError as exc:  # a name too long, a folder we may not search, ...
        raise StoreNotFoundError(f"no replay store at {str(path)!r}: {exc.strerror}") from None
    if not found:
        raise StoreNotFoundError(f"no replay store at {str(path)!r}: not a directory")
    if _interrupted_create(backend):
        raise StoreNotFoundError(f"no replay store at {str(path)!r}: a create() was interrupted "
                                 "before its first commit; create the store again")
    lock = backend.lock(LOCK) if mode == "a" else None
    try:
        if lock is not None:
            backend.finish_replace(locked=True)  # clear what an interrupted rewrite left
        manifest = load_manifest(backend)
        schema = _load_schema(backend, manifest)
        _check_newest_row(backend, schema, manifest)
        if lock is not None:
            backend.remove_temporary()
        return Store(backend, schema, manifest, mode=mode, cache_bytes=cache_bytes, lock=lock,
                     commit_every_rows=commit_every_rows,
                     commit_every_seconds=commit_every_seconds)
    except BaseException:
        if lock is not None:
            lock.release()  # a store that failed to open must not keep others out
        raise


def _load_schema(backend: LocalStorage, manifest: Manifest) -> Schema:
    try:
        doc = loads(backend.get(GROUP, limit=JSON_LIMIT), GROUP)
        meta = doc["attributes"]["replaystore"]
    except FileNotFoundError:
        raise CorruptStoreError(f"store {str(backend.root)!r} has no {GROUP}", key=GROUP) from None
    except (ValueError, KeyError, TypeError):
        raise CorruptStoreError(f"{GROUP} of {str(backend.root)!r} is not a replaystore group "
                                "document", key=GROUP) from None
    if not isinstance(meta, dict) or meta.get("format_version", FORMAT_VERSION + 1) \
            > FORMAT_VERSION:
        raise FormatVersionError(f"{GROUP} of {str(backend.root)!r} declares format version "
                                 f"{meta.get('format_version') if isinstance(meta, dict) else '?'}"
                                 f", newer than this replaystore understands ({FORMAT_VERSION})")
    try:
        schema = Schema.from_json(meta["schema"])
    except (KeyError, SchemaError) as exc:
        raise CorruptStoreError(f"schema in {GROUP} is invalid: {exc}", key=GROUP) from None
    if schema.hash != manifest.schema_hash:
        raise CorruptStoreError(f"schema in {GROUP} does not match the manifest's schema hash "
                                f"({schema.hash} != {manifest.schema_hash})", key=MANIFEST)
    if meta.get("capacity") != manifest.capacity:
        raise CorruptStoreError(f"capacity in {GROUP} ({meta.get('capacity')}) does not match "
                                f"the manifest ({manifest.capacity})", key=MANIFEST)
    return schema


def _check_newest_row(backend: LocalStorage, schema: Schema, manifest: Manifest) -> None:
    """Refuse a manifest that claims more chunks than a reader should index (millions) unless
    the data is there: a commit syncs every chunk file before the manifest names its rows, so
    the chunk holding the newest committed row exists in every field.

    Only for such extents: a smaller store that lost its newest chunk still opens, so that
    verify can name the file and repair can roll back.
    """
    chunks = max(-(-manifest.extent // f.chunk_rows) for f in schema)
    if manifest.rows == 0 or chunks <= MANY_CHUNKS:
        return
    slot = int(manifest.slot_of(np.int64(manifest.end - 1)))
    for field in schema:
        key = chunk_key(field, slot // field.chunk_rows)
        try:
            data = backend.get(key, limit=max_stored_bytes(field.codec, field.chunk_rows,
                                                            field.row_nbytes))
            # Decoded, not just found: an empty file planted there must not pass.
            if field.codec.per_row:
                parse_shard(data, field.chunk_rows, field.row_nbytes, key=key, field=field.name)
            else:
                decode_chunk(field.codec, data,
                             np.empty((field.chunk_rows, *field.shape), field.dtype),
                             key=key, field=field.name)
        except (FileNotFoundError, CorruptStoreError):
            raise CorruptStoreError(f"the manifest claims {manifest.end:,} rows, but {key!r}, "
                                    f"which would hold the newest, is missing or unreadable",
                                    key=MANIFEST) from None


def _check_thresholds(cache_bytes: int, rows: int, seconds: float) -> None:
    if not isinstance(cache_bytes, int | np.integer) or cache_bytes < 0:
        raise ValueError(f"cache_bytes must be a non-negative integer, got {cache_bytes!r}")
    if not isinstance(rows, int | np.integer) or rows <= 0:
        raise ValueError(f"commit_every_rows must be a positive integer, got {rows!r}")
    if not seconds > 0:
        raise ValueError(f"commit_every_seconds must be positive, got {seconds!r}")


def _interrupted_create(backend: LocalStorage) -> bool:
    """A folder left by a create() that died before its first commit record: the lock and
    metadata documents only. A store that lost its manifest but holds data is not one."""
    return (backend.exists(LOCK) and not backend.exists(MANIFEST)
            and backend.lock_holder(LOCK) is None
            and all(key == LOCK or key.endswith("zarr.json") for key in backend.list()))
