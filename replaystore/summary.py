"""A store at a glance: sizes per field, episode statistics, commit and lock state."""

from __future__ import annotations

from typing import Any

import numpy as np

from .layout import FORMAT_VERSION, LOCK, META
from .store import Store


def summarize(store: Store) -> dict[str, Any]:
    """Describe a store as a JSON-able dict (what ``replaystore info`` prints).

    Statistics that are undefined (the mean return of episodes with a NaN or infinite reward)
    are NaN here; ``replaystore info --json`` prints every non-finite number as null.

    Examples
    --------
    >>> summarize(rs.open("runs/cartpole"))["rows"]  # doctest: +SKIP
    20000
    """
    backend = store._backend
    manifest = store.manifest
    fields = []
    for field in store.schema:
        disk = sum(backend.size(key) for key in backend.list(field.name))
        raw = field.row_nbytes * manifest.extent
        fields.append({
            "name": field.name, "shape": list(field.shape), "dtype": field.dtype.name,
            "codec": str(field.codec), "chunk_rows": field.chunk_rows, "disk_bytes": disk,
            "raw_bytes": raw, "ratio": raw / disk if disk else None})
    episodes = store.episodes
    returns, lengths = episodes["return"], episodes["length"]
    return {
        "path": str(store.path),
        "format_version": FORMAT_VERSION,
        "rows": len(store),
        "capacity": store.capacity,
        "rows_ever": manifest.end,
        "fields": fields,
        "disk_bytes": sum(backend.allocated(k) for k in backend.list()),
        "meta_bytes": sum(backend.size(k) for k in backend.list(META)),
        "episodes": {
            "count": len(episodes),
            "open_length": manifest.open_episode[1] if manifest.open_episode else 0,
            "return": _stats(returns), "length": _stats(lengths),
            "terminated": int(episodes["terminated"].sum()),
            "truncated": int(episodes["truncated"].sum()),
        },
        "priority": _priority_stats(store),
        "samplers": sorted(manifest.state.get("samplers", {})),
        "commit": {"seq": manifest.commit_seq, "time": manifest.commit_time,
                   "generation": manifest.generation},
        "writer_pid": backend.lock_holder(LOCK),
    }


def _priority_stats(store: Store) -> dict[str, Any] | None:
    """Alpha, size and the spread of the committed rows' priorities, if the store has an index."""
    if not store.has_priority_index():
        return None
    index = store.priority_index()
    values = index.priorities(store.slots())
    return {"alpha": index.header.alpha, "slots": index.header.slots,
            "max_priority": index.max_priority, **(_stats(values) or {})}


def _stats(values: np.ndarray) -> dict[str, float] | None:
    """Mean, std, min and max, as floats; NaN where undefined (a NaN reward, or inf - inf),
    which ``replaystore info --json`` prints as null."""
    if len(values) == 0:
        return None
    with np.errstate(invalid="ignore", over="ignore"):  # no RuntimeWarning on stderr
        return {"mean": float(np.mean(values, dtype=np.float64)),
                "std": float(np.std(values, dtype=np.float64)),
                "min": float(np.min(values)), "max": float(np.max(values))}
