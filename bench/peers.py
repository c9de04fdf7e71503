"""Side-by-side benchmark: replaystore against TorchRL, cpprb, Stable-Baselines3 and np.memmap.

    python3 -m venv ../peers-venv                        # a venv of its own, see RESULTS.md
    ../peers-venv/bin/pip install -c constraints.txt -r bench/requirements-peers.txt .
    ../peers-venv/bin/python bench/build_torchrl_ext.py   # once: torchrl's C++ trees
    ../peers-venv/bin/python bench/peers.py           # 1M-row vector, 50k-row image, ~11 min
    ../peers-venv/bin/python bench/peers.py --quick   # small sizes, a smoke run

Each (adapter, workload) pair runs in its own subprocess, with one torch thread and
OMP/MKL/OpenBLAS threads at 1, and reports its own peak RSS (VmHWM). Prints a table of every
figure and of replaystore's ratio to each peer, and writes JSON (figures, machine, versions)
to bench/out/peers.json; the full run also rewrites the generated part of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

# The checkout's replaystore, not a copy installed in the peers' venv earlier: a stale install
# would be measured under this checkout's commit.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_adapters import ADAPTERS, EPISODE, ImageSource, source_for

HERE = Path(__file__).resolve().parent
BATCH = 256
CHUNK = 1000            # rows per batched add
SAVE_ROWS = 1000        # rows pending before each timed save/commit
PEERS = ["torchrl-memmap", "cpprb-ram", "cpprb-mmap", "sb3", "np.memmap"]
OURS = {"vector": ["replaystore"], "image": ["replaystore", "replaystore-dedup"]}
PACKAGES = ["replaystore", "numpy", "zarr", "numcodecs", "torch", "torchrl", "tensordict", "cpprb",
            "stable_baselines3", "gymnasium"]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "RL_WARNINGS": "0", "PYTHONWARNINGS": "ignore"}

# (key, label, higher is better, format)
METRICS = [
    ("add_batch_rows_s", "add, 1k-row batches (rows/s)", True, "{:,.0f}"),
    ("add_one_rows_s", "add, one at a time (rows/s)", True, "{:,.0f}"),
    ("uniform_batches_s", "uniform sample(256) (batches/s)", True, "{:,.0f}"),
    ("prioritized_batches_s", "prioritized sample+update (b/s)", True, "{:,.0f}"),
    ("save_ms", "save/commit, 1k rows pending (ms)", False, "{:,.1f}"),
    ("reopen_ms", "reopen (ms)", False, "{:,.1f}"),
    ("first_sample_ms", "  then first sample(256) (ms)", False, "{:,.1f}"),
    ("disk_mb", "bytes on disk (MB)", False, "{:,.1f}"),
    ("peak_rss_mb", "peak RSS (MB)", False, "{:,.0f}"),
]


# --------------------------------------------------------------------------- child side

def vm_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


def disk_bytes(paths: list[Path]) -> int:
    """Allocated bytes (du), so sparse files count what they hold."""
    total = 0
    for p in paths:
        files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
        total += sum(f.stat().st_blocks * 512 for f in files)
    return total


def rate(fn, seconds: float) -> float:
    """Calls of ``fn`` per second after a warm-up (at least 5 timed calls)."""
    for _ in range(5):
        fn()
    calls, start = 0, time.perf_counter()
    while calls < 5 or time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return calls / (time.perf_counter() - start)


def repeat(fn, budget_s: float, most: int) -> list[float]:
    """Seconds of up to ``most`` calls of ``fn``, stopping once ``budget_s`` is spent."""
    times: list[float] = []
    while len(times) < most and sum(times) < budget_s:
        times.append(fn())
    return times


class Phases:
    """With ``profile``, a cProfile of each timed phase (figures are then not comparable)."""

    def __init__(self, profile: bool) -> None:
        self.profile = profile
        self.stats: dict[str, cProfile.Profile] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        if not self.profile:
            yield
            return
        prof = self.stats.setdefault(name, cProfile.Profile())
        prof.enable()
        try:
            yield
        finally:
            prof.disable()

    def report(self, top: int = 22) -> str:
        out = io.StringIO()
        for name, prof in self.stats.items():
            out.write(f"==== phase: {name}\n")
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
        return out.getvalue()


def measure(adapter_name: str, kind: str, work: Path, rows: int, one_rows: int,
            seconds: float, profile: bool = False) -> dict:
    """Run every phase for one adapter on one workload; return its figures."""
    phase = Phases(profile)
    source = source_for(kind, work.parent)
    out: dict = {"adapter": adapter_name, "workload": kind, "rows": rows}
    cls = ADAPTERS[adapter_name]
    t0 = time.perf_counter()
    out["rss_after_import_mb"] = vm_kb("VmRSS") / 1024
    adapter = cls(source, work, rows)
    out["rss_after_create_mb"] = vm_kb("VmRSS") / 1024

    # 1. one at a time, the first rows (as an environment hands them over)
    one = source.rows(source.batch(0, one_rows))
    with phase("add one at a time"):
        start = time.perf_counter()
        for row in one:
            adapter.add_one(row)
    out["add_one_rows_s"] = one_rows / (time.perf_counter() - start)
    del one

    # 2. the rest in 1k-row batches; only the add calls are timed
    spent = 0.0
    for first in range(one_rows, rows, CHUNK):
        batch = source.batch(first, min(CHUNK, rows - first))
        if cls.batched_add:
            with phase("add 1k-row batches"):
                start = time.perf_counter()
                adapter.add_batch(batch)
                spent += time.perf_counter() - start
        else:  # a library without batched adds fills one row at a time, untimed
            for row in source.rows(batch):
                adapter.add_one(row)
    if cls.batched_add:
        out["add_batch_rows_s"] = (rows - one_rows) / spent
    start = time.perf_counter()
    adapter.save()
    out["first_save_ms"] = (time.perf_counter() - start) * 1e3
    out.update(adapter.check())

    # 3. save/commit with 1k new rows pending (the ring wraps over its oldest rows)
    extra = iter(range(rows, rows + 10 * SAVE_ROWS, SAVE_ROWS))

    def save_once() -> float:
        batch = source.batch(next(extra), SAVE_ROWS)
        if cls.batched_add:
            adapter.add_batch(batch)
        else:
            for row in source.rows(batch):
                adapter.add_one(row)
        start = time.perf_counter()
        adapter.save()
        return time.perf_counter() - start

    with phase("save/commit, 1k rows pending"):
        saves = repeat(save_once, budget_s=20.0, most=10)
    out["save_ms"] = statistics.median(saves) * 1e3
    out["save_repeats"] = len(saves)

    # 4. uniform sampling on the live buffer
    with phase("uniform sample(256)"):
        out["uniform_batches_s"] = rate(lambda: adapter.sample(BATCH), seconds)
    out["peak_rss_mb"] = vm_kb("VmHWM") / 1024  # fill, save and sample: the buffer's own peak

    # 5. reopen what was saved, until a first batch is in hand
    adapter.close()

    opens: list[float] = []
    firsts: list[float] = []

    def reopen_once() -> float:
        start = time.perf_counter()
        adapter.reopen()
        opened = time.perf_counter()
        adapter.sample(BATCH)
        done = time.perf_counter()
        adapter.close()
        opens.append(opened - start)
        firsts.append(done - opened)
        return done - start

    with phase("reopen, then a first sample"):
        reopens = repeat(reopen_once, budget_s=20.0, most=7)
    out["reopen_ms"] = statistics.median(opens) * 1e3
    out["first_sample_ms"] = statistics.median(firsts) * 1e3
    out["reopen_repeats"] = len(reopens)
    adapter.reopen()
    out["disk_mb"] = disk_bytes(adapter.saved_paths()) / 1e6

    # 6. prioritized sample + read + update, over a buffer of the same rows
    if cls.prioritized:
        def refill(add_batch) -> None:
            for first in range(0, rows, CHUNK):
                add_batch(source.batch(first, min(CHUNK, rows - first)))

        adapter.prioritized_setup(refill)
        td = (np.random.default_rng(0).random((64, BATCH)) + 1e-3).astype(np.float32)
        step = iter(range(1 << 62))
        with phase("prioritized sample+update"):
            out["prioritized_batches_s"] = rate(
                lambda: adapter.prioritized_step(BATCH, td[next(step) % 64]), seconds)
    out["peak_rss_all_phases_mb"] = vm_kb("VmHWM") / 1024
    out["child_s"] = time.perf_counter() - t0
    if profile:
        out["profile"] = phase.report()
    return out


# --------------------------------------------------------------------------- parent side

def run_child(adapter: str, kind: str, work: Path, rows: int, one_rows: int,
              seconds: float, profile: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", adapter, "--workload", kind, "--work",
           str(work), "--rows", str(rows), "--one-rows", str(one_rows),
           "--seconds", str(seconds)] + (["--profile"] if profile else [])
    env = {**os.environ, **ONE_THREAD}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
        return {"adapter": adapter, "workload": kind, "error": proc.stderr.strip()[-500:]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {adapter:18s} {time.perf_counter() - start:6.1f} s", flush=True)
    return result


def versions() -> dict:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "executable": sys.executable}
    try:
        text = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in text.splitlines()
                           if line.startswith("model name"))
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["memory_gb"] = round(int(mem) / 1024**2, 1)
    except (OSError, StopIteration):
        pass
    with contextlib.suppress(OSError):
        info["git_head"] = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short",
                                           "HEAD"], capture_output=True, text=True).stdout.strip()
    import replaystore

    info["replaystore_imported_from"] = str(Path(replaystore.__file__).parent)
    return info


def fmt(value, spec: str) -> str:
    return "n/a" if value is None else spec.format(value)


def tables(results: dict, sizes: dict) -> str:
    """Figures of every adapter, then replaystore's ratios (replaystore ÷ peer)."""
    lines: list[str] = []
    for kind, by_name in results.items():
        names = OURS[kind] + [p for p in PEERS if p in by_name]
        lines.append(f"{kind} workload ({sizes[kind]:,} rows): figures")
        head = f"{'metric':36s}" + "".join(f"{n:>19s}" for n in names)
        lines += [head, "-" * len(head)]
        for key, label, _, spec in METRICS:
            cells = [fmt(by_name.get(n, {}).get(key), spec) for n in names]
            lines.append(f"{label:36s}" + "".join(f"{c:>19s}" for c in cells))
        lines.append("")
        lines.append(f"{kind} workload: ratio replaystore ÷ peer "
                     "(↑: above 1 is better for replaystore; ↓: below 1 is)")
        peers = [p for p in PEERS if p in by_name]
        head = f"{'metric':42s}" + "".join(f"{n:>16s}" for n in peers)
        lines += [head, "-" * len(head)]
        for ours in OURS[kind]:
            for key, label, higher, _ in METRICS:
                mine = by_name.get(ours, {}).get(key)
                cells = []
                for p in peers:
                    theirs = by_name[p].get(key)
                    cells.append("n/a" if mine is None or not theirs else f"{mine / theirs:.2f}x")
                tag = label.split(" (")[0] + (" ↑" if higher else " ↓")
                if len(OURS[kind]) > 1:
                    tag = ("dedup: " if ours.endswith("dedup") else "plain: ") + tag
                lines.append(f"{tag:42s}" + "".join(f"{c:>16s}" for c in cells))
        lines.append("")
    return "\n".join(lines)


def targets(results: dict) -> list[dict]:
    """The issue's targets (point 5), each with its measured ratio or figure."""
    def get(kind, name, key):
        return results.get(kind, {}).get(name, {}).get(key)

    def ratio(kind, ours, key, peer):
        a, b = get(kind, ours, key), get(kind, peer, key)
        return None if a is None or not b else a / b

    found = []

    def add(label, value, goal, met, unit="x"):
        found.append({"target": label, "measured": value, "goal": goal, "unit": unit,
                      "met": None if value is None else bool(met(value))})

    for kind in ("vector", "image"):
        for ours in OURS[kind]:
            if kind not in results:
                continue
            who = f"{kind}, {ours}"
            add(f"uniform sample >= 1.0x cpprb-ram ({who})",
                ratio(kind, ours, "uniform_batches_s", "cpprb-ram"), ">= 1.0x", lambda v: v >= 1)
            add(f"prioritized sample+update >= 1.0x cpprb-ram ({who})",
                ratio(kind, ours, "prioritized_batches_s", "cpprb-ram"), ">= 1.0x",
                lambda v: v >= 1)
            add(f"batched add >= 1.0x torchrl-memmap ({who})",
                ratio(kind, ours, "add_batch_rows_s", "torchrl-memmap"), ">= 1.0x",
                lambda v: v >= 1)
            add(f"one-at-a-time add >= 1.0x sb3 ({who})",
                ratio(kind, ours, "add_one_rows_s", "sb3"), ">= 1.0x", lambda v: v >= 1)
            if kind == "image":
                add(f"bytes on disk <= 1/20 of torchrl-memmap ({who})",
                    ratio(kind, ours, "disk_mb", "torchrl-memmap"), "<= 0.05x",
                    lambda v: v <= 0.05)
            add(f"commit <= 10 ms ({who})", get(kind, ours, "save_ms"), "<= 10 ms",
                lambda v: v <= 10, "ms")
            add(f"reopen <= 50 ms ({who})", get(kind, ours, "reopen_ms"), "<= 50 ms",
                lambda v: v <= 50, "ms")
    return found


def targets_text(found: list[dict]) -> str:
    lines = []
    for t in found:
        value = "n/a" if t["measured"] is None else (
            f"{t['measured']:.3f}x" if t["unit"] == "x" else f"{t['measured']:.2f} ms")
        verdict = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        lines.append(f"{t['target']:64s} {value:>10s}  {verdict}")
    return "\n".join(lines)


def write_results_md(path: Path, command: str, doc: dict, table: str, goals: str) -> None:
    """Rewrite the generated block of RESULTS.md; hand-written notes around it stay."""
    begin, end = "<!-- peers.py: generated, begin -->", "<!-- peers.py: generated, end -->"
    m, v = doc["machine"], doc["versions"]
    block = "\n".join([
        begin,
        f"Command: `{command}`, {doc['time']}, in {doc['elapsed_s'] / 60:.0f} minutes.",
        "",
        f"Machine: {m.get('cpus')} cores ({m.get('cpu', '?')}), {m.get('memory_gb', '?')} GB, "
        f"Python {m['python']}, {m['platform']}; bench checkout at {m.get('git_head', '?')}.",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + ".",
        "",
        "```", table.rstrip(), "```", "",
        "Targets (issue 7, point 5), as measured in this run:", "",
        "```", goals, "```", end])
    text = path.read_text() if path.exists() else "# Peer benchmark: latest run\n\n" + begin + \
        "\n" + end + "\n"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--vector-rows", type=int, default=1_000_000)
    parser.add_argument("--image-rows", type=int, default=50_000)
    parser.add_argument("--workloads", default="vector,image")
    parser.add_argument("--adapters", default=None, help="comma-separated subset")
    parser.add_argument("--seconds", type=float, default=None,
                        help="seconds per sampling rate (default 3, quick 0.5)")
    parser.add_argument("--out", default=str(HERE / "out" / "peers.json"))
    parser.add_argument("--results-md", default=None,
                        help="RESULTS.md to update (default: bench/RESULTS.md on a full run)")
    parser.add_argument("--dir", default=None, help="where buffers are built (a temp dir)")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile replaystore's phases into bench/out/peers-profile.txt "
                             "(its figures are then slowed by the profiler)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--one-rows", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.workload, Path(args.work), args.rows,
                                 args.one_rows, args.seconds, args.profile)))
        return

    started = time.perf_counter()
    sizes = {"vector": 20_000 if args.quick else args.vector_rows,
             "image": 3_000 if args.quick else args.image_rows}
    sizes = {k: -(-v // EPISODE) * EPISODE for k, v in sizes.items()}  # whole episodes
    one_rows = {k: min(20_000 if k == "vector" else 2_000, v // 4 // EPISODE * EPISODE or EPISODE)
                for k, v in sizes.items()}
    seconds = args.seconds or (0.5 if args.quick else 3.0)
    kinds = [k for k in args.workloads.split(",") if k]
    chosen = args.adapters.split(",") if args.adapters else None
    if args.profile:
        chosen = [n for n in chosen or ["replaystore", "replaystore-dedup"] if n in OURS["image"]]
    base = Path(tempfile.mkdtemp(prefix="rs-peers-", dir=args.dir))
    results: dict[str, dict] = {}
    try:
        for kind in kinds:
            work = base / kind
            work.mkdir()
            if kind == "image":
                t = time.perf_counter()
                ImageSource.write_frames(work / "frames.u8", sizes[kind] + 11 * SAVE_ROWS)
                print(f"image frames written in {time.perf_counter() - t:.0f} s", flush=True)
            print(f"{kind}: {sizes[kind]:,} rows", flush=True)
            results[kind] = {}
            for name in OURS[kind] + PEERS:
                if chosen and name not in chosen:
                    continue
                results[kind][name] = run_child(name, kind, work / name, sizes[kind],
                                                one_rows[kind], seconds, args.profile)
                shutil.rmtree(work / name, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    if args.profile:
        path = Path(args.out).with_name("peers-profile.txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"######## {kind} / {name}\n{r.get('profile', r.get('error'))}\n"
                                for kind, by in results.items() for name, r in by.items()))
        print(f"profiles written to {path}")
        return
    table = tables(results, sizes)
    goals = targets(results)
    print()
    print(table)
    print(targets_text(goals))
    command = "python bench/peers.py" + "".join(f" {a}" for a in sys.argv[1:])
    doc = {"command": command, "time": time.strftime("%Y-%m-%d %H:%M"),
           "elapsed_s": time.perf_counter() - started, "sizes": sizes, "one_rows": one_rows,
           "batch": BATCH, "machine": machine(), "versions": versions(),
           "threads": {**ONE_THREAD, "torch.set_num_threads": 1}, "results": results,
           "targets": goals}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(f"\nJSON written to {args.out}")
    md = args.results_md or (None if args.quick or chosen else str(HERE / "RESULTS.md"))
    if md:
        write_results_md(Path(md), command, doc, table, targets_text(goals))
        print(f"{md} updated")


if __name__ == "__main__":
    main()
