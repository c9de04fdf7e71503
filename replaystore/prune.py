"""Pruning: choose which rows of a store to drop, then rewrite the store without them.

Selection works on *segments*, the runs of committed rows that belong to one episode (see
:meth:`Store.episode_segments`): finished episodes, the surviving tail of an episode the ring
overwrote, and the episode in progress. Pruning drops whole episodes by default; ``by="rows"``
makes ``keep_last`` and ``lowest_priority`` count rows instead, and a row whose successor is
dropped then becomes the ``truncated`` end of its episode in the pruned store.

Episode ids are positions in :attr:`Store.episodes` (oldest finished episode still stored = 0),
as ``replaystore info``/``sample``/``inspect`` number them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from . import priority
from .errors import SchemaError
from .rewrite import Progress, RewriteReport, rewrite
from .store import Store

By = Literal["episodes", "rows"]


@dataclass(frozen=True)
class Selection:
    """What to drop; every criterion given drops rows, and a row survives only if none does.

    Parameters
    ----------
    keep_last
        Keep only the newest ``keep_last`` finished episodes (plus the one in progress), or the
        newest ``keep_last`` rows with ``by="rows"``.
    episodes
        Ids of finished episodes to drop.
    min_return, max_return
        Drop finished episodes whose return is below ``min_return`` or above ``max_return``.
    lowest_priority
        Drop the fraction (0, 1] of rows with the lowest priority: whole episodes ranked by
        their mean priority, or single rows with ``by="rows"``. Needs a priority index.
    by
        ``"episodes"`` (default) or ``"rows"``.
    """

    keep_last: int | None = None
    episodes: tuple[int, ...] = ()
    min_return: float | None = None
    max_return: float | None = None
    lowest_priority: float | None = None
    by: By = "episodes"

    def __post_init__(self) -> None:
        if self.by not in ("episodes", "rows"):
            raise SchemaError(f"by must be 'episodes' or 'rows', got {self.by!r}")
        if self.keep_last is not None and (not isinstance(self.keep_last, int | np.integer)
                                           or self.keep_last < 0):
            raise SchemaError(f"keep_last must be a non-negative integer, got {self.keep_last!r}")
        if self.lowest_priority is not None and not 0 < self.lowest_priority <= 1:
            raise SchemaError(f"lowest_priority must be a fraction in (0, 1], got "
                              f"{self.lowest_priority!r}")
        for name in ("min_return", "max_return"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise SchemaError(f"{name} must be a finite number, got {value!r}")

    def rows(self, store: Store) -> np.ndarray:
        """The global row numbers of ``store`` that survive this selection, oldest first."""
        starts, lengths = store.episode_segments()
        seg_of = np.repeat(np.arange(len(starts)), lengths)
        rows = np.arange(store.manifest.start, store.manifest.end, dtype=np.int64)
        drop_seg = self._drop_segments(store, starts, lengths)
        drop = drop_seg[seg_of] if len(rows) else np.zeros(0, bool)
        if self.by == "rows":
            if self.keep_last is not None:
                drop[: max(0, len(rows) - self.keep_last)] = True
            if self.lowest_priority is not None:
                leaves = _index(store).leaf(store.manifest.slot_of(rows))
                count = math.ceil(self.lowest_priority * len(rows))
                drop[np.argsort(leaves, kind="stable")[:count]] = True
        return rows[~drop]

    def _drop_segments(self, store: Store, starts: np.ndarray,
                       lengths: np.ndarray) -> np.ndarray:
        table = store.episodes
        ids = np.searchsorted(table["start"], starts)
        finished = ids < len(table)
        finished[finished] = table["start"][ids[finished]] == starts[finished]
        returns = np.full(len(starts), np.nan)
        returns[finished] = table["return"][ids[finished]]
        drop = np.zeros(len(starts), bool)
        unknown = sorted(set(self.episodes) - set(range(len(table))))
        if unknown:
            raise IndexError(f"no finished episode with id {unknown[0]}: the store holds "
                             f"{len(table)} (ids 0..{len(table) - 1})")
        drop |= finished & np.isin(ids, list(self.episodes))
        if self.min_return is not None:
            drop |= finished & (returns < self.min_return)
        if self.max_return is not None:
            drop |= finished & (returns > self.max_return)
        if self.by == "episodes":
            if self.keep_last is not None:
                newest_kept = np.cumsum(finished[::-1])[::-1] <= self.keep_last
                drop |= ~newest_kept
            if self.lowest_priority is not None:
                drop |= _lowest_segments(store, starts, lengths, self.lowest_priority)
        return drop


def _lowest_segments(store: Store, starts: np.ndarray, lengths: np.ndarray,
                     fraction: float) -> np.ndarray:
    """Segments of lowest mean priority that hold at least ``fraction`` of the rows."""
    leaves = _index(store).leaf(store.slots())
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    means = np.add.reduceat(leaves, offsets) / lengths if len(lengths) else leaves[:0]
    order = np.argsort(means, kind="stable")
    enough = np.cumsum(lengths[order]) - lengths[order] < fraction * lengths.sum()
    drop = np.zeros(len(starts), bool)
    drop[order[enough]] = True
    return drop


def _index(store: Store) -> priority.PriorityIndex:
    if not store.has_priority_index():
        raise SchemaError(f"store {str(store.path)!r} has no priority index, so it cannot be "
                          "pruned by priority")
    return store.priority_index()


def prune(path: str | os.PathLike[str], selection: Selection | None = None, *,
          dry_run: bool = False, progress: Progress | None = None,
          **criteria: int | float | str | Iterable[int] | None) -> RewriteReport:
    """Drop rows from the store at ``path`` and reclaim their disk space.

    Pass a :class:`Selection` or its fields as keywords. The store is rewritten without the
    dropped rows and swapped in atomically: a crash leaves the old store or the pruned one.
    Surviving rows keep their priorities and are renumbered from 0 (see :mod:`.rewrite`).

    Examples
    --------
    >>> rs.prune("runs/cartpole", keep_last=100)           # doctest: +SKIP
    >>> rs.prune("runs/cartpole", min_return=50, dry_run=True).rows_after  # doctest: +SKIP
    """
    if selection is None:
        if "episodes" in criteria and criteria["episodes"] is not None:
            criteria["episodes"] = tuple(int(i) for i in criteria["episodes"])  # type: ignore[union-attr]
        selection = Selection(**criteria)  # type: ignore[arg-type]
    elif criteria:
        raise TypeError("pass either a Selection or keyword criteria, not both")
    return rewrite(path, selection.rows, dry_run=dry_run, progress=progress)
