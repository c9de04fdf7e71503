"""Rewriting a store into a fresh copy of itself: what prune, compact and repair build on.

The copy is built in a staging folder beside the store, committed and synced there, and then
swapped in with one atomic folder exchange (:meth:`LocalStorage.replace_with`); where the file
system has no exchange (NFS), with an intent file and two renames that the next ``open``
completes after a crash. A crash at any moment therefore leaves the old store or the new one,
never a mix, and the store's writer lock is held throughout, so no rows can be appended to the
old store while it is copied. Whatever a crashed rewrite left beside the store (staging folder,
intent file, old folder) is cleared by the next rewrite before it builds its own.

Rows are renumbered from 0 in the copy (slots handed out before no longer name the same rows),
so the copy gets the next *generation*: readers that opened the old store raise
:class:`~replaystore.errors.StoreReplacedError` instead of reading the wrong rows, and saved
sampler states are dropped. Priorities of the surviving rows move with them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from . import frames
from .codecs import Codec
from .errors import CorruptStoreError, SchemaError
from .manifest import commit_manifest
from .schema import Schema
from .store import Store, as_slots, create, open

BATCH_BYTES = 64 << 20  # rows copied per step: bounds the copy's memory, not its speed

Progress = Callable[[int], None]


@dataclass(frozen=True)
class RewriteReport:
    """What a rewrite kept (or, with ``dry_run``, would keep)."""

    rows_before: int
    rows_after: int
    episodes_before: int
    episodes_after: int
    disk_bytes_before: int
    disk_bytes_after: int | None
    dry_run: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def stored_rows(store: Store, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The stored values of global ``rows`` (committed), in the shapes ``extend`` takes.

    Unlike :meth:`Store.get`, stacked fields come back as single frames and ``next_of``
    fields as the one next frame of every row, whether stored or derived.
    """
    reader = store._reader
    slots = reader.manifest.slot_of(rows)
    out = {}
    for field in store.schema:
        if field.next_of is not None:
            out[field.name] = frames.next_frames(reader, field.name, field.next_of, rows)
        else:
            out[field.name] = reader.gather(field.name, slots)
    return out


def cut_points(store: Store, rows: np.ndarray) -> np.ndarray:
    """True for each kept row whose successor in the store is not the next kept row.

    Such a row becomes the last step of its episode in the copy, marked ``truncated`` unless
    it ends its episode already; the newest committed row stays open.
    """
    newest = store.manifest.end - 1
    following = np.append(rows[1:], newest + 1)
    return (following != rows + 1) & (rows != newest)


def rewrite(path: str | os.PathLike[str],
            keep: Callable[[Store], np.ndarray] | None = None, *,
            codecs: Mapping[str, str | Codec] | None = None, dry_run: bool = False,
            progress: Progress | None = None) -> RewriteReport:
    """Replace the store at ``path`` by a copy holding the rows ``keep(store)`` selects.

    Parameters
    ----------
    path
        The store; its writer lock is taken for the whole rewrite.
    keep
        Given the store (opened for writing), return the global row numbers to keep (any
        order, duplicates ignored); None keeps every committed row.
    codecs
        ``{field: codec}`` to re-encode fields with (see :class:`~replaystore.codecs.Codec`).
    dry_run
        Only report what would be kept; nothing is written.
    progress
        Called with the number of rows copied after each step.
    """
    src = open(path, "a")
    try:
        m = src.manifest
        rows = np.arange(m.start, m.end, dtype=np.int64) if keep is None else \
            _check_rows(np.unique(as_slots(keep(src))), m.start, m.end)
        schema = _with_codecs(src.schema, codecs or {})
        before = _disk_bytes(src)
        ends = _ends(src, rows)
        report = RewriteReport(len(src), len(rows), _episode_count(src), int(ends.sum()),
                               before, None, dry_run)
        if dry_run:
            return report
        staged = src._backend.staging()
        try:
            _copy(src, staged.root, schema, rows, progress)
        except BaseException:
            shutil.rmtree(staged.root, ignore_errors=True)  # the next rewrite clears the rest
            raise
        src._state.close()  # the old index is closed in its own folder before the swap
        src._backend.replace_with(staged)
    finally:
        src.close()
    with open(path) as new:
        return replace(report, disk_bytes_after=_disk_bytes(new),
                       episodes_after=len(new.episodes))


def _copy(src: Store, root: os.PathLike[str], schema: Schema, rows: np.ndarray,
          progress: Progress | None) -> None:
    old = src.manifest
    dst = create(root, schema, capacity=src.capacity, overwrite=True)
    try:
        cuts = cut_points(src, rows)
        step = max(1, BATCH_BYTES // max(1, schema.row_nbytes))
        for lo in range(0, len(rows), step):
            part = rows[lo:lo + step]
            batch = stored_rows(src, part)
            batch["truncated"] = batch["truncated"] | (cuts[lo:lo + step] & ~batch["terminated"])
            dst.extend(batch)
            if progress is not None:
                progress(len(part))
        dst.commit()
        if src.has_priority_index():
            _carry_priorities(src, dst, rows)
            dst.commit()
        manifest = dst.manifest
    finally:
        dst.close()
    commit_manifest(dst._backend, manifest.replace(generation=old.generation + 1,
                                                   commit_seq=old.commit_seq + 1))


def _carry_priorities(src: Store, dst: Store, rows: np.ndarray) -> None:
    old = src.priority_index()
    new = dst.priority_index(old.header.alpha)
    new.max_priority = old.max_priority
    new.set(dst.slots(), old.leaf(src.manifest.slot_of(rows)))


def _ends(store: Store, rows: np.ndarray) -> np.ndarray:
    """Which kept rows end an episode in the copy."""
    flags = store._reader.get(store.manifest.slot_of(rows), ("terminated", "truncated"))
    return flags["terminated"] | flags["truncated"] | cut_points(store, rows)


def _episode_count(store: Store) -> int:
    """Finished episodes stored, or -1 when the episode table is unreadable (repair)."""
    try:
        return len(store.episodes)
    except CorruptStoreError:
        return -1


def _with_codecs(schema: Schema, codecs: Mapping[str, str | Codec]) -> Schema:
    unknown = sorted(set(codecs) - set(schema.names))
    if unknown:
        raise SchemaError(f"cannot change the codec of {unknown}: the store's fields are "
                          f"{list(schema.names)}")
    fields = []
    for field in schema:
        if field.name in codecs:
            codec = Codec.parse(codecs[field.name])
            field = replace(field, codec=codec, chunk_rows=0)  # chunking follows the codec
        fields.append(field)
    return Schema(tuple(fields))


def _check_rows(rows: np.ndarray, start: int, end: int) -> np.ndarray:
    if len(rows) and (rows[0] < start or rows[-1] >= end):
        bad = rows[0] if rows[0] < start else rows[-1]
        raise IndexError(f"row {int(bad)} is not committed (rows {start}..{end - 1} are)")
    return rows


def _disk_bytes(store: Store) -> int:
    backend = store._backend
    return sum(backend.allocated(key) for key in backend.list())


def compact(path: str | os.PathLike[str], *, codecs: Mapping[str, str | Codec] | None = None,
            progress: Progress | None = None) -> RewriteReport:
    """Rewrite every committed row of the store at ``path`` into fresh, densely packed chunks.

    Reclaims the space that ring slots outside the committed window and partly rewritten
    shards hold, and re-encodes fields with new ``codecs`` (``{field: "zstd:5"}``, ...).
    Crash-safe like :func:`rewrite`.
    """
    return rewrite(path, None, codecs=codecs, progress=progress)
