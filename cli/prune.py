"""``replaystore prune`` and ``replaystore compact``: rewrite a store without some rows, or anew."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from .output import emit_json, progress_bar, size
from .params import FIELD_CODEC, STORE


class EpisodeIds(click.ParamType):
    """Episode ids as ``3,5,10-20`` (ranges inclusive)."""

    name = "ids"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        ids: list[int] = []
        for part in str(value).split(","):
            match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
            if not match or (match[2] and int(match[2]) < int(match[1])):
                self.fail(f"{part.strip()!r} is not an episode id or range like 3 or 10-20",
                          param, ctx)
            lo = int(match[1])
            ids.extend(range(lo, int(match[2] or lo) + 1))
        return tuple(ids)


def report_rewrite(report: Any, path: Path, verb: str, as_json: bool) -> None:
    if as_json:
        emit_json({"path": str(path), **report.to_json()})
        return
    would = "would keep" if report.dry_run else "kept"
    episodes = ("" if report.episodes_before < 0 else
                f" and {report.episodes_after:,} of {report.episodes_before:,} finished episodes")
    what = f"{path} (dry run)" if report.dry_run else f"{verb} {path}"
    click.echo(f"{what}: {would} {report.rows_after:,} of {report.rows_before:,} "
               f"rows{episodes}")
    after = ("" if report.disk_bytes_after is None else
             f" -> {size(report.disk_bytes_after)}")
    click.echo(f"disk        {size(report.disk_bytes_before)}{after}")
    if report.dry_run:
        click.echo("dry run: nothing was changed")


@click.command(epilog="""\b
Examples:
  replaystore prune runs/cartpole --keep-last 500
  replaystore prune runs/cartpole --min-return 50 --dry-run
  replaystore prune runs/cartpole --episodes 0-9,42
  replaystore prune runs/per --lowest-priority 0.25 --by rows""")
@click.argument("path", type=STORE)
@click.option("--keep-last", type=click.IntRange(min=0), metavar="N",
              help="Keep only the newest N finished episodes (or rows, with --by rows).")
@click.option("--by", type=click.Choice(["episodes", "rows"]), default="episodes",
              show_default=True, help="What --keep-last and --lowest-priority count.")
@click.option("--episodes", type=EpisodeIds(), metavar="IDS",
              help="Drop these finished episodes, e.g. 0-9,42 (ids as 'info' and 'sample' "
                   "number them, oldest = 0).")
@click.option("--min-return", type=float, metavar="X",
              help="Drop finished episodes whose return is below X.")
@click.option("--max-return", type=float, metavar="X",
              help="Drop finished episodes whose return is above X.")
@click.option("--lowest-priority", type=click.FloatRange(0, 1, min_open=True),
              metavar="FRACTION", help="Drop this fraction of rows with the lowest priority "
              "(whole episodes by mean priority, or rows with --by rows).")
@click.option("--dry-run", is_flag=True, help="Report what would be kept; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def prune(path: Path, keep_last: int | None, by: str, episodes: tuple[int, ...] | None,
          min_return: float | None, max_return: float | None,
          lowest_priority: float | None, dry_run: bool, as_json: bool) -> None:
    """Drop episodes (or rows) from a store and reclaim their disk space.

    Every option given drops rows; what no option drops survives, with its priority. The
    store is rewritten beside itself and swapped in atomically: a crash leaves the old store
    or the pruned one. Surviving rows are renumbered from 0 and saved sampler states are
    dropped; readers that had the store open must open it again.
    """
    import replaystore as rs

    if all(v is None for v in (keep_last, episodes, min_return, max_return, lowest_priority)):
        raise click.UsageError("give at least one of --keep-last, --episodes, --min-return, "
                               "--max-return, --lowest-priority")
    if episodes is not None and by == "rows":
        raise click.BadParameter("episode ids select episodes; drop --by rows",
                                 param_hint="'--episodes'")
    selection = rs.Selection(keep_last=keep_last, episodes=episodes or (),
                             min_return=min_return, max_return=max_return,
                             lowest_priority=lowest_priority, by=by)
    with rs.open(path) as store:
        total = len(store)
    try:
        with progress_bar("pruning", total) as bar:
            report = rs.prune(path, selection, dry_run=dry_run, progress=bar.update)
    except IndexError as exc:
        raise click.BadParameter(str(exc), param_hint="'--episodes'") from None
    report_rewrite(report, path, "pruned", as_json)


@click.command(epilog="""\b
Examples:
  replaystore compact runs/cartpole
  replaystore compact runs/atari --codec obs=zstd:5/rows --codec next_obs=zstd:5/rows""")
@click.argument("path", type=STORE)
@click.option("--codec", "codecs", type=FIELD_CODEC, multiple=True,
              help="Re-encode a field, e.g. obs=zstd:3 (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def compact(path: Path, codecs: tuple[tuple[str, str], ...], as_json: bool) -> None:
    """Rewrite a store's chunks densely, optionally with new codecs.

    Reclaims space left by many prunes or a ring's stale slots. Crash-safe like prune: the
    rewritten store is swapped in atomically. Rows are renumbered from 0.
    """
    import replaystore as rs

    with rs.open(path) as store:
        total = len(store)
        unknown = sorted(set(dict(codecs)) - set(store.schema.names))
        if unknown:
            raise click.BadParameter(f"no field {unknown[0]!r} in the store (fields: "
                                     f"{', '.join(store.schema.names)})", param_hint="'--codec'")
    with progress_bar("compacting", total) as bar:
        report = rs.compact(path, codecs=dict(codecs), progress=bar.update)
    report_rewrite(report, path, "compacted", as_json)
