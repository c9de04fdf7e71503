"""Writer child for the power-cut campaign (stress/powercut.py, tests/reliability/test_rel_powercut.py).

    python tests/reliability/powercut_child.py PATH SEED CAPACITY MODE SYNCFILE

MODE ``mixed``, ``append``, ``extend`` or ``burst``: tests/crash/writer_child.py itself (same
writes, commits, automatic commits and output lines ``open``/``commit``/``auto START END``),
run with a schema that adds two ``next_of`` fields, ``next_obs`` and ``next_image`` (stored only
at episode ends), and an ``obs`` chunk of up to 64 rows. Rows come from :func:`powercut_rows`.

MODE ``minimal``: the case from the issue, then the child stops itself (SIGSTOP) for the cut:
commit rows 0..9, extend 54 rows (filling ``obs`` chunk 0 of 64 rows, which renames a new file
over a chunk holding committed rows), write and fsync SYNCFILE (another file on the same file
system), stop. Before the fix the rename was durable before the chunk's data: 0 bytes.

``replaystore`` is imported first, so that PYTHONPATH decides which copy of the code runs.
"""

from __future__ import annotations

import os
import random
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np

import replaystore as rs

sys.path.append(str(Path(__file__).resolve().parents[1] / "crash"))  # after PYTHONPATH
import checks
import writer_child

MODES = (*checks.MODES, "minimal")
NEVER = {"commit_every_rows": 1 << 40, "commit_every_seconds": 1e9}


def store_fields(rng: random.Random) -> dict[str, dict[str, Any]]:
    """checks.store_fields plus ``next_obs`` and ``next_image``; ``obs`` chunks up to 64 rows."""
    fields = checks.store_fields(rng)
    fields["obs"]["chunk_rows"] = rng.choice([16, 17, 32, 64])
    fields["next_obs"] = {"next_of": "obs", "chunk_rows": rng.choice([16, 64, 4096])}
    fields["next_image"] = {"next_of": "image", "chunk_rows": rng.choice([20, 4096])}
    return fields


def next_rows(rows: np.ndarray | range | list[int]) -> dict[str, np.ndarray]:
    """``next_obs`` and ``next_image`` of global rows ``rows``: the next row's ``obs`` and
    ``image``, except at an episode's end, where they differ from anything else stored."""
    g = np.asarray(rows, dtype=np.int64).reshape(-1)
    now, after = checks.expected_rows(g), checks.expected_rows(g + 1)
    end = now["terminated"] | now["truncated"]
    return {
        "next_obs": np.where(end[:, None], now["obs"] * 2, after["obs"]).astype(np.float32),
        "next_image": np.where(end[:, None, None], 255 - now["image"], after["image"]
                               ).astype(np.uint8),
    }


def powercut_rows(rows: np.ndarray | range | list[int]) -> dict[str, np.ndarray]:
    """Every field of global rows ``rows`` (checks.expected_rows plus :func:`next_rows`)."""
    return {**checks.expected_rows(rows), **next_rows(rows)}


def write_and_sync(path: Path) -> None:
    """Write and fsync a file other than the store's: any fsync on the file system may make
    earlier renames durable."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"x" * 4096)
        os.fsync(fd)
    finally:
        os.close(fd)


def minimal(path: Path, syncfile: Path) -> None:
    """The issue's minimal case; stops itself where the power is cut."""
    fields = checks.store_fields(random.Random(0))
    for name, spec in fields.items():
        spec["chunk_rows"] = 64 if name == "obs" else 1024  # only obs chunk 0 fills
    store = rs.create(path, fields, **NEVER)
    writer_child.report("open", store.manifest)
    store.extend(checks.expected_rows(range(10)))
    writer_child.report("commit", store.commit())
    store.extend(checks.expected_rows(range(10, 64)))
    write_and_sync(syncfile)
    os.kill(os.getpid(), signal.SIGSTOP)  # the cut
    while True:  # the parent kills us
        signal.pause()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 5 or argv[3] not in MODES:
        sys.exit(__doc__.split("\n\n")[1])
    path, seed, capacity, mode, syncfile = argv
    if mode == "minimal":
        minimal(Path(path), Path(syncfile))
    # writer_child's loop with this schema and these rows (it looks both up in its globals).
    writer_child.store_fields = store_fields
    writer_child.expected_rows = powercut_rows
    return writer_child.main([path, seed, capacity, mode])


if __name__ == "__main__":
    sys.exit(main())
