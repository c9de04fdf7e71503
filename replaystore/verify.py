"""Checking a store end to end, and repairing it by dropping only what cannot be read.

:func:`verify` reads everything a reader could ever touch: the manifest and schema, every chunk
holding committed rows (each checked against its crc32c; the rows of a per-row shard one by
one), the episode table and the manifest's episode in progress against the stored rewards and
done flags, and the priority index against its own leaves. It reports each problem with the
file it lies in.

A writer may commit while :func:`verify` runs (a ring overwriting its oldest rows, for one).
Each chunk is then read at the newest commit: a read the writer overtook is done again after a
refresh, and a problem counts only when it is still there at a commit that is still the newest
once checked. Rows the ring overwrote in between are no longer committed, so they are not
checked (and not reported).

:func:`repair` keeps every committed row outside the episodes that hold unreadable rows (with
``rollback``, only the rows before the first unreadable one), rebuilds the episode table and
the episode in progress from the rows, keeps the priorities if the index is sound (else gives
every row the running maximum priority), and swaps the result in atomically. With ``dry_run``
it only reports what it would drop. It refuses a store that a writer has open.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from . import priority
from .codecs import parse_shard
from .episodes import BLOCK, PUBLIC_FIELDS, RECORD, read_block
from .errors import (
    CorruptStoreError,
    ReplayStoreError,
    StaleReadError,
    StoreNotFoundError,
    StoreReplacedError,
    WriterLockedError,
)
from .layout import GROUP, LOCK, MANIFEST, META, chunk_key, episode_block_key
from .manifest import Manifest, load_manifest
from .priority import PriorityIndex
from .rewrite import RewriteReport, rewrite
from .schema import Field
from .storage import TEMPORARY_MARK, LocalStorage, open_storage
from .store import Store, open

# How often one check may be overtaken by a writer's commits before verify gives up on it.
RETRIES = 50
# Relative tolerance of the open episode's return: the writer adds rewards in float64, row by
# row or batch by batch, in another order than verify does.
RETURN_RTOL = 1e-7


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
    """What :func:`verify` checked and found.

    ``snapshot`` is the (generation, commit sequence number) of the newest commit checked, or
    None when the manifest or schema could not be read (then nothing else was checked).
    """

    path: str
    rows: int = 0
    chunks: int = 0
    episodes: int = 0
    index_slots: int = 0
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    snapshot: tuple[int, int] | None = None

    @property
    def ok(self) -> bool:
        """Whether nothing is wrong (warnings aside)."""
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
        """The report as JSON-ready data (what ``replaystore verify --json`` prints)."""
        return {"path": self.path, "ok": self.ok, "rows": self.rows, "chunks": self.chunks,
                "episodes": self.episodes, "index_slots": self.index_slots,
                "problems": [{"key": p.key, "message": p.message,
                              "rows": list(p.rows) if p.rows else None,
                              "ranges": [list(r) for r in p.ranges]} for p in self.problems],
                "warnings": self.warnings}


def verify(path: str | os.PathLike[str], *,
           progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Check every committed row, the episode table and the priority index of a store.

    ``progress`` is called with 1 after each chunk checked (see :func:`chunk_count`). A writer
    may commit meanwhile (see the module's documentation): rows it overwrites are not reported.
    Raises StoreNotFoundError if ``path`` holds no store; everything else is reported.
    """
    for attempt in range(3):
        try:
            return _verify(path, progress)
        except StoreReplacedError:  # pruned, compacted or repaired meanwhile: check the new one
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _verify(path: str | os.PathLike[str],
            progress: Callable[[int], None] | None) -> VerifyReport:
    report = VerifyReport(str(path))
    try:
        store = open(path, cache_bytes=0)
    except StoreNotFoundError as exc:
        backend = open_storage(path)
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
        report.problems.extend(_settled(store, report, "the episode table",
                                        functools.partial(_check_episodes, store, report)))
        report.problems.extend(_settled(store, report, "the priority index",
                                        functools.partial(_check_index, store, report)))
        m = store.manifest
        report.snapshot = (m.generation, m.commit_seq)
    return report


def _settled(store: Store, report: VerifyReport, what: str,
             check: Callable[[], list[Problem]]) -> list[Problem]:
    """The problems ``check`` finds at a commit that is still the newest once it is done.

    A read a ring writer overtook (StaleReadError), or a problem found at a commit that is no
    longer the newest, is checked again at the newest commit (rows overwritten in between are
    no longer committed). Problems still found after :data:`RETRIES` newer commits are real;
    a check overtaken every time is skipped with a warning.
    """
    found: list[Problem] = []
    for _ in range(RETRIES):
        try:
            found = check()
        except StoreReplacedError:
            raise
        except StaleReadError:
            store.refresh()
            found = []
            overtaken = True
            continue
        overtaken = False
        if not found or not store.refresh():
            return found
    if overtaken:
        report.warnings.append(f"{what} was rewritten by the writer during each of {RETRIES} "
                               "reads; not checked")
    return found


def chunk_count(path: str | os.PathLike[str]) -> int:
    """How many chunks :func:`verify` reads (for a progress bar)."""
    with open(path) as store:
        return sum(len(_chunks(store.manifest, f)) for f in store.schema)


def _slot_ranges(m: Manifest) -> list[tuple[int, int]]:
    """The slot intervals ``[a, b)`` holding the committed rows."""
    if m.rows == 0:
        return []
    if m.capacity is None:
        return [(m.start, m.end)]
    if m.rows == m.capacity:
        return [(0, m.capacity)]
    a, b = m.start % m.capacity, m.end % m.capacity
    if a < b:
        return [(a, b)]
    return [(a, m.capacity)] + ([(0, b)] if b else [])


def _chunks(m: Manifest, field: Field) -> list[int]:
    """The chunks of ``field`` holding committed rows, in order."""
    rows = field.chunk_rows
    return sorted({c for a, b in _slot_ranges(m) for c in range(a // rows, (b - 1) // rows + 1)})


def _rows_in_chunk(m: Manifest, field: Field, chunk: int) -> np.ndarray:
    """The committed global rows whose slots lie in ``chunk`` of ``field``, sorted."""
    lo = chunk * field.chunk_rows
    slots = np.arange(lo, min(lo + field.chunk_rows, m.extent), dtype=np.int64)
    rows = m.row_of(slots)
    return np.sort(rows[(rows >= m.start) & (rows < m.end)])


def _check_chunks(store: Store, progress: Callable[[int], None] | None,
                  report: VerifyReport) -> Iterator[Problem]:
    targets = {f.next_of for f in store.schema if f.next_of is not None}
    for f in store.schema:
        for chunk in _chunks(store.manifest, f):
            report.chunks += 1
            yield from _settled(store, report, f"chunk {chunk_key(f, chunk)!r}",
                                functools.partial(_check_chunk, store, f, chunk,
                                                  f.name in targets))
            if progress is not None:
                progress(1)


def _check_chunk(store: Store, f: Field, chunk: int, is_target: bool) -> list[Problem]:
    """Read the committed rows of one chunk at the store's current snapshot."""
    m = store.manifest
    rows = _rows_in_chunk(m, f, chunk)
    key = chunk_key(f, chunk)
    if not len(rows):
        return []
    try:
        _read_rows(store, f, key, rows)
        return []
    except CorruptStoreError as exc:
        error = exc
    bad = _unreadable_rows(store, f, chunk, rows)
    if not len(bad):
        return []  # read fine the second time: the file was replaced in between
    if is_target:  # the row before each bad row reads its next value from it
        bad = np.union1d(bad, bad[bad > m.start] - 1)
    runs = _runs(bad)
    return [Problem(error.key or f.name, str(error), (runs[0][0], runs[-1][1]), tuple(runs))]


def _read_rows(store: Store, f: Field, key: str, rows: np.ndarray) -> None:
    """Decode ``rows`` of field ``f`` (raising CorruptStoreError if any cannot be read)."""
    # A next_of field's own rows; the rows derived from its target are checked with the target.
    missing = np.zeros(len(rows), bool) if f.next_of is not None else None
    store._reader.gather(f.name, store.manifest.slot_of(rows), missing)
    if missing is not None and missing.any():
        _check_next_of_rows(store, key, rows[missing])


def _unreadable_rows(store: Store, f: Field, chunk: int, rows: np.ndarray) -> np.ndarray:
    """Which of a damaged chunk's ``rows`` cannot be read: all of them, except in a per-row
    shard whose index is sound, where each row carries its own checksum."""
    if not f.codec.per_row:
        return rows
    key = chunk_key(f, chunk)
    try:
        data, _ = store._reader._read(f, chunk)  # refuses a file larger than a shard can be
        parse_shard(data, f.chunk_rows, f.row_nbytes, key=key, field=f.name)
    except (OSError, CorruptStoreError):
        return rows
    bad = []
    for row in rows:
        try:
            _read_rows(store, f, key, rows[rows == row])
        except CorruptStoreError:
            bad.append(row)
    return np.array(bad, np.int64)


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


# -- the episode table and the episode in progress --------------------------------------------


def _check_episodes(store: Store, report: VerifyReport) -> list[Problem]:
    """The finished episodes in the blocks and the manifest's episode in progress, against the
    done flags and rewards of the committed rows."""
    m = store.manifest
    try:
        cols = store._reader.get(store.slots(), ("reward", "terminated", "truncated"))
        ends = np.flatnonzero(cols["terminated"] | cols["truncated"]) + m.start
    except CorruptStoreError:
        cols, ends = None, None  # the chunk check reports them
    if m.capacity is not None and ends is None:
        return []  # which blocks a ring still needs depends on the flags
    records, last_end, problems = _episode_records(store._backend, m, ends)
    if problems:
        return problems
    table, full = _clip(records, m.start)
    report.episodes = len(table)
    problems = _check_open_episode(m, last_end, ends, None if cols is None else cols["reward"])
    if cols is None:
        return problems
    table_ends = table["start"] + table["length"] - 1
    if not np.array_equal(ends, table_ends):
        return [Problem(f"{META}/episodes", f"the episode table lists {len(table_ends)} "
                        f"episode ends in the committed rows, the done flags {len(ends)}"),
                *problems]
    first = table["start"] - m.start
    cumulative = np.concatenate(([0.0], np.cumsum(cols["reward"], dtype=np.float64)))
    sums = cumulative[first + table["length"]] - cumulative[first]
    # A clipped episode's recorded return also covers its overwritten rows.
    bad = full & ~np.isclose(sums, table["return"], rtol=1e-6, atol=1e-6)
    if bad.any():
        i = int(np.argmax(bad))
        problems.insert(0, Problem(
            f"{META}/episodes", f"episode {i} has return {table['return'][i]} in the table but "
            f"its rewards sum to {sums[i]}"))
    return problems


def _episode_records(backend: LocalStorage, m: Manifest, ends: np.ndarray | None
                     ) -> tuple[np.ndarray, int | None, list[Problem]]:
    """The finished-episode records of the blocks that may hold an episode ending in the
    window, oldest first; the row after the last finished episode (None if unknown); problems.

    A block whose episodes all ended before the window (``manifest.start``) is not needed and
    may be gone: the writer deletes such blocks of a ring.
    """
    empty = np.zeros(0, RECORD)
    if m.episodes == 0:
        return empty, 0, []
    last = (m.episodes - 1) // BLOCK
    if (m.capacity is not None and ends is not None and not len(ends)
            and not backend.exists(episode_block_key(last))):
        return empty, None, []  # every finished episode ended before the window
    blocks = []
    for block in range(last, -1, -1):
        try:
            records = read_block(backend, block)
        except CorruptStoreError as exc:
            return empty, None, [Problem(exc.key or episode_block_key(block), str(exc))]
        expected = min(BLOCK, m.episodes - block * BLOCK)
        if len(records) < expected:
            return empty, None, [Problem(
                episode_block_key(block), f"holds {len(records)} episodes, the manifest counts "
                f"{expected} in it")]
        blocks.append(records[:expected])
        if records["start"][0] <= m.start:  # every earlier episode ended before the window
            break
    records = np.concatenate(blocks[::-1])
    return records, int(records["start"][-1] + records["length"][-1]), []


def _clip(records: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
    """The episodes with rows in the window (the oldest cut to its stored rows), and which of
    them are whole."""
    table = records[records["start"] + records["length"] > start][PUBLIC_FIELDS].copy()
    full = table["start"] >= start
    cut = np.maximum(start - table["start"], 0)
    table["start"] += cut
    table["length"] -= cut
    return table, full


def _check_open_episode(m: Manifest, last_end: int | None, ends: np.ndarray | None,
                        rewards: np.ndarray | None) -> list[Problem]:
    """The manifest's ``open_episode`` (start, length, return) must cover exactly the rows
    after the last finished episode, and its return must be their rewards' sum."""
    # The first row after the last finished episode: after the last done flag in the window,
    # else after the last episode of the table; None: somewhere before the window.
    if ends is not None and len(ends):
        first: int | None = int(ends[-1]) + 1
    else:
        first = last_end
    episode = m.open_episode

    def problem(why: str) -> list[Problem]:
        shown = "null" if episode is None else list(episode)
        return [Problem(MANIFEST, f"open_episode {shown} (start, length and return of the "
                        f"episode in progress) {why}")]

    if episode is None:
        if first is not None and first < m.end:
            return problem(f"is missing: rows {first}..{m.end - 1} follow the last finished "
                           "episode")
        if first is None and m.rows:
            return problem(f"is missing: no episode ends in the committed rows "
                           f"{m.start}..{m.end - 1}")
        return []
    start, length, total = episode
    if length <= 0 or start < 0:
        return problem("must start at a row >= 0 and hold at least one row")
    if start + length != m.end:
        return problem(f"ends at row {start + length - 1}, but the newest committed row is "
                       f"{m.end - 1}")
    if first is not None and first >= m.end:
        return problem(f"holds rows, but row {m.end - 1} ends an episode")
    if first is None:
        if start > m.start and ends is not None:
            return problem(f"starts at row {start}, but no episode ends in the committed rows "
                           f"before it (from row {m.start})")
        return []  # it began before the window: its start and return cannot be checked
    if start != first and not (first < m.start == start):  # the second: clipped to the window
        return problem(f"starts at row {start}, but the episode in progress starts at row "
                       f"{first}, after the last finished episode")
    if rewards is not None and start == first >= m.start:
        stored = rewards[start - m.start:].astype(np.float64)
        expected = float(stored.sum())
        tolerance = RETURN_RTOL * float(np.abs(stored).sum()) + 1e-9
        if not (expected == total or abs(expected - total) <= tolerance
                or (math.isnan(expected) and math.isnan(total))):
            return problem(f"has return {total}, but its rows' rewards sum to {expected}")
    return []


# -- the priority index -----------------------------------------------------------------------


def _check_index(store: Store, report: VerifyReport) -> list[Problem]:
    backend = store._backend
    if not store.has_priority_index():
        if "priority" in store.manifest.state:  # a commit recorded an index checkpoint
            return [Problem(priority.HEADER, "the priority index header is missing, but the "
                            "last commit recorded an index")]
        return []
    try:
        index = store.priority_index()
    except CorruptStoreError as exc:
        return [Problem(exc.key or priority.HEADER, str(exc))]
    report.index_slots = index.header.slots
    if not index.header.clean:
        # A writer has it open (its uncommitted changes are in it), or one died: the next
        # writer undoes those changes and rebuilds every inner node, so nothing here is final.
        warning = ("the priority index was not closed cleanly; the next writer to open the "
                   "store repairs it")
        if (not any(p.key == LOCK for p in report.problems) and warning not in report.warnings
                and backend.lock_holder(LOCK) is None):
            report.warnings.append(warning)
        return []
    leaves = index.sum[index.leaves:]
    valid = np.zeros(index.leaves, bool)
    valid[store.slots()] = True
    if not np.isfinite(leaves).all() or (leaves < 0).any():
        return [Problem(index.key, "holds negative or non-finite priorities")]
    if (leaves[~valid].view(np.int64) != 0).any():  # bits: -0.0 is damage too
        slot = int(np.flatnonzero((leaves.view(np.int64) != 0) & ~valid)[0])
        return [Problem(index.key, f"slot {slot} holds no committed row but has a non-zero "
                        "priority")]
    return _check_tree(index)


def _check_tree(index: PriorityIndex) -> list[Problem]:
    """Every node is exactly what the index computes from its children (no tolerance: inner
    nodes are always recomputed, never accumulated, so a mismatch is damage)."""
    leaves = index.sum[index.leaves:]
    with np.errstate(divide="ignore"):
        inverse = np.where(leaves > 0, 1.0 / leaves, 0.0)
    if not _same_bits(index.inv[index.leaves:], inverse):
        return [Problem(index.key, "min-tree leaves do not match the priorities")]
    level, total, inv = index.leaves, index.sum, index.inv
    while level > 1:
        half = level // 2
        if not _same_bits(total[half:level],
                          total[level:2 * level:2] + total[level + 1:2 * level:2]):
            return [Problem(index.key, "inner nodes of the sum tree do not add up to their "
                            "children")]
        if not _same_bits(inv[half:level], np.maximum(inv[level:2 * level:2],
                                                      inv[level + 1:2 * level:2])):
            return [Problem(index.key, "inner nodes of the min tree do not match their "
                            "children")]
        level = half
    return []


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal bit for bit: as floats, -0.0 == 0.0 would hide a flipped sign bit."""
    return np.array_equal(np.ascontiguousarray(a).view(np.int64),
                          np.ascontiguousarray(b).view(np.int64))


def _check_leftovers(backend: LocalStorage, report: VerifyReport) -> None:
    try:
        holder = backend.lock_holder(LOCK)
    except CorruptStoreError as exc:  # a lock that is a symbolic link
        report.problems.append(Problem(exc.key or LOCK, str(exc)))
        return
    if holder is not None:
        report.warnings.append(f"process {holder} is writing the store; each chunk was checked "
                               "at the newest commit when it was read")
        return
    temporary = sum(TEMPORARY_MARK in name for _, _, files in os.walk(backend.root) for name in files)
    if temporary:
        report.warnings.append(f"{temporary} temporary files left by a writer that died "
                               "mid-write (the next writer removes them)")


# -- repair -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RepairReport:
    """What :func:`repair` found, dropped and kept (with ``dry_run``: would drop and keep).

    ``dropped`` lists the committed rows dropped as ``[start, end)`` runs of global row numbers
    (the numbering before the repair: the repaired store numbers its rows from 0);
    ``episodes_dropped`` counts the episodes that lose rows (-1 when the done flags are
    unreadable, so episodes cannot be told apart).
    """

    verify: VerifyReport
    rewrite: RewriteReport | None
    index_reset: bool
    dry_run: bool = False
    rollback: bool = False
    rows_before: int = 0
    rows_after: int = 0
    dropped: tuple[tuple[int, int], ...] = ()
    episodes_dropped: int = 0

    def to_json(self) -> dict[str, object]:
        """The report as JSON-ready data."""
        return {"verify": self.verify.to_json(), "index_reset": self.index_reset,
                "rewrite": self.rewrite.to_json() if self.rewrite else None,
                "dry_run": self.dry_run, "rollback": self.rollback,
                "rows_before": self.rows_before, "rows_after": self.rows_after,
                "dropped": [list(r) for r in self.dropped],
                "episodes_dropped": self.episodes_dropped}


def require_no_writer(path: str | os.PathLike[str]) -> None:
    """Raise WriterLockedError, naming the process, if a writer has the store at ``path`` open.

    :func:`repair` calls it first; a path that holds no store passes (verify reports it).
    """
    try:
        holder = open_storage(path).lock_holder(LOCK)
    except (OSError, CorruptStoreError):
        return
    if holder is not None:
        who = f"process {holder}" if holder > 0 else "another process"
        raise WriterLockedError(
            f"cannot repair {str(path)!r}: {who} is writing it, and a repair needs the store "
            "to itself; stop the writer (or wait until it closes the store) and repair again",
            pid=holder if holder > 0 else None)


def repair(path: str | os.PathLike[str], *, rollback: bool = False, dry_run: bool = False,
           salvage: bool | None = None, report: VerifyReport | None = None,
           progress: Callable[[int], None] | None = None) -> RepairReport:
    """Make the store at ``path`` verify again, dropping as little as possible.

    Every committed row is kept except the episodes that hold unreadable rows (whole
    episodes, so that no episode is stitched across a gap; when the done flags themselves are
    unreadable, exactly the unreadable rows). With ``rollback``, the store goes back to the
    state it passed through before its first unreadable row instead: every row from that one
    on is dropped. The episode table and the episode in progress are rebuilt from the rows,
    and a corrupt priority index is rebuilt with every row at the running maximum priority.

    Parameters
    ----------
    path
        The store. A writer must not have it open (WriterLockedError naming it).
    rollback
        Drop every row from the first unreadable one on (the behaviour before 0.2).
    dry_run
        Only report what would be dropped (``RepairReport.dropped``); change nothing.
    salvage
        Accepted for compatibility: dropping only the damaged episodes is the default now.
        ``salvage=True`` with ``rollback=True`` is a ValueError.
    report
        A :func:`verify` report of this store to act on instead of verifying again; ignored
        when the store committed since.
    progress
        Called with the number of rows copied after each step of the rewrite.

    Raises CorruptStoreError when the manifest or schema is unreadable (there is no committed
    state to start from).
    """
    if salvage is True and rollback:
        raise ValueError("salvage and rollback exclude each other (salvage, dropping only the "
                         "damaged episodes, is the default)")
    rollback = bool(rollback)
    require_no_writer(path)
    if report is None or report.snapshot is None or report.snapshot != _snapshot(path):
        report = verify(path)
    if report.ok:
        return RepairReport(report, None, False, bool(dry_run), rollback, report.rows,
                            report.rows)
    if report.snapshot is None:
        first = report.problems[0]
        raise CorruptStoreError(f"cannot repair {str(path)!r}: {first}", key=first.key)
    index_bad = any(p.key.startswith(f"{META}/priority") for p in report.problems)
    if dry_run:
        with open(path, cache_bytes=0) as store:
            plan = _plan(store, report, rollback)
        return RepairReport(report, None, index_bad, True, rollback, *plan[1:])
    alpha = _drop_index(open_storage(path)) if index_bad else None
    plans: list[_Plan] = []

    def keep(store: Store) -> np.ndarray:
        plans.append(_plan(store, report, rollback))
        return plans[-1].kept

    result = rewrite(path, keep, progress=progress)
    if alpha is not None:
        with open(path, "a") as store:
            store.priority_index(alpha)
    return RepairReport(report, result, alpha is not None, False, rollback, *plans[-1][1:])


def _snapshot(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    try:
        m = load_manifest(open_storage(path))
    except (OSError, ReplayStoreError):
        return None
    return (m.generation, m.commit_seq)


class _Plan(NamedTuple):
    """What a repair keeps and drops; all but ``kept`` are RepairReport's last fields."""

    kept: np.ndarray
    rows_before: int
    rows_after: int
    dropped: tuple[tuple[int, int], ...]
    episodes_dropped: int


def _plan(store: Store, report: VerifyReport, rollback: bool) -> _Plan:
    """Which committed rows of ``store`` a repair keeps (see :func:`repair`)."""
    m = store.manifest
    rows = np.arange(m.start, m.end, dtype=np.int64)
    bad = report.unreadable(rows)
    # Episode boundaries come from the done flags, not the table, which may be the problem.
    try:
        flags = store._reader.get(m.slot_of(rows), ("terminated", "truncated"))
        ends = flags["terminated"] | flags["truncated"]
        segment: np.ndarray | None = np.concatenate(([0], np.cumsum(ends[:-1]))) \
            if len(rows) else rows
    except CorruptStoreError:
        segment = None
    if rollback:
        first = report.first_bad_row
        keep = np.ones(len(rows), bool) if first is None else rows < first
    elif segment is None:
        keep = ~bad  # the flags themselves are unreadable: drop only those rows
    else:
        keep = ~np.isin(segment, segment[bad])
    dropped = rows[~keep]
    episodes = -1 if segment is None else len(np.unique(segment[~keep]))
    runs = tuple(_runs(dropped)) if len(dropped) else ()
    return _Plan(rows[keep], len(rows), int(keep.sum()), runs, episodes)


def _drop_index(backend: LocalStorage) -> float:
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
