"""The priority index: a sum tree and a min tree over the store's slots, in one memmap file.

Leaves hold ``priority ** alpha`` per slot (0 for slots outside the committed window, so they
are never sampled). Inner node ``n`` of the sum tree holds ``sum[2n] + sum[2n + 1]``; the
"min" tree stores reciprocals (``1 / leaf``, 0 for empty slots) under a max, so that empty
slots are zero bytes: a fresh 16M-slot file has its disk space reserved (a full disk must fail
when the file is made, not with a SIGBUS on a page write) but costs no memory until touched,
and opening it is a single ``mmap``.

Updates are batched: leaves are written, then each level's parents are recomputed *from their
children* with numpy, all at once. Inner nodes are therefore always exactly the (rounded) sums
of their children: nothing accumulates, so float drift cannot grow with the number of updates.

Every leaf stays finite: a non-zero leaf lies in ``[MIN_LEAF, MAX_LEAF]`` (``2**-1000`` to
``2**960``), so the total of any number of them, the running maximum given to new rows and the
min tree's reciprocals are finite too. :func:`leaf_values` refuses priorities outside those
bounds before anything changes.

Crash safety follows the store's commits. Before a leaf changes, its old value is appended to
an undo log, whose first record names the checkpoint it starts from. ``Store.commit`` flushes
the tree, records checkpoint ``k + 1`` in the manifest, then starts a new log for ``k + 1``
(:meth:`PriorityIndex.checkpoint_now`). A writer opening an index that was not closed cleanly
undoes the logged changes if the log starts from the manifest's checkpoint (they were never
committed), zeroes the slots outside the committed window, and rebuilds every inner node from
the leaves, so the index matches the committed rows exactly.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .codecs import crc_bytes
from .errors import CorruptStoreError, ReadOnlyError, SchemaError, SyncError
from .layout import JSON_LIMIT, META, loads
from .lock import current_pid
from .storage.local import LocalStorage

TREE = f"{META}/priority-{{leaves}}.tree"  # named by size, so a grown index is a new file
HEADER = f"{META}/priority.json"
UNDO = f"{META}/priority.undo"
# find() starts with a binary search over the first tree level with at most this many nodes.
TOP_NODES = 1024
# Bounds on a non-zero leaf (``priority ** alpha``). Below MAX_LEAF the total of even 2**50
# leaves (every partial sum of the tree) stays finite, so probabilities never become 0 or NaN
# and the running maximum given to new rows never overflows; above MIN_LEAF the reciprocal
# the min tree keeps stays finite, so importance weights never collapse to 0.
MAX_LEAF = 2.0 ** 960
MIN_LEAF = 2.0 ** -1000
_UNDO_RECORD = np.dtype([("slot", "<i8"), ("old", "<f8")])
UNDO_PIECE_RECORDS = 1 << 20  # undo records read at a time during recovery (16 MiB)
LOG_START = -2  # first record of an undo log whose records carry LOG_MARK
LOG_START_UNMARKED = -1  # ... of a log written before records were marked
LOG_MARK = np.int64(1 << 62)  # set in every record's slot: a zero-filled record lacks it


@dataclass(frozen=True)
class PriorityHeader:
    """The index's persisted settings; ``clean`` is False while a writer has it open."""

    slots: int
    alpha: float
    clean: bool = True
    format_version: int = 1

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def check_priorities(priorities: np.ndarray) -> np.ndarray:
    """Refuse negative, NaN or infinite priorities with an error that says which."""
    values = np.asarray(priorities, dtype=np.float64)
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        first = int(np.argmax(bad.reshape(-1)))
        raise SchemaError(f"priorities must be finite and >= 0; got {values.reshape(-1)[first]} "
                          f"at position {first} (and {int(bad.sum()) - 1} more)")
    return values


def leaf_values(priorities: np.ndarray, alpha: float, eps: float = 0.0,
                slots: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(priorities + eps, (priorities + eps) ** alpha)`` as flat float64 arrays.

    Raises SchemaError (a ValueError) naming the first offending value, its position and
    (given ``slots``) its slot, for negative, NaN or infinite priorities, for priorities whose
    leaf ``(p + eps) ** alpha`` would exceed :data:`MAX_LEAF` (the index's total must stay
    finite) and for positive ``p + eps`` whose leaf would be below :data:`MIN_LEAF` (or
    underflow to 0). A leaf of exactly 0 (``p + eps == 0``) is allowed: that slot is never
    sampled.
    """
    raw = np.asarray(priorities, dtype=np.float64)
    if raw.ndim != 1:
        raw = raw.reshape(-1)
    if len(raw):
        # Two reductions and scalar arithmetic (p ** alpha is monotone in p): cheap, and
        # nothing below can overflow once they pass.
        lo, hi = float(raw.min()), float(raw.max())
        if not (lo >= 0 and eps >= 0 and hi + eps <= largest_priority(alpha)
                and (lo + eps) ** alpha >= MIN_LEAF):
            _refuse_leaves(raw, alpha, eps, slots)  # returns if the only small leaves are 0
    values = raw + eps if eps else raw
    leaf = values if alpha == 1.0 else values ** alpha
    return values, leaf


def _refuse_leaves(raw: np.ndarray, alpha: float, eps: float,
                   slots: np.ndarray | None) -> None:
    """Raise for the first priority :func:`leaf_values` refuses, if there is one."""
    def where(mask: np.ndarray) -> tuple[int, str, str]:
        first = int(np.argmax(mask))
        slot = "" if slots is None else f" (slot {int(slots[first])})"
        more = int(mask.sum()) - 1
        return first, f"at position {first}{slot}", f" (and {more} more)" if more else ""

    if not (math.isfinite(eps) and eps >= 0):
        raise SchemaError(f"eps must be >= 0 and finite, got {eps!r}")
    bad = ~np.isfinite(raw) | (raw < 0)
    if bad.any():
        first, at, more = where(bad)
        raise SchemaError(f"priorities must be finite and >= 0; got {raw[first]!r} {at}{more}")
    with np.errstate(over="ignore", under="ignore"):
        values = raw + eps
        leaf = values ** alpha
    big = values > largest_priority(alpha)
    if big.any():
        first, at, more = where(big)
        raise SchemaError(
            f"priority {raw[first]!r} {at} is too large: (p + eps) ** alpha = "
            f"({raw[first]!r} + {eps!r}) ** {alpha!r} = {leaf[first]:.4g} exceeds "
            f"{MAX_LEAF:.4g} (2**960), the largest p ** alpha the priority index holds so "
            f"that its total stays finite{more}")
    small = (values > 0) & (leaf < MIN_LEAF)
    if small.any():
        first, at, more = where(small)
        raise SchemaError(
            f"priority {raw[first]!r} {at} is too small: (p + eps) ** alpha = "
            f"({raw[first]!r} + {eps!r}) ** {alpha!r} = {leaf[first]:.4g} is below "
            f"{MIN_LEAF:.4g} (2**-1000), the smallest non-zero p ** alpha the priority index "
            f"holds; pass 0, or give the sampler a larger eps{more}")


def leaf_problem(priority: float, alpha: float) -> str | None:
    """Why ``priority ** alpha`` may not be a leaf (see :func:`leaf_values`), or None."""
    priority = float(priority)
    if not (math.isfinite(priority) and priority >= 0):
        return f"{priority!r} is not a finite number >= 0"
    if priority > largest_priority(alpha):
        return (f"{priority!r} ** {alpha!r} exceeds {MAX_LEAF:.4g} (2**960), the largest "
                "p ** alpha the priority index holds")
    if priority > 0 and priority ** alpha < MIN_LEAF:
        return (f"{priority!r} ** {alpha!r} is below {MIN_LEAF:.4g} (2**-1000), the smallest "
                "non-zero p ** alpha the priority index holds")
    return None


@functools.lru_cache(maxsize=64)
def largest_priority(alpha: float) -> float:
    """The largest priority ``p`` with ``p ** alpha <= MAX_LEAF`` (the largest finite float
    for ``alpha == 0``)."""
    if alpha <= 0:
        return float(np.finfo(np.float64).max)
    with np.errstate(over="ignore"):
        top = float(np.float64(MAX_LEAF) ** (1.0 / alpha))
        top = min(top, float(np.finfo(np.float64).max))
        while np.float64(top) ** alpha > MAX_LEAF:
            top = float(np.nextafter(top, 0.0))
    return top


class PriorityIndex:
    """Sum/min trees over ``slots`` leaves stored in ``_replaystore/priority.tree``.

    Use :meth:`create` or :meth:`open`; writers (``writable=True``) may change priorities,
    readers map the file read-only and see the writer's updates as they happen.
    """

    def __init__(self, backend: LocalStorage, header: PriorityHeader, *, writable: bool) -> None:
        self.backend = backend
        self.header = header
        self.writable = writable
        self.leaves = leaves_for(header.slots)
        self.key = TREE.format(leaves=self.leaves)
        expected = 2 * 2 * self.leaves * 8
        try:
            size = backend.size(self.key)
        except FileNotFoundError:
            raise CorruptStoreError(f"priority index {self.key!r} is missing",
                                    key=self.key) from None
        if size != expected:
            raise CorruptStoreError(f"priority index {self.key!r} holds {size} bytes, expected "
                                    f"{expected}", key=self.key)
        trees = backend.disk().memmap(self.key, "<f8", (2, 2 * self.leaves), writable=writable)
        self._file = trees
        # Plain ndarray views of the mapping: indexing a np.memmap subclass costs ~2 µs more per
        # operation, which adds up over the ~2 x 24 levels of a batched update.
        plain = trees.view(np.ndarray)
        self.sum, self.inv = plain[0], plain[1]
        self._undo = backend.disk().open_log(UNDO) if writable else None
        self._owner = os.getpid()  # a forked child must not write the writer's index
        self.max_priority = 1.0  # the largest priority given so far; new rows get it

    # -- life cycle -----------------------------------------------------------------------

    @classmethod
    def create(cls, backend: LocalStorage, slots: int, alpha: float) -> PriorityIndex:
        """Make an empty index (all priorities 0) for ``slots`` slots."""
        if not (isinstance(alpha, int | float) and 0 <= alpha <= 10 and math.isfinite(alpha)):
            raise SchemaError(f"alpha must be a number in [0, 10], got {alpha!r}")
        backend.disk().allocate(TREE.format(leaves=leaves_for(slots)), 2 * 2 * leaves_for(slots) * 8)
        backend.put(UNDO, b"")
        header = PriorityHeader(slots=slots, alpha=float(alpha), clean=False)
        write_header(backend, header)
        return cls(backend, header, writable=True)

    @classmethod
    def open(cls, backend: LocalStorage, *, writable: bool, window: tuple[int, int, int | None],
             checkpoint: int, max_priority: float = 1.0) -> PriorityIndex:
        """Open an existing index; a writer repairs it first if it was not closed cleanly.

        ``window`` is the committed (start, end, capacity), ``checkpoint`` and
        ``max_priority`` what the last commit recorded.
        """
        index = cls(backend, read_header(backend), writable=writable)
        # A running max whose p ** alpha is past MAX_LEAF (recorded by a version that did not
        # check) would make every new row's leaf overflow or the total infinite: lower it.
        if leaf_problem(max_priority, index.header.alpha) is not None:
            max_priority = min(max_priority, largest_priority(index.header.alpha))
        index.max_priority = max_priority
        if writable:
            for key in backend.list(META):
                if key.endswith(".tree") and key != index.key:
                    backend.delete(key)  # left by a crash while the index grew
            logged = index.log_checkpoint()
            if not index.header.clean or logged != checkpoint:
                # Logged changes are uncommitted only if the log starts from the checkpoint
                # the last commit recorded; otherwise that commit already includes them. After
                # an unclean stop every inner node is recomputed: a power loss may have kept
                # tree pages whose undo records never reached the disk.
                index.recover(window, undo=logged == checkpoint, rebuild=True)
            index.checkpoint_now(checkpoint)
            index._set_header(clean=False)
        return index

    def _set_header(self, **changes: object) -> None:
        self.header = PriorityHeader(**{**self.header.to_json(), **changes})  # type: ignore[arg-type]
        write_header(self.backend, self.header)

    def _log_length(self) -> int:
        """Records in the undo log."""
        if self._undo is not None:
            self._undo.flush()
        return self.backend.size(UNDO) // _UNDO_RECORD.itemsize

    def _log_pieces(self, first: int, stop: int, *,
                    newest_first: bool = False) -> Iterator[tuple[int, np.ndarray]]:
        """Records ``[first, stop)`` of the undo log as (index of the piece's first record,
        records), read a bounded piece at a time: a log can grow long between commits, and a
        file planted in its place (gigabytes, sparse) must not be read whole."""
        size = _UNDO_RECORD.itemsize
        starts = list(range(first, stop, UNDO_PIECE_RECORDS))
        for start in reversed(starts) if newest_first else starts:
            end = min(stop, start + UNDO_PIECE_RECORDS)
            data = self.backend.get_range(UNDO, start * size, (end - start) * size)
            yield start, np.frombuffer(data, _UNDO_RECORD, count=len(data) // size)

    def _log_start(self) -> tuple[int, int] | None:
        """The undo log's first record (kind, checkpoint), or None for an empty log."""
        if self._undo is not None:
            self._undo.flush()
        data = self.backend.get_range(UNDO, 0, _UNDO_RECORD.itemsize)
        if len(data) < _UNDO_RECORD.itemsize:
            return None
        record = np.frombuffer(data, _UNDO_RECORD)[0]
        return int(record["slot"]), int(record["old"])

    def log_checkpoint(self) -> int | None:
        """The checkpoint the undo log starts from (None for an empty or foreign log)."""
        start = self._log_start()
        if start is None or start[0] not in (LOG_START, LOG_START_UNMARKED):
            return None
        return start[1]

    def _valid_log(self) -> tuple[int, bool]:
        """How many records from the start of the undo log are whole, and whether they carry
        the mark. Appends are not synced one by one, so after a power cut the log may end in
        records the file system zero-filled (its size reached the disk, its data did not):
        replaying those would set slot 0 to 0. Every record carries a mark bit in its slot;
        the first one without it ends the log."""
        length = self._log_length()
        start = self._log_start()
        if start is None or start[0] != LOG_START:
            return length, False  # a log written before records were marked
        for first, records in self._log_pieces(1, length):
            bad = (records["slot"] & LOG_MARK) == 0
            if bad.any():
                return first + int(np.argmax(bad)), True
        return length, True

    def recover(self, window: tuple[int, int, int | None], *, undo: bool,
                rebuild: bool = False) -> None:
        """Roll back changes since the last checkpoint (if ``undo``), clear the slots outside
        ``window``, and recompute the inner nodes: all of them with ``rebuild``, else only
        those above a leaf that may have changed.

        Every leaf changed since the checkpoint is in the log, so after a process stops the
        nodes it may have left half-updated all lie above logged leaves: recomputing those
        paths repairs the index without reading the whole file.
        """
        leaves = self.sum[self.leaves:]
        logged = np.zeros(self.leaves, bool)
        # A full rebuild needs the log only to undo; a partial one, to know the changed paths.
        length, marked = self._valid_log() if undo or not rebuild else (0, False)
        for _, records in self._log_pieces(1, length, newest_first=True):
            slots = records["slot"] & ~LOG_MARK if marked else records["slot"]
            keep = (slots >= 0) & (slots < self.leaves)
            slots, old = slots[keep], records["old"][keep]
            if undo:  # newest first, so each slot ends at the oldest value logged for it
                leaves[slots[::-1]] = old[::-1]
            logged[slots] = True
        start, end, capacity = window
        valid = np.zeros(self.leaves, bool)
        rows = np.arange(start, end)
        valid[rows if capacity is None else rows % capacity] = True
        # Scanning the leaves reads them; only real changes write (and dirty pages).
        stray = np.flatnonzero((leaves != 0) & (~valid | ~np.isfinite(leaves) | (leaves < 0)))
        leaves[stray] = 0.0
        logged[stray] = True
        changed = np.flatnonzero(logged)
        if rebuild:
            self.rebuild()
        elif len(changed):
            values = leaves[changed]
            with np.errstate(divide="ignore"):
                self.inv[changed + self.leaves] = np.where(values > 0, 1.0 / values, 0.0)
            self._propagate(changed + self.leaves)
        self.flush()

    def rebuild(self) -> None:
        """Recompute every inner node of both trees from the leaves."""
        leaves = self.sum[self.leaves:]
        with np.errstate(divide="ignore"):
            self.inv[self.leaves:] = np.where(leaves > 0, 1.0 / leaves, 0.0)
        level = self.leaves
        while level > 1:
            half = level // 2
            self.sum[half:level] = self.sum[level:2 * level:2] + self.sum[level + 1:2 * level:2]
            self.inv[half:level] = np.maximum(self.inv[level:2 * level:2],
                                              self.inv[level + 1:2 * level:2])
            level = half

    def flush(self) -> None:
        """Write the trees' dirty pages to disk (before a commit records this state).

        The undo log is synced first: a power cut after the tree's pages reached the disk but
        before the commit's manifest did must find every record that undoes them.
        """
        if self._undo is not None:
            self._undo.flush()
            self._sync_log()
        self._file.flush()

    def _sync_log(self) -> None:
        """fsync the undo log; a failure is a SyncError naming it (the writer then stops)."""
        assert self._undo is not None
        try:
            os.fsync(self._undo.fileno())
        except OSError as exc:
            raise SyncError(exc.errno, exc.strerror, str(self.backend.root / UNDO)) from None

    def checkpoint_now(self, number: int) -> None:
        """Start a new undo log: the state flushed last is checkpoint ``number``."""
        if self._undo is None:
            raise ReadOnlyError("this store's priority index is open read-only; open the store "
                                "with mode='a' to change priorities")
        self._undo.truncate(0)
        start = np.array([(LOG_START, float(number))], _UNDO_RECORD)
        self._undo.write(start.tobytes())
        self._undo.flush()
        self._sync_log()  # the checkpoint a later recovery compares against

    def has_uncommitted_changes(self) -> bool:
        """Whether leaves changed since the last checkpoint (the undo log holds records)."""
        return self._undo is not None and self._log_length() > 1

    def close(self) -> None:
        """Flush and mark the index clean (writers); later opens skip recovery."""
        if self._undo is not None:
            self._file.flush()
            self._undo.close()
            self._undo = None
            self._set_header(clean=True)

    # -- reading --------------------------------------------------------------------------

    @property
    def total(self) -> float:
        """Sum of ``priority ** alpha`` over the sampleable slots."""
        return float(self.sum[1])

    @property
    def min_leaf(self) -> float:
        """The smallest non-zero ``priority ** alpha`` (inf when nothing is sampleable)."""
        top = float(self.inv[1])
        return 1.0 / top if top > 0 else math.inf

    def leaf(self, slots: np.ndarray) -> np.ndarray:
        return self.sum[self.leaves + np.asarray(slots, dtype=np.int64)]

    def priorities(self, slots: np.ndarray) -> np.ndarray:
        """The priorities of ``slots`` (``leaf ** (1 / alpha)``)."""
        leaf = self.leaf(slots)
        alpha = self.header.alpha
        return leaf if alpha in (0.0, 1.0) else leaf ** (1.0 / alpha)

    def find(self, targets: np.ndarray) -> np.ndarray:
        """For each prefix-sum target in ``[0, total)``, the slot whose leaf range holds it."""
        # The top of the tree in one step: a binary search in the prefix sums of the first
        # level of at most TOP_NODES nodes replaces a dozen numpy calls per tree level.
        first = min(self.leaves, TOP_NODES)
        level = self.sum[first:2 * first]
        prefix = level.cumsum()
        u = np.minimum(np.asarray(targets, dtype=np.float64), np.nextafter(prefix[-1], 0))
        k = prefix.searchsorted(u, side="right")
        u -= prefix[k] - level[k]
        node = k + first
        # Then down, one level a step; a node's two children are one row of this view.
        pairs = self.sum.reshape(-1, 2)
        while len(node) and node[0] < self.leaves:
            children = pairs.take(node, axis=0)
            left = children[:, 0]
            # Go right when the target lies past the left subtree and the right one has mass
            # (a concurrent writer or rounding may leave the right subtree empty).
            right = (u >= left) & (children[:, 1] > 0)
            u -= left * right
            node <<= 1
            node += right
        return node - self.leaves

    # -- writing --------------------------------------------------------------------------

    def set(self, slots: np.ndarray, leaf_values: np.ndarray) -> None:
        """Set leaves (``priority ** alpha``); for duplicate slots the last value wins."""
        if not self.writable or self._undo is None:
            raise ReadOnlyError("this store's priority index is open read-only; open the store "
                                "with mode='a' to change priorities")
        if current_pid() != self._owner:
            raise ReadOnlyError(f"this priority index was opened for writing by process "
                                f"{self._owner}; a process forked from it may only read it")
        slots = np.asarray(slots, dtype=np.int64).reshape(-1)
        values = np.asarray(leaf_values, dtype=np.float64).reshape(-1)
        if len(slots) == 0:
            return
        nodes = slots + self.leaves
        record = np.empty(len(slots), _UNDO_RECORD)
        record["slot"], record["old"] = slots | LOG_MARK, self.sum[nodes]
        self._undo.write(record.tobytes())
        self._undo.flush()
        # Fancy assignment keeps the last of duplicate slots, as documented.
        self.sum[nodes] = values
        self.inv[nodes] = np.divide(1.0, values, out=np.zeros_like(values), where=values > 0)
        self._propagate(nodes)

    def _propagate(self, nodes: np.ndarray) -> None:
        # All nodes are at the same depth, so one pass per level reaches the root. Duplicate
        # parents are left in: they get the same value twice, which is cheaper than np.unique.
        # A node's children are one row of the (n, 2) views, so each level is one gather.
        s, m = self.sum, self.inv
        s_pairs, m_pairs = s.reshape(-1, 2), m.reshape(-1, 2)
        nodes = nodes >> 1
        while nodes[0] > len(nodes):
            children = s_pairs.take(nodes, axis=0)
            s[nodes] = children[:, 0] + children[:, 1]
            children = m_pairs.take(nodes, axis=0)
            m[nodes] = np.maximum(children[:, 0], children[:, 1])
            nodes >>= 1
        # Levels no wider than the batch: recomputing them whole costs less than gathering.
        low = 1 << (int(nodes[0]).bit_length() - 1)
        while low:
            high = 2 * low
            np.add(s[high:2 * high:2], s[high + 1:2 * high:2], out=s[low:high])
            np.maximum(m[high:2 * high:2], m[high + 1:2 * high:2], out=m[low:high])
            low >>= 1

    def grown(self, slots: int) -> PriorityIndex:
        """A larger index with the same leaves and undo log; this one is closed and deleted.

        The new tree file is complete and flushed before the header names it, so a crash
        leaves either index whole (plus, at worst, an orphan file that the next open removes).
        """
        if self._undo is None:
            raise ReadOnlyError("this store's priority index is open read-only")
        leaves = leaves_for(slots)
        self.backend.disk().allocate(TREE.format(leaves=leaves), 2 * 2 * leaves * 8)
        self._undo.flush()
        self._undo.close()
        self._undo = None
        bigger = PriorityIndex(self.backend, PriorityHeader(slots, self.header.alpha, False),
                               writable=True)
        bigger.max_priority = self.max_priority
        # The old tree becomes the leftmost subtree of the new one: copy it level by level
        # (writing only its pages), then the path to the root.
        shift = (leaves // self.leaves).bit_length() - 1
        level = 1
        while level <= self.leaves:
            for new, old in ((bigger.sum, self.sum), (bigger.inv, self.inv)):
                new[level << shift:(level << shift) + level] = old[level:2 * level]
            level *= 2
        for node in (1 << j for j in range(shift - 1, -1, -1)):
            bigger.sum[node] = bigger.sum[2 * node] + bigger.sum[2 * node + 1]
            bigger.inv[node] = max(bigger.inv[2 * node], bigger.inv[2 * node + 1])
        bigger.flush()
        bigger._set_header()
        self.backend.delete(self.key)
        return bigger

    def note_max(self, priority: float) -> None:
        """Raise the running maximum priority (given to new rows) to ``priority``.

        A priority whose ``priority ** alpha`` the index cannot hold (see
        :func:`leaf_values`) raises SchemaError and changes nothing.
        """
        if priority > self.max_priority:
            problem = leaf_problem(priority, self.header.alpha)
            if problem is not None:
                raise SchemaError(f"max priority refused: {problem}")
            self.max_priority = priority


def leaves_for(slots: int) -> int:
    """Leaves of a tree over ``slots`` slots: the next power of two, at least 2 (so the root
    is an inner node)."""
    return 1 << max(1, (slots - 1).bit_length())


def write_header(backend: LocalStorage, header: PriorityHeader) -> None:
    doc = header.to_json()
    backend.put(HEADER, json.dumps({**doc, "crc32c": _checksum(doc)}).encode(), durable=True)


def _checksum(doc: dict[str, object]) -> str:
    # A flipped bit can leave valid JSON with another alpha, which changes every priority.
    return crc_bytes(json.dumps(doc, sort_keys=True).encode()).hex()


def read_header(backend: LocalStorage) -> PriorityHeader:
    try:
        doc = loads(backend.get(HEADER, limit=JSON_LIMIT), HEADER)
        stored = doc.pop("crc32c", None)
        header = PriorityHeader(**doc)
    except FileNotFoundError:
        raise CorruptStoreError(f"priority index header {HEADER!r} is missing", key=HEADER) from None
    except (ValueError, TypeError) as exc:
        raise CorruptStoreError(f"priority index header {HEADER!r} is malformed: {exc}",
                                key=HEADER) from None
    if stored is not None and stored != _checksum(doc):  # headers before it have none
        raise CorruptStoreError(f"priority index header {HEADER!r} fails its crc32c checksum",
                                key=HEADER)
    if header.format_version > 1:
        raise CorruptStoreError(f"priority index format {header.format_version} is newer than "
                                "this replaystore understands", key=HEADER)
    if not (isinstance(header.slots, int) and 0 < header.slots <= 1 << 40):
        raise CorruptStoreError(f"priority index claims {header.slots!r} slots", key=HEADER)
    alpha = header.alpha
    if not (isinstance(alpha, int | float) and not isinstance(alpha, bool)
            and math.isfinite(alpha) and 0 <= alpha <= 10):
        raise CorruptStoreError(f"priority index header has alpha {alpha!r}, not a number in "
                                "[0, 10]", key=HEADER)
    return header


def exists(backend: LocalStorage) -> bool:
    """Whether the store has a priority index: its header, or a tree whose header was lost
    (which opening then reports as damage rather than as no index at all)."""
    return backend.exists(HEADER) or any(key.endswith(".tree") for key in backend.list(META))


__all__ = ["MAX_LEAF", "MIN_LEAF", "PriorityIndex", "check_priorities", "exists",
           "largest_priority", "leaf_problem", "leaf_values", "leaves_for", "read_header"]
