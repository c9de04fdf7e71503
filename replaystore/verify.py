"""Checking a store end to end, and repairing it by rolling back to a consistent state.

:func:`verify` reads everything a reader could ever touch: the manifest and schema, every chunk
holding committed rows (each checked against its crc32c), the episode table against the stored
rewards and done flags, and the priority index against its own leaves. It reports each problem
with the file it lies in.

:func:`repair` keeps the committed rows before the first unreadable one (in append order),
rebuilds the episode table from the rows, keeps the priorities if the index is sound (else
gives every row the running maximum priority), and swaps the result in atomically.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from . import priority
from .backend import TMP_MARK, LocalBackend
from .episodes import BLOCK, read_block
from .errors import CorruptStoreError, ReplayStoreError, StoreNotFoundError
from .layout import GROUP, LOCK, MANIFEST, META, chunk_key, episode_block_key
from .priority import PriorityIndex
from .rewrite import RewriteReport, rewrite
from .schema import Field
from .store import Store, open


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a store: the file (storage key) it lies in and what is wrong."""

    key: str
    message: str
    rows: tuple[int, int] | None = None  # first and last + 1 of the rows it makes unreadable
    ranges: tuple[tuple[int, int], ...] = ()  # exactly which: [start, end) runs

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


@dataclass
class VerifyReport:
    """What :func:`verify` checked and found."""

    path: str
    rows: int = 0
    chunks: int = 0
    episodes: int = 0
    index_slots: int = 0
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad_row(self) -> int | None:
        """The oldest committed row some problem makes unreadable."""
        starts = [a for p in self.problems for a, _ in p.ranges]
        return min(starts) if starts else None

    def unreadable(self, rows: np.ndarray) -> np.ndarray:
        """Which of the global ``rows`` some problem makes unreadable."""
        bad = np.zeros(len(rows), bool)
        for p in self.problems:
            for start, end in p.ranges:
                bad |= (rows >= start) & (rows < end)
        return bad

    def to_json(self) -> dict[str, object]:
        return {"path": self.path, "ok": self.ok, "rows": self.rows, "chunks": self.chunks,
                "episodes": self.episodes, "index_slots": self.index_slots,
                "problems": [{"key": p.key, "message": p.message,
                              "rows": list(p.rows) if p.rows else None,
                              "ranges": [list(r) for r in p.ranges]} for p in self.problems],
                "warnings": self.warnings}


def verify(path: str | os.PathLike[str], *,
           progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Check every committed row, the episode table and the priority index of a store.

    ``progress`` is called with 1 after each chunk checked (see :func:`chunk_count`).
    Raises StoreNotFoundError if ``path`` holds no store; everything else is reported.
    """
    report = VerifyReport(str(path))
    try:
        store = open(path, cache_bytes=0)
    except StoreNotFoundError as exc:
        backend = LocalBackend(path)
        if not (backend.is_container() and backend.exists(GROUP) and backend.exists(LOCK)):
            raise  # not a store at all
        report.problems.append(Problem(MANIFEST, f"the commit record is missing ({exc})"))
        return report
    except ReplayStoreError as exc:
        report.problems.append(Problem(getattr(exc, "key", None) or META, str(exc)))
        return report
    with store:
        report.rows = len(store)
        _check_leftovers(store._backend, report)
        report.problems.extend(_merge(_check_chunks(store, progress, report)))
        _check_episodes(store, report)
        _check_index(store, report)
    return report


def chunk_count(path: str | os.PathLike[str]) -> int:
    """How many chunks :func:`verify` reads (for a progress bar)."""
    with open(path) as store:
        return sum(len(_chunk_rows(store, f)) for f in store.schema)


def _chunk_rows(store: Store, field: Field) -> list[tuple[int, np.ndarray]]:
    """(chunk, its committed global rows in append order) for each chunk holding some."""
    m = store.manifest
    rows = np.arange(m.start, m.end, dtype=np.int64)
    if not len(rows):
        return []
    chunks, inverse = np.unique(m.slot_of(rows) // field.chunk_rows, return_inverse=True)
    groups = np.split(rows[np.argsort(inverse, kind="stable")],
                      np.cumsum(np.bincount(inverse, minlength=len(chunks)))[:-1])
    return list(zip(chunks.tolist(), groups, strict=True))


def _check_chunks(store: Store, progress: Callable[[int], None] | None,
                  report: VerifyReport) -> Iterator[Problem]:
    reader = store._reader
    m = store.manifest
    targets = {f.next_of for f in store.schema if f.next_of is not None}
    for f in store.schema:
        for chunk, mine in _chunk_rows(store, f):
            report.chunks += 1
            try:
                # A next_of field's own rows; the rows derived from its target are checked
                # with the target.
                missing = np.zeros(len(mine), bool) if f.next_of is not None else None
                reader.gather(f.name, m.slot_of(mine), missing)
                if missing is not None and missing.any():
                    _check_next_of_rows(store, chunk_key(f, chunk), mine[missing])
            except CorruptStoreError as exc:
                runs = _runs(mine)
                if f.name in targets:  # the row before each run reads its next value here
                    runs = [(max(m.start, a - 1), b) for a, b in runs]
                yield Problem(exc.key or f.name, str(exc), (runs[0][0], runs[-1][1]),
                              tuple(runs))
            if progress is not None:
                progress(1)


def _check_next_of_rows(store: Store, key: str, rows: np.ndarray) -> None:
    """Rows a next_of field does not store must have a successor: not an episode's end, not
    the newest committed row."""
    try:
        flags = store._reader.get(store.manifest.slot_of(rows), ("terminated", "truncated"))
    except CorruptStoreError:
        return  # the flags' own chunks are reported
    ends = flags["terminated"] | flags["truncated"] | (rows == store.manifest.end - 1)
    if ends.any():
        raise CorruptStoreError(f"{key!r} lacks the stored next value of row "
                                f"{int(rows[np.argmax(ends)])}, which ends its episode or is "
                                "the newest row", key=key)


def _runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """Sorted global rows as [start, end) runs (a ring chunk may hold two)."""
    order = np.sort(rows)
    breaks = np.flatnonzero(np.diff(order) != 1) + 1
    return [(int(run[0]), int(run[-1]) + 1) for run in np.split(order, breaks)]


def _merge(problems: Iterator[Problem]) -> list[Problem]:
    """One problem per file; a chunk that several fields read is reported once."""
    by_key: dict[str, Problem] = {}
    for p in problems:
        seen = by_key.get(p.key)
        if seen is not None and seen.rows and p.rows:
            p = Problem(p.key, seen.message, (min(seen.rows[0], p.rows[0]),
                                              max(seen.rows[1], p.rows[1])),
                        seen.ranges + p.ranges)
        by_key[p.key] = p if seen is None or p.rows else seen
    return list(by_key.values())


def _check_episodes(store: Store, report: VerifyReport) -> None:
    m = store.manifest
    blocks = -(-m.episodes // BLOCK)
    for block in range(blocks):
        try:
            records = read_block(store._backend, block)
        except CorruptStoreError as exc:
            report.problems.append(Problem(exc.key or episode_block_key(block), str(exc)))
            return
        expected = min(BLOCK, m.episodes - block * BLOCK)
        if len(records) < expected:
            report.problems.append(Problem(
                episode_block_key(block), f"holds {len(records)} episodes, the manifest counts "
                f"{expected} in it"))
            return
    table = store.episode_table(clip=True)
    report.episodes = len(table)
    if not m.rows:
        return
    try:
        cols = store._reader.get(store.slots(), ("reward", "terminated", "truncated"))
    except CorruptStoreError:
        return  # already reported by the chunk check
    ends = np.flatnonzero(cols["terminated"] | cols["truncated"]) + m.start
    table_ends = table["start"] + table["length"] - 1
    if not np.array_equal(ends, table_ends):
        report.problems.append(Problem(
            f"{META}/episodes", f"the episode table lists {len(table_ends)} episode ends in the "
            f"committed rows, the done flags {len(ends)}"))
        return
    first = table["start"] - m.start
    cumulative = np.concatenate(([0.0], np.cumsum(cols["reward"], dtype=np.float64)))
    sums = cumulative[first + table["length"]] - cumulative[first]
    # A clipped episode's recorded return also covers its overwritten rows.
    full = table["start"] > m.start
    bad = full & ~np.isclose(sums, table["return"], rtol=1e-6, atol=1e-6)
    if bad.any():
        i = int(np.argmax(bad))
        report.problems.append(Problem(
            f"{META}/episodes", f"episode {i} has return {table['return'][i]} in the table but "
            f"its rewards sum to {sums[i]}"))


def _check_index(store: Store, report: VerifyReport) -> None:
    backend = store._backend
    if not store.has_priority_index():
        if "priority" in store.manifest.state:  # a commit recorded an index checkpoint
            report.problems.append(Problem(priority.HEADER, "the priority index header is "
                                           "missing, but the last commit recorded an index"))
        return
    try:
        index = store.priority_index()
    except CorruptStoreError as exc:
        report.problems.append(Problem(exc.key or priority.HEADER, str(exc)))
        return
    report.index_slots = index.header.slots
    if not index.header.clean:
        # A writer has it open (its uncommitted changes are in it), or one died: the next
        # writer undoes those changes and rebuilds every inner node, so nothing here is final.
        if not any(p.key == LOCK for p in report.problems) and backend.lock_holder(LOCK) is None:
            report.warnings.append("the priority index was not closed cleanly; the next "
                                   "writer to open the store repairs it")
        return
    leaves = index.sum[index.leaves:]
    valid = np.zeros(index.leaves, bool)
    valid[store.slots()] = True
    if not np.isfinite(leaves).all() or (leaves < 0).any():
        report.problems.append(Problem(index.key, "holds negative or non-finite priorities"))
        return
    if (leaves[~valid].view(np.int64) != 0).any():  # bits: -0.0 is damage too
        slot = int(np.flatnonzero((leaves.view(np.int64) != 0) & ~valid)[0])
        report.problems.append(Problem(index.key, f"slot {slot} holds no committed row but has "
                                       "a non-zero priority"))
        return
    _check_tree(index, report)


def _check_tree(index: PriorityIndex, report: VerifyReport) -> None:
    """Every node is exactly what the index computes from its children (no tolerance: inner
    nodes are always recomputed, never accumulated, so a mismatch is damage)."""
    leaves = index.sum[index.leaves:]
    with np.errstate(divide="ignore"):
        inverse = np.where(leaves > 0, 1.0 / leaves, 0.0)
    if not _same_bits(index.inv[index.leaves:], inverse):
        report.problems.append(Problem(index.key, "min-tree leaves do not match the priorities"))
        return
    level, total, inv = index.leaves, index.sum, index.inv
    while level > 1:
        half = level // 2
        if not _same_bits(total[half:level],
                          total[level:2 * level:2] + total[level + 1:2 * level:2]):
            report.problems.append(Problem(index.key, "inner nodes of the sum tree do not add "
                                           "up to their children"))
            return
        if not _same_bits(inv[half:level], np.maximum(inv[level:2 * level:2],
                                                      inv[level + 1:2 * level:2])):
            report.problems.append(Problem(index.key, "inner nodes of the min tree do not "
                                           "match their children"))
            return
        level = half


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal bit for bit: as floats, -0.0 == 0.0 would hide a flipped sign bit."""
    return np.array_equal(np.ascontiguousarray(a).view(np.int64),
                          np.ascontiguousarray(b).view(np.int64))


def _check_leftovers(backend: LocalBackend, report: VerifyReport) -> None:
    try:
        holder = backend.lock_holder(LOCK)
    except CorruptStoreError as exc:  # a lock that is a symbolic link
        report.problems.append(Problem(exc.key or LOCK, str(exc)))
        return
    if holder is not None:
        report.warnings.append(f"process {holder} is writing the store; this checked its last "
                               "commit")
        return
    temporary = sum(TMP_MARK in name for _, _, files in os.walk(backend.root) for name in files)
    if temporary:
        report.warnings.append(f"{temporary} temporary files left by a writer that died "
                               "mid-write (the next writer removes them)")


@dataclass(frozen=True)
class RepairReport:
    """What :func:`repair` found and kept."""

    verify: VerifyReport
    rewrite: RewriteReport | None
    index_reset: bool

    def to_json(self) -> dict[str, object]:
        return {"verify": self.verify.to_json(), "index_reset": self.index_reset,
                "rewrite": self.rewrite.to_json() if self.rewrite else None}


def repair(path: str | os.PathLike[str], *, salvage: bool = False,
           progress: Callable[[int], None] | None = None) -> RepairReport:
    """Roll the store at ``path`` back to its last consistent committed state.

    Committed rows from the first unreadable one on are dropped (the rows before it are a
    state the store passed through); with ``salvage``, only the episodes that hold unreadable
    rows are dropped instead, keeping every readable episode. The episode table is rebuilt
    from the rows, and a corrupt priority index is rebuilt with every row at the running
    maximum priority. Raises CorruptStoreError when the manifest or schema is unreadable
    (there is no committed state to go back to).
    """
    report = verify(path)
    if report.ok:
        return RepairReport(report, None, False)
    structural = [p for p in report.problems if p.key.split("/")[-1] in
                  ("manifest.json", "zarr.json")]
    if structural:
        raise CorruptStoreError(f"cannot repair {str(path)!r}: {structural[0]}",
                                key=structural[0].key)
    index_bad = any(p.key.startswith(f"{META}/priority") for p in report.problems)
    alpha = _drop_index(LocalBackend(path)) if index_bad else None
    result = rewrite(path, lambda store: _readable_rows(store, report, salvage),
                     progress=progress)
    if alpha is not None:
        with open(path, "a") as store:
            store.priority_index(alpha)
    return RepairReport(report, result, alpha is not None)


def _readable_rows(store: Store, report: VerifyReport, salvage: bool) -> np.ndarray:
    m = store.manifest
    rows = np.arange(m.start, m.end, dtype=np.int64)
    if not salvage:
        first_bad = report.first_bad_row
        return rows if first_bad is None else rows[: first_bad - m.start]
    # Segment boundaries come from the done flags, not the table, which may be the problem.
    bad = report.unreadable(rows)
    try:
        flags = store._reader.get(m.slot_of(rows), ("terminated", "truncated"))
        ends = flags["terminated"] | flags["truncated"]
    except CorruptStoreError:  # the flags themselves are unreadable: drop only those rows
        return rows[~bad]
    segment = np.concatenate(([0], np.cumsum(ends[:-1]))) if len(rows) else rows
    bad_segments = np.unique(segment[bad])
    return rows[~np.isin(segment, bad_segments)]


def _drop_index(backend: LocalBackend) -> float:
    """Delete a corrupt priority index (under the writer lock); return its alpha if known."""
    lock = backend.lock(LOCK)
    try:
        try:
            alpha = priority.read_header(backend).alpha
        except CorruptStoreError:
            alpha = 0.6
        for key in list(backend.list(META)):
            if key.rsplit("/", 1)[-1].startswith("priority"):
                backend.delete(key)
    finally:
        lock.release()
    return alpha
