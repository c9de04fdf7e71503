"""The commit record: one small JSON document, replaced atomically, that says what is committed.

Rows are numbered globally from 0 in append order and never renumbered; row ``g`` lives in slot
``g % capacity`` of every field array (slot ``g`` without a capacity). The committed rows are
the global range ``[start, end)``: ``start`` moves forward when the ring overwrites old rows,
``end`` when new rows are committed. Everything outside that range is invisible to readers,
so chunk files may hold uncommitted rows without harm.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .codecs import crc_bytes
from .errors import CorruptStoreError, FormatVersionError, StoreNotFoundError
from .layout import FORMAT_VERSION, JSON_LIMIT, MANIFEST, dumps, loads
from .storage.base import Storage

MAX_ROWS = 1 << 48


@dataclass(frozen=True)
class Manifest:
    """What one commit made durable and visible."""

    schema_hash: str
    capacity: int | None
    start: int = 0
    end: int = 0
    generation: int = 0
    episodes: int = 0
    open_episode: tuple[int, int, float] | None = None
    commit_seq: int = 0
    commit_time: float = 0.0
    state: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        ints = (self.start, self.end, self.generation, self.episodes, self.commit_seq)
        if any(not isinstance(v, int) or v < 0 or v > MAX_ROWS for v in ints):
            raise CorruptStoreError(f"manifest holds out-of-range counters {ints}", key=MANIFEST)
        if self.start > self.end:
            raise CorruptStoreError(f"manifest start {self.start} is past its end {self.end}",
                                    key=MANIFEST)
        if self.capacity is not None and not (
                isinstance(self.capacity, int) and 0 < self.capacity <= MAX_ROWS
                and self.end - self.start <= self.capacity):
            raise CorruptStoreError(f"manifest window [{self.start}, {self.end}) does not fit "
                                    f"capacity {self.capacity}", key=MANIFEST)
        if self.open_episode is not None:
            # Its consistency with the rows is verify's to check; only its types here.
            first, length, total = self.open_episode
            if not (type(first) is int and type(length) is int and 0 <= first <= MAX_ROWS
                    and 0 < length <= MAX_ROWS and isinstance(total, float)):
                raise CorruptStoreError(f"manifest's episode in progress {self.open_episode} "
                                        "is malformed", key=MANIFEST)
        problem = _state_problem(self.state)
        if problem:
            raise CorruptStoreError(f"manifest state is malformed: {problem}", key=MANIFEST)

    @property
    def rows(self) -> int:
        """Number of committed rows currently in the store."""
        return self.end - self.start

    @property
    def extent(self) -> int:
        """Number of slots that have ever held a committed row (the zarr arrays' length)."""
        return self.end if self.capacity is None else min(self.end, self.capacity)

    def slot_of(self, rows: np.ndarray) -> np.ndarray:
        """Slots of global row numbers."""
        return rows if self.capacity is None else rows % self.capacity

    def row_of(self, slots: np.ndarray) -> np.ndarray:
        """Global row numbers of slots in the committed window (inverse of :meth:`slot_of`)."""
        return slots if self.capacity is None else self.start + (slots - self.start) % self.capacity

    def replace(self, **changes: Any) -> Manifest:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["open_episode"] = list(self.open_episode) if self.open_episode else None
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> Manifest:
        if not isinstance(doc, dict):
            raise CorruptStoreError("manifest is not a JSON object", key=MANIFEST)
        version = doc.get("format_version")
        if not isinstance(version, int):
            raise CorruptStoreError("manifest has no format_version", key=MANIFEST)
        if version > FORMAT_VERSION:
            raise FormatVersionError(
                f"store format version {version} is newer than this replaystore understands "
                f"({FORMAT_VERSION}); upgrade replaystore to read it")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:  # a damaged key name would otherwise drop a field (or the checksum)
            raise CorruptStoreError(f"manifest has unknown keys {unknown}", key=MANIFEST)
        try:
            values = dict(doc)
            episode = values.get("open_episode")
            if episode is not None:
                values["open_episode"] = (int(episode[0]), int(episode[1]), float(episode[2]))
            return cls(**values)
        except (TypeError, ValueError, IndexError, OverflowError) as exc:
            raise CorruptStoreError(f"malformed manifest: {exc}", key=MANIFEST) from None


def _state_problem(state: Any) -> str | None:
    """What is wrong with the ``state`` a commit recorded (index checkpoint, samplers), if
    anything: its shape only; a sampler checks its own state when it loads it."""
    if not isinstance(state, dict):
        return "not an object"
    index = state.get("priority", {})
    if not isinstance(index, dict):
        return "'priority' is not an object"
    checkpoint, top = index.get("checkpoint", 0), index.get("max_priority", 1.0)
    if not (type(checkpoint) is int and 0 <= checkpoint <= MAX_ROWS):
        return f"priority checkpoint {checkpoint!r} is not a counter"
    if not (type(top) in (int, float) and math.isfinite(top) and top >= 0):
        return f"max_priority {top!r} is not a finite, non-negative number"
    samplers = state.get("samplers", {})
    if not isinstance(samplers, dict):
        return "'samplers' is not an object"
    for name, saved in samplers.items():
        if not (isinstance(saved, dict) and isinstance(saved.get("kind"), str)
                and type(saved.get("steps")) is int and isinstance(saved.get("bit_generator"),
                                                                   dict)):
            return f"saved state of sampler {name!r} is malformed"
    return None


def load_manifest(backend: Storage) -> Manifest:
    """Read the last committed manifest."""
    try:
        raw = backend.get(MANIFEST, limit=JSON_LIMIT)
    except FileNotFoundError:
        folder = backend.capabilities.local_path
        where = f"at {str(folder)!r}" if folder is not None else f"in {backend!r}"
        raise StoreNotFoundError(f"no replay store {where} ({MANIFEST} is missing)") from None
    doc = loads(raw, MANIFEST)
    stored = doc.pop("crc32c", None) if isinstance(doc, dict) else None
    damaged = stored is not None and stored != _checksum(doc)  # older manifests have none
    try:
        manifest = Manifest.from_json(doc)  # a newer format version is reported as such first
    except CorruptStoreError:
        if not damaged:
            raise
        manifest = None  # the checksum explains it
    if damaged:
        raise CorruptStoreError(f"manifest {MANIFEST!r} fails its crc32c checksum",
                                key=MANIFEST)
    assert manifest is not None
    return manifest


def _checksum(doc: dict[str, Any]) -> str:
    # A damaged byte can leave valid JSON that claims rows nobody wrote ("end": 40 -> 41).
    return crc_bytes(dumps(doc)).hex()


def commit_manifest(backend: Storage, manifest: Manifest) -> Manifest:
    """Durably replace the manifest; returns it with a fresh sequence number and time."""
    committed = manifest.replace(commit_seq=manifest.commit_seq + 1, commit_time=time.time())
    doc = committed.to_json()
    backend.put(MANIFEST, dumps({**doc, "crc32c": _checksum(doc)}), durable=True)
    return committed
