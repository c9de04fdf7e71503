"""Derived reads: next observations kept only at episode ends, and frame stacks built at read time.

An Atari-style store declares ``obs`` as single frames with ``stack=4`` and ``next_obs`` with
``next_of="obs"``. Each frame is then stored once, instead of eight times (four times in the
obs stacks, four more in the next_obs stacks):

* a ``next_of`` field stores a row only where the episode ends (the final observation, which
  no later row holds) and for the newest row at each commit; any other row's value is the
  ``next_of`` field of the following row, which belongs to the same episode;
* a field with ``stack=k`` is read as the ``k`` frames ending at the row, taken from the same
  episode; before the episode's first row, its first frame is repeated (the "reset" padding of
  Gymnasium's ``FrameStackObservation``). A stacked ``next_of`` field is the stack one step
  later: ``k - 1`` frames of its target and the next frame.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .errors import CorruptStoreError
from .reader import Reader


def gather(reader: Reader, episode_starts: np.ndarray, slots: np.ndarray,
           names: Iterable[str]) -> dict[str, np.ndarray]:
    """Rows of ``names`` at committed ``slots``, derived fields rebuilt.

    ``episode_starts`` holds, sorted, the global row where each stretch of committed rows that
    belongs to one episode begins (see ``Store.episode_segments``).
    """
    flat = slots.reshape(-1)
    reader.check_slots(flat)
    m = reader.manifest
    rows = m.row_of(flat)
    first = episode_starts[np.searchsorted(episode_starts, rows, side="right") - 1]
    names = tuple(names)
    # Stack rows of every derived field, per stored field: stacks of neighbouring rows share
    # frames (obs and next_obs stacks of one row share k - 1), so each is decoded once.
    wanted: dict[str, np.ndarray] = {}
    for name in names:
        field = reader.schema[name]
        depth = field.stack - 1 if field.next_of is not None else field.stack
        if field.derived and depth > 0:
            wanted[name] = np.maximum(rows[:, None] + np.arange(1 - depth, 1)[None, :],
                                      first[:, None])
    frames = _decode_once(reader, wanted)
    out = {}
    for name in names:
        field = reader.schema[name]
        if field.next_of is not None:
            nxt = next_frames(reader, name, field.next_of, rows)
            values = nxt if field.stack == 1 else np.concatenate(
                (frames[name], nxt[:, None]), axis=1)
        elif field.stack > 1:
            values = frames[name]
        else:
            values = reader.gather(name, flat)
        out[name] = values.reshape(slots.shape + field.read_shape)
    return out


def _decode_once(reader: Reader, wanted: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """For each derived field, its stack frames (n, depth, ...), each stored row read once."""
    by_source: dict[str, list[str]] = {}
    for name in wanted:
        field = reader.schema[name]
        by_source.setdefault(field.next_of or name, []).append(name)
    frames = {}
    for source, names in by_source.items():
        unique, inverse = np.unique(np.concatenate([wanted[n].reshape(-1) for n in names]),
                                    return_inverse=True)
        values = reader.gather(source, reader.manifest.slot_of(unique))[inverse]
        offset = 0
        for name in names:
            shape = wanted[name].shape
            count = shape[0] * shape[1]
            frames[name] = values[offset:offset + count].reshape(*shape, *values.shape[1:])
            offset += count
    return frames


def next_frames(reader: Reader, name: str, target: str, rows: np.ndarray) -> np.ndarray:
    """The next observation after each row: stored at episode ends, else the next row's."""
    missing = np.zeros(len(rows), bool)
    values = reader.gather(name, reader.manifest.slot_of(rows), missing)
    if missing.any():
        successors = reader.manifest.slot_of(rows[missing] + 1)
        if not reader.committed_mask(successors).all():
            raise CorruptStoreError(f"field {name!r}: a row without a stored next value has no "
                                    "committed successor")
        values[missing] = reader.gather(target, successors)
    return values
