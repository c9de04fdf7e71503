"""``replaystore verify``: check every chunk, the episode table and the priority index."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .output import emit_json, progress_bar

if TYPE_CHECKING:
    from replaystore import VerifyReport


@click.command(epilog="""\b
Examples:
  replaystore verify runs/cartpole
  replaystore verify runs/cartpole --repair
  replaystore verify runs/cartpole --json | jq .problems""")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repair", is_flag=True,
              help="Roll back to the last consistent committed state (drops the rows from the "
                   "first unreadable one on) and rebuild the episode table and index.")
@click.option("--salvage", is_flag=True,
              help="With --repair: drop only the episodes holding unreadable rows instead.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(path: Path, repair: bool, salvage: bool, as_json: bool) -> None:
    """Check a store: manifest, every chunk's checksum, episode table, priority index.

    Exits 1 and lists each problem with the file it lies in when anything is wrong (after
    --repair: when the repair could not restore a consistent store).
    """
    import replaystore as rs
    from replaystore.verify import chunk_count

    if salvage and not repair:
        raise click.UsageError("--salvage only applies with --repair")
    try:
        total = chunk_count(path)
    except rs.StoreNotFoundError as exc:
        raise click.BadParameter(str(exc), param_hint="'PATH'") from None
    except rs.ReplayStoreError:
        total = 0  # verify reports why the store does not open
    with progress_bar("verifying", total) as bar:
        report = rs.verify(path, progress=bar.update)
    repaired = None
    if repair and not report.ok:
        repaired = rs.repair(path, salvage=salvage)
        after = rs.verify(path)
    else:
        after = report
    if as_json:
        emit_json({**report.to_json(),
                   "repair": repaired.to_json() if repaired else None,
                   "ok_after_repair": after.ok if repaired else None})
    else:
        _print(report)
        if repaired is not None and repaired.rewrite is not None:
            r = repaired.rewrite
            click.echo(f"repaired: kept {r.rows_after:,} of {r.rows_before:,} rows, "
                       f"{r.episodes_after:,} finished episodes"
                       + ("; priority index rebuilt" if repaired.index_reset else ""))
            _print(after)
    if not after.ok:
        sys.exit(1)


def _print(report: VerifyReport) -> None:
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    if report.ok:
        index = f", index of {report.index_slots:,} slots" if report.index_slots else ""
        click.echo(f"ok: {report.path}: {report.rows:,} rows, {report.chunks:,} chunks, "
                   f"{report.episodes:,} episodes{index} checked")
        return
    click.echo(f"{len(report.problems)} problem(s) in {report.path}:")
    for problem in report.problems:
        rows = (" (rows " + ", ".join(f"{a}..{b - 1}" for a, b in problem.ranges) + ")"
                if problem.ranges else "")
        click.echo(f"  {problem}{rows}")
