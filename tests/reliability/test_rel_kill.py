"""``stress/kill.py --quick``: SIGKILL real writers, trainers, ``replaystore record``, ``prune``
and ``compact`` processes 60 times, and check every store after every kill.

The full run (``python stress/kill.py``, 1000+ kills, ~20 minutes) is not part of the suite;
RELIABILITY.md has its latest figures.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

from rel_common import ROOT

KILL = ROOT / "stress" / "kill.py"


def figure(output: str, label: str) -> int:
    """The first number after ``label`` at the start of a summary line."""
    match = re.search(rf"^{re.escape(label)}\s+(\d+)", output, re.MULTILINE)
    assert match, f"no {label!r} line in:\n{output}"
    return int(match.group(1))


def test_quick_kill_run(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(KILL), "--quick", "--jobs", "2", "--seed", "1",
                           "--workdir", str(tmp_path)], capture_output=True, text=True,
                          timeout=240)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert figure(output, "kills") >= 60, output
    for label in ("lost committed rows", "unopenable stores", "verify failures",
                  "mismatched rows", "episode errors", "zarr mismatches", "child errors",
                  "failed cycles"):
        assert figure(output, label) == 0, f"{label}:\n{output}"
    kinds = re.search(r"^kills\s+\d+ \((.*?);", output, re.MULTILINE)
    assert kinds, output
    per_kind = dict(part.rsplit(" ", 1) for part in kinds.group(1).split(", "))
    kinds_run = {"writer", "priority", "rewrite"}
    if importlib.util.find_spec("gymnasium") is not None:  # record needs an environment
        kinds_run.add("record")
    assert set(per_kind) == kinds_run, per_kind
    assert all(int(count) > 0 for count in per_kind.values()), per_kind
    assert re.search(r"^priority checks\s+[1-9]\d* exact", output, re.MULTILINE), output
