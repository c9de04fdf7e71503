"""What a commit carries besides rows: the priority index's checkpoint and sampler states.

:class:`CommitState` sits between the writer and the manifest. Before each manifest
replacement it brings the priority index in line with the new committed window (retired slots
to 0, new rows to the running maximum priority) and, on a full commit, flushes the index and
records the samplers' states and the index checkpoint in the manifest. After it, it moves the
store's reader to the new snapshot and starts the index's next undo log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from . import priority
from .errors import CorruptStoreError, ReadOnlyError, SchemaError
from .manifest import Manifest
from .priority import PriorityIndex
from .storage.local import LocalStorage

if TYPE_CHECKING:
    from .reader import Reader

MIN_UNBOUNDED_SLOTS = 1 << 16


class StatefulSampler(Protocol):
    def state_dict(self) -> dict[str, Any]: ...


def _slots(manifest: Manifest, first: int, stop: int) -> np.ndarray:
    return manifest.slot_of(np.arange(first, stop, dtype=np.int64))


class CommitState:
    """The priority index and named samplers of one open store."""

    def __init__(self, backend: LocalStorage, reader: Reader, *, writable: bool) -> None:
        self.backend = backend
        self.reader = reader
        self.writable = writable
        self.index: PriorityIndex | None = None
        self.samplers: dict[str, StatefulSampler] = {}

    # -- the priority index ---------------------------------------------------------------

    def priority_index(self, alpha: float | None) -> PriorityIndex:
        """Open the store's index (a writer creates it on first use with ``alpha``)."""
        m = self.reader.manifest
        if self.index is None:
            if priority.exists(self.backend):
                self.index = PriorityIndex.open(
                    self.backend, writable=self.writable, window=(m.start, m.end, m.capacity),
                    checkpoint=_checkpoint(m), max_priority=_max_priority(m))
            elif self.writable:
                self.index = self._create(m, 0.6 if alpha is None else alpha)
            else:
                raise ReadOnlyError(f"store {str(self.backend.root)!r} has no priority index "
                                    "yet; open it with mode='a' once to create one")
        if alpha is not None and alpha != self.index.header.alpha:
            raise SchemaError(f"the store's priority index was built with alpha="
                              f"{self.index.header.alpha}, not {alpha}; priorities are stored "
                              "as p**alpha, so alpha is fixed per store")
        return self.index

    def _create(self, m: Manifest, alpha: float) -> PriorityIndex:
        slots = m.capacity or max(MIN_UNBOUNDED_SLOTS, 2 * m.end)
        index = PriorityIndex.create(self.backend, slots, alpha)
        index.set(_slots(m, m.start, m.end),
                  np.full(m.rows, index.max_priority ** alpha))
        index.flush()
        index.checkpoint_now(_checkpoint(m))
        return index

    # -- around each manifest replacement -------------------------------------------------

    def before_publish(self, old: Manifest, new: Manifest, full: bool) -> Manifest:
        index = self.index
        state = dict(new.state)
        if index is not None:
            if new.capacity is None and new.end > index.leaves:
                self.index = index = index.grown(2 * new.end)
            retired = _slots(new, old.start, min(new.start, old.end))
            index.set(retired, np.zeros(len(retired)))
            fresh = _slots(new, max(old.end, new.start), new.end)
            alpha = index.header.alpha
            index.set(fresh, np.full(len(fresh), index.max_priority ** alpha))
            if full:
                index.flush()
                state["priority"] = {"checkpoint": _checkpoint(old) + 1,
                                     "max_priority": index.max_priority}
        if full and self.samplers:
            state["samplers"] = {**state.get("samplers", {}),
                                 **{n: s.state_dict() for n, s in self.samplers.items()}}
        return new.replace(state=state)

    def after_publish(self, manifest: Manifest, full: bool) -> None:
        self.reader.refresh(manifest)
        if full and self.index is not None:
            self.index.checkpoint_now(_checkpoint(manifest))

    def refreshed(self) -> None:
        """After a reader moved to a newer commit: follow an index the writer has grown."""
        if self.index is not None and not self.writable and \
                self.index.header.slots != priority.read_header(self.backend).slots:
            m = self.reader.manifest
            window = (m.start, m.end, m.capacity)
            try:
                self.index = PriorityIndex.open(self.backend, writable=False, window=window,
                                                checkpoint=0)
            except (CorruptStoreError, FileNotFoundError):
                # The writer grew the index again between our header read and the mapping.
                self.index = PriorityIndex.open(self.backend, writable=False, window=window,
                                                checkpoint=0)

    def close(self) -> None:
        """Close the index; a writer first undoes priority changes made since the last commit,
        as closing discards uncommitted rows too."""
        if self.index is not None:
            if self.writable and self.index.has_uncommitted_changes():
                m = self.reader.manifest
                self.index.recover((m.start, m.end, m.capacity), undo=True)
            self.index.close()
            self.index = None


def _checkpoint(manifest: Manifest) -> int:
    return int(manifest.state.get("priority", {}).get("checkpoint", 0))


def _max_priority(manifest: Manifest) -> float:
    return float(manifest.state.get("priority", {}).get("max_priority", 1.0))
