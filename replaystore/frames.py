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
    rows = flat if m.capacity is None else m.start + (flat - m.start) % m.capacity
    first = episode_starts[np.searchsorted(episode_starts, rows, side="right") - 1]
    out = {}
    for name in names:
        field = reader.schema[name]
        if field.next_of is not None:
            values = _next_stack(reader, field.name, field.next_of, field.stack, rows, first)
        elif field.stack > 1:
            values = _stack(reader, name, field.stack, rows, first)
        else:
            values = reader.gather(name, flat)
        out[name] = values.reshape(slots.shape + field.read_shape)
    return out


def _slots(reader: Reader, rows: np.ndarray) -> np.ndarray:
    capacity = reader.manifest.capacity
    return rows if capacity is None else rows % capacity


def _stack(reader: Reader, name: str, k: int, rows: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Frames ``rows - k + 1 .. rows`` of ``name`` (clipped at ``first``): shape (n, k, ...)."""
    wanted = np.maximum(rows[:, None] + np.arange(1 - k, 1)[None, :], first[:, None])
    frames = reader.gather(name, _slots(reader, wanted.reshape(-1)))
    return frames.reshape(len(rows), k, *frames.shape[1:])


def _next_frames(reader: Reader, name: str, target: str, rows: np.ndarray) -> np.ndarray:
    """The next observation after each row: stored at episode ends, else the next row's."""
    missing = np.zeros(len(rows), bool)
    values = reader.gather(name, _slots(reader, rows), missing)
    if missing.any():
        successors = _slots(reader, rows[missing] + 1)
        if not reader.committed_mask(successors).all():
            raise CorruptStoreError(f"field {name!r}: a row without a stored next value has no "
                                    "committed successor")
        values[missing] = reader.gather(target, successors)
    return values


def _next_stack(reader: Reader, name: str, target: str, k: int, rows: np.ndarray,
                first: np.ndarray) -> np.ndarray:
    nxt = _next_frames(reader, name, target, rows)
    if k == 1:
        return nxt
    # The stack one step later: frames rows-k+2 .. rows of the target, then the next frame.
    earlier = _stack(reader, target, k - 1, rows, first)
    return np.concatenate((earlier, nxt[:, None]), axis=1)
