"""Samplers: which slots a batch reads. They return indices (and weights), never row bytes.

Every sampler takes a ``seed`` and keeps its whole state (bit generator, step counter) in a
JSON-able :meth:`~Sampler.state_dict`. Give a sampler a ``name`` and a store opened for writing
saves that state with every ``commit()``; a sampler built later with the same name on the
reopened store resumes from it, and draws the same batches an uninterrupted run would have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import CorruptStoreError, SchemaError
from .layout import MANIFEST
from .priority import PriorityIndex, leaf_problem, leaf_values
from .store import Store, as_slots

# The committed window a batch was drawn from: global rows [start, end), and the capacity.
Window = tuple[int, int, int | None]


@dataclass(frozen=True)
class Linear:
    """A value moving linearly from ``start`` to ``end`` over ``steps`` sample calls, then held.

    Examples
    --------
    >>> Linear(0.4, 1.0, 100)(50)
    0.7
    """

    start: float
    end: float
    steps: int

    def __call__(self, step: int) -> float:
        if self.steps <= 0:
            return self.end
        fraction = min(1.0, step / self.steps)
        return round(self.start + (self.end - self.start) * fraction, 12)


@dataclass(frozen=True)
class Batch:
    """Sampled slots and what a learner needs besides the rows.

    ``indices`` are store slots (pass them to ``store.get``); ``probabilities`` and
    ``weights`` come from prioritized sampling (weights normalised so the largest possible
    weight is 1); ``mask`` marks real (not padded) steps of a sequence. ``window`` is the
    committed window ``(start, end, capacity)`` the slots were drawn from, so :attr:`rows`
    names the row each slot held then. Pass the whole batch to
    :meth:`PrioritizedSampler.update_priorities`: slots whose row the ring has overwritten
    since are skipped.
    """

    indices: np.ndarray
    probabilities: np.ndarray | None = None
    weights: np.ndarray | None = None
    mask: np.ndarray | None = None
    window: Window | None = None

    @property
    def rows(self) -> np.ndarray | None:
        """Global row numbers (counting every row ever appended) that ``indices`` held when
        the batch was drawn, in the shape of ``indices``; None without a ``window``."""
        if self.window is None:
            return None
        return _rows_in(np.asarray(self.indices, dtype=np.int64), self.window)[0]


def _rows_in(slots: np.ndarray, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """For each slot, the global row it holds in ``window`` and whether that row lies in the
    window (a slot outside it maps to a row that does not)."""
    start, end, capacity = window
    if capacity is None:
        return slots.copy(), (slots >= start) & (slots < end)
    offset = (slots - start) % capacity
    return start + offset, (slots >= 0) & (slots < capacity) & (offset < end - start)


class Sampler:
    """Base class: a seeded generator, a step counter, state saved with the store's commits."""

    def __init__(self, store: Store, *, seed: int | None = None, name: str | None = None) -> None:
        self.store = store
        self.name = name
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.steps = 0
        saved = store.sampler_state(name) if name else None
        if saved is not None:
            self.load_state_dict(saved)
        if name:
            store.register_sampler(name, self)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the same stream of batches, as JSON-able values."""
        return {"kind": type(self).__name__, "steps": self.steps,
                "bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict):
            raise TypeError(f"a sampler state is a dict (from state_dict()), got "
                            f"{type(state).__name__}")
        if state.get("kind") != type(self).__name__:
            raise SchemaError(f"saved sampler state is for a {state.get('kind')}, not a "
                              f"{type(self).__name__}")
        try:
            self.steps = int(state["steps"])
            self.rng.bit_generator.state = state["bit_generator"]
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptStoreError(f"saved state of sampler {self.name!r} cannot be loaded: "
                                    f"{exc}", key=MANIFEST) from None

    def sample(self, batch_size: int) -> Batch:
        raise NotImplementedError

    def _window(self) -> Window:
        m = self.store.manifest
        if m.rows == 0:
            raise IndexError(f"store {str(self.store.path)!r} has no committed rows to sample")
        return m.start, m.end, m.capacity


def _check_batch_size(batch_size: int) -> int:
    if not isinstance(batch_size, int | np.integer) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


class UniformSampler(Sampler):
    """Slots drawn uniformly, with replacement, from the committed rows."""

    def sample(self, batch_size: int) -> Batch:
        batch_size = _check_batch_size(batch_size)
        window = self._window()
        rows = self.rng.integers(window[0], window[1], batch_size)
        self.steps += 1
        return Batch(self.store.manifest.slot_of(rows), window=window)


class PrioritizedSampler(Sampler):
    """Proportional prioritized replay (Schaul et al. 2016) over the store's priority index.

    ``P(i) = p_i ** alpha / sum_j p_j ** alpha``; weights ``w_i = (N P(i)) ** -beta`` divided by
    their largest possible value, so they lie in (0, 1]. Batches are stratified: the total mass
    is cut into ``batch_size`` equal segments and one slot is drawn from each. New rows get the
    largest priority seen so far. ``beta`` may be a number or a schedule such as
    :class:`Linear`, evaluated at the sampler's step.

    The priority index lives in the store; a store opened for writing creates it on first use
    and commits it with the rows. ``update_priorities`` needs such a store.

    ``eps`` (added to every priority given to ``update_priorities``) must be finite and >= 0,
    and a positive ``eps ** alpha`` must lie within the index's bounds (``2**-1000`` to
    ``2**960``, see :func:`~replaystore.priority.leaf_values`); ValueError otherwise, before
    the index is created.
    """

    def __init__(self, store: Store, *, alpha: float = 0.6, beta: float | Linear = 0.4,
                 eps: float = 1e-6, seed: int | None = None, name: str | None = None) -> None:
        _check_eps(eps, alpha)
        store.priority_index(alpha)  # creates it, or checks alpha
        self.beta = beta
        self._eps = float(eps)
        # The window of the most recent batch: plain slots given to update_priorities name
        # the rows they held then.
        self._recent: Window | None = None
        super().__init__(store, seed=seed, name=name)

    @property
    def index(self) -> PriorityIndex:
        """The store's index (looked up each time: an unbounded store's index grows)."""
        return self.store.priority_index()

    @property
    def alpha(self) -> float:
        """The exponent of the store's index: leaves hold ``priority ** alpha``."""
        return self.index.header.alpha

    @property
    def eps(self) -> float:
        """Added to every priority given to :meth:`update_priorities`; setting it checks it
        as the constructor does (ValueError)."""
        return self._eps

    @eps.setter
    def eps(self, value: float) -> None:
        _check_eps(value, self.alpha)
        self._eps = float(value)

    def current_beta(self) -> float:
        return float(self.beta(self.steps) if callable(self.beta) else self.beta)

    def sample(self, batch_size: int) -> Batch:
        batch_size = _check_batch_size(batch_size)
        window = self._window()
        index = self.index
        total = index.total
        if not total > 0:
            raise IndexError("every committed row has priority 0; nothing can be sampled")
        bounds = (np.arange(batch_size) + self.rng.random(batch_size)) * (total / batch_size)
        slots = index.find(bounds)  # find clips targets below the total
        leaf = index.leaf(slots)
        for _ in range(8):  # a concurrent update may leave a stale path to an empty leaf
            empty = leaf <= 0
            if not empty.any():
                break
            slots[empty] = index.find(self.rng.random(int(empty.sum())) * index.total)
            leaf = index.leaf(slots)
        probabilities = leaf / total
        beta = self.current_beta()
        # min_leaf is 1 / (1 / x), which can be an ulp above x: clip so weights stay <= 1.
        weights = np.minimum((index.min_leaf / leaf) ** beta, 1.0)
        self.steps += 1
        self._recent = window
        return Batch(slots, probabilities, weights, window=window)

    def update_priorities(self, indices: Batch | Any, priorities: Any, *,
                          rows: Any = None) -> None:
        """Set the priorities of sampled rows (typically ``|TD error|``); ``eps`` is added.

        Which rows ``indices`` name:

        * a :class:`Batch` (from any earlier ``sample``): the rows its slots held when it was
          drawn (:attr:`Batch.rows`; a Batch without a ``window`` counts as plain slots);
        * slots together with ``rows=``, their global row numbers (``Batch.rows``, or the
          ``"rows"`` of a :mod:`replaystore.torch` batch, whose slots were drawn elsewhere);
          ValueError where a row does not live in its slot (``row % capacity``);
        * plain slots: the rows they held when this sampler drew its most recent batch
          (those of the store's current committed window if it has drawn none). For an older
          batch pass the Batch, or its rows.

        A row the ring has retired since (overwritten, or about to be) is skipped, so its
        slot keeps the priority of the row that replaced it; so is a slot that held no
        committed row. Duplicate slots: the last value wins.

        Every value is checked before anything changes: a negative, NaN or infinite priority,
        or one whose ``(p + eps) ** alpha`` the index cannot hold (see
        :func:`~replaystore.priority.leaf_values`), raises SchemaError (a ValueError) naming
        the value, its position and its slot, and leaves the index unchanged.
        """
        window = self._recent
        if isinstance(indices, Batch):
            if indices.window is not None:
                window = indices.window
            indices = indices.indices
        slots = as_slots(indices).reshape(-1)
        raw = np.asarray(priorities, dtype=np.float64).reshape(-1)
        if len(raw) != len(slots):
            raise ValueError(f"got {len(slots)} indices but {len(raw)} priorities")
        index = self.index
        values, leaf = leaf_values(raw, index.header.alpha, self._eps, slots)
        if rows is not None:
            live = self._rows_live(slots, rows)
        else:
            m = self.store.manifest
            if window is None or (window[0] == m.start and window[1] == m.end):
                live = self.store.committed_mask(slots)
            else:  # commits since the batch: which of its rows are still committed?
                held, inside = _rows_in(slots, window)
                live = inside & (held >= m.start) & (held < m.end)
        if not live.all():
            slots, values, leaf = slots[live], values[live], leaf[live]
        if len(slots):
            index.set(slots, leaf)
            index.note_max(float(values.max()))

    def _rows_live(self, slots: np.ndarray, rows: Any) -> np.ndarray:
        """Which of ``rows`` (the global rows of ``slots``) are committed now."""
        given = as_slots(rows).reshape(-1)
        if len(given) != len(slots):
            raise ValueError(f"got {len(slots)} indices but {len(given)} rows")
        m = self.store.manifest
        wrong = (given < 0) | (m.slot_of(given) != slots)
        if wrong.any():
            first = int(np.argmax(wrong))
            raise ValueError(f"rows[{first}] = {int(given[first])} does not live in slot "
                             f"{int(slots[first])} (rows are global row numbers, slot = row"
                             f"{'' if m.capacity is None else f' % {m.capacity}'})")
        return (given >= m.start) & (given < m.end)


class SequenceSampler(Sampler):
    """Sequences of ``length`` consecutive rows that never cross an episode boundary.

    ``sample`` returns indices of shape ``(batch_size, length)``. Without ``pad`` every
    sequence lies wholly inside one episode (episodes shorter than ``length`` are never
    drawn). With ``pad=True`` any row may start a sequence; steps past its episode's end
    repeat the episode's last slot and are marked False in ``mask``.
    """

    def __init__(self, store: Store, length: int, *, pad: bool = False, seed: int | None = None,
                 name: str | None = None) -> None:
        if not isinstance(length, int) or length <= 0:
            raise ValueError(f"length must be a positive integer, got {length!r}")
        self.length = length
        self.pad = pad
        self._seen = -1
        super().__init__(store, seed=seed, name=name)

    def _refresh(self) -> None:
        m = self.store.manifest
        if (m.commit_seq, m.start, m.end) == self._seen:
            return
        starts, lengths = self.store.episode_segments()
        # How many sequences may start in each segment.
        self._counts = lengths if self.pad else np.maximum(lengths - self.length + 1, 0)
        self._starts, self._lengths = starts, lengths
        self._cumulative = np.cumsum(self._counts)
        self._seen = (m.commit_seq, m.start, m.end)

    def sample(self, batch_size: int) -> Batch:
        batch_size = _check_batch_size(batch_size)
        self._window()
        self._refresh()
        total = int(self._cumulative[-1]) if len(self._cumulative) else 0
        if total == 0:
            raise IndexError(f"no episode holds {self.length} committed rows")
        pick = self.rng.integers(0, total, batch_size)
        segment = np.searchsorted(self._cumulative, pick, side="right")
        first = self._starts[segment] + pick - (self._cumulative[segment] - self._counts[segment])
        steps = np.arange(self.length)
        rows = first[:, None] + steps[None, :]
        last = (self._starts[segment] + self._lengths[segment] - 1)[:, None]
        mask = rows <= last
        rows = np.minimum(rows, last)
        self.steps += 1
        m = self.store.manifest
        return Batch(m.slot_of(rows), mask=mask if self.pad else None,
                     window=(m.start, m.end, m.capacity))


class EpisodeSampler(Sampler):
    """Whole finished episodes, uniformly: ``sample_episodes(n)`` returns their slot arrays."""

    def sample_episodes(self, count: int) -> list[np.ndarray]:
        count = _check_batch_size(count)
        self._window()
        table = self.store.episodes
        if len(table) == 0:
            raise IndexError("the store holds no finished episode")
        picks = self.rng.integers(0, len(table), count)
        self.steps += 1
        slot_of = self.store.manifest.slot_of
        return [slot_of(np.arange(table["start"][i], table["start"][i] + table["length"][i]))
                for i in picks.tolist()]

    def sample(self, batch_size: int) -> Batch:
        """One episode's slots as a batch (``batch_size`` must be 1)."""
        if batch_size != 1:
            raise ValueError("EpisodeSampler.sample draws one episode; use sample_episodes(n)")
        slots = self.sample_episodes(1)[0]
        m = self.store.manifest
        return Batch(slots, window=(m.start, m.end, m.capacity))


def _check_eps(eps: Any, alpha: Any) -> None:
    """ValueError unless ``eps`` is a finite number >= 0 whose ``eps ** alpha`` (if positive)
    the priority index can hold; an invalid ``alpha`` is left to the index to report."""
    if isinstance(eps, bool) or not isinstance(eps, int | float | np.integer | np.floating) \
            or not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be >= 0 and finite, got {eps!r}")
    if eps > 0 and isinstance(alpha, int | float) and not isinstance(alpha, bool) \
            and math.isfinite(alpha) and 0 <= alpha <= 10:
        problem = leaf_problem(float(eps), float(alpha))
        if problem is not None:
            raise ValueError(f"eps {eps!r} is refused (every priority is at least eps, and "
                             f"its p ** alpha must fit the priority index): {problem}")


def nstep(store: Store, indices: Any, n: int, gamma: float) -> dict[str, np.ndarray]:
    """n-step returns computed at sample time from stored rewards and episode ends.

    For a transition in slot ``i``: ``return = sum_k gamma**k r_{i+k}`` over at most ``n``
    steps, stopping after the step that ends the episode. ``discount`` is ``gamma**m`` for the
    ``m`` steps summed, or 0 when the episode *terminated* within them (no bootstrap); a
    *truncated* episode still bootstraps. ``bootstrap`` is the slot whose ``next_obs`` is the
    state to bootstrap from. Steps not yet committed are not used (the sum stops early).
    """
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not 0 <= gamma <= 1:
        raise ValueError(f"gamma must be in [0, 1], got {gamma!r}")
    m = store.manifest
    slots = as_slots(indices)
    if not store.committed_mask(slots.reshape(-1)).all():
        store.get(slots.reshape(-1), fields=["reward"])  # raises IndexError naming the slot
    rows = m.row_of(slots.reshape(-1))
    ahead = rows[:, None] + np.arange(n)[None, :]
    available = ahead < m.end
    data = store.get(m.slot_of(np.where(available, ahead, rows[:, None])),
                     fields=["reward", "terminated", "truncated"])
    total = np.zeros(len(rows))
    discount = np.ones(len(rows))
    alive = np.ones(len(rows), bool)
    terminal = np.zeros(len(rows), bool)
    last = rows.copy()
    for k in range(n):
        step = alive & available[:, k]
        total += np.where(step, discount * data["reward"][:, k], 0.0)
        discount = np.where(step, discount * gamma, discount)
        last = np.where(step, ahead[:, k], last)
        terminal |= step & data["terminated"][:, k]
        alive = step & ~(data["terminated"][:, k] | data["truncated"][:, k])
    shape = slots.shape
    return {"return": total.reshape(shape),
            "discount": np.where(terminal, 0.0, discount).reshape(shape),
            "bootstrap": m.slot_of(last).reshape(shape)}
