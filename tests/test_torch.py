"""replaystore.torch: whole batches through DataLoader workers, ranks, epochs, resume."""

from __future__ import annotations

import itertools
import json
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.multiprocessing as torch_mp  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torch_helpers import distributed_rank, make_store, rows  # noqa: E402

import replaystore as rs  # noqa: E402
from replaystore.torch import ReplayDataset, ReplayLoader, World  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def concat(batches, key="indices"):
    return np.concatenate([b[key].numpy().reshape(-1) for b in batches])


def assert_matches_store(store, batch, fields=None):
    """Every field of the batch equals store.get at the batch's indices."""
    expected = store.get(batch["indices"].numpy(), fields)
    for name, array in expected.items():
        assert batch[name].dtype == torch.from_numpy(array).dtype, name
        assert batch[name].shape == array.shape, name
        np.testing.assert_array_equal(batch[name].numpy(), array, err_msg=name)


def same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), key


# -- batches ------------------------------------------------------------------------------


def test_uniform_batches_are_dicts_of_tensors_equal_to_store_get(tmp_path):
    store = make_store(tmp_path / "s", 500, capacity=300)
    dataset = ReplayDataset(store.path, 32, seed=1, batches_per_epoch=4)
    batches = list(DataLoader(dataset, batch_size=None))
    assert len(batches) == 4
    for batch in batches:
        assert set(batch) == {"obs", "frame", "action", "reward", "terminated", "truncated",
                              "indices"}
        assert all(isinstance(v, torch.Tensor) for v in batch.values())
        assert batch["indices"].dtype == torch.int64 and batch["indices"].shape == (32,)
        assert batch["frame"].shape == (32, 6, 6) and batch["frame"].dtype == torch.uint8
        assert batch["obs"].dtype == torch.float32 and batch["terminated"].dtype == torch.bool
        assert_matches_store(store, batch)
        assert store.committed_mask(batch["indices"].numpy()).all()
    # Values are the rows of the ring: slot s holds global row 300 + (s - 200) % 300.
    indices = batches[0]["indices"].numpy()
    assert (batches[0]["action"].numpy() == 200 + (indices - 200) % 300).all()


def test_fields_subset_prioritized_and_sequence_extras(tmp_path):
    store = make_store(tmp_path / "s", 400, priorities=True)
    prio = next(iter(DataLoader(ReplayDataset(store.path, 16, sampler="prioritized",
                                              fields=["frame"], beta=0.5),
                                batch_size=None)))
    assert set(prio) == {"frame", "indices", "rows", "weights", "probabilities"}
    assert prio["rows"].dtype == torch.int64
    assert torch.equal(prio["rows"], prio["indices"])  # no ring: rows are slots
    assert prio["weights"].dtype == torch.float32 and prio["probabilities"].dtype == torch.float64
    assert ((prio["weights"] > 0) & (prio["weights"] <= 1)).all()
    assert_matches_store(store, prio, ["frame"])

    for pad in (False, True):
        seq = next(iter(DataLoader(ReplayDataset(store.path, 8, sampler="sequence", length=5,
                                                 pad=pad), batch_size=None)))
        assert seq["indices"].shape == (8, 5) and seq["obs"].shape == (8, 5, 3)
        assert seq["mask"].dtype == torch.bool and seq["mask"].shape == (8, 5)
        assert seq["mask"].all() or pad
        assert_matches_store(store, seq, [n for n in store.schema.names])
        # Unmasked steps are consecutive rows of one episode (episodes are 40 rows long).
        action = seq["action"].numpy()
        steps = np.diff(action, axis=1)[seq["mask"].numpy()[:, 1:]]
        assert (steps == 1).all()


@pytest.mark.parametrize(("context", "slots"), [("fork", True), ("fork", False),
                                               ("spawn", True)])
def test_two_workers_give_the_same_batches_as_one_process(tmp_path, context, slots):
    store = make_store(tmp_path / "s", 500, capacity=300)
    single = ReplayLoader(ReplayDataset(store.path, 24, seed=3, batches_per_epoch=20))
    alone = list(single)
    # list() keeps every batch alive: once a worker's shared slots are all lent out, its
    # batches come through DataLoader's transport instead; both paths are checked here.
    workers = list(ReplayLoader(ReplayDataset(store.path, 24, seed=3, batches_per_epoch=20),
                                num_workers=2, multiprocessing_context=context,
                                shared_slots=slots))
    same_batches(alone, workers)
    for batch in workers:
        assert_matches_store(store, batch)
    # The next epoch draws other batches.
    assert not torch.equal(next(iter(single))["indices"], alone[0]["indices"])


def test_shared_slots_are_lent_until_the_batch_is_garbage():
    import gc

    from replaystore.torch.slots import _SlotRing

    ring = _SlotRing(workers=1, slots=2, slot_bytes=1024)
    batch = {"x": np.arange(10, dtype=np.float32), "m": np.array([True, False]),
             "i": np.arange(6, dtype=np.int64).reshape(2, 3)}
    first, second = ring.put(0, 7, batch), ring.put(0, 8, batch)
    assert ring.put(0, 9, batch) is None  # both slots hold unread batches: go as tensors
    out = ring.take(first)
    assert out.keys() == batch.keys()
    for name, array in batch.items():
        np.testing.assert_array_equal(out[name].numpy(), array)
        assert out[name].dtype == torch.from_numpy(array).dtype
    assert ring.put(0, 9, batch) is None  # lent to `out`: not reused while it is alive
    keep = out["m"]  # one field alone keeps the whole slot
    del out
    gc.collect()
    assert ring.put(0, 9, batch) is None
    np.testing.assert_array_equal(keep.numpy(), [True, False])
    del keep
    gc.collect()
    assert ring.put(0, 9, batch).slot == first.slot  # freed with its last tensor, reused
    assert ring.put(0, 10, {"big": np.zeros(2000, np.uint8)}) is None  # does not fit
    ring.take(second)
    with pytest.raises(RuntimeError, match="instead of batch 8"):
        ring.take(second)  # already taken (and freed): refused, not read twice


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
@pytest.mark.parametrize("nbytes", [0, 1000, (3 << 20) + 17, 14_450_755])
def test_pin_copier_copies_every_byte_in_pieces(threads, nbytes):
    from replaystore.torch.pinning import _PinCopier

    src = np.random.default_rng(nbytes).integers(0, 256, nbytes, dtype=np.uint8)
    dest = np.zeros_like(src)
    copier = _PinCopier(threads)
    copier.copy(dest, src)
    assert np.array_equal(dest, src)
    assert _PinCopier.for_workers(10_000).threads == 1  # no idle core: copy inline


def test_runs_follow_prefetch_factor_and_batch_bytes():
    from replaystore.torch.loader import _runs

    mib = 1 << 20
    assert _runs(mib, None) == (8, 2)  # small batches: two runs of 8 per worker
    assert _runs(10 * mib, None) == (3, 2)  # up to 32 MiB a run
    assert _runs(40 * mib, None) == (1, 2)  # DataLoader's default: 2 batches
    # prefetch_factor counts batches: never more drawn ahead than it says.
    assert _runs(mib, 1) == (1, 1)
    assert _runs(mib, 5) == (5, 1)
    assert _runs(mib, 20) == (8, 2)
    assert _runs(10 * mib, 7) == (3, 2)


class FailsAtBatch5(ReplayDataset):
    def _draw(self, rng, store, local, *, step, out=None):
        if step == 5:
            raise ValueError("batch 5 cannot be read")
        return super()._draw(rng, store, local, step=step, out=out)


def test_an_error_in_a_run_arrives_at_the_start_of_the_run(tmp_path):
    store = make_store(tmp_path / "s", 100)
    # prefetch_factor=2: runs of 2 batches, worker 0 draws 0-1 and 4-5, worker 1 2-3 and 6-7.
    loader = ReplayLoader(FailsAtBatch5(store.path, 8, seed=2, batches_per_epoch=12),
                          num_workers=2, multiprocessing_context="fork", prefetch_factor=2)
    got = []
    with pytest.raises(ValueError, match="batch 5 cannot be read"):
        for batch in loader:
            got.append(batch)
    expected = list(itertools.islice(ReplayLoader(ReplayDataset(store.path, 8, seed=2)), 4))
    same_batches(got, expected)
    assert loader.state_dict()["batch"] == 4  # batch 4 was not delivered: resume there


def test_pin_memory_without_an_accelerator_warns_and_still_loads(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("an accelerator is present")
    store = make_store(tmp_path / "s", 100)
    with pytest.warns(UserWarning, match="no accelerator"):
        loader = ReplayLoader(ReplayDataset(store.path, 8, batches_per_epoch=2), num_workers=2,
                              pin_memory=True, multiprocessing_context="fork")
    assert len(list(loader)) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs an accelerator")
@pytest.mark.parametrize("workers", [0, 2])
def test_pinned_batches_match_the_store_and_resume_exactly(tmp_path, workers):
    store = make_store(tmp_path / "s", 500)
    dataset = ReplayDataset(store.path, 32, seed=3, batches_per_epoch=12)
    loader = ReplayLoader(dataset, num_workers=workers, pin_memory=True,
                          multiprocessing_context="fork")
    first = []
    for batch in loader:
        assert all(tensor.is_pinned() for tensor in batch.values())
        assert_matches_store(store, {k: v.clone() for k, v in batch.items()})
        first.append(batch["indices"].clone())
        if len(first) == 5:
            break
    state = loader.state_dict()  # 5 delivered; the thread may have pinned more: not counted
    again = ReplayLoader(ReplayDataset(store.path, 32, seed=3, batches_per_epoch=12),
                         num_workers=workers, pin_memory=True, multiprocessing_context="fork")
    again.load_state_dict(state)
    rest = [b["indices"].clone() for b in again]
    whole = [b["indices"] for b in ReplayLoader(ReplayDataset(
        store.path, 32, seed=3, batches_per_epoch=12))]
    assert [t.tolist() for t in first + rest] == [t.tolist() for t in whole]
    with torch.cuda.stream(torch.cuda.Stream()):  # the copy the pinning is for
        on_gpu = next(iter(loader))["obs"].to("cuda", non_blocking=True)
    torch.cuda.synchronize()
    assert on_gpu.is_cuda


def test_background_items_keep_their_order_and_raise_in_place():
    from replaystore.torch.pinning import in_background

    def items():
        yield from range(5)
        raise ValueError("item 5 is bad")

    got = []
    with pytest.raises(ValueError, match="item 5 is bad"):
        for value in in_background(items(), depth=2):
            got.append(value)
    assert got == [0, 1, 2, 3, 4]


def test_closing_the_background_stops_its_thread_promptly():
    import threading

    from replaystore.torch.pinning import in_background

    made = []

    def items():
        for i in itertools.count():
            made.append(i)
            yield i

    background = in_background(items(), depth=2)
    assert [next(background) for _ in range(3)] == [0, 1, 2]
    background.close()
    assert not any(t.name == "replaystore-pin" for t in threading.enumerate())
    # At most the queue's depth plus the item in hand were made ahead of what was taken.
    assert len(made) <= 3 + 2 + 1


def test_dataset_pickles_without_its_store(tmp_path):
    store = make_store(tmp_path / "s", 100)
    dataset = ReplayDataset(store.path, 8)
    next(iter(dataset))  # opens a store in this process
    assert dataset._local
    data = pickle.dumps(dataset)
    assert len(data) < 2000 and b"Store" not in data
    clone = pickle.loads(data)
    assert clone._local == {} and next(iter(clone))["indices"].shape == (8,)


# -- epochs without replacement -------------------------------------------------------------


def test_epoch_mode_reads_every_slot_once_across_two_workers(tmp_path):
    store = make_store(tmp_path / "s", 700, capacity=500)  # wrapped ring: slots 200..499, 0..199
    loader = ReplayLoader(ReplayDataset(store.path, 64, sampler="epoch", seed=9), num_workers=2,
                          multiprocessing_context="fork")
    assert len(loader) == 8  # 500 rows: 7 full batches and one of 52
    first = list(loader)
    assert [len(b["indices"]) for b in first] == [64] * 7 + [52]
    seen = concat(first)
    np.testing.assert_array_equal(np.sort(seen), np.sort(store.slots()))
    for batch in first[:2]:
        assert_matches_store(store, batch)
    second = concat(list(loader))
    np.testing.assert_array_equal(np.sort(second), np.sort(store.slots()))
    assert not (seen == second).all()  # each epoch has its own permutation
    assert loader.state_dict()["epoch"] == 2


def test_epoch_mode_splits_ranks_and_drop_last(tmp_path):
    store = make_store(tmp_path / "s", 330)
    parts = [concat(ReplayLoader(ReplayDataset(store.path, 32, sampler="epoch", rank=r,
                                               world_size=2)))
             for r in range(2)]
    assert not set(parts[0]) & set(parts[1])
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(330))
    dropped = [ReplayLoader(ReplayDataset(store.path, 32, sampler="epoch", rank=r,
                                          world_size=2, drop_last=True)) for r in range(2)]
    assert [len(d) for d in dropped] == [5, 5]  # 10 full batches of the 11 that 330 rows make
    batches = [list(d) for d in dropped]
    assert all(len(b["indices"]) == 32 for part in batches for b in part)


def test_epoch_window_is_pinned_while_the_writer_appends(tmp_path):
    store = make_store(tmp_path / "s", 200)
    loader = ReplayLoader(ReplayDataset(store.path, 50, sampler="epoch"), num_workers=2,
                          multiprocessing_context="fork")
    it = iter(loader)
    got = [next(it)]
    store.extend(rows(200, 100))
    store.commit()
    got += list(it)
    np.testing.assert_array_equal(np.sort(concat(got)), np.arange(200))
    assert len(loader) == 6  # the next epoch covers the 300 rows


# -- resuming -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["epoch", "uniform"])
def test_resume_mid_epoch_gives_exactly_the_remaining_batches(tmp_path, mode):
    store = make_store(tmp_path / "s", 450, capacity=400, priorities=True)
    extra = {"batches_per_epoch": 9} if mode == "uniform" else {}

    def loader(workers):
        dataset = ReplayDataset(store.path, 48, sampler=mode, seed=11, **extra)
        return ReplayLoader(dataset, num_workers=workers, multiprocessing_context="fork")

    reference = loader(2)
    epoch0, epoch1 = list(reference), list(reference)
    assert len(epoch0) == 9

    interrupted = loader(2)
    it = iter(interrupted)
    taken = [next(it) for _ in range(3)]
    state = json.loads(json.dumps(interrupted.state_dict()))  # JSON-able
    del it
    same_batches(taken, epoch0[:3])
    assert state["epoch"] == 0 and state["batch"] == 3

    resumed = loader(2)
    resumed.load_state_dict(state)
    same_batches(list(resumed), epoch0[3:])
    same_batches(list(resumed), epoch1)  # and on into the next epoch

    other_workers = loader(0)  # the position does not depend on the number of workers
    other_workers.load_state_dict(state)
    same_batches(list(other_workers), epoch0[3:])


def test_stopped_iteration_continues_where_it_stopped(tmp_path):
    store = make_store(tmp_path / "s", 300)
    loader = ReplayLoader(ReplayDataset(store.path, 40, sampler="epoch"))
    full = list(ReplayLoader(ReplayDataset(store.path, 40, sampler="epoch")))
    head = list(itertools.islice(loader, 5))
    tail = list(loader)
    same_batches(head + tail, full)
    assert loader.state_dict()["epoch"] == 1


def test_infinite_stream_resumes_and_has_no_length(tmp_path):
    store = make_store(tmp_path / "s", 300)
    loader = ReplayLoader(ReplayDataset(store.path, 16, seed=2), num_workers=2,
                          multiprocessing_context="fork")
    with pytest.raises(TypeError, match="infinite"):
        len(loader)
    first = list(itertools.islice(loader, 6))
    state = loader.state_dict()
    assert state["batch"] == 6
    again = ReplayLoader(ReplayDataset(store.path, 16, seed=2))
    full = list(itertools.islice(again, 10))
    same_batches(first, full[:6])
    again.load_state_dict(state)
    same_batches(list(itertools.islice(again, 4)), full[6:])


def test_resume_refuses_other_settings(tmp_path):
    store = make_store(tmp_path / "s", 100)
    state = ReplayLoader(ReplayDataset(store.path, 10, sampler="epoch", seed=1)).state_dict()
    with pytest.raises(ValueError, match="seed saved 1 but this loader has 2"):
        ReplayLoader(ReplayDataset(store.path, 10, sampler="epoch", seed=2)).load_state_dict(state)


# -- distributed ------------------------------------------------------------------------------


def test_gloo_ranks_read_disjoint_slots(tmp_path):
    store = make_store(tmp_path / "s", 600, capacity=500)
    store.close()
    torch_mp.spawn(distributed_rank, args=(2, str(tmp_path / "init"), str(tmp_path / "s"),
                                           str(tmp_path)), nprocs=2, join=True)
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    slots = np.sort(rs.open(tmp_path / "s").slots())
    for key in ("first", "second"):
        a, b = ranks[0][key], ranks[1][key]
        assert not set(a.tolist()) & set(b.tolist())
        np.testing.assert_array_equal(np.sort(np.concatenate([a, b])), slots)
    assert not np.array_equal(ranks[0]["uniform"], ranks[1]["uniform"])
    assert int(ranks[0]["batches"]) + int(ranks[1]["batches"]) == 16  # ceil(500 / 32)


# -- a live store -----------------------------------------------------------------------------


@pytest.mark.parametrize("prefetch", [1, None])  # None: the prioritized default, 2 a worker
def test_priority_updates_in_the_main_process_reach_the_workers(tmp_path, prefetch):
    store = make_store(tmp_path / "s", 400, capacity=400, priorities=True)
    updater = rs.PrioritizedSampler(store, alpha=0.6, eps=0.0)
    loader = ReplayLoader(ReplayDataset(store.path, 64, sampler="prioritized", seed=4),
                          num_workers=2, multiprocessing_context="fork", prefetch_factor=prefetch)
    it = iter(loader)
    before = concat([next(it) for _ in range(2)])
    assert len(np.unique(before)) > 50
    favourites = np.array([3, 77, 150, 399])
    priorities = np.zeros(400)
    priorities[favourites] = [1.0, 2.0, 3.0, 4.0]
    updater.update_priorities(np.arange(400), priorities)
    for _ in range(4):  # batches the workers drew before the update (prefetch)
        next(it)
    after = [next(it) for _ in range(4)]
    for batch in after:
        assert set(batch["indices"].tolist()) <= set(favourites.tolist())
        probs = dict(zip(batch["indices"].tolist(), batch["probabilities"].tolist(), strict=True))
        expected = priorities ** 0.6 / (priorities ** 0.6).sum()
        for slot, p in probs.items():
            assert p == pytest.approx(expected[slot])
        assert_matches_store(store, batch)
    del it
    store.close()


def test_priority_updates_from_loader_batches_skip_rows_the_ring_overwrote(tmp_path):
    """A batch's "rows" travel with it (through the shared slots too), so an update made after
    the writer overwrote some of its slots reaches only the rows the batch read."""
    store = make_store(tmp_path / "s", 200, capacity=200, priorities=True)
    updater = rs.PrioritizedSampler(store, alpha=0.6, eps=0.0)  # never samples
    updater.update_priorities([0], [50.0])  # running max: new rows get 50
    loader = ReplayLoader(ReplayDataset(store.path, 64, sampler="prioritized", seed=2),
                          num_workers=2, multiprocessing_context="fork", prefetch_factor=1)
    it = iter(loader)
    batch = next(it)
    del it
    slots, drawn = batch["indices"].numpy(), batch["rows"].numpy()
    assert batch["rows"].dtype == torch.int64
    assert np.array_equal(batch["action"].numpy(), drawn)  # action == global row number
    assert np.array_equal(drawn % 200, slots)
    store.extend(rows(200, 60))  # rows 200..259 replace rows 0..59 in slots 0..59
    store.commit()
    index = store.priority_index()
    before = index.leaf(np.arange(200)).copy()
    td = torch.from_numpy(slots.astype(np.float64) + 1.0)
    updater.update_priorities(batch["indices"], td, rows=batch["rows"])
    after = index.leaf(np.arange(200))
    sampled = np.unique(slots)
    gone, kept = sampled[sampled < 60], sampled[sampled >= 60]
    assert len(gone) and len(kept)
    np.testing.assert_array_equal(after[gone], before[gone])  # fresh: 50 ** 0.6
    np.testing.assert_allclose(after[gone], 50.0 ** 0.6)
    np.testing.assert_allclose(after[kept], (kept + 1.0) ** 0.6)
    untouched = np.setdiff1d(np.arange(200), sampled)
    np.testing.assert_array_equal(after[untouched], before[untouched])
    store.close()


def test_workers_see_new_commits(tmp_path):
    store = make_store(tmp_path / "s", 100)
    loader = ReplayLoader(ReplayDataset(store.path, 64, seed=6), num_workers=2,
                          multiprocessing_context="fork", prefetch_factor=1)
    it = iter(loader)
    assert concat([next(it) for _ in range(2)]).max() < 100
    store.extend(rows(100, 900))
    store.commit()
    for _ in range(4):
        next(it)
    late = [next(it) for _ in range(4)]
    assert concat(late).max() >= 100
    for batch in late:
        assert_matches_store(store, batch)


def test_prioritized_reader_follows_a_growing_index(tmp_path):
    # Default (large) chunks: this test commits 70k rows and fsyncs every chunk file.
    store = rs.create(tmp_path / "s", {"action": ((), "int64")})

    def add(first, count):
        g = np.arange(first, first + count)
        store.extend({"action": g, "reward": np.zeros(count, np.float32),
                      "terminated": np.zeros(count, bool), "truncated": np.zeros(count, bool)})
        store.commit()

    add(0, 50)
    store.priority_index(0.6)  # unbounded store: an index of 65536 slots
    store.commit()
    dataset = ReplayDataset(store.path, 256, sampler="prioritized", seed=8)
    it = iter(dataset)
    assert concat([next(it)]).max() < 50
    add(50, 70_000)  # past 65536 rows the index moves to a bigger file
    late = next(it)
    assert late["indices"].max() >= 65536
    assert_matches_store(store, late)


# -- errors and the world -----------------------------------------------------------------------


def test_clear_errors(tmp_path):
    store = make_store(tmp_path / "s", 50)
    with pytest.raises(rs.ReadOnlyError, match="no priority index"):
        ReplayDataset(store.path, 8, sampler="prioritized")
    store.priority_index(0.6)
    store.commit()
    with pytest.raises(rs.SchemaError, match="alpha"):
        ReplayDataset(store.path, 8, sampler="prioritized", alpha=0.7)
    with pytest.raises(rs.StoreNotFoundError):
        ReplayDataset(tmp_path / "missing", 8)
    with pytest.raises(KeyError, match="nope"):
        ReplayDataset(store.path, 8, fields=["obs", "nope"])
    with pytest.raises(ValueError, match="sampler must be one of"):
        ReplayDataset(store.path, 8, sampler="shuffle")
    with pytest.raises(ValueError, match="batches_per_epoch does not apply"):
        ReplayDataset(store.path, 8, sampler="epoch", batches_per_epoch=3)
    with pytest.raises(ValueError, match="length must be a positive integer"):
        ReplayDataset(store.path, 8, sampler="sequence")
    with pytest.raises(ValueError, match="batch_size"):
        ReplayDataset(store.path, 0)
    with pytest.raises(ValueError, match="prefetch_factor must be a positive integer"):
        ReplayLoader(ReplayDataset(store.path, 8), num_workers=2, prefetch_factor=0)
    clash = rs.create(tmp_path / "clash", {"obs": ((2,), "float32"), "weights": ((), "float32")})
    clash.commit()
    with pytest.raises(ValueError, match="collide"):
        ReplayDataset(clash.path, 8)
    ReplayDataset(clash.path, 8, fields=["obs"])  # fine without it
    empty = rs.create(tmp_path / "empty", {"obs": ((2,), "float32")})
    with pytest.raises(IndexError, match="no committed rows"):
        next(iter(ReplayDataset(empty.path, 8)))


def test_world():
    world = World.detect()
    assert world == World(0, 1, 0, 1)
    assert World.detect(rank=1, world_size=3).rank == 1
    w = World(rank=1, world_size=2, worker=1, num_workers=3)
    assert (w.stream, w.streams) == (4, 6)
    assert list(itertools.islice(w.my_batches(5, None), 3)) == [6, 9, 12]
    assert list(w.my_batches(5, 12)) == [6, 9]
    # Runs of 2: worker 1 of 3 takes the second run of every three.
    assert list(itertools.islice(w.my_runs(5, None, 2), 2)) == [range(7, 9), range(13, 15)]
    assert list(w.my_runs(5, 14, 2)) == [range(7, 9), range(13, 14)]
    assert list(w.my_runs(5, 12, 1)) == [range(6, 7), range(9, 10)]
    with pytest.raises(ValueError, match="size must be"):
        w.my_runs(0, None, 0)
    assert w.rank_rng(1, 2).random() == World(1, 2, 0, 3).rank_rng(1, 2).random()
    assert w.worker_rng(1).random() != World(1, 2, 0, 3).worker_rng(1).random()
    with pytest.raises(ValueError, match="rank must be"):
        World(rank=2, world_size=2)
