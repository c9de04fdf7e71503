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

from collections.abc import Iterable, Mapping

import numpy as np

from .errors import CorruptStoreError
from .reader import Reader


def gather(reader: Reader, episode_starts: np.ndarray, slots: np.ndarray,
           names: Iterable[str], out: Mapping[str, np.ndarray] | None = None
           ) -> dict[str, np.ndarray]:
    """Rows of ``names`` at committed ``slots``, derived fields rebuilt, into the arrays of
    ``out`` where given (C-contiguous, checked by the caller).

    ``episode_starts`` holds, sorted, the global row where each stretch of committed rows that
    belongs to one episode begins (see ``Store.episode_segments``).
    """
    flat = slots.reshape(-1)
    reader.check_slots(flat)
    m = reader.manifest
    rows = m.row_of(flat)
    first = episode_starts[np.searchsorted(episode_starts, rows, side="right") - 1]
    names = tuple(names)
    result = {}
    for name in names:
        field = reader.schema[name]
        dest = (out or {}).get(name)
        if dest is None:
            dest = np.empty(slots.shape + field.read_shape, field.dtype)
        result[name] = dest
    # Stack rows of every derived field, per stored field: stacks of neighbouring rows share
    # frames (obs and next_obs stacks of one row share k - 1), so each is decoded once.
    wanted: dict[str, np.ndarray] = {}
    for name in names:
        field = reader.schema[name]
        depth = field.stack - 1 if field.next_of is not None else field.stack
        if field.derived and depth > 0:
            wanted[name] = np.maximum(rows[:, None] + np.arange(1 - depth, 1)[None, :],
                                      first[:, None])
    pools = _decode_once(reader, wanted)
    for name in names:
        field = reader.schema[name]
        dest = result[name].reshape(len(flat), *field.read_shape)
        if field.next_of is not None and field.stack == 1:
            next_frames(reader, name, field.next_of, rows, out=dest)
        elif field.next_of is not None:
            # The stack one step later: k - 1 frames of the target, then the next frame, which
            # goes to the rows _decode_once left free at the end of the pool.
            pool, index, spare = pools[name]
            next_frames(reader, name, field.next_of, rows, out=pool[spare:spare + len(rows)])
            index = np.concatenate((index, spare + np.arange(len(rows))[:, None]), axis=1)
            np.take(pool, index, axis=0, out=dest, mode="clip")
        elif field.stack > 1:
            pool, index, _ = pools[name]
            np.take(pool, index, axis=0, out=dest, mode="clip")  # "clip": unbuffered
        else:
            reader.gather(name, flat, out=dest)
    return result


def _decode_once(reader: Reader, wanted: dict[str, np.ndarray]
                 ) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """For each derived field: a pool of decoded frames of its stored field (each stored row
    once), the position in it of each wanted row (shaped like ``wanted``), and where the rows
    kept free for a ``next_of`` field's next frames begin (one per batch row)."""
    by_source: dict[str, list[str]] = {}
    for name in wanted:
        field = reader.schema[name]
        by_source.setdefault(field.next_of or name, []).append(name)
    pools = {}
    for source, names in by_source.items():
        unique, inverse = np.unique(np.concatenate([wanted[n].reshape(-1) for n in names]),
                                    return_inverse=True)
        field = reader.schema[source]
        spare = [len(wanted[n]) if reader.schema[n].next_of else 0 for n in names]
        pool = np.empty((len(unique) + sum(spare), *field.shape), field.dtype)
        reader.gather(source, reader.manifest.slot_of(unique), out=pool[:len(unique)])
        offset, free = 0, len(unique)
        for name, extra in zip(names, spare, strict=True):
            shape = wanted[name].shape
            count = shape[0] * shape[1]
            pools[name] = (pool, inverse[offset:offset + count].reshape(shape), free)
            offset += count
            free += extra
    return pools


def next_frames(reader: Reader, name: str, target: str, rows: np.ndarray,
                out: np.ndarray | None = None) -> np.ndarray:
    """The next observation after each row: stored at episode ends, else the next row's."""
    missing = np.zeros(len(rows), bool)
    values = reader.gather(name, reader.manifest.slot_of(rows), missing, out=out)
    if missing.any():
        successors = reader.manifest.slot_of(rows[missing] + 1)
        if not reader.committed_mask(successors).all():
            raise CorruptStoreError(f"field {name!r}: a row without a stored next value has no "
                                    "committed successor")
        values[missing] = reader.gather(target, successors)
    return values
