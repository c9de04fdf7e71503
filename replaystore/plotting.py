"""One figure that shows what a store holds (``replaystore inspect --plot``).

Four panels: episode return in the order episodes were recorded (with a running mean), the
episode length histogram, the per-step reward histogram and, when the store has a priority
index, the priority histogram (otherwise the episode return histogram). matplotlib is an
optional dependency (``pip install 'replaystore[plot]'``), imported only here and only when a
figure is drawn; the figure is drawn on its own Agg canvas, so pyplot's global state and the
caller's backend are left alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .optional import require
from .store import Store, open
from .transfer import priority_values

FORMATS = ("png", "svg", "pdf", "jpg", "jpeg")


def _subsample(slots: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    if len(slots) <= limit:
        return slots
    keep = np.sort(np.random.default_rng(seed).choice(len(slots), limit, replace=False))
    return slots[keep]


def _read_column(store: Store, name: str, slots: np.ndarray, block: int = 1 << 18) -> np.ndarray:
    parts = [store.get(slots[i:i + block], [name])[name] for i in range(0, len(slots), block)]
    return np.concatenate(parts) if parts else np.zeros(0)


def store_statistics(store: Store, *, max_rows: int = 1_000_000) -> dict[str, Any]:
    """The data the figure shows: episode returns and lengths (oldest first), rewards of up to
    ``max_rows`` committed rows (a uniform subsample beyond that) and, if the store has a
    priority index, the priorities of the same rows (else None)."""
    episodes = store.episodes
    slots = _subsample(store.slots(), max_rows)
    found = priority_values(store, slots)
    priorities = found[0] if found is not None else None
    return {"returns": np.asarray(episodes["return"], np.float64),
            "lengths": np.asarray(episodes["length"], np.int64),
            "rewards": _read_column(store, "reward", slots).astype(np.float64),
            "priorities": priorities, "rows": len(store), "sampled_rows": len(slots)}


def _running_mean(values: np.ndarray, window: int) -> np.ndarray:
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def _histogram(ax: Any, values: np.ndarray, title: str, xlabel: str, *, color: str,
               log_x: bool = False) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    if len(values) == 0:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    lo, hi = float(values.min()), float(values.max())
    if lo == hi:
        ax.bar([lo], [len(values)], width=max(abs(lo) * 0.05, 0.05), color=color)
        ax.text(0.5, 0.9, f"all {len(values):,} values = {lo:.4g}", ha="center",
                transform=ax.transAxes)
        return
    bins: Any = min(60, max(10, int(np.sqrt(len(values)))))
    if log_x and lo > 0 and hi / lo > 100:
        bins = np.geomspace(lo, hi, bins + 1)
        ax.set_xscale("log")
    counts, _, _ = ax.hist(values, bins=bins, color=color, edgecolor="white", linewidth=0.3)
    nonzero = counts[counts > 0]
    if len(nonzero) > 1 and nonzero.max() > 50 * nonzero.min():
        ax.set_yscale("log")  # a few rare values next to a dominant one stay visible
        ax.set_ylabel("count (log scale)")
    mean = float(values.mean())
    ax.axvline(mean, color="black", linestyle="--", linewidth=1, label=f"mean {mean:.4g}")
    ax.legend(loc="upper right", fontsize=8)


def plot_store(store: Store | str | os.PathLike[str], out: str | os.PathLike[str], *,
               max_rows: int = 1_000_000, dpi: int = 110) -> dict[str, Any]:
    """Draw the overview figure of a store into ``out`` (.png, .svg, .pdf or .jpg).

    The file is written under a temporary name and renamed into place, so ``out`` is never
    half-written. Raises :class:`~replaystore.optional.MissingDependencyError` when matplotlib
    is not installed.

    Parameters
    ----------
    store
        An open store or the path of one.
    out
        The image file to write; its extension picks the format.
    max_rows
        Rewards and priorities of at most this many rows are read (a uniform subsample).
    dpi
        Resolution of raster formats.

    Returns
    -------
    dict
        What the figure shows: ``path``, ``plot``, ``rows``, ``episodes``, ``sampled_rows``,
        ``panels`` (titles) and the return mean.

    Examples
    --------
    >>> import replaystore as rs
    >>> rs.plot_store("runs/cartpole", "cartpole.png")["panels"]  # doctest: +SKIP
    ['Episode return', 'Episode length', 'Reward per step', 'Episode return histogram']
    """
    out = Path(out)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(f"cannot tell the image format of {str(out)!r}: use one of "
                         f"{', '.join('.' + f for f in FORMATS)}")
    require("matplotlib", "plot", "plotting a store")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not isinstance(store, Store):
        with open(store) as opened:
            return plot_store(opened, out, max_rows=max_rows, dpi=dpi)
    stats = store_statistics(store, max_rows=max_rows)
    returns, lengths, rewards = stats["returns"], stats["lengths"], stats["rewards"]

    fig = Figure(figsize=(12, 8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    title = f"{store.path}: {stats['rows']:,} rows"
    title += f" (capacity {store.capacity:,})" if store.capacity else ""
    title += f", {len(returns):,} finished episodes"
    if len(returns):
        title += f", mean return {returns.mean():.4g}"
    fig.suptitle(title)

    ax = axes[0, 0]
    ax.set_title("Episode return")
    ax.set_xlabel("episode (oldest first)")
    ax.set_ylabel("return")
    if len(returns):
        x = np.arange(len(returns))
        ax.plot(x, returns, ".", markersize=2 if len(returns) > 500 else 4, alpha=0.5,
                color="tab:blue", label="episode")
        window = min(100, max(5, len(returns) // 20)) if len(returns) >= 20 else 1
        if window > 1:
            ax.plot(x[window - 1:], _running_mean(returns, window), color="tab:red",
                    linewidth=1.5, label=f"running mean of {window}")
        ax.legend(loc="best", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no finished episodes", ha="center", va="center",
                transform=ax.transAxes)
    _histogram(axes[0, 1], lengths.astype(np.float64), "Episode length", "steps",
               color="tab:green")
    sampled = "" if stats["sampled_rows"] == stats["rows"] else \
        f" ({stats['sampled_rows']:,} rows sampled)"
    _histogram(axes[1, 0], rewards, "Reward per step" + sampled, "reward", color="tab:orange")
    if stats["priorities"] is not None:
        last = "Priority" + sampled
        _histogram(axes[1, 1], stats["priorities"], last, "priority", color="tab:purple",
                   log_x=True)
    else:
        last = "Episode return histogram (no priority index)"
        _histogram(axes[1, 1], returns, last, "return", color="tab:blue")

    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        fig.savefig(tmp, format="jpeg" if fmt == "jpg" else fmt, dpi=dpi)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"path": str(store.path), "plot": str(out), "rows": stats["rows"],
            "sampled_rows": stats["sampled_rows"], "episodes": len(returns),
            "mean_return": float(returns.mean()) if len(returns) else None,
            "has_priorities": stats["priorities"] is not None,
            "panels": ["Episode return", "Episode length", "Reward per step",
                       "Priority" if stats["priorities"] is not None
                       else "Episode return histogram"]}
