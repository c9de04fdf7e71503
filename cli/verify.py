"""``replaystore verify``: check every chunk, the episode table and the priority index."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .output import emit_json, progress_bar

if TYPE_CHECKING:
    from replaystore import RepairReport, VerifyReport

SHOWN_RUNS = 8  # dropped row runs listed before "..."


@click.command(epilog="""\b
Examples:
  replaystore verify runs/cartpole
  replaystore verify runs/cartpole --repair --dry-run
  replaystore verify runs/cartpole --repair
  replaystore verify runs/cartpole --json | jq .problems""")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repair", is_flag=True,
              help="Drop the episodes that hold unreadable rows (keeping every other row) and "
                   "rebuild the episode table and a damaged index. Prints what it drops "
                   "first. Refused while a writer has the store open.")
@click.option("--dry-run", is_flag=True,
              help="With --repair: print what would be dropped; change nothing.")
@click.option("--rollback", is_flag=True,
              help="With --repair: instead drop every row from the first unreadable one on "
                   "(the store as it was before that row was written; the old default).")
@click.option("--salvage", is_flag=True,
              help="With --repair: accepted for compatibility; dropping only the damaged "
                   "episodes is the default now.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(path: Path, repair: bool, dry_run: bool, rollback: bool, salvage: bool,
           as_json: bool) -> None:
    """Check a store: manifest, every chunk's checksum, episode table, priority index.

    A writer may be committing meanwhile: verify checks each chunk at the newest commit.
    Exits 1 and lists each problem with the file it lies in when anything is wrong (after
    --repair: when the repair could not restore a consistent store; with --dry-run: when the
    store has problems).
    """
    import replaystore as rs
    from replaystore.verify import chunk_count, require_no_writer

    for flag, given in (("--salvage", salvage), ("--rollback", rollback),
                        ("--dry-run", dry_run)):
        if given and not repair:
            raise click.UsageError(f"{flag} only applies with --repair")
    if salvage and rollback:
        raise click.UsageError("--salvage and --rollback exclude each other")
    try:
        total = chunk_count(path)
    except rs.StoreNotFoundError as exc:
        raise click.BadParameter(str(exc), param_hint="'PATH'") from None
    except rs.ReplayStoreError:
        total = 0  # verify reports why the store does not open
    if repair:
        require_no_writer(path)  # before any work: a repair needs the store to itself
    with progress_bar("verifying", total) as bar:
        report = rs.verify(path, progress=bar.update)
    if not as_json:
        _print(report)
    plan = repaired = None
    after = report
    if repair and not report.ok:
        plan = rs.repair(path, rollback=rollback, dry_run=True, report=report)
        if not as_json:
            _print_plan(plan, "would" if dry_run else "will")
        if not dry_run:
            repaired = rs.repair(path, rollback=rollback, report=report)
            after = rs.verify(path)
    if as_json:
        emit_json({**report.to_json(),
                   "repair": (repaired or plan).to_json() if plan else None,
                   "ok_after_repair": after.ok if repaired else None})
    elif repaired is not None and repaired.rewrite is not None:
        r = repaired.rewrite
        click.echo(f"repaired: kept {r.rows_after:,} of {r.rows_before:,} rows, "
                   f"{r.episodes_after:,} finished episodes"
                   + ("; priority index rebuilt" if repaired.index_reset else ""))
        _print(after)
    elif plan is not None and dry_run:
        click.echo("dry run: nothing was changed")
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
        click.echo(f"  {problem}{_rows(problem.ranges)}")


def _rows(runs: tuple[tuple[int, int], ...]) -> str:
    if not runs:
        return ""
    shown = ", ".join(f"{a}..{b - 1}" for a, b in runs[:SHOWN_RUNS])
    more = f", ... ({len(runs) - SHOWN_RUNS} more runs)" if len(runs) > SHOWN_RUNS else ""
    return f" (rows {shown}{more})"


def _print_plan(plan: RepairReport, verb: str) -> None:
    """What the repair drops, before it drops it."""
    rebuilt = "the episode table" + (" and the priority index" if plan.index_reset else "")
    dropped = plan.rows_before - plan.rows_after
    if not dropped:
        click.echo(f"repair {verb} keep all {plan.rows_before:,} rows and rebuild {rebuilt}")
        return
    why = ("every row from the first unreadable one on" if plan.rollback else
           "the rows of the episodes that hold unreadable rows"
           if plan.episodes_dropped >= 0 else "the unreadable rows")
    episodes = (f" in {plan.episodes_dropped:,} episodes" if plan.episodes_dropped >= 0
                else "")
    click.echo(f"repair {verb} drop {dropped:,} of {plan.rows_before:,} rows{episodes}: {why}"
               f"{_rows(plan.dropped)}; keep {plan.rows_after:,} and rebuild {rebuilt}")
