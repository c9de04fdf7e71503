"""Power cuts on XFS and on ext4 (``noauto_da_alloc``): a few cuts each of stress/powercut.py.

Each cut stops a real writer child at a random point while another file of the same file
system is fsynced, copies the loop device's image (what a power cut keeps), mounts the copy
and checks that every row of the last commit the child saw return is there, byte for byte.
The first cut on each file system is the minimal case of the issue (commit rows 0..9, extend
54 rows filling ``obs`` chunk 0, fsync another file, cut): before the fix, ``obs/c.0.0`` was
left with 0 bytes and all 10 committed rows were lost.

Needs root, loop devices and mkfs.xfs / mkfs.ext4; skipped, saying what is missing, without.
The full campaign (``python stress/powercut.py``, 300 cuts, about 5 minutes) is not part of
the suite.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from rel_common import ROOT

sys.path.insert(0, str(ROOT / "stress"))
import powercut

CUTS = 8  # per file system: the minimal case, each kind of child once, four drawn at random


def mounted_under(folder: Path) -> list[str]:
    """Mount points under ``folder`` (from /proc/mounts)."""
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    return [p for p in points if p.startswith(str(folder))]


@pytest.mark.parametrize("fs", ["xfs", "ext4"])
def test_power_cuts_lose_no_committed_row(fs: str, tmp_path: Path) -> None:
    problem = powercut.environment_problem([fs])
    if problem:
        pytest.skip(f"power cuts on {fs}: {problem}")
    try:
        results = powercut.campaign(CUTS, [fs], seed=7, workdir=tmp_path,
                                    failures=tmp_path / "failures", max_delay=0.4)
    except powercut.Unavailable as exc:
        pytest.skip(f"power cuts on {fs}: {exc}")
    finally:
        leftovers = powercut.cleanup()
        still = mounted_under(tmp_path)
    assert not leftovers and not still, f"left attached or mounted: {leftovers} {still}"
    t = results[fs]
    report = "\n".join(powercut.summary_lines(fs, t) + t["problems"])
    assert t["cuts"] == CUTS, report
    assert set(t["by_kind"]) == set(powercut.KINDS), report
    assert t["minimal_case"] == [True], report
    assert t["committed_rows"] > 0 and t["rows_checked"] > 0, report
    assert t["rows_lost"] == 0, report
    assert t["unopenable_stores"] == 0 and t["unmountable_images"] == 0, report
    assert t["verify_failures"] == 0, report
    assert t["child_errors"] == 0 and t["failed_cuts"] == 0, report
    assert t["fsyncs_by_others"] > 0, report
