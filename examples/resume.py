"""Kill offline training with SIGKILL, restart it, and check it drew exactly the same batches.

    python examples/resume.py runs/cartpole [--steps 3000] [--kills 2] [--smoke]

Runs ``examples/offline_dqn.py`` twice on two copies of the store:

1. *reference*: uninterrupted, ``--steps`` steps;
2. *crashed*: killed with SIGKILL at a random step ``--kills`` times, each time restarted with
   the same command, then left to finish.

Both runs log a fingerprint of every batch they draw (slots, probabilities and importance
weights, bit for bit). A restarted run continues from the store's last commit (priorities and
sampler state) and the model checkpoint written just before it, so it re-draws the steps
after that commit; every batch any run drew must equal the reference's batch of the same step,
and the two final networks must be identical.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

TRAINER = Path(__file__).resolve().with_name("offline_dqn.py")


def read_log(path: Path) -> list[tuple[int, str]]:
    """(step, digest) of every complete line of a batch log, in the order they were drawn."""
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().split("\n")[:-1]:  # a last line without newline was cut
        step, digest = line.split()
        entries.append((int(step), digest))
    return entries


def trainer_command(store: Path, run_dir: Path, log: Path, args: argparse.Namespace) -> list[str]:
    return [sys.executable, str(TRAINER), str(store), "--run-dir", str(run_dir),
            "--steps", str(args.steps), "--checkpoint-every", str(args.checkpoint_every),
            "--seed", str(args.seed), "--eval-every", "0", "--eval-episodes", "2",
            "--batch-log", str(log)]


def run_and_kill(command: list[str], log: Path, kill_after: int) -> int:
    """Start the trainer, SIGKILL it once its log reaches step ``kill_after``; its last step."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while proc.poll() is None:
            entries = read_log(log)
            if entries and entries[-1][0] >= kill_after:
                break
            time.sleep(0.005)
        else:
            raise SystemExit(f"the trainer ended by itself before step {kill_after}:\n"
                             f"{proc.stderr.read().decode() if proc.stderr else ''}")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
    # Drop a line the kill may have cut short, so the restarted run's lines start afresh.
    text = log.read_text()
    log.write_text(text[:text.rfind("\n") + 1])
    return read_log(log)[-1][0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("store", help="a CartPole store recorded by `replaystore record`")
    p.add_argument("--work-dir", default="runs/resume", help="copies of the store, runs, logs")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--kills", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="training seed (and kill moments)")
    p.add_argument("--smoke", action="store_true", help="200 steps, one kill")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.checkpoint_every, args.kills = 200, 40, 1

    work = Path(args.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    logs = {}
    for name in ("reference", "crashed"):
        shutil.copytree(args.store, work / name / "store")
        logs[name] = work / name / "batches.log"
    commands = {name: trainer_command(work / name / "store", work / name / "run", logs[name], args)
                for name in logs}

    started = time.perf_counter()
    subprocess.run(commands["reference"], check=True, stdout=subprocess.DEVNULL)
    print(f"reference: {args.steps} steps uninterrupted in {time.perf_counter() - started:.1f} s")

    rng = random.Random(args.seed)
    for kill in range(args.kills):
        done = read_log(logs["crashed"])
        at = done[-1][0] if done else 0
        # Somewhere past the next checkpoint, so that each run commits something.
        target = min(args.steps - 1, at + args.checkpoint_every + rng.randrange(
            1, max(2, (args.steps - at) // (args.kills - kill + 1))))
        killed = run_and_kill(commands["crashed"], logs["crashed"], target)
        print(f"crashed run {kill + 1}: SIGKILL after step {killed}")
    subprocess.run(commands["crashed"], check=True, stdout=subprocess.DEVNULL)

    reference = dict(read_log(logs["reference"]))
    drawn = read_log(logs["crashed"])
    restarts = [i for i in range(1, len(drawn)) if drawn[i][0] <= drawn[i - 1][0]]
    for n, i in enumerate(restarts, 1):
        print(f"restart {n}: continued from the store's last commit, at step {drawn[i][0] - 1}, "
              f"and re-drew steps {drawn[i][0]}..{drawn[i - 1][0]}")
    differ = [step for step, digest in drawn if reference.get(step) != digest]
    steps_seen = {step for step, _ in drawn}
    complete = steps_seen == set(range(1, args.steps + 1)) == set(reference)
    results = [json.loads((work / name / "run" / "result.json").read_text()) for name in logs]
    same_weights = results[0]["weights_sha256"] == results[1]["weights_sha256"]
    print(f"batches: {len(drawn)} drawn by {len(restarts) + 1} runs for {len(steps_seen)} steps "
          f"({len(drawn) - len(steps_seen)} re-drawn after kills); "
          f"{len(drawn) - len(differ)} identical to the uninterrupted run's, {len(differ)} differ")
    print(f"final networks: {results[1]['weights_sha256']} vs {results[0]['weights_sha256']} "
          f"({'identical' if same_weights else 'DIFFERENT'})")
    ok = not differ and complete and same_weights and len(restarts) == args.kills
    print("resume check: " + ("PASSED, bit-identical batches" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
