"""Samplers: distributions (chi-square goodness of fit, fixed seeds), importance weights, beta
schedules, window and episode boundaries, n-step returns, reproducibility and saved state.

scipy is not a dependency: the chi-square tail probability is computed here from the
regularized incomplete gamma function (series and continued fraction, checked against closed
forms), and critical values are cross-checked with the Wilson–Hilferty approximation. Every test
is deterministic (fixed seeds), so a pass or fail does not flicker; tests reject at p < 0.001.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import replaystore as rs

Z_999 = 3.090232306167813  # standard normal quantile at 0.999
LEVEL = 1e-3


def upper_gamma_regularized(a: float, x: float) -> float:
    """Q(a, x) = Γ(a, x) / Γ(a) (Numerical Recipes' gser / gcf)."""
    if x <= 0:
        return 1.0
    log_prefix = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:  # series for P(a, x)
        term = total = 1.0 / a
        n = a
        while abs(term) > abs(total) * 1e-16:
            n += 1
            term *= x / n
            total += term
        return 1.0 - total * math.exp(log_prefix)
    tiny = 1e-300  # modified Lentz continued fraction for Q(a, x)
    b = x + 1 - a
    c, d = 1 / tiny, 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-16:
            break
    return math.exp(log_prefix) * h


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for X ~ chi-square(df)."""
    return upper_gamma_regularized(df / 2, x / 2)


def chi2_critical(df: int, z: float = Z_999) -> float:
    """Wilson–Hilferty approximation of the chi-square quantile at 0.999 (a cross-check)."""
    c = 2.0 / (9.0 * df)
    return df * (1.0 - c + z * math.sqrt(c)) ** 3


def chi2_statistic(counts: np.ndarray, probabilities: np.ndarray) -> float:
    expected = counts.sum() * probabilities
    assert expected.min() >= 5, "too few draws for a chi-square test"
    return float(((counts - expected) ** 2 / expected).sum())


def assert_fits(counts: np.ndarray, probabilities: np.ndarray) -> None:
    """Chi-square goodness of fit: reject at p < LEVEL."""
    assert len(counts) == len(probabilities)
    assert math.isclose(math.fsum(probabilities), 1.0, rel_tol=1e-12)
    stat = chi2_statistic(np.asarray(counts, np.float64), np.asarray(probabilities))
    p = chi2_sf(stat, len(counts) - 1)
    assert p > LEVEL, f"chi-square {stat:.1f} with {len(counts) - 1} df: p = {p:.2e}"


def test_chi2_tail_is_exact():
    # Closed forms: df=2 -> exp(-x/2); df=1 -> erfc(sqrt(x/2)); df=4 -> (1 + x/2) exp(-x/2).
    for x in (0.01, 0.5, 1.0, 3.0, 7.5, 20.0, 60.0):
        assert chi2_sf(x, 2) == pytest.approx(math.exp(-x / 2), rel=1e-12)
        assert chi2_sf(x, 1) == pytest.approx(math.erfc(math.sqrt(x / 2)), rel=1e-10)
        assert chi2_sf(x, 4) == pytest.approx((1 + x / 2) * math.exp(-x / 2), rel=1e-12)
    assert chi2_sf(3.841458820694124, 1) == pytest.approx(0.05, rel=1e-9)
    for df in (19, 29, 44, 49, 99, 529):  # Wilson–Hilferty lands within 0.5 % of the quantile
        assert chi2_sf(chi2_critical(df), df) == pytest.approx(LEVEL, rel=0.12)
        assert chi2_sf(df, df) == pytest.approx(0.5, abs=0.05)


# -- stores -------------------------------------------------------------------------------------

def episode_flags(count: int, seed: int, *, max_len: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """terminated/truncated flags for global rows [0, count): episodes of 1..max_len rows,
    ending by termination, truncation or (rarely) both; the last episode is left open."""
    rng = np.random.default_rng(seed)
    terminated = np.zeros(count, bool)
    truncated = np.zeros(count, bool)
    row = -1
    while True:
        row += int(rng.integers(1, max_len + 1))
        if row >= count - 3:
            break
        kind = rng.random()
        terminated[row] = kind < 0.6 or kind > 0.95
        truncated[row] = kind >= 0.6
    return terminated, truncated


def build(path: Path, count: int, *, capacity: int | None = None, seed: int = 0,
          chunk_rows: int = 16, commit_every: int = 37, max_len: int = 12) -> rs.Store:
    terminated, truncated = episode_flags(count, seed, max_len=max_len)
    store = rs.create(path, {"obs": {"shape": (2,), "dtype": "float32",
                                     "chunk_rows": chunk_rows}}, capacity=capacity)
    for first in range(0, count, commit_every):
        g = np.arange(first, min(first + commit_every, count))
        store.extend({"obs": np.stack([g, -g], 1).astype(np.float32),
                      "reward": (g % 7).astype(np.float32),
                      "terminated": terminated[g], "truncated": truncated[g]})
        store.commit()
    return store


def plain_rows(count: int) -> dict[str, np.ndarray]:
    """Rows that end no episode."""
    return {"obs": np.zeros((count, 2), np.float32), "reward": np.zeros(count, np.float32),
            "terminated": np.zeros(count, bool), "truncated": np.zeros(count, bool)}


def window_rows(store: rs.Store) -> np.ndarray:
    m = store.manifest
    return np.arange(m.start, m.end)


def slot_of(store: rs.Store, rows: np.ndarray) -> np.ndarray:
    capacity = store.capacity
    return rows if capacity is None else rows % capacity


def row_of(store: rs.Store, slots: np.ndarray) -> np.ndarray:
    m = store.manifest
    return slots if m.capacity is None else m.start + (slots - m.start) % m.capacity


def ends_of(store: rs.Store) -> np.ndarray:
    """Per committed row (oldest first): whether it ends an episode, read from the store."""
    data = store.get(store.slots(), fields=["terminated", "truncated"])
    return data["terminated"] | data["truncated"]


@pytest.fixture
def prioritized_store(tmp_path):
    store = build(tmp_path / "per", 50, seed=1)
    yield store
    store.close()


def set_priorities(sampler: rs.PrioritizedSampler, seed: int = 0) -> np.ndarray:
    store = sampler.store
    rng = np.random.default_rng(seed)
    priorities = rng.uniform(0.05, 10.0, len(store))
    sampler.update_priorities(store.slots(), priorities)
    return priorities


# -- prioritized sampling ------------------------------------------------------------------------

def test_prioritized_frequencies_fit_p_alpha(prioritized_store):
    """200k stratified draws: counts fit p**alpha / sum (stratification only lowers the variance,
    so the multinomial chi-square bound is conservative); a wrong law is clearly rejected."""
    sampler = rs.PrioritizedSampler(prioritized_store, alpha=0.6, eps=0.0, seed=11)
    p = set_priorities(sampler)
    expected = p ** 0.6 / math.fsum(p ** 0.6)
    slots = prioritized_store.slots()
    counts = np.zeros(len(slots))
    for _ in range(200):
        batch = sampler.sample(1000)
        counts += np.bincount(batch.indices, minlength=len(slots))[slots]
    assert counts.sum() == 200_000
    assert_fits(counts, expected)
    # Power: the same counts against p / sum (alpha ignored) or uniform are rejected by far.
    critical = chi2_critical(len(slots) - 1)
    assert chi2_statistic(counts, p / p.sum()) > 10 * critical
    assert chi2_statistic(counts, np.full(len(p), 1 / len(p))) > 10 * critical


def test_prioritized_single_draws_fit_p_alpha_with_eps(tmp_path):
    """Batches of one are i.i.d. draws: a true multinomial chi-square test; eps is included."""
    store = build(tmp_path / "s", 20, seed=2)
    sampler = rs.PrioritizedSampler(store, alpha=0.7, eps=0.5, seed=5)
    p = set_priorities(sampler, seed=3)
    expected = (p + 0.5) ** 0.7 / math.fsum((p + 0.5) ** 0.7)
    draws = np.array([sampler.sample(1).indices[0] for _ in range(15_000)])
    counts = np.bincount(draws, minlength=20)[store.slots()]
    assert_fits(counts, expected)
    store.close()


def test_batches_are_stratified(prioritized_store):
    """Draw j of a batch of B lies in the j-th of B equal slices of the total mass."""
    sampler = rs.PrioritizedSampler(prioritized_store, alpha=0.6, eps=0.0, seed=4)
    set_priorities(sampler)
    index = prioritized_store.priority_index()
    leaf = index.leaf(np.arange(index.leaves))
    upper = np.cumsum(leaf)
    lower = upper - leaf
    total = index.total
    tol = 1e-9 * total
    for size in (1, 7, 32, 256):
        for _ in range(20):
            batch = sampler.sample(size)
            j = np.arange(size)
            lo, hi = j * total / size, (j + 1) * total / size
            s = batch.indices
            assert ((lower[s] < hi + tol) & (upper[s] > lo - tol)).all(), size


def test_probabilities_and_weights_match_brute_force(prioritized_store):
    sampler = rs.PrioritizedSampler(prioritized_store, alpha=0.6, beta=0.4, eps=1e-3, seed=6)
    p = set_priorities(sampler, seed=8)
    slots = prioritized_store.slots()
    n = len(slots)
    prob = np.zeros(prioritized_store.priority_index().leaves)
    prob[slots] = (p + 1e-3) ** 0.6 / math.fsum((p + 1e-3) ** 0.6)
    max_weight = np.max((n * prob[slots]) ** -0.4)
    for _ in range(20):
        batch = sampler.sample(64)
        np.testing.assert_allclose(batch.probabilities, prob[batch.indices], rtol=1e-12)
        expected = (n * prob[batch.indices]) ** -0.4 / max_weight
        np.testing.assert_allclose(batch.weights, expected, rtol=1e-12)
        assert (batch.weights > 0).all() and batch.weights.max() <= 1 + 1e-12


def test_weights_never_exceed_one(tmp_path):
    candidates = np.linspace(0.1, 2.0, 1000)
    x = float(candidates[1.0 / (1.0 / candidates) > candidates][0])
    store = build(tmp_path / "s", 4)
    sampler = rs.PrioritizedSampler(store, alpha=1.0, beta=1.0, eps=0.0, seed=0)
    sampler.update_priorities(store.slots(), [x, 2 * x + 1, 3.0, 4.0])
    batch = sampler.sample(256)
    assert batch.weights.max() <= 1.0, batch.weights.max()


def test_beta_schedule_progresses_with_steps(prioritized_store):
    schedule = rs.Linear(0.4, 1.0, 100)
    assert schedule(0) == 0.4 and schedule(50) == 0.7 and schedule(100) == 1.0
    assert schedule(10_000) == 1.0 and rs.Linear(0.4, 1.0, 0)(0) == 1.0
    sampler = rs.PrioritizedSampler(prioritized_store, alpha=0.6, beta=schedule, eps=0.0,
                                    seed=9)
    set_priorities(sampler)
    index = prioritized_store.priority_index()
    for step in range(160):
        assert sampler.steps == step
        assert sampler.current_beta() == pytest.approx(0.4 + 0.6 * min(1.0, step / 100))
        batch = sampler.sample(16)
        beta = 0.4 + 0.6 * min(1.0, step / 100)
        expected = (index.min_leaf / index.leaf(batch.indices)) ** beta
        np.testing.assert_allclose(batch.weights, expected, rtol=1e-12)
    assert sampler.steps == 160 and sampler.current_beta() == 1.0  # held after the schedule


def test_prioritized_sampler_skips_zero_priorities_and_uncommitted_rows(tmp_path):
    store = build(tmp_path / "s", 30)
    sampler = rs.PrioritizedSampler(store, alpha=0.6, eps=0.0, seed=1)
    sampler.update_priorities(np.arange(10), np.zeros(10))
    store.extend(plain_rows(10))  # pending rows: slots 30..39
    indices = np.concatenate([sampler.sample(512).indices for _ in range(20)])
    assert not np.isin(indices, np.arange(10)).any()
    assert not np.isin(indices, np.arange(30, 40)).any()
    assert set(indices.tolist()) == set(range(10, 30))
    sampler.update_priorities(np.arange(30), np.zeros(30))
    with pytest.raises(IndexError, match="priority 0"):
        sampler.sample(4)
    store.close()


def test_update_priorities_skips_slots_that_are_not_committed(tmp_path):
    store = build(tmp_path / "s", 30, capacity=64)
    sampler = rs.PrioritizedSampler(store, alpha=1.0, eps=0.0, seed=1)
    before = store.priority_index().leaf(np.arange(64)).copy()
    sampler.update_priorities([30, 40, 63, 64, -1, 1000], [5.0] * 6)
    assert np.array_equal(store.priority_index().leaf(np.arange(64)), before)
    store.close()


# -- updates after the ring overwrote sampled slots ----------------------------------------------

def ring_with_priorities(path: Path, capacity: int = 64) -> tuple[rs.Store, rs.PrioritizedSampler]:
    """A full ring (rows 0..capacity-1) with priorities 1..capacity and running max 100."""
    store = rs.create(path, {"obs": {"shape": (2,), "dtype": "float32", "chunk_rows": 8}},
                      capacity=capacity, commit_every_rows=1 << 20)
    g = np.arange(capacity)
    store.extend({"obs": np.stack([g, -g], 1).astype(np.float32),
                  "reward": np.zeros(capacity, np.float32),
                  "terminated": np.zeros(capacity, bool), "truncated": np.zeros(capacity, bool)})
    store.commit()
    sampler = rs.PrioritizedSampler(store, alpha=1.0, eps=0.0, seed=3)
    sampler.update_priorities([0], [100.0])
    sampler.update_priorities(store.slots(), np.arange(1.0, capacity + 1))
    return store, sampler


def append_rows(store: rs.Store, first: int, count: int, *, commit: bool = True) -> None:
    g = np.arange(first, first + count)
    store.extend({"obs": np.stack([g, -g], 1).astype(np.float32),
                  "reward": np.zeros(count, np.float32),
                  "terminated": np.zeros(count, bool), "truncated": np.zeros(count, bool)})
    if commit:
        store.commit()


def test_batches_carry_the_rows_their_slots_held(tmp_path):
    store = build(tmp_path / "s", 150, capacity=64)
    rs.PrioritizedSampler(store, alpha=0.6).update_priorities(store.slots(), np.ones(64))
    for sampler in (rs.PrioritizedSampler(store, alpha=0.6, seed=0), rs.UniformSampler(store),
                    rs.SequenceSampler(store, 3, pad=True), rs.EpisodeSampler(store)):
        batch = sampler.sample(1 if isinstance(sampler, rs.EpisodeSampler) else 40)
        m = store.manifest
        assert batch.window == (m.start, m.end, m.capacity)
        assert batch.rows.shape == batch.indices.shape and batch.rows.dtype == np.int64
        assert ((batch.rows >= m.start) & (batch.rows < m.end)).all()
        assert np.array_equal(batch.rows % 64, batch.indices)
        assert np.array_equal(store.get(batch.indices)["obs"][..., 0], batch.rows)  # obs[0] = g
    assert rs.Batch(np.arange(3)).rows is None
    assert rs.Batch(np.arange(3), window=(0, 3, None)).rows.tolist() == [0, 1, 2]
    store.close()


@pytest.mark.parametrize("how", ["plain", "batch", "rows", "batch-after-another"])
def test_update_after_the_ring_overwrote_sampled_slots_skips_the_new_rows(tmp_path, how):
    store, sampler = ring_with_priorities(tmp_path / "s")
    batch = sampler.sample(48)
    sampled = np.unique(batch.indices)
    append_rows(store, 64, 20)  # rows 64..83 replace rows 0..19 in slots 0..19
    if how == "batch-after-another":
        sampler.sample(8)  # the Batch still names the rows it was drawn from
    index = store.priority_index()
    before = index.leaf(np.arange(64)).copy()
    assert (before[:20] == 100.0).all()  # the new rows: the running max
    td = 1000.0 + batch.indices  # unique per slot (duplicates carry the same value)
    if how == "plain":  # the indices of the sampler's most recent batch
        sampler.update_priorities(batch.indices, td)
    elif how == "rows":
        sampler.update_priorities(batch.indices, td, rows=batch.rows)
    else:
        sampler.update_priorities(batch, td)
    after = index.leaf(np.arange(64))
    overwritten = sampled[sampled < 20]
    kept = sampled[sampled >= 20]
    assert len(overwritten) and len(kept)
    assert (after[overwritten] == 100.0).all(), "new rows lost their fresh priority"
    assert np.array_equal(after[kept], 1000.0 + kept), "surviving sampled rows not updated"
    untouched = np.setdiff1d(np.arange(64), sampled)
    assert np.array_equal(after[untouched], before[untouched])
    assert index.max_priority == 1000.0 + kept.max()
    assert_tree_sums(index)
    store.close()


def test_update_skips_rows_retired_but_not_yet_replaced(tmp_path):
    """Rows the ring retired (its start moved) are skipped even before new rows commit."""
    store, sampler = ring_with_priorities(tmp_path / "s", capacity=16)
    batch = sampler.sample(32)
    append_rows(store, 16, 9, commit=False)  # a full ring retires rows before overwriting
    m = store.manifest
    sampler.update_priorities(batch, np.full(32, 7.0))
    retired = np.unique(batch.rows[batch.rows < m.start]) % 16
    live = np.unique(batch.rows[batch.rows >= m.start]) % 16
    index = store.priority_index()
    assert (index.leaf(retired) == 0).all()
    assert (index.leaf(live) == 7.0).all()
    store.commit()
    assert (index.leaf(np.arange(16, 25) % 16) == 100.0).all()
    store.close()


def test_plain_indices_of_a_sampler_that_never_sampled_name_the_current_rows(tmp_path):
    store, _ = ring_with_priorities(tmp_path / "s")
    append_rows(store, 64, 10)
    updater = rs.PrioritizedSampler(store, alpha=1.0, eps=0.0)
    updater.update_priorities([3, 40], [5.0, 6.0])  # slot 3 holds row 67 now: it is updated
    assert store.priority_index().leaf(np.array([3, 40])).tolist() == [5.0, 6.0]
    store.close()


def test_rows_that_do_not_match_the_indices_are_refused(tmp_path):
    store, sampler = ring_with_priorities(tmp_path / "s")
    batch = sampler.sample(4)
    before = store.priority_index().leaf(np.arange(64)).copy()
    with pytest.raises(ValueError, match="rows"):
        sampler.update_priorities(batch.indices, np.ones(4), rows=batch.rows + 1)
    with pytest.raises(ValueError, match="rows"):
        sampler.update_priorities(batch.indices, np.ones(4), rows=batch.rows[:3])
    assert np.array_equal(store.priority_index().leaf(np.arange(64)), before)
    store.close()


def assert_tree_sums(index: rs.PriorityIndex) -> None:
    n = index.leaves
    s = np.asarray(index.sum)
    assert np.array_equal(s[1:n], s[2:2 * n:2] + s[3:2 * n:2])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(capacity=st.integers(4, 40), initial=st.integers(1, 80), batch_size=st.integers(1, 30),
       appends=st.lists(st.tuples(st.integers(1, 50), st.booleans()), max_size=3),
       how=st.sampled_from(["plain", "batch", "rows"]), seed=st.integers(0, 2**32 - 1))
def test_an_update_changes_exactly_the_sampled_rows_still_committed(
        capacity, initial, batch_size, appends, how, seed):
    """Model check: after any appends and commits between sample and update, the update sets
    the slots whose sampled row is still committed (last value wins) and nothing else."""
    with tempfile.TemporaryDirectory() as tmp:
        store = rs.create(Path(tmp) / "s", {"obs": {"shape": (2,), "dtype": "float32",
                                                    "chunk_rows": 4}},
                          capacity=capacity, commit_every_rows=1 << 20)
        append_rows(store, 0, initial)
        sampler = rs.PrioritizedSampler(store, alpha=0.5, eps=0.0, seed=seed)
        batch = sampler.sample(batch_size)
        drawn_rows = store.manifest.row_of(batch.indices)
        end = initial
        for count, commit in appends:
            append_rows(store, end, count, commit=commit)
            end += count
        index = store.priority_index()
        before = index.leaf(np.arange(capacity)).copy()
        values = np.random.default_rng(seed).uniform(1.0, 9.0, batch_size)
        if how == "plain":
            sampler.update_priorities(batch.indices, values)
        elif how == "rows":
            sampler.update_priorities(batch.indices, values, rows=batch.rows)
        else:
            sampler.update_priorities(batch, values)
        expected = before.copy()
        m = store.manifest
        for slot, row, value in zip(batch.indices, drawn_rows, values, strict=True):
            if m.start <= row < m.end:
                expected[slot] = value ** 0.5
        # rtol: numpy's array power may round p ** 0.5 one ulp away from Python's.
        np.testing.assert_allclose(index.leaf(np.arange(capacity)), expected, rtol=1e-14, atol=0)
        store.close()


# -- uniform sampling ---------------------------------------------------------------------------

def test_uniform_sampler_stays_in_a_wrapped_window_and_is_uniform(tmp_path):
    store = build(tmp_path / "ring", 125, capacity=50, chunk_rows=10, commit_every=25)
    assert (store.manifest.start, store.manifest.end) == (75, 125)
    store.extend(plain_rows(10))  # fills slots 25..29, so rows 75..79 are retired first
    assert (store.manifest.start, store.manifest.end) == (80, 125)
    live = store.slots()
    assert len(live) == 45 and live[0] == 30 and live[-1] == 24  # wraps around the ring
    outside = np.setdiff1d(np.arange(50), live)
    assert outside.tolist() == list(range(25, 30))
    for sampler in (rs.UniformSampler(store, seed=3),
                    rs.PrioritizedSampler(store, alpha=0.6, seed=3)):
        indices = np.concatenate([sampler.sample(1000).indices for _ in range(200)])
        assert not np.isin(indices, outside).any()
        assert store.committed_mask(indices).all()
        counts = np.bincount(indices, minlength=50)[live]
        assert_fits(counts, np.full(45, 1 / 45))
    store.close()


def test_uniform_sampler_in_unbounded_store_ignores_pending_rows(tmp_path):
    store = build(tmp_path / "s", 30)
    store.extend(plain_rows(5))
    indices = rs.UniformSampler(store, seed=0).sample(100_000).indices
    assert indices.min() == 0 and indices.max() == 29
    counts = np.bincount(indices, minlength=30)
    assert_fits(counts, np.full(30, 1 / 30))
    store.close()


# -- sequences ----------------------------------------------------------------------------------

@pytest.fixture(params=[None, 200], ids=["unbounded", "ring200"])
def episodic_store(request, tmp_path):
    store = build(tmp_path / "ep", 530, capacity=request.param, seed=21)
    if request.param:  # the oldest episode lost its first rows to the ring
        terminated, truncated = episode_flags(530, 21)
        first = store.manifest.start
        assert first > 0 and not (terminated[first - 1] or truncated[first - 1])
    yield store
    store.close()


def sequence_truth(store: rs.Store, length: int) -> tuple[np.ndarray, np.ndarray]:
    """For each committed row (oldest first): how many rows from it to its episode's last
    committed row (inclusive), and the row numbers."""
    ends = ends_of(store)
    rows = window_rows(store)
    left = np.zeros(len(rows), np.int64)
    run = 0
    for i in range(len(rows) - 1, -1, -1):
        run = 1 if ends[i] or i == len(rows) - 1 else run + 1
        left[i] = run
    return rows, left


@pytest.mark.parametrize("length", [1, 4, 9])
def test_sequences_never_cross_an_episode_boundary(episodic_store, length):
    store = episodic_store
    rows, left = sequence_truth(store, length)
    valid = rows[left >= length]
    sampler = rs.SequenceSampler(store, length, seed=length)
    batch = sampler.sample(20_000)
    assert batch.indices.shape == (20_000, length) and batch.mask is None
    assert store.committed_mask(batch.indices.reshape(-1)).all()
    starts = row_of(store, batch.indices[:, 0])
    seq_rows = starts[:, None] + np.arange(length)
    assert np.array_equal(batch.indices, slot_of(store, seq_rows))  # consecutive rows
    ends = ends_of(store)
    flags = ends[seq_rows - store.manifest.start]
    assert not flags[:, :-1].any()  # an episode may end only at the last step
    # Every valid start is drawn, uniformly.
    assert set(starts.tolist()) == set(valid.tolist())
    counts = np.unique(starts, return_counts=True)[1]
    assert_fits(counts, np.full(len(valid), 1 / len(valid)))


@pytest.mark.parametrize("length", [3, 16])
def test_padded_sequences_mask_the_steps_past_an_episode_end(episodic_store, length):
    store = episodic_store
    rows, left = sequence_truth(store, length)
    sampler = rs.SequenceSampler(store, length, pad=True, seed=2)
    batch = sampler.sample(20_000)
    assert batch.indices.shape == batch.mask.shape == (20_000, length)
    assert store.committed_mask(batch.indices.reshape(-1)).all()
    starts = row_of(store, batch.indices[:, 0])
    real = np.minimum(left[starts - store.manifest.start], length)
    assert np.array_equal(batch.mask, np.arange(length)[None, :] < real[:, None])
    last = starts + real - 1
    expected = np.minimum(starts[:, None] + np.arange(length), last[:, None])
    assert np.array_equal(batch.indices, slot_of(store, expected))  # padding repeats the last
    ends = ends_of(store)[expected - store.manifest.start]
    assert not (ends & batch.mask & (np.arange(length) < real[:, None] - 1)).any()
    # Any committed row may start a padded sequence, uniformly.
    assert set(starts.tolist()) == set(rows.tolist())
    counts = np.unique(starts, return_counts=True)[1]
    assert_fits(counts, np.full(len(rows), 1 / len(rows)))


def test_sequence_sampler_follows_new_commits(tmp_path):
    store = build(tmp_path / "s", 40, seed=3)
    sampler = rs.SequenceSampler(store, 2, seed=0)
    first = row_of(store, sampler.sample(5000).indices[:, 0])
    assert first.max() < 40
    store.extend(plain_rows(40))  # rows 40..79 continue the open episode
    assert row_of(store, sampler.sample(5000).indices[:, 0]).max() < 40  # not committed yet
    store.commit()
    assert row_of(store, sampler.sample(5000).indices[:, 0]).max() == 78
    store.close()


def test_sequence_longer_than_every_episode_raises(tmp_path):
    store = build(tmp_path / "s", 60, seed=4, max_len=3)
    with pytest.raises(IndexError, match="no episode holds 10"):
        rs.SequenceSampler(store, 10, seed=0).sample(4)
    assert rs.SequenceSampler(store, 10, pad=True, seed=0).sample(4).mask[:, 0].all()
    store.close()


# -- episodes -----------------------------------------------------------------------------------

def test_episode_sampler_returns_whole_episodes_uniformly(episodic_store):
    store = episodic_store
    m = store.manifest
    terminated, truncated = episode_flags(530, 21)
    ends = np.flatnonzero(terminated | truncated)
    firsts = np.concatenate(([0], ends[:-1] + 1))
    whole = [(int(a), int(b) + 1) for a, b in zip(firsts, ends, strict=True)
             if a >= m.start and b < m.end]
    table = store.episodes
    assert [(int(s), int(s + n)) for s, n in zip(table["start"], table["length"], strict=True)] \
        == whole
    sampler = rs.EpisodeSampler(store, seed=7)
    episodes = sampler.sample_episodes(30 * len(whole))
    seen = []
    for slots in episodes:
        first = int(row_of(store, slots[:1])[0])
        span = (first, first + len(slots))
        assert span in whole
        assert np.array_equal(slots, slot_of(store, np.arange(*span)))
        seen.append(whole.index(span))
    counts = np.bincount(seen, minlength=len(whole))
    assert_fits(counts, np.full(len(whole), 1 / len(whole)))
    one = sampler.sample(1)
    assert (int(row_of(store, one.indices[:1])[0]), int(row_of(store, one.indices[:1])[0])
            + len(one.indices)) in whole
    with pytest.raises(ValueError, match="sample_episodes"):
        sampler.sample(2)


def test_episode_sampler_without_finished_episodes_raises(tmp_path):
    store = rs.create(tmp_path / "s", {"obs": ((2,), "float32")})
    store.extend(plain_rows(5))
    store.commit()
    with pytest.raises(IndexError, match="no finished episode"):
        rs.EpisodeSampler(store, seed=0).sample_episodes(1)
    store.close()


# -- n-step returns -----------------------------------------------------------------------------

def tiny_store(path: Path, rewards, terminated, truncated, *, committed: int,
               capacity: int | None = None) -> rs.Store:
    """Rows with the given rewards and flags; the first ``committed`` rows are committed, the
    rest only appended."""
    store = rs.create(path, {"obs": ((1,), "float32")}, capacity=capacity)
    batch = {"obs": np.arange(len(rewards), dtype=np.float32)[:, None],
             "reward": np.array(rewards, np.float32),
             "terminated": np.array(terminated, bool),
             "truncated": np.array(truncated, bool)}
    store.extend({k: v[:committed] for k, v in batch.items()})
    store.commit()
    store.extend({k: v[committed:] for k, v in batch.items()})
    return store


def test_nstep_returns_by_hand(tmp_path):
    #           row:  0  1  2  3  4  5  6 | 7 (not committed)
    rewards =       [1, 2, 3, 4, 5, 6, 7, 8]
    terminated =    [0, 0, 1, 0, 0, 0, 0, 1]
    truncated =     [0, 0, 0, 0, 1, 0, 0, 0]
    store = tiny_store(tmp_path / "s", rewards, terminated, truncated, committed=7)
    out = rs.nstep(store, np.arange(7), n=3, gamma=0.5)
    assert out["return"].tolist() == [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3,
                                      4 + 0.5 * 5, 5, 6 + 0.5 * 7, 7]
    # Termination: no bootstrap. Truncation: bootstrap after m steps. Rows 5, 6: fewer than n
    # committed rows ahead, so the sum stops at the last committed row and bootstraps there.
    assert out["discount"].tolist() == [0, 0, 0, 0.25, 0.5, 0.25, 0.5]
    assert out["bootstrap"].tolist() == [2, 2, 2, 4, 4, 6, 6]
    one = rs.nstep(store, np.arange(7), n=1, gamma=0.5)
    assert one["return"].tolist() == rewards[:7]
    assert one["discount"].tolist() == [0.5, 0.5, 0, 0.5, 0.5, 0.5, 0.5]
    assert one["bootstrap"].tolist() == list(range(7))
    long = rs.nstep(store, np.array([[3, 5], [0, 6]]), n=50, gamma=1.0)
    assert long["return"].tolist() == [[9, 13], [6, 7]]
    assert long["discount"].tolist() == [[1, 1], [0, 1]]
    assert long["bootstrap"].tolist() == [[4, 6], [2, 6]]
    with pytest.raises(IndexError, match="slot 7"):
        rs.nstep(store, [7], n=2, gamma=0.5)
    store.commit()  # row 7 now committed: row 5 and 6 see it
    out = rs.nstep(store, [5, 6, 7], n=3, gamma=0.5)
    assert out["return"].tolist() == [6 + 3.5 + 0.25 * 8, 7 + 4, 8]
    assert out["discount"].tolist() == [0, 0, 0]
    store.close()


def test_nstep_across_a_ring_wrap_and_both_flags(tmp_path):
    #  rows 0..5 in a ring of 4: slots 2, 3, 0, 1 hold rows 2, 3, 4, 5
    store = tiny_store(tmp_path / "s", [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 1, 0],
                       [0, 0, 0, 0, 1, 0], committed=6, capacity=4)
    assert store.slots().tolist() == [2, 3, 0, 1]
    out = rs.nstep(store, [2, 3, 0, 1], n=3, gamma=0.5)
    # row 4 is terminated *and* truncated: termination wins (no bootstrap).
    assert out["return"].tolist() == [3 + 0.5 * 4 + 0.25 * 5, 4 + 0.5 * 5, 5, 6]
    assert out["discount"].tolist() == [0, 0, 0, 0.5]
    assert out["bootstrap"].tolist() == [0, 0, 0, 1]
    store.close()


# -- reproducibility and saved state ------------------------------------------------------------

SAMPLERS = {
    "uniform": lambda store, **kw: rs.UniformSampler(store, **kw),
    "prioritized": lambda store, **kw: rs.PrioritizedSampler(
        store, alpha=0.6, beta=rs.Linear(0.4, 1.0, 7), **kw),
    "sequence": lambda store, **kw: rs.SequenceSampler(store, 3, **kw),
    "sequence-pad": lambda store, **kw: rs.SequenceSampler(store, 5, pad=True, **kw),
    "episode": lambda store, **kw: rs.EpisodeSampler(store, **kw),
}


def draw(sampler: rs.Sampler) -> list[np.ndarray | None]:
    if isinstance(sampler, rs.EpisodeSampler):
        return [np.concatenate(sampler.sample_episodes(6))]
    batch = sampler.sample(32)
    return [batch.indices, batch.probabilities, batch.weights, batch.mask]


def same(a: list, b: list) -> bool:
    return all((x is None and y is None) or (x is not None and y is not None
                                             and np.array_equal(x, y)) for x, y in zip(a, b,
                                                                                     strict=True))


@pytest.fixture
def varied_store(tmp_path):
    store = build(tmp_path / "v", 300, capacity=256, seed=5)
    rs.PrioritizedSampler(store, alpha=0.6, seed=0).update_priorities(
        store.slots(), np.random.default_rng(0).random(len(store)) * 4)
    yield store
    store.close()


@pytest.mark.parametrize("kind", list(SAMPLERS))
def test_samplers_are_reproducible_with_a_seed(varied_store, kind):
    make = SAMPLERS[kind]
    a, b, c = make(varied_store, seed=42), make(varied_store, seed=42), make(varied_store, seed=43)
    runs = [[draw(s) for _ in range(6)] for s in (a, b, c)]
    assert all(same(x, y) for x, y in zip(runs[0], runs[1], strict=True))
    assert not all(same(x, y) for x, y in zip(runs[0], runs[2], strict=True))
    assert a.steps == 6


@pytest.mark.parametrize("kind", list(SAMPLERS))
def test_state_dict_round_trip_gives_identical_batches(varied_store, kind):
    make = SAMPLERS[kind]
    original = make(varied_store, seed=1)
    for _ in range(5):
        draw(original)
    state = json.loads(json.dumps(original.state_dict()))  # JSON-able, exactly
    clone = make(varied_store, seed=999)
    clone.load_state_dict(state)
    assert clone.steps == original.steps == 5
    for _ in range(6):
        assert same(draw(original), draw(clone))
    other = "UniformSampler" if kind != "uniform" else "EpisodeSampler"
    with pytest.raises(rs.SchemaError, match=other):
        clone.load_state_dict({**state, "kind": other})


@pytest.mark.parametrize("how", ["close", "reopen-reader"])
@pytest.mark.parametrize("kind", list(SAMPLERS))
def test_named_sampler_resumes_from_the_last_commit(varied_store, kind, how):
    store = varied_store
    make = SAMPLERS[kind]
    sampler = make(store, seed=3, name="s")
    for _ in range(4):
        draw(sampler)
    store.commit()
    expected = [draw(sampler) for _ in range(5)]  # drawn after the commit: not saved
    path = store.path
    store.close()
    reopened = rs.open(path, "a" if how == "close" else "r")
    resumed = make(reopened, seed=12345, name="s")
    assert resumed.steps == 4
    for batch in expected:
        assert same(draw(resumed), batch)
    assert make(reopened, seed=3).steps == 0  # no name: a fresh sampler
    reopened.close()


def test_sampler_state_kinds_do_not_mix(tmp_path):
    store = build(tmp_path / "s", 40)
    rs.UniformSampler(store, seed=0, name="x").sample(3)
    store.commit()
    path = store.path
    store.close()
    store = rs.open(path, "a")
    with pytest.raises(rs.SchemaError, match="UniformSampler, not a SequenceSampler"):
        rs.SequenceSampler(store, 2, name="x")
    store.close()


# -- bad arguments ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["uniform", "prioritized", "sequence"])
@pytest.mark.parametrize("size", [0, -3, 2.5, "4", None])
def test_bad_batch_sizes_raise(varied_store, kind, size):
    sampler = SAMPLERS[kind](varied_store, seed=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        sampler.sample(size)
    assert sampler.steps == 0
    assert sampler.sample(np.int64(3)).indices.shape[0] == 3


@pytest.mark.parametrize("size", [0, -1, 1.5])
def test_bad_episode_counts_raise(varied_store, size):
    with pytest.raises(ValueError, match="positive integer"):
        rs.EpisodeSampler(varied_store, seed=0).sample_episodes(size)


@pytest.mark.parametrize("length", [0, -2, 2.0, None])
def test_bad_sequence_lengths_raise(varied_store, length):
    with pytest.raises(ValueError, match="length must be a positive integer"):
        rs.SequenceSampler(varied_store, length)


@pytest.mark.parametrize(("n", "gamma", "match"), [
    (3, 2.0, "gamma must be in"), (3, -0.1, "gamma must be in"), (3, float("nan"), "gamma"),
    (0, 0.9, "n must be a positive integer"), (2.0, 0.9, "n must be a positive integer")])
def test_bad_nstep_arguments_raise(varied_store, n, gamma, match):
    with pytest.raises(ValueError, match=match):
        rs.nstep(varied_store, varied_store.slots()[:3], n=n, gamma=gamma)


def test_bad_update_and_sampler_arguments_raise(varied_store):
    sampler = rs.PrioritizedSampler(varied_store, alpha=0.6, seed=0)
    with pytest.raises(ValueError, match="got 2 indices but 3 priorities"):
        sampler.update_priorities(varied_store.slots()[:2], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="eps must be >= 0"):
        rs.PrioritizedSampler(varied_store, eps=-1.0)


def test_sampling_an_empty_store_raises(tmp_path):
    store = rs.create(tmp_path / "s", {"obs": ((2,), "float32")})
    for sampler in (rs.UniformSampler(store), rs.PrioritizedSampler(store),
                    rs.SequenceSampler(store, 2)):
        with pytest.raises(IndexError, match="no committed rows"):
            sampler.sample(1)
    store.close()


def test_float_indices_are_refused_not_truncated(tmp_path):
    store = rs.create(tmp_path / "s", {"obs": ((2,), "float32")})
    store.extend({"obs": np.zeros((10, 2)), "reward": np.ones(10),
                  "terminated": np.zeros(10, bool), "truncated": np.zeros(10, bool)})
    store.commit()
    sampler = rs.PrioritizedSampler(store, seed=0)
    with pytest.raises(TypeError, match="indices must be integers"):
        sampler.update_priorities([2.9], [5.0])
    with pytest.raises(TypeError, match="indices must be integers"):
        rs.nstep(store, [0.7], 2, 0.9)
