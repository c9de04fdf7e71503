"""SIGKILL stress: kill real processes mid-work many times, reopen each store and verify it.

    python stress/kill.py                    # 1000 kills
    python stress/kill.py --kills 100 --seed 3
    python stress/kill.py --quick            # 60 kills, short store lifetimes, every kind
    python stress/kill.py --jobs 2           # two stores killed side by side
    python stress/kill.py --kinds writer,record

Each store ("lineage") lives through many cycles: a child process works on it, is SIGKILLed
after a random delay, and the store is checked; the next child carries on with the same store.
Four kinds of child:

``writer``
    tests/crash/writer_child.py appends deterministic rows (single appends, batches, explicit
    and automatic commits, tiny chunks, rings from 1 to 4096 rows that wrap every few rows).
``priority``
    this script's own child (``kill.py child-priority``): prioritized sampling, priority
    updates, appends and commits, like a training loop. After the kill the store is also
    reopened by a writer (which rolls uncommitted priority changes back) and the priorities of
    the committed rows must equal, bit for bit, what the child reported at its last commit.
``record``
    ``replaystore record CartPole-v1 PATH --append --seed S`` (the CLI, in a subprocess).
    Committed rows are compared with an uninterrupted in-process recording of the same seed,
    and every commit the parent saw while polling the manifest must survive.
``rewrite``
    ``replaystore prune`` or ``replaystore compact`` on a store with a priority index; after
    the kill the store must hold exactly the old rows and priorities or exactly the new ones.

After every kill: the store opens, every committed row is byte-identical to the ground truth,
nothing committed was lost, and ``rs.verify(path).ok``. Writer stores are also checked with
tests/crash/checks.py (episodes, plain zarr reads). Unbounded stores are replaced after a few
dozen kills so checks stay fast; rings live longer. A fraction of kills (--early) does not
wait for the first commit and may land while the child starts, opens or repairs the store.

The CLI children run this checkout's ``cli`` package (as the ``replaystore`` script does), and
every child gets this checkout first on PYTHONPATH, so a copy of the repository tests itself.

A store that fails a check is copied with its child's logs to stress/out/failures/ and
replaced. Prints a summary; exits with status 1 when committed rows were lost, a store could
not be opened or did not verify, or any row, episode, priority or zarr read was wrong. Two
zarr effects are counted but not failed unless --strict-zarr: a zarr shape behind the
committed extent (the writer died between the manifest and the shape update), and
never-committed rows that zarr shows in ring slots outside the committed window.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "crash"))
sys.path.insert(0, str(ROOT))
from checks import (  # noqa: E402
    ROW_LIMIT,
    Lineage,
    Verdict,
    expected_rows,
    store_fields,
    verify_store,
)

import replaystore as rs  # noqa: E402

# (capacity or None, writer mode): rings from smaller than one chunk to a few hundred chunks.
CONFIGS: list[tuple[int | None, str]] = [
    (None, "mixed"), (None, "extend"), (None, "append"), (None, "burst"),
    (1, "append"), (7, "mixed"), (50, "mixed"), (64, "extend"), (97, "append"),
    (120, "burst"), (300, "mixed"), (1000, "extend"), (33, "burst"), (4096, "mixed"),
]
PRIORITY_CAPACITIES: list[int | None] = [None, None, 40, 300, 1000]
RECORD_CAPACITIES: list[int | None] = [None, None, 3000, 20_000]
RECORD_SEEDS = (11, 12, 13)  # a few seeds, so reference recordings are reused
RECORD_ENV = "CartPole-v1"
# Rewrite stores: chunks big enough that an uninterrupted rewrite takes about a second.
REWRITE_FIELDS = {
    "obs": {"shape": (3,), "dtype": "float32", "codec": "raw", "chunk_rows": 1024},
    "action": {"shape": (), "dtype": "int64", "codec": "zstd:3", "chunk_rows": 2048},
    "image": {"shape": (32, 32), "dtype": "uint8", "chunk_rows": 512},
}
KINDS = ("writer", "priority", "record", "rewrite")
WEIGHTS = {"writer": 0.4, "priority": 0.25, "record": 0.15, "rewrite": 0.2}  # of kills
FAILURES = ROOT / "stress" / "out" / "failures"
ALPHA = 0.6
NEVER = {"commit_every_rows": 1 << 40, "commit_every_seconds": 1e9}

# The ``replaystore`` script, but with this checkout's cli package (the installed script would
# import whichever checkout the virtual environment was installed from).
CLI_LAUNCHER = (
    "import importlib.util, sys\n"
    "root = sys.argv.pop(1)\n"
    "spec = importlib.util.spec_from_file_location('replaystore_cli', root + '/cli/__init__.py',"
    " submodule_search_locations=[root + '/cli'])\n"
    "module = importlib.util.module_from_spec(spec)\n"
    "sys.modules['replaystore_cli'] = module\n"
    "spec.loader.exec_module(module)\n"
    "from replaystore_cli.main import main\n"
    "sys.argv[0] = 'replaystore'\n"
    "sys.exit(main())\n"
)


def cli_command(*args: object) -> list[str]:
    """The argv that runs ``replaystore ARGS...`` from this checkout."""
    return [sys.executable, "-c", CLI_LAUNCHER, str(ROOT), *map(str, args)]


def child_env() -> dict[str, str]:
    """The environment of every child: this checkout first on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


# -- running a child and killing it ---------------------------------------------------------------


@dataclass
class Observed:
    """The newest commit seen in the manifest while a child ran (the parent polls it)."""

    end: int = -1
    start: int = 0
    seq: int = -1
    generation: int = -1

    def poll(self, store: Path) -> None:
        try:
            doc = json.loads((store / "_replaystore" / "manifest.json").read_bytes())
            seq, end = int(doc["commit_seq"]), int(doc["end"])
        except (OSError, ValueError, KeyError, TypeError):
            return  # not there yet, or mid-swap by a rewrite
        if seq > self.seq:
            self.seq, self.end = seq, end
            self.start, self.generation = int(doc["start"]), int(doc.get("generation", 0))


@dataclass
class ChildRun:
    """One child process from start to SIGKILL (or to its own exit)."""

    killed: bool = False
    returncode: int | None = None
    seconds: float = 0.0
    stdout: str = ""
    stderr: str = ""
    observed: Observed = field(default_factory=Observed)
    began: float | None = None  # seconds from start until the child's work began (see wait)

    def lines(self) -> list[str]:
        """Complete output lines (a kill may cut the last one short)."""
        return self.stdout.split("\n")[:-1]


def run_child(cmd: list[str], log_dir: Path, *, delay_s: float, store: Path | None = None,
              wait_for: str | None = None, startup_timeout_s: float = 60.0) -> ChildRun:
    """Start ``cmd``, SIGKILL it ``delay_s`` after it began working, and collect its output.

    ``wait_for``: ``"line"`` waits for an output line starting with ``commit``, ``"commit"``
    for the manifest's commit sequence to move, ``"rewrite"`` for the staging folder of a
    rewrite to appear (measured only: the delay still counts from the start); None counts the
    delay from the start of the process. With ``store`` the manifest is polled throughout.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / "child.out", log_dir / "child.err"
    run = ChildRun()
    begun = time.monotonic()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                env=child_env())
    try:
        if store is not None:
            run.observed.poll(store)
        initial_seq = run.observed.seq
        staging = None if store is None else store.parent / f".{store.name}.rewrite"
        if wait_for in ("line", "commit"):
            deadline = time.monotonic() + startup_timeout_s
            while proc.poll() is None and time.monotonic() < deadline:
                if store is not None:
                    run.observed.poll(store)
                if wait_for == "line" and b"\ncommit " in b"\n" + out_path.read_bytes():
                    break
                if wait_for == "commit" and run.observed.seq > initial_seq:
                    break
                time.sleep(0.003)
            run.began = time.monotonic() - begun
        kill_at = time.monotonic() + delay_s
        while proc.poll() is None and time.monotonic() < kill_at:
            if store is not None:
                run.observed.poll(store)
            if staging is not None and wait_for == "rewrite" and run.began is None \
                    and staging.exists():
                run.began = time.monotonic() - begun
            time.sleep(0.003)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        run.returncode = proc.wait()
        run.seconds = time.monotonic() - begun
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    run.killed = run.returncode == -signal.SIGKILL
    run.stdout = out_path.read_bytes().decode(errors="replace")
    run.stderr = err_path.read_text(errors="replace")[-3000:]
    return run


# -- what one cycle found --------------------------------------------------------------------------


@dataclass
class Result:
    """The checks after one cycle of any kind."""

    kind: str
    killed: bool
    verdict: Verdict
    early: bool = False
    verify_ok: bool | None = None  # rs.verify(path).ok after the kill (None: not run)
    priority: str | None = None  # "exact", "skipped" or "mismatch"
    outcome: str | None = None  # rewrite: "old" or "new"
    seconds: float = 0.0
    note: str = ""  # what the cycle did, for failure messages

    @property
    def ok(self) -> bool:
        return (self.verdict.ok and self.verify_ok is not False
                and self.priority != "mismatch")


def check_verify(path: Path, verdict: Verdict, what: str = "") -> bool:
    """``rs.verify(path).ok``; problems are noted on ``verdict``."""
    try:
        report = rs.verify(path)
    except Exception as exc:
        verdict.note(f"rs.verify{what} raised {exc!r}")
        return False
    for problem in report.problems[:3]:
        verdict.note(f"rs.verify{what}: {problem}")
    return report.ok


def read_all(path: Path) -> tuple[rs.Manifest, dict[str, np.ndarray]] | None:
    """Every committed row oldest first, the priority leaves as "_leaf"; None if unopenable."""
    with rs.open(path) as store:
        slots = store.slots()
        values = store.get(slots)
        if (store.path / "_replaystore" / "priority.json").exists():
            values["_leaf"] = np.array(store.priority_index().leaf(slots))
        return store.manifest, values


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    """Byte-identical contents (same fields, shapes, dtypes and bytes)."""
    if a.keys() != b.keys():
        return False
    return all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
               and a[k].tobytes() == b[k].tobytes() for k in a)


# -- writer lineages (tests/crash/writer_child.py) -----------------------------------------------


class WriterLineage:
    """checks.Lineage (append/extend/commit/ring wraps), plus rs.verify after each kill."""

    kind = "writer"

    def __init__(self, path: Path, rng: random.Random, log_dir: Path) -> None:
        self.capacity, self.mode = rng.choice(CONFIGS)
        self.path = path.with_name(f"{path.name}-{self.capacity or 'unbounded'}-{self.mode}")
        self.log_dir = log_dir
        self.lineage = Lineage(self.path, capacity=self.capacity, mode=self.mode,
                               seed=rng.randrange(1 << 30), log_dir=log_dir)

    @property
    def cycles(self) -> int:
        return self.lineage.cycles

    def life(self, rng: random.Random, quick: bool) -> int:
        if quick:
            return rng.randint(3, 8)
        return rng.randint(10, 30) if self.capacity is None else rng.randint(30, 120)

    def cycle(self, rng: random.Random, args: argparse.Namespace) -> Result:
        early = self.cycles > 0 and rng.random() < args.early
        delay = rng.uniform(0.0, 0.6) if early else rng.uniform(0.02, args.max_delay)
        run, verdict = self.lineage.cycle(delay, wait_for_commit=not early)
        result = Result(self.kind, run.killed, verdict, early=early,
                        note=f"printed end {run.printed_end}")
        if verdict.opened:
            result.verify_ok = check_verify(self.path, verdict)
        return result


# -- priority lineages (this script's child-priority) --------------------------------------------


def priorities_for(slots: np.ndarray, step: int) -> np.ndarray:
    """A training loop's new priorities: a function of (slot, step), never 0."""
    mixed = (slots.astype(np.int64) * 2654435761 + step * 40503) % 1009
    return 0.1 + mixed / 97.0


def leaf_digest(store: rs.Store) -> str:
    """A digest of the priority leaves of the committed slots, oldest first."""
    leaves = np.ascontiguousarray(store.priority_index().leaf(store.slots()))
    return hashlib.sha256(leaves.tobytes()).hexdigest()[:20]


def save_leaves(target: Path, store: rs.Store) -> None:
    """Atomically save the committed window and its slots' priority leaves to ``target``."""
    m = store.manifest
    tmp = target.with_name(target.name + ".tmp.npz")
    np.savez(tmp, window=np.array([m.commit_seq, m.start, m.end]),
             leaves=store.priority_index().leaf(store.slots()))
    os.replace(tmp, target)


def priority_child(argv: list[str]) -> int:
    """``kill.py child-priority PATH SEED CAPACITY LEAVES``: train-loop-like writes until
    killed.

    Prints ``open START END`` and, after each commit, ``commit SEQ START END DIGEST``, having
    saved that commit's priority leaves to LEAVES (see :func:`save_leaves`).
    """
    path, seed, capacity = Path(argv[0]), int(argv[1]), int(argv[2]) or None
    leaves_file = Path(argv[3])
    rng = random.Random(seed)
    if path.exists():
        store = rs.open(path, "a", **NEVER)
    else:
        store = rs.create(path, store_fields(random.Random(seed)), capacity=capacity, **NEVER)
    sampler = rs.PrioritizedSampler(store, alpha=ALPHA, seed=seed, name="per")
    print(f"open {store.manifest.start} {store.manifest.end}", flush=True)
    commit_chance = rng.choice([0.02, 0.1, 0.3])
    row = store.manifest.end
    first = True
    while row < ROW_LIMIT:
        if len(store):
            batch = sampler.sample(rng.choice([1, 8, 32, 128]))
            sampler.update_priorities(batch.indices, priorities_for(batch.indices,
                                                                    sampler.steps))
        count = rng.choice([0, 0, 1, 3, rng.randint(4, 60)])
        if count:
            store.extend(expected_rows(np.arange(row, row + count)))
            row += count
        if first or rng.random() < commit_chance:
            m = store.commit()
            first = False
            save_leaves(leaves_file, store)
            print(f"commit {m.commit_seq} {m.start} {m.end} {leaf_digest(store)}", flush=True)
    store.commit()
    while True:  # never exit by ourselves: the parent kills us
        signal.pause()


class PriorityLineage:
    """A store trained on by child-priority, killed and checked again and again."""

    kind = "priority"

    def __init__(self, path: Path, rng: random.Random, log_dir: Path) -> None:
        self.capacity = rng.choice(PRIORITY_CAPACITIES)
        self.path = path.with_name(f"{path.name}-{self.capacity or 'unbounded'}-priority")
        self.log_dir = log_dir
        self.rng = random.Random(rng.randrange(1 << 30))
        self.cycles = 0
        self.window: tuple[int, int] | None = None

    def life(self, rng: random.Random, quick: bool) -> int:
        return rng.randint(3, 6) if quick else rng.randint(10, 30)

    def cycle(self, rng: random.Random, args: argparse.Namespace) -> Result:
        early = self.cycles > 0 and rng.random() < args.early
        delay = rng.uniform(0.0, 0.8) if early else rng.uniform(0.02, args.max_delay)
        cmd = [sys.executable, str(Path(__file__).resolve()), "child-priority", str(self.path),
               str(self.rng.randrange(1 << 30)), str(self.capacity or 0),
               str(self.log_dir / "leaves.npz")]
        run = run_child(cmd, self.log_dir, delay_s=delay, wait_for=None if early else "line")
        self.cycles += 1
        commits: list[tuple[int, int, int, str]] = []
        opened_at = None
        for line in run.lines():
            kind, _, rest = line.partition(" ")
            parts = rest.split()
            if kind == "open":
                opened_at = (int(parts[0]), int(parts[1]))
            elif kind == "commit":
                commits.append((int(parts[0]), int(parts[1]), int(parts[2]), parts[3]))
        printed_end = commits[-1][2] if commits else 0
        result = Result(self.kind, run.killed, Verdict(), early=early,
                        note=f"printed end {printed_end}")
        if not self.path.exists() and self.cycles == 1 and not commits:
            result.verdict.writer_errors += 1
            result.verdict.note(f"the child made no store: {run.stderr[-300:]}")
            return result
        v = result.verdict = verify_store(self.path, printed_end, capacity=self.capacity,
                                          rng=self.rng)
        if not run.killed:
            v.writer_errors += 1
            v.note(f"child exited by itself with status {run.returncode}: {run.stderr[-500:]}")
        if opened_at is not None and self.window is not None and opened_at != self.window:
            v.writer_errors += 1
            v.note(f"the child resumed at {opened_at}, verified {self.window} before")
        if not v.opened:
            return result
        self.window = (v.start, v.end)
        result.verify_ok = check_verify(self.path, v)
        result.priority = self._check_priorities(commits, v)
        # After a writer's recovery the index is clean, so verify checks the whole tree too.
        result.verify_ok &= check_verify(self.path, v, " after writer recovery")
        return result

    def _check_priorities(self, commits: list[tuple[int, int, int, str]], v: Verdict) -> str:
        """Reopen as a writer (undoing uncommitted priority changes) and compare the leaves of
        the committed slots with those the child saved at that commit.

        The manifest may also be a ring's shrink published after the last commit the child
        reported (same end, later start): the surviving slots then keep that commit's leaves.
        """
        try:
            store = rs.open(self.path, "a", **NEVER)
        except Exception as exc:
            v.note(f"reopening for writing raised {exc!r}")
            return "mismatch"
        try:
            if not (self.path / "_replaystore" / "priority.json").exists():
                return "skipped"  # killed before the first index existed
            m = store.manifest
            leaves = np.array(store.priority_index().leaf(store.slots()))
        finally:
            store.close()
        if m.rows and not (leaves > 0).all():
            v.note(f"{int((leaves <= 0).sum())} committed rows have priority 0")
            return "mismatch"
        try:
            with np.load(self.log_dir / "leaves.npz") as saved:
                seq, start, end = (int(x) for x in saved["window"])
                want = saved["leaves"]
        except FileNotFoundError:
            return "skipped"
        printed = {c[0] for c in commits}
        if seq not in printed and commits:
            seq_printed = max(printed)
            if seq_printed > seq:
                v.note(f"leaves saved for commit {seq}, but commit {seq_printed} was reported")
                return "mismatch"
        if m.commit_seq == seq and (m.start, m.end) == (start, end):
            exact = leaves.tobytes() == want.tobytes()
        elif m.commit_seq > seq and m.end == end and m.start > start:
            exact = leaves.tobytes() == want[m.start - start:].tobytes()
        else:
            return "skipped"  # a commit after the last one saved
        if not exact:
            v.note(f"priorities of commit {seq} ({start}..{end}) differ after recovery "
                   f"(manifest {m.commit_seq}: {m.start}..{m.end})")
            return "mismatch"
        return "exact"


# -- record lineages (replaystore record, the CLI) -----------------------------------------------


class References:
    """Uninterrupted recordings per seed (in-process rs.record), grown on demand."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.lock = threading.Lock()
        self.stores: dict[int, tuple[rs.Store, int]] = {}  # seed -> (store, usable rows)

    def rows(self, seed: int, offsets: np.ndarray) -> dict[str, np.ndarray]:
        """Rows ``offsets`` of seed's recording (only whole episodes count as usable)."""
        need = int(offsets.max()) + 1 if len(offsets) else 0
        with self.lock:
            store, usable = self.stores.get(seed, (None, 0))
            if store is None or usable < need:
                steps = max(20_000, 2 * need)
                path = self.workdir / f"reference-{seed}-{steps}"
                rs.record(path, RECORD_ENV, steps=steps, seed=seed)
                store = rs.open(path)
                # The last episode of a --steps recording is cut short: not comparable.
                usable = int(store.episodes["start"][-1])
                self.stores[seed] = (store, usable)
        if need > usable:
            raise RuntimeError(f"reference of seed {seed} too short ({usable} < {need})")
        return store.get(offsets)


class RecordLineage:
    """``replaystore record --append`` runs, killed; committed rows checked against references."""

    kind = "record"

    def __init__(self, path: Path, rng: random.Random, log_dir: Path,
                 references: References) -> None:
        self.capacity = rng.choice(RECORD_CAPACITIES)
        self.path = path.with_name(f"{path.name}-{self.capacity or 'unbounded'}-record")
        self.log_dir = log_dir
        self.references = references
        self.cycles = 0
        self.runs: list[tuple[int, int]] = []  # (first global row, seed) of each run
        self.end = 0  # committed end verified after the last kill

    def life(self, rng: random.Random, quick: bool) -> int:
        return rng.randint(2, 4) if quick else rng.randint(6, 15)

    def cycle(self, rng: random.Random, args: argparse.Namespace) -> Result:
        early = self.cycles > 0 and rng.random() < args.early
        seed = rng.choice(RECORD_SEEDS)
        every = rng.choice([0.05, 0.2, 0.5])
        cmd = cli_command("record", RECORD_ENV, self.path, "--steps", 10**9, "--append",
                          "--seed", seed, "--commit-every", every, "-q")
        if self.capacity:
            cmd += ["--capacity", str(self.capacity)]
        delay = rng.uniform(0.0, 2.0) if early else rng.uniform(0.0, args.max_delay + 0.6)
        run = run_child(cmd, self.log_dir, delay_s=delay, store=self.path,
                        wait_for=None if early else "commit")
        self.cycles += 1
        self.runs.append((self.end, seed))
        result = Result(self.kind, run.killed, Verdict(), early=early,
                        note=f"seed {seed}, observed end {run.observed.end}")
        v = result.verdict
        if not run.killed:
            v.writer_errors += 1
            v.note(f"record exited by itself with status {run.returncode}: {run.stderr[-500:]}")
        try:
            store = rs.open(self.path)
        except Exception as exc:
            v.note(f"cannot open the store: {exc!r}")
            return result
        v.opened = True
        with store:
            self._check(store, run.observed, v)
        result.verify_ok = check_verify(self.path, v)
        return result

    def _check(self, store: rs.Store, observed: Observed, v: Verdict) -> None:
        m = store.manifest
        v.start, v.end, v.episodes = m.start, m.end, m.episodes
        if m.end < max(observed.end, self.end):
            v.lost_rows = max(observed.end, self.end) - m.end
            v.note(f"committed end {m.end} is behind {max(observed.end, self.end)} "
                   "(seen committed before the kill)")
        if self.capacity is None and m.start != 0:
            v.lost_rows += m.start
            v.note(f"an unbounded store starts at row {m.start}")
        if m.open_episode is not None:
            v.episode_errors += 1
            v.note(f"the store ends inside an episode {m.open_episode}")
        self.end = m.end
        firsts = [first for first, _ in self.runs]
        for lo in range(m.start, m.end, 4096):
            rows = np.arange(lo, min(lo + 4096, m.end), dtype=np.int64)
            try:
                got = store.get(m.slot_of(rows))
            except Exception as exc:
                v.mismatched_rows += len(rows)
                v.note(f"store.get of rows {lo}.. failed: {exc!r}")
                continue
            run_of = np.array([bisect.bisect_right(firsts, int(g)) - 1 for g in rows])
            bad = np.zeros(len(rows), bool)
            for k in np.unique(run_of):
                mine = run_of == k
                first, seed = self.runs[k]
                want = self.references.rows(seed, rows[mine] - first)
                for name, values in want.items():
                    a = got[name][mine].reshape(int(mine.sum()), -1)
                    b = values.reshape(len(a), -1)
                    differ = np.any(a != b, axis=1) if a.dtype == b.dtype else \
                        np.ones(len(a), bool)
                    if differ.any():
                        v.note(f"field {name!r} of run {k} (seed {seed}) differs from the "
                               f"reference at {int(differ.sum())} rows")
                    bad[np.flatnonzero(mine)[differ]] = True
            v.mismatched_rows += int(bad.sum())
            v.rows_checked += len(rows)


# -- rewrite lineages (replaystore prune / compact, the CLI) --------------------------------------


def prune_expectation(values: dict[str, np.ndarray], manifest: rs.Manifest,
                      episodes: np.ndarray, op: list[str]) -> dict[str, np.ndarray]:
    """The contents after ``op`` (compact, prune --keep-last N [--by rows]) completes: a suffix
    of the old rows, byte for byte, with their priorities."""
    if op[0] == "compact":
        return values
    keep = int(op[op.index("--keep-last") + 1])
    rows = len(values["action"])
    if "rows" in op:
        first = max(0, rows - keep)
    elif keep >= len(episodes):
        first = 0
    elif keep == 0:
        # Only the episode in progress (rows after the last finished one) survives.
        first = int(episodes["start"][-1] + episodes["length"][-1]) - manifest.start
    else:
        first = int(episodes["start"][max(0, len(episodes) - keep)]) - manifest.start
    return {name: array[first:] for name, array in values.items()}


class RewriteLineage:
    """A store with a priority index, pruned and compacted by the CLI, killed mid-rewrite."""

    kind = "rewrite"

    def __init__(self, path: Path, rng: random.Random, log_dir: Path, quick: bool) -> None:
        self.capacity = rng.choice([None, None, 60_000])
        self.path = path.with_name(f"{path.name}-{self.capacity or 'unbounded'}-rewrite")
        self.log_dir = log_dir
        self.size = 15_000 if quick else 40_000
        self.cycles = 0
        self.next_id = 0
        self.total_s: float | None = None  # how long an uninterrupted rewrite takes
        self.began_s = 0.0  # when its staging folder appears (the copy begins)
        self.contents: tuple[rs.Manifest, dict[str, np.ndarray]] | None = None
        self.episodes: np.ndarray | None = None
        self.zstd = False  # whether obs is stored zstd:3 now (compact --codec toggles it)

    def life(self, rng: random.Random, quick: bool) -> int:
        return rng.randint(2, 4) if quick else rng.randint(8, 20)

    def top_up(self) -> None:
        """Append rows (and priorities) until the store holds ``size`` rows again."""
        if self.path.exists():
            store = rs.open(self.path, "a")
        else:
            store = rs.create(self.path, REWRITE_FIELDS, capacity=self.capacity)
        try:
            per = rs.PrioritizedSampler(store, alpha=ALPHA, seed=0)
            count = self.size - len(store)
            if count > 0:
                ids = np.arange(self.next_id, self.next_id + count)
                store.extend(expected_rows(ids))
                self.next_id += count
                store.commit()
                fresh = store.slots()[-count:]
                per.update_priorities(fresh, priorities_for(fresh, self.next_id))
            store.commit()
            self.episodes = store.episodes
        finally:
            store.close()
        self.contents = read_all(self.path)

    def cycle(self, rng: random.Random, args: argparse.Namespace) -> Result:
        if self.contents is None:
            self.top_up()
        assert self.contents is not None and self.episodes is not None
        old_manifest, old = self.contents
        op = rng.choice([["compact"], ["compact", "--codec", "obs=zstd:3"],
                         ["prune", "--keep-last", str(rng.randint(0, self.size)), "--by", "rows"],
                         ["prune", "--keep-last", str(rng.randint(0, len(self.episodes)))]])
        if op[:3] == ["compact", "--codec", "obs=zstd:3"] and self.zstd:
            op = ["compact", "--codec", "obs=raw"]
        new = prune_expectation(old, old_manifest, self.episodes, op)
        # The first rewrite of a lineage runs to completion: it calibrates the kill delays.
        # Most kills land in the copy; some near the end, around the swap.
        if self.total_s is None:
            delay = 1e9
        elif rng.random() < 0.7:
            delay = rng.uniform(0.5 * self.began_s, 0.85 * self.total_s)
        else:
            delay = rng.uniform(0.85 * self.total_s, 1.05 * self.total_s)
        run = run_child(cli_command(*op[:1], self.path, *op[1:]), self.log_dir,
                        delay_s=delay, store=self.path, wait_for="rewrite")
        if not run.killed and run.returncode == 0 and op[0] == "compact" and len(op) > 1:
            self.zstd = op[2] == "obs=zstd:3"
        if not run.killed:
            self.total_s = run.seconds if self.total_s is None else \
                0.8 * self.total_s + 0.2 * run.seconds
            self.began_s = run.began or self.began_s
        self.cycles += run.killed  # a lineage lives through so many kills
        result = Result(self.kind, run.killed, Verdict(),
                        note=f"{' '.join(op)} after {run.seconds:.2f} s")
        v = result.verdict
        if not run.killed and run.returncode != 0:
            v.writer_errors += 1
            v.note(f"{op[0]} exited with status {run.returncode}: {run.stderr[-500:]}")
        try:
            manifest, now = read_all(self.path)  # type: ignore[misc]
        except Exception as exc:
            v.note(f"cannot open the store: {exc!r}")
            return result
        v.opened = True
        v.start, v.end, v.rows_checked = manifest.start, manifest.end, manifest.rows
        if manifest.generation == old_manifest.generation and same(now, old):
            result.outcome = "old"
        elif manifest.generation == old_manifest.generation + 1 and same(now, new):
            result.outcome = "new"
        else:
            v.mismatched_rows += max(1, manifest.rows)
            lost = len(new["action"]) - manifest.rows
            v.lost_rows += max(0, lost)
            v.note(f"neither the old ({len(old['action'])} rows, generation "
                   f"{old_manifest.generation}) nor the new store ({len(new['action'])} rows): "
                   f"{manifest.rows} rows, generation {manifest.generation}")
        if not run.killed and result.outcome != "new" and run.returncode == 0:
            v.writer_errors += 1
            v.note(f"{op[0]} finished but the store is {result.outcome or 'neither'}")
        leftovers = [p.name for p in self.path.parent.iterdir()
                     if p.name.startswith(f".{self.path.name}.")]
        result.verify_ok = check_verify(self.path, v)
        result.note += f"; outcome {result.outcome}; siblings {leftovers}"
        self.top_up()
        return result


# -- the driver ------------------------------------------------------------------------------------


@dataclass
class Totals:
    """Counters over all cycles."""

    kills: int = 0
    cycles: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    stores: int = 0
    early_kills: int = 0
    not_killed: int = 0  # rewrites that finished before their kill
    rows_verified: int = 0
    lost_rows: int = 0
    unopenable: int = 0
    verify_failures: int = 0
    seconds: Counter[str] = field(default_factory=Counter)
    mismatched_rows: int = 0
    episode_errors: int = 0
    zarr_errors: int = 0
    zarr_shape_lag: int = 0
    zarr_uncommitted_kills: int = 0
    zarr_uncommitted_rows: int = 0
    writer_errors: int = 0
    priority: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    failed_kills: int = 0
    largest: tuple[int, int] = (0, 0)  # (committed end, finished episodes) of the oldest store
    problems: list[str] = field(default_factory=list)

    def add(self, result: Result) -> None:
        verdict = result.verdict
        self.cycles += 1
        if result.killed:
            self.kills += 1
            self.by_kind[result.kind] += 1
        else:
            self.not_killed += 1
        self.early_kills += result.early and result.killed
        self.rows_verified += verdict.rows_checked
        self.lost_rows += verdict.lost_rows
        self.unopenable += not verdict.opened
        self.verify_failures += result.verify_ok is False
        self.seconds[result.kind] += result.seconds
        self.mismatched_rows += verdict.mismatched_rows
        self.episode_errors += verdict.episode_errors
        self.zarr_errors += verdict.zarr_errors
        self.zarr_shape_lag += verdict.zarr_shape_lag > 0
        self.zarr_uncommitted_kills += verdict.zarr_uncommitted > 0
        self.zarr_uncommitted_rows += verdict.zarr_uncommitted
        self.writer_errors += verdict.writer_errors
        if result.priority:
            self.priority[result.priority] += 1
        if result.outcome:
            self.outcomes[result.outcome if result.killed else "finished"] += 1
        self.failed_kills += not result.ok
        if verdict.end > self.largest[0]:
            self.largest = (verdict.end, verdict.episodes)


class Stress:
    """Runs the kills, spread over ``jobs`` worker threads, each driving one store at a time."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.totals = Totals()
        self.lock = threading.Lock()
        self.stores = 0
        self.started = time.monotonic()
        self.references = References(workdir)
        self.kinds = list(args.kinds)
        # --quick (and short runs) take every kind in turn, so each is exercised.
        self.rotation = 0

    def done(self) -> bool:
        with self.lock:
            return self.totals.kills >= self.args.kills

    def new_lineage(self, rng: random.Random) -> tuple[Any, int]:
        """A fresh store of a random kind, and how many cycles it will live through."""
        with self.lock:
            self.stores += 1
            number = self.stores
            self.totals.stores += 1
            if self.args.quick or self.args.kills < 200:
                kind = self.kinds[self.rotation % len(self.kinds)]
                self.rotation += 1
            else:
                # The kind furthest behind its share of the kills so far (lineages of different
                # kinds live through very different numbers of kills).
                total = sum(WEIGHTS[k] for k in self.kinds)
                done = self.totals.kills + 1
                kind = max(self.kinds, key=lambda k: (WEIGHTS[k] / total * done
                                                      - self.totals.by_kind[k], rng.random()))
        path = self.workdir / f"store{number:04d}"
        logs = self.workdir / f"store{number:04d}.logs"
        if kind == "writer":
            lineage: Any = WriterLineage(path, rng, logs)
        elif kind == "priority":
            lineage = PriorityLineage(path, rng, logs)
        elif kind == "record":
            lineage = RecordLineage(path, rng, logs, self.references)
        else:
            lineage = RewriteLineage(path, rng, logs, self.args.quick)
        life = lineage.life(rng, self.args.quick)
        return lineage, min(life, max(2, self.args.kills // 10))

    def worker(self, worker_id: int) -> None:
        rng = random.Random(self.args.seed * 1009 + worker_id)
        lineage: Any = None
        life = 0
        while not self.done():
            if lineage is None or lineage.cycles >= life:
                if lineage is not None:
                    self.discard(lineage)
                lineage, life = self.new_lineage(rng)
            began = time.monotonic()
            try:
                result = lineage.cycle(rng, self.args)
            except Exception as exc:  # a bug of this script or of the ground truth
                result = Result(lineage.kind, False, Verdict(opened=True))
                result.verdict.writer_errors += 1
                result.verdict.note(f"the stress driver failed: {exc!r}")
            result.seconds = time.monotonic() - began
            failed = not result.ok or (self.args.strict_zarr and (
                result.verdict.zarr_shape_lag or result.verdict.zarr_uncommitted))
            with self.lock:
                self.totals.add(result)
                if failed:
                    message = (f"cycle {self.totals.cycles} ({lineage.kind}, "
                               f"{lineage.path.name}, cycle {lineage.cycles}, {result.note}): "
                               + "; ".join(result.verdict.problems))
                    self.totals.problems.append(message)
                    print("FAIL", message, flush=True)
                if result.killed and self.totals.kills % self.args.progress == 0:
                    self.progress()
            if failed:
                self.keep(lineage, self.totals.cycles)
                lineage = None
        if lineage is not None:
            self.discard(lineage)

    def progress(self) -> None:
        t = self.totals
        kinds = ", ".join(f"{k} {t.by_kind[k]}" for k in self.kinds)
        print(f"{t.kills:5d} kills {time.monotonic() - self.started:7.1f} s  ({kinds})  "
              f"stores {t.stores}  rows verified {t.rows_verified}  failed {t.failed_kills}",
              flush=True)

    def keep(self, lineage: Any, number: int) -> None:
        """Copy a failing store and its child's logs for a post-mortem."""
        target = FAILURES / f"cycle{number:05d}-{lineage.path.name}"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        if lineage.path.exists():
            shutil.copytree(lineage.path, target / "store", symlinks=True)
        if lineage.log_dir.exists():
            shutil.copytree(lineage.log_dir, target / "logs")
        print(f"     kept in {target}", flush=True)
        self.discard(lineage)

    def discard(self, lineage: Any) -> None:
        if not self.args.keep:
            shutil.rmtree(lineage.path, ignore_errors=True)
            shutil.rmtree(lineage.log_dir, ignore_errors=True)

    def run(self) -> Totals:
        with ThreadPoolExecutor(self.args.jobs) as pool:
            for future in [pool.submit(self.worker, i) for i in range(self.args.jobs)]:
                future.result()
        return self.totals


def summary(totals: Totals, wall: float, strict_zarr: bool, kinds: list[str]) -> list[str]:
    note = "" if strict_zarr else " (known, not counted as failures)"
    by_kind = ", ".join(f"{k} {totals.by_kind[k]}" for k in kinds)
    prio = totals.priority
    lines = [
        f"kills                 {totals.kills} ({by_kind}; {totals.early_kills} early) on "
        f"{totals.stores} stores",
        f"rows verified         {totals.rows_verified} (largest store: end {totals.largest[0]}, "
        f"{totals.largest[1]} episodes)",
        f"lost committed rows   {totals.lost_rows}",
        f"unopenable stores     {totals.unopenable}",
        f"verify failures       {totals.verify_failures} (rs.verify(path).ok after every cycle)",
        f"mismatched rows       {totals.mismatched_rows}",
        f"episode errors        {totals.episode_errors}",
        f"priority checks       {prio['exact']} exact after recovery, {prio['mismatch']} wrong, "
        f"{prio['skipped']} not comparable (killed after the last commit it saved)",
        f"rewrite kills         {totals.outcomes['old']} left the old store, "
        f"{totals.outcomes['new']} the new one ({totals.outcomes['finished']} more rewrites "
        "finished before their kill)",
        f"zarr mismatches       {totals.zarr_errors}",
        f"zarr shape lag        {totals.zarr_shape_lag} kills{note}",
        f"zarr uncommitted rows {totals.zarr_uncommitted_rows} rows after "
        f"{totals.zarr_uncommitted_kills} kills (ring slots outside the window){note}",
        f"child errors          {totals.writer_errors}",
        f"failed cycles         {totals.failed_kills}",
        f"wall time             {wall:.1f} s ({wall / max(1, totals.kills):.2f} s per kill; "
        + ", ".join(f"{k} {totals.seconds[k]:.0f} s" for k in kinds) + ")",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["child-priority"]:
        return priority_child(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=None, help="number of SIGKILLs (1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="60 kills (unless --kills), short store lifetimes, every kind")
    parser.add_argument("--jobs", type=int, default=1, help="stores killed side by side")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"comma-separated kinds of child to kill ({','.join(KINDS)})")
    parser.add_argument("--max-delay", type=float, default=0.4,
                        help="longest wait after the first commit before the kill, seconds")
    parser.add_argument("--early", type=float, default=0.1,
                        help="fraction of kills that do not wait for the first commit")
    parser.add_argument("--progress", type=int, default=50, help="print progress every N kills")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where stores live (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the stores when done")
    parser.add_argument("--strict-zarr", action="store_true",
                        help="also fail when a zarr shape lags the committed extent, or zarr "
                             "shows uncommitted rows in ring slots outside the window")
    args = parser.parse_args(argv)
    if args.kills is None:
        args.kills = 60 if args.quick else 1000
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if args.kills < 0 or args.jobs < 1 or args.progress < 1 or not 0 <= args.early <= 1:
        parser.error("--kills must be >= 0, --jobs and --progress >= 1, --early in [0, 1]")
    if not args.kinds or set(args.kinds) - set(KINDS):
        parser.error(f"--kinds takes some of {', '.join(KINDS)}")
    if "record" in args.kinds:
        try:
            import gymnasium  # noqa: F401
        except ImportError:
            print("gymnasium is not installed: no 'record' kills", flush=True)
            args.kinds.remove("record")
    os.environ["PYTHONPATH"] = child_env()["PYTHONPATH"]  # writer_child.py too
    workdir = Path(tempfile.mkdtemp(prefix="replaystore-kill-", dir=args.workdir))
    started = time.monotonic()
    print(f"{args.kills} kills of {', '.join(args.kinds)} children, seed {args.seed}, "
          f"{args.jobs} job(s), replaystore from {Path(rs.__file__).parent}", flush=True)
    try:
        totals = Stress(args, workdir).run()
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    wall = time.monotonic() - started
    print("\n".join(summary(totals, wall, args.strict_zarr, args.kinds)))
    if args.keep:
        print(f"stores kept in {workdir}")
    for problem in totals.problems[:10]:
        print("  ", problem)
    zarr_known = totals.zarr_shape_lag or totals.zarr_uncommitted_kills
    return 1 if totals.failed_kills or (args.strict_zarr and zarr_known) else 0


if __name__ == "__main__":
    sys.exit(main())
