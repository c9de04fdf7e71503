"""Power-cut campaign: cut the power under real writers on XFS and ext4, check every committed row.

    python stress/powercut.py                               # 300 cuts, XFS and ext4
    python stress/powercut.py --cuts 300 --fs xfs,ext4 --seed 1 --json out.json
    python stress/powercut.py --pythonpath /tmp/rs-old      # the children run another copy

Needs root, loop devices, ``mkfs.xfs`` (xfsprogs) and ``mkfs.ext4``.

A power cut keeps what the disk received and loses the rest. Each file system (``xfs``:
default mkfs and mount options; ``ext4``: mounted with ``noauto_da_alloc``, so that a rename
over a file does not start writing its data) is made once on a sparse image file attached to a
loop device, and mounted. Each cut then:

1. starts a writer child on a fresh store folder of that file system, one of:
   ``writer``: tests/crash/writer_child.py (single appends, batches, explicit and automatic
   commits, tiny chunks, rings of 1 to 4096 rows and unbounded stores);
   ``priority``: stress/kill.py's priority child (prioritized sampling, priority updates,
   appends, commits);
   ``next``: tests/reliability/powercut_child.py (writer_child.py with two ``next_of`` fields);
   ``minimal``: the same child's scripted case from the issue (commit rows 0..9, extend 54 rows
   filling ``obs`` chunk 0, fsync another file), which stops itself at the cut point.
   Each child prints a line after each commit returned, to a file outside the cut file system
   (no fsync needed: only the cut file system loses power here, and the line is written
   before the child can be stopped).
2. meanwhile a thread of this script writes and fsyncs another file on the same file system
   every 0.5 to 50 ms (or never, in some cuts): any fsync on the file system, by anyone, may make
   a rename durable before the renamed file's data.
3. a random time after the child's first commit (``minimal``: when it has stopped itself), the
   child gets SIGSTOP, the thread stops, and the image file is copied: the loop device's backing
   file holds exactly what the device received. The copy is taken again while the device
   completes writes during it (its /sys stat moves), so it is the state of one moment.
4. the child gets SIGKILL; the copy is attached to a second loop device and mounted (journal or
   log replay; XFS needs ``nouuid``) and the store checked: it opens; every row of the last
   commit the child reported is there and byte-identical (tests/crash/checks.verify_store:
   window, rows, episodes, plain zarr reads; plus the ``next_of`` fields); ``replaystore.verify``
   is ok; for priority children, a writer reopening the store restores the committed priorities
   exactly. Files of 0 bytes are listed (one of a never-committed chunk is no damage; a lost
   committed row is counted as such). The copy is unmounted, detached and deleted.

Prints per-file-system counts and exits with status 1 when any committed row was lost, a store
could not be opened or did not verify, any check failed, or committed priorities came back
wrong (unless --ignore-priorities); 2 when the machine cannot run it. Failing stores are
copied, with their child's output (priority children: also the store as the cut left it,
before a writer's recovery), to --failures (3 per file system).

``--fs ext4-default`` (not in the default set) is ext4 with its default mount options.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "crash"))
sys.path.insert(0, str(ROOT / "tests" / "reliability"))
sys.path.insert(0, str(ROOT / "stress"))
sys.path.insert(0, str(ROOT))
from checks import (  # noqa: E402
    MODES,
    VERIFY_BATCH,
    Cycle,
    Verdict,
    _bad_rows,
    _parse_output,
    expected_rows,
    verify_store,
)
from kill import CONFIGS, PRIORITY_CAPACITIES, PriorityLineage, check_verify  # noqa: E402
from powercut_child import next_rows  # noqa: E402

import replaystore as rs  # noqa: E402
from replaystore.storage import TEMPORARY_MARK as TMP_MARK  # noqa: E402

CHILD = ROOT / "tests" / "reliability" / "powercut_child.py"
WRITER_CHILD = ROOT / "tests" / "crash" / "writer_child.py"
FAILURES = ROOT / "stress" / "out" / "powercut-failures"
IMAGE_BYTES = 320 << 20  # XFS wants 300 MB at least
KINDS = ("writer", "priority", "next", "minimal")
WEIGHTS = (0.4, 0.25, 0.3, 0.05)
NEXT_CAPACITIES: list[int | None] = [None, None, 7, 50, 64, 300, 1000]
SYNC_INTERVALS: list[float | None] = [None, 0.0005, 0.002, 0.002, 0.01, 0.05]
# Files a store may legitimately leave empty: the lock (pid written after creation) and the
# priority undo log (truncated at each commit, then its checkpoint record written).
MAY_BE_EMPTY = {"_replaystore/writer.lock", "_replaystore/priority.undo"}
STARTUP_TIMEOUT_S = 120.0
# stress/kill.py's priority child, importing replaystore before kill.py puts this checkout
# first on sys.path: PYTHONPATH decides which copy of the code the child runs.
PRIORITY_LAUNCHER = (
    "import sys\n"
    "import replaystore\n"
    "sys.path.insert(0, sys.argv.pop(1))\n"
    "import kill\n"
    "sys.exit(kill.priority_child(sys.argv[1:]))\n"
)


class Unavailable(Exception):
    """This machine cannot run power cuts (not root, a tool missing, loop devices refused)."""


@dataclass(frozen=True)
class FsKind:
    """How one file system is made and mounted."""

    name: str
    mkfs: tuple[str, ...]
    options: str  # mount options of the file system under test
    copy_options: str  # mount options of the copies

    def describe(self) -> str:
        return f"{self.name.split('-')[0]} ({self.options or 'default options'})"


FILE_SYSTEMS = {
    "xfs": FsKind("xfs", ("mkfs.xfs", "-q", "-f"), "", "nouuid"),
    # 4 KiB blocks as on any real disk (the "small" type would use 1 KiB); inode tables and
    # journal zeroed now, not by a kernel thread writing behind our backs while we copy.
    "ext4": FsKind("ext4", ("mkfs.ext4", "-q", "-F", "-T", "default", "-E",
                            "lazy_itable_init=0,lazy_journal_init=0"), "noauto_da_alloc", ""),
}
FILE_SYSTEMS["ext4-default"] = FsKind("ext4-default", FILE_SYSTEMS["ext4"].mkfs, "", "")


def environment_problem(fs_names: list[str]) -> str | None:
    """Why this machine cannot run power cuts on ``fs_names`` (None: it may; the kernel has
    the last word when the first loop device is attached and mounted)."""
    if os.geteuid() != 0:
        return "power cuts need root (losetup, mkfs, mount)"
    tools = ["losetup", "mount", "umount", "cp", *(FILE_SYSTEMS[n].mkfs[0] for n in fs_names)]
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        hint = " (apt-get install xfsprogs)" if "mkfs.xfs" in missing else ""
        return f"not installed: {', '.join(missing)}{hint}"
    if not Path("/dev/loop-control").exists() and not Path("/dev/loop0").exists():
        return "no loop devices: /dev/loop-control and /dev/loop0 are missing"
    return None


def _run(cmd: list[str], what: str, timeout: float = 120) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{what}: {' '.join(cmd)} exited with {proc.returncode}: "
                           f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    return proc.stdout.strip()


# -- loop devices and mounts (always undone, even when a check fails) ------------------------

_ACTIVE: dict[str, str] = {}  # what this process attached or mounted: path -> "loop"/"mount"


def attach(image: Path) -> str:
    device = _run(["losetup", "--find", "--show", str(image)], "attaching a loop device")
    _ACTIVE[device] = "loop"
    return device


def detach(device: str) -> None:
    for attempt in range(20):
        proc = subprocess.run(["losetup", "--detach", device], capture_output=True, text=True)
        if proc.returncode == 0 or "No such device" in proc.stderr:
            break
        time.sleep(0.05 * (attempt + 1))
    _ACTIVE.pop(device, None)


def mount(device: str, mountpoint: Path, options: str) -> None:
    cmd = ["mount", *(["-o", options] if options else []), device, str(mountpoint)]
    _run(cmd, f"mounting {device}")
    _ACTIVE[str(mountpoint)] = "mount"


def unmount(mountpoint: Path) -> None:
    gc.collect()  # memory maps of a priority index may linger in unreachable objects
    for attempt in range(20):
        proc = subprocess.run(["umount", str(mountpoint)], capture_output=True, text=True)
        if proc.returncode == 0 or "not mounted" in proc.stderr:
            break
        time.sleep(0.05 * (attempt + 1))
    else:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)
    _ACTIVE.pop(str(mountpoint), None)


def cleanup() -> list[str]:
    """Unmount and detach whatever this process left (after an interruption); what it undid."""
    undone = []
    for path, what in sorted(_ACTIVE.items(), key=lambda item: item[1] == "loop"):
        (unmount(Path(path)) if what == "mount" else detach(path))
        undone.append(path)
    return undone


def loop_stat(device: str) -> str:
    """The device's I/O counters; equal before and after a copy: no write landed meanwhile."""
    return Path(f"/sys/block/{Path(device).name}/stat").read_text()


class LoopFs:
    """A file system on a sparse image file, attached to a loop device and mounted."""

    def __init__(self, kind: FsKind, workdir: Path) -> None:
        self.kind = kind
        self.workdir = workdir
        self.image = workdir / f"{kind.name}.img"
        self.mountpoint = workdir / f"{kind.name}.mnt"
        self.device: str | None = None
        self.mounted = False

    def __enter__(self) -> LoopFs:
        try:
            with self.image.open("wb") as f:
                f.truncate(IMAGE_BYTES)
            self.mountpoint.mkdir(exist_ok=True)
            try:
                self.device = attach(self.image)
            except RuntimeError as exc:
                raise Unavailable(f"the kernel refuses loop devices: {exc}") from None
            try:
                _run([*self.kind.mkfs, self.device], f"making {self.kind.name}")
                mount(self.device, self.mountpoint, self.kind.options)
            except RuntimeError as exc:
                raise Unavailable(f"cannot make and mount {self.kind.describe()} on a loop "
                                  f"device: {exc}") from None
            self.mounted = True
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.mounted:
            unmount(self.mountpoint)
            self.mounted = False
        if self.device is not None:
            detach(self.device)
            self.device = None
        self.image.unlink(missing_ok=True)
        with suppress(OSError):
            self.mountpoint.rmdir()

    def copy_image(self, dest: Path) -> int:
        """Copy the image as the device holds it now; returns how many copies were retaken."""
        assert self.device is not None
        for attempt in range(100):
            before = loop_stat(self.device)
            if int(before.split()[8]) == 0:  # nothing in flight
                dest.unlink(missing_ok=True)
                _run(["cp", "--sparse=always", str(self.image), str(dest)], "copying the image")
                if loop_stat(self.device) == before:
                    return attempt
            time.sleep(0.002 * (attempt + 1))
        raise RuntimeError(f"{self.device} never stopped writing for the length of a copy")

    def trim(self) -> None:
        """Give deleted stores' blocks back (holes in the image: smaller copies)."""
        subprocess.run(["fstrim", str(self.mountpoint)], capture_output=True)


@contextmanager
def mounted_copy(kind: FsKind, image: Path, mountpoint: Path) -> Iterator[Path]:
    """Attach and mount the copy of an image (replaying its journal or log), then undo it all
    and delete the copy."""
    device = None
    mountpoint.mkdir(exist_ok=True)
    try:
        device = attach(image)
        mount(device, mountpoint, kind.copy_options)
        try:
            yield mountpoint
        finally:
            unmount(mountpoint)
    finally:
        if device is not None:
            detach(device)
        image.unlink(missing_ok=True)


# -- the fsyncs of someone else --------------------------------------------------------------


class Syncer(threading.Thread):
    """Writes and fsyncs one file of the file system every ``interval`` seconds."""

    def __init__(self, path: Path, interval: float) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.interval = interval
        self.halt = threading.Event()
        self.count = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                while not self.halt.wait(self.interval):
                    os.pwrite(fd, self.count.to_bytes(8, "little") * 512, 0)
                    os.fsync(fd)
                    self.count += 1
            finally:
                os.close(fd)
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self.halt.set()
        self.join()


# -- one cut -----------------------------------------------------------------------------------


@dataclass
class Cut:
    """One child, one cut, and what the check found."""

    number: int
    kind: str
    capacity: int | None
    mode: str
    seed: int
    sync_interval: float | None
    delay_s: float = 0.0
    printed_end: int = 0  # committed end of the last commit the child reported
    committed_rows: int = 0  # rows of that commit
    syncs: int = 0  # fsyncs by the thread while the child ran
    copy_retries: int = 0
    opened: bool = False
    rows_checked: int = 0
    rows_lost: int = 0
    verify_ok: bool | None = None
    priority: str | None = None
    child_error: str | None = None
    unmountable: bool = False
    zero_byte: list[str] = field(default_factory=list)
    verdict: Verdict = field(default_factory=Verdict)
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return (f"cut {self.number} ({self.kind}, {self.mode}, capacity {self.capacity}, "
                f"seed {self.seed}, fsync every {self.sync_interval} s, cut {self.delay_s:.2f} s "
                f"after the first commit, committed end {self.printed_end})")

    @property
    def ok(self) -> bool:
        """Every committed row intact and every check passed (priorities judged apart)."""
        return (self.opened and not self.rows_lost and self.verdict.ok
                and self.verify_ok is not False and not self.child_error
                and not self.unmountable)


def draw_cut(number: int, rng: random.Random, max_delay: float,
             kinds: tuple[str, ...] = KINDS) -> Cut:
    """The first cuts take each kind in turn (the minimal case first); then drawn by weight."""
    order = [k for k in reversed(KINDS) if k in kinds]
    weights = [w for k, w in zip(KINDS, WEIGHTS, strict=True) if k in kinds]
    kind = order[number] if number < len(order) else rng.choices(order[::-1], weights)[0]
    capacity: int | None = None
    mode = "minimal"
    if kind == "writer":
        capacity, mode = rng.choice(CONFIGS)
    elif kind == "next":
        capacity, mode = rng.choice(NEXT_CAPACITIES), rng.choice(MODES)
    elif kind == "priority":
        capacity, mode = rng.choice(PRIORITY_CAPACITIES), "train"
    cut = Cut(number, kind, capacity, mode, rng.randrange(1 << 30),
              rng.choice(SYNC_INTERVALS) if kind != "minimal" else None)
    # Most cuts early (small stores, the first chunk rewrites); some late (rings wrapped).
    cut.delay_s = 0.0 if kind == "minimal" else rng.choice(
        [rng.uniform(0, 0.1), rng.uniform(0, max_delay), rng.uniform(0, max_delay)])
    return cut


def child_env(pythonpath: Path | None) -> dict[str, str]:
    """Children import replaystore from ``pythonpath`` when given, else from this checkout."""
    env = dict(os.environ)
    paths = [str(p) for p in (pythonpath, ROOT) if p is not None]
    env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [env.get("PYTHONPATH")])])
    env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = "1"
    return env


def child_command(cut: Cut, store: Path, log_dir: Path, syncfile: Path,
                  lineage: PriorityLineage | None) -> list[str]:
    cap = str(cut.capacity or 0)
    if cut.kind == "writer":
        return [sys.executable, str(WRITER_CHILD), str(store), str(cut.seed), cap, cut.mode]
    if cut.kind == "priority":
        assert lineage is not None
        return [sys.executable, "-c", PRIORITY_LAUNCHER, str(ROOT / "stress"), str(store),
                str(cut.seed), cap, str(lineage.log_dir / "leaves.npz")]
    return [sys.executable, str(CHILD), str(store), str(cut.seed), cap, cut.mode, str(syncfile)]


def process_state(pid: int) -> str:
    """The state letter of /proc/PID/stat (``T``: stopped), without reaping anything."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "X"
    return stat[stat.rindex(")") + 2]


def wait_stopped(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = process_state(pid)
        if state in "TtXZ":
            return state in "Tt"
        time.sleep(0.001)
    return False


class Campaign:
    """Power cuts on one mounted file system; totals in :attr:`cuts`."""

    def __init__(self, fs: LoopFs, workdir: Path, *, pythonpath: Path | None,
                 failures: Path | None, keep_failures: int) -> None:
        self.fs = fs
        self.workdir = workdir
        self.env = child_env(pythonpath)
        self.failures = failures
        self.keep_failures = keep_failures
        self.cuts: list[Cut] = []
        self.syncfile = fs.mountpoint / "someone-else.dat"
        self.copy_mount = workdir / f"{fs.kind.name}-copy.mnt"
        self.kept = 0  # failing stores copied to ``failures``

    def run_cut(self, cut: Cut) -> Cut:
        began = time.monotonic()
        name = f"cut{cut.number:04d}-{cut.kind}-{cut.capacity or 'unbounded'}-{cut.mode}"
        store = self.fs.mountpoint / name
        log_dir = self.workdir / f"{self.fs.kind.name}-{name}.logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        lineage = None
        if cut.kind == "priority":  # for its check of the priorities after the cut
            lineage = PriorityLineage(store, random.Random(cut.seed), log_dir)
        image = self.workdir / f"{self.fs.kind.name}-copy.img"
        try:
            self._cut(cut, store, log_dir, image, lineage)
            if not cut.child_error:
                self._check(cut, store.name, log_dir, image, lineage)
        finally:
            image.unlink(missing_ok=True)
            shutil.rmtree(store, ignore_errors=True)
            shutil.rmtree(log_dir, ignore_errors=True)
        cut.seconds = time.monotonic() - began
        self.cuts.append(cut)
        if cut.number % 10 == 9:
            self.fs.trim()
        return cut

    def _cut(self, cut: Cut, store: Path, log_dir: Path, image: Path,
             lineage: PriorityLineage | None) -> None:
        """Run the child, stop it at the cut point and copy the image."""
        out_path, err_path = log_dir / "child.out", log_dir / "child.err"
        syncer = None
        if cut.sync_interval is not None:
            syncer = Syncer(self.syncfile, cut.sync_interval)
            syncer.start()
        cmd = child_command(cut, store, log_dir, self.syncfile, lineage)
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                    env=self.env, cwd="/")
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            if cut.kind == "minimal":
                stopped = wait_stopped(proc.pid, STARTUP_TIMEOUT_S)
            else:
                while (b"\ncommit " not in b"\n" + out_path.read_bytes()
                       and proc.poll() is None and time.monotonic() < deadline):
                    time.sleep(0.002)
                time.sleep(cut.delay_s)
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGSTOP)
                stopped = wait_stopped(proc.pid)
            if syncer is not None:
                syncer.stop()
                cut.syncs = syncer.count
                if syncer.error is not None:
                    raise RuntimeError(f"the fsync thread failed: {syncer.error!r}")
            if not stopped:
                tail = err_path.read_text(errors="replace")[-1500:]
                cut.child_error = (f"the child did not stop (state {process_state(proc.pid)}, "
                                   f"exit {proc.poll()}): {tail}")
                return
            cut.copy_retries = self.fs.copy_image(image)
        finally:
            if syncer is not None and syncer.is_alive():
                syncer.stop()
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    def _check(self, cut: Cut, name: str, log_dir: Path, image: Path,
               lineage: PriorityLineage | None) -> None:
        """Mount the copy and check the store against what the child reported."""
        output = (log_dir / "child.out").read_bytes()
        v = cut.verdict
        commits: list[tuple[int, int, int, str]] = []
        if cut.kind == "priority":  # lines "commit SEQ START END DIGEST" (stress/kill.py)
            for line in output.decode(errors="replace").split("\n")[:-1]:
                kind, _, rest = line.partition(" ")
                if kind == "commit":
                    seq, start, end, digest = rest.split()
                    commits.append((int(seq), int(start), int(end), digest))
            reported = len(commits)
            cut.printed_end = commits[-1][2] if commits else 0
        else:  # lines "open|commit|auto START END" (tests/crash/writer_child.py)
            cycle = Cycle()
            cut.child_error = _parse_output(output, cycle)
            reported, cut.printed_end = cycle.commits, cycle.printed_end
        if not reported and not cut.child_error:
            cut.child_error = "the child reported no commit before the cut"
        cut.committed_rows = (cut.printed_end if cut.capacity is None
                              else min(cut.printed_end, cut.capacity))
        try:
            with mounted_copy(self.fs.kind, image, self.copy_mount) as mnt:
                path = mnt / name
                cut.verdict = v = verify_store(path, cut.printed_end, capacity=cut.capacity,
                                               rng=random.Random(cut.seed))
                cut.opened, cut.rows_checked = v.opened, v.rows_checked
                cut.zero_byte = zero_byte_files(path)
                if v.opened:
                    if cut.kind == "next":
                        check_next_fields(path, v)
                    if v.lost_rows or v.mismatched_rows:
                        cut.rows_lost = count_lost_rows(path, cut)
                    cut.verify_ok = check_verify(path, v)
                    if lineage is not None:
                        if self.kept < self.keep_failures and self.failures is not None:
                            # as the cut left it: the check below recovers it in place
                            shutil.copytree(path, log_dir / "store-before-recovery")
                        lineage.path = path
                        cut.priority = lineage._check_priorities(commits, v)
                        cut.verify_ok &= check_verify(path, v, " after writer recovery")
                else:
                    cut.rows_lost = cut.committed_rows
                if not (cut.ok and cut.priority != "mismatch"):
                    self.keep(cut, path, log_dir)
        except RuntimeError as exc:  # the copy could not be attached or mounted
            cut.unmountable = True
            cut.rows_lost = cut.committed_rows
            v.note(f"the image copy cannot be mounted: {exc}")

    def keep(self, cut: Cut, path: Path, log_dir: Path) -> None:
        """Copy a failing store (from the mounted image copy) and its child's output."""
        if self.failures is None or self.kept >= self.keep_failures:
            return
        self.kept += 1
        target = self.failures / f"{self.fs.kind.name}-cut{cut.number:04d}"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        if path.exists():
            shutil.copytree(path, target / "store", symlinks=True)
        shutil.copytree(log_dir, target / "logs")
        (target / "cut.txt").write_text(cut.label + "\n" + "\n".join(cut.verdict.problems) + "\n")


def zero_byte_files(path: Path) -> list[str]:
    """Files of the store with 0 bytes, other than temporary files and those that may be."""
    empty = []
    for dirpath, _, files in os.walk(path):
        for name in files:
            full = Path(dirpath) / name
            rel = full.relative_to(path).as_posix()
            if TMP_MARK in name or rel in MAY_BE_EMPTY:
                continue
            with suppress(OSError):
                if full.lstat().st_size == 0:
                    empty.append(rel)
    return sorted(empty)


def count_lost_rows(path: Path, cut: Cut) -> int:
    """Rows of the last commit the child reported that are gone or differ, row by row.

    verify_store counts every row of a batch that fails to read (one chunk of 0 bytes fails
    them all); here a failing read is retried per row. Rows a ring dropped from its window
    since (a shrink published before they were overwritten) are not lost.
    """
    first = 0 if cut.capacity is None else max(0, cut.printed_end - cut.capacity)

    def differing(store: rs.Store, rows: np.ndarray) -> int:
        """How many of ``rows`` differ from the ground truth (raises when unreadable)."""
        expected = expected_rows(rows)
        if cut.kind == "next":
            expected.update(next_rows(rows))
        got = store.get(store.manifest.slot_of(rows), fields=list(expected))
        wrong = np.zeros(len(rows), bool)
        for name, array in expected.items():
            wrong |= _bad_rows(got[name], array)
        return int(wrong.sum())

    with rs.open(path) as store:
        m = store.manifest
        lost = max(0, cut.printed_end - max(m.end, first))  # past the manifest's end
        if cut.capacity is None:
            lost += min(m.start, cut.printed_end)  # an unbounded store never drops rows
        hi = min(cut.printed_end, m.end)
        for lo in range(max(first, m.start), hi, 256):
            rows = np.arange(lo, min(lo + 256, hi), dtype=np.int64)
            try:
                lost += differing(store, rows)
            except Exception:  # one unreadable chunk fails the batch: count row by row
                for i in range(len(rows)):
                    try:
                        lost += differing(store, rows[i:i + 1])
                    except Exception:
                        lost += 1
    return min(lost, cut.committed_rows)


def check_next_fields(path: Path, v: Verdict) -> None:
    """The ``next_of`` fields of the committed rows (powercut_child.next_rows)."""
    with rs.open(path) as store:
        m = store.manifest
        for lo in range(m.start, m.end, VERIFY_BATCH):
            rows = np.arange(lo, min(lo + VERIFY_BATCH, m.end), dtype=np.int64)
            want = next_rows(rows)
            try:
                got = store.get(m.slot_of(rows), fields=list(want))
            except Exception as exc:
                v.mismatched_rows += len(rows)
                v.note(f"store.get of next_of fields, rows {rows[0]}..{rows[-1]}: {exc!r}")
                continue
            for name, array in want.items():
                bad = _bad_rows(got[name], array)
                if bad.any():
                    v.mismatched_rows += int(bad.sum())
                    v.note(f"field {name!r}: {int(bad.sum())} rows differ, first global row "
                           f"{int(rows[np.argmax(bad)])}")


# -- totals and the driver ---------------------------------------------------------------------


def zero_byte_kind(rel: str) -> str:
    """``obs/c.3.0`` -> ``obs/c.*``: what sort of file was left empty."""
    return re.sub(r"/c(\.\d+)+$", "/c.*", rel)


def totals(fs: FsKind, cuts: list[Cut], seconds: float) -> dict[str, Any]:
    zero = Counter(zero_byte_kind(name) for c in cuts for name in c.zero_byte)
    failed = [c for c in cuts if not c.ok]
    priority = [c for c in cuts if c.priority == "mismatch"]
    return {
        "file_system": fs.describe(),
        "cuts": len(cuts),
        "by_kind": dict(Counter(c.kind for c in cuts)),
        "committed_rows": sum(c.committed_rows for c in cuts),
        "rows_checked": sum(c.rows_checked for c in cuts),
        "rows_lost": sum(c.rows_lost for c in cuts),
        "cuts_losing_rows": sum(c.rows_lost > 0 for c in cuts),
        "unopenable_stores": sum(not c.opened and not c.child_error for c in cuts),
        "unmountable_images": sum(c.unmountable for c in cuts),
        "verify_failures": sum(c.verify_ok is False for c in cuts),
        "mismatched_rows": sum(c.verdict.mismatched_rows for c in cuts),
        "episode_errors": sum(c.verdict.episode_errors for c in cuts),
        "zarr_errors": sum(c.verdict.zarr_errors for c in cuts),
        "zarr_shape_lag": sum(c.verdict.zarr_shape_lag > 0 for c in cuts),
        "priority": dict(Counter(c.priority for c in cuts if c.priority)),
        "child_errors": sum(bool(c.child_error) for c in cuts),
        "zero_byte_files": sum(zero.values()),
        "cuts_with_zero_byte_files": sum(bool(c.zero_byte) for c in cuts),
        "zero_byte_kinds": dict(zero.most_common()),
        "minimal_case": [c.rows_lost == 0 and c.ok for c in cuts if c.kind == "minimal"],
        "fsyncs_by_others": sum(c.syncs for c in cuts),
        "copy_retries": sum(c.copy_retries for c in cuts),
        "failed_cuts": len(failed),
        "priority_mismatches": len(priority),
        "seconds": round(seconds, 1),
        "problems": [c.label + ": " + "; ".join(c.verdict.problems[:4] or [c.child_error or ""])
                     for c in failed[:20]],
        "priority_problems": [c.label + ": " + "; ".join(c.verdict.problems[-2:])
                              for c in priority[:20]],
    }


def summary_lines(name: str, t: dict[str, Any]) -> list[str]:
    kinds = ", ".join(f"{k} {t['by_kind'].get(k, 0)}" for k in KINDS)
    prio = t["priority"]
    zero = ", ".join(f"{k} {n}" for k, n in list(t["zero_byte_kinds"].items())[:8])
    minimal = t["minimal_case"]
    return [
        f"{name}: {t['file_system']}",
        f"  cuts                  {t['cuts']} ({kinds})",
        f"  committed rows        {t['committed_rows']} (rows checked {t['rows_checked']})",
        f"  lost committed rows   {t['rows_lost']} (in {t['cuts_losing_rows']} cuts)",
        f"  unopenable stores     {t['unopenable_stores']} (images that would not mount: "
        f"{t['unmountable_images']})",
        f"  verify failures       {t['verify_failures']}",
        f"  zero-byte files       {t['zero_byte_files']} in {t['cuts_with_zero_byte_files']} "
        f"cuts{': ' + zero if zero else ''}",
        f"  other errors          mismatched rows {t['mismatched_rows']}, episodes "
        f"{t['episode_errors']}, zarr {t['zarr_errors']}, child {t['child_errors']}",
        f"  committed priorities  {prio.get('exact', 0)} exact after a writer's recovery, "
        f"{prio.get('mismatch', 0)} wrong, {prio.get('skipped', 0)} not comparable (cut "
        "after a commit the child had not reported yet)",
        f"  minimal case          {sum(minimal)} of {len(minimal)} intact",
        f"  failed cuts           {t['failed_cuts']}",
        f"  time                  {t['seconds']} s ({t['seconds'] / max(1, t['cuts']):.2f} s a "
        f"cut; {t['fsyncs_by_others']} fsyncs by others, {t['copy_retries']} copies retaken)",
    ]


def default_workdir() -> Path | None:
    """Memory (/dev/shm) when it has room for the images and their copies: fast copies."""
    shm = Path("/dev/shm")
    with suppress(OSError):
        if shm.is_dir() and shutil.disk_usage(shm).free > 4 * IMAGE_BYTES:
            return shm
    return None


def campaign(cuts: int, fs_names: list[str], *, seed: int = 1, pythonpath: Path | None = None,
             workdir: Path | None = None, failures: Path | None = None, keep_failures: int = 3,
             max_delay: float = 0.8, kinds: tuple[str, ...] = KINDS,
             verbose: bool = False) -> dict[str, Any]:
    """Run ``cuts`` power cuts, split evenly over ``fs_names``; per-file-system totals.

    Raises :class:`Unavailable` when the machine cannot do it (before any cut).
    """
    problem = environment_problem(fs_names)
    if problem:
        raise Unavailable(problem)
    base = Path(tempfile.mkdtemp(prefix="replaystore-powercut-", dir=workdir or default_workdir()))
    results: dict[str, Any] = {}
    try:
        for index, name in enumerate(fs_names):
            count = cuts // len(fs_names) + (index < cuts % len(fs_names))
            rng = random.Random(seed * 1009 + index)
            began = time.monotonic()
            with LoopFs(FILE_SYSTEMS[name], base) as fs:
                run = Campaign(fs, base, pythonpath=pythonpath, failures=failures,
                               keep_failures=keep_failures)
                for number in range(count):
                    cut = run.run_cut(draw_cut(number, rng, max_delay, kinds))
                    good = cut.ok and cut.priority != "mismatch"
                    if verbose or not good:
                        status = "ok" if good else "FAILED: " + "; ".join(
                            cut.verdict.problems[-3:] or [cut.child_error or ""])
                        print(f"{name} {cut.label}: {cut.rows_checked} rows checked, "
                              f"{cut.seconds:.2f} s, {status}"[:600], flush=True)
            results[name] = totals(fs.kind, run.cuts, time.monotonic() - began)
    finally:
        cleanup()
        shutil.rmtree(base, ignore_errors=True)
    return results


def failed(results: dict[str, Any], *, priorities: bool = True) -> bool:
    """Whether any cut lost a committed row or failed a check (``priorities``: also the
    committed priorities)."""
    return any(t["failed_cuts"] or t["rows_lost"] or t["unopenable_stores"]
               or t["verify_failures"] or (priorities and t["priority_mismatches"])
               for t in results.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cuts", type=int, default=300, help="power cuts in all (300)")
    parser.add_argument("--fs", default="xfs,ext4",
                        help=f"file systems, comma-separated ({', '.join(FILE_SYSTEMS)})")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pythonpath", type=Path, default=None,
                        help="children import replaystore from this folder (another copy of "
                             "the code); the checks always use this checkout")
    parser.add_argument("--json", type=Path, default=None, help="write the totals here")
    parser.add_argument("--max-delay", type=float, default=0.8,
                        help="latest cut after the child's first commit, seconds")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where images go (default: /dev/shm when it has room)")
    parser.add_argument("--failures", type=Path, default=FAILURES,
                        help="failing stores are copied here (3 per file system)")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"kinds of child, comma-separated ({', '.join(KINDS)})")
    parser.add_argument("--ignore-priorities", action="store_true",
                        help="wrong committed priorities are counted, but not a failure")
    parser.add_argument("--verbose", action="store_true", help="a line per cut")
    args = parser.parse_args(argv)
    fs_names = [n.strip() for n in args.fs.split(",") if n.strip()]
    if not fs_names or set(fs_names) - set(FILE_SYSTEMS) or args.cuts < len(fs_names):
        parser.error(f"--fs takes some of {', '.join(FILE_SYSTEMS)}; --cuts at least one each")
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    if not kinds or set(kinds) - set(KINDS):
        parser.error(f"--kinds takes some of {', '.join(KINDS)}")
    if args.pythonpath is not None and not (args.pythonpath / "replaystore").is_dir():
        parser.error(f"--pythonpath {args.pythonpath} holds no replaystore package")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: unmount and detach
    which = subprocess.run([sys.executable, "-c", "import replaystore; print(replaystore.__file__)"],
                           capture_output=True, text=True, env=child_env(args.pythonpath),
                           cwd="/").stdout.strip()
    print(f"{args.cuts} power cuts on {', '.join(fs_names)}, seed {args.seed}; children run "
          f"{Path(which).parent}, checks run {Path(rs.__file__).parent}", flush=True)
    started = time.monotonic()
    try:
        results = campaign(args.cuts, fs_names, seed=args.seed, pythonpath=args.pythonpath,
                           workdir=args.workdir, failures=args.failures,
                           max_delay=args.max_delay, kinds=kinds, verbose=args.verbose)
    except Unavailable as exc:
        print(f"cannot run power cuts here: {exc}", file=sys.stderr)
        return 2
    for name, t in results.items():
        print("\n".join(summary_lines(name, t)))
    for name, t in results.items():
        for problem in (t["problems"][:5] + t["priority_problems"][:3]):
            print(f"  {name}: {problem}"[:800])
    print(f"wall time {time.monotonic() - started:.1f} s")
    if args.json is not None:
        args.json.write_text(json.dumps({"seed": args.seed, "children": which,
                                         "results": results}, indent=1) + "\n")
    return 1 if failed(results, priorities=not args.ignore_priorities) else 0


if __name__ == "__main__":
    sys.exit(main())
