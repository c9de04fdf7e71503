"""``replaystore info``: what a store holds."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .output import emit_json, size, table
from .params import STORE


@click.command(epilog="""\b
Examples:
  replaystore info runs/cartpole
  replaystore info runs/cartpole --json | jq .episodes.return.mean""")
@click.argument("path", type=STORE)
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON instead of a table (undefined or infinite statistics as null).")
def info(path: Path, as_json: bool) -> None:
    """Show a store's schema, rows, episodes, sizes on disk and commit state."""
    import replaystore as rs

    summary = rs.summarize(rs.open(path))
    if as_json:
        emit_json(summary)
        return
    cap = summary["capacity"]
    click.echo(f"store       {summary['path']} (format {summary['format_version']})")
    click.echo(f"rows        {summary['rows']:,}" + (f" of capacity {cap:,}" if cap else
                                                     " (unbounded)")
               + f"; {summary['rows_ever']:,} appended in all")
    commit = summary["commit"]
    click.echo(f"last commit #{commit['seq']} at {when(commit['time'])}")
    pid = summary["writer_pid"]
    click.echo(f"writer      {'held by pid ' + str(pid) if pid else 'none (unlocked)'}")
    eps = summary["episodes"]
    line = f"episodes    {eps['count']:,} finished"
    if eps["return"]:
        r, n = eps["return"], eps["length"]
        line += (f"; return mean {r['mean']:.2f} ± {r['std']:.2f} [{r['min']:.2f}, {r['max']:.2f}]"
                 f"; length mean {n['mean']:.1f} [{n['min']:.0f}, {n['max']:.0f}]"
                 f"; {eps['terminated']} terminated, {eps['truncated']} truncated")
    click.echo(line)
    prio = summary["priority"]
    if prio:
        spread = (f"; priority mean {prio['mean']:.3g} [{prio['min']:.3g}, {prio['max']:.3g}]"
                  if "mean" in prio else "")
        click.echo(f"priorities  index of {prio['slots']:,} slots, alpha {prio['alpha']}{spread}")
    if summary["samplers"]:
        click.echo(f"samplers    {', '.join(summary['samplers'])} (state saved with each commit)")
    rows = [(f["name"], "x".join(map(str, f["shape"])) or "scalar", f["dtype"], f["codec"],
             f["chunk_rows"], size(f["disk_bytes"]), size(f["raw_bytes"]),
             f"{f['ratio']:.1f}x" if f["ratio"] else "-") for f in summary["fields"]]
    click.echo()
    click.echo(table(["field", "shape", "dtype", "codec", "chunk rows", "on disk", "raw",
                      "ratio"], rows))
    click.echo(f"\ntotal on disk {size(summary['disk_bytes'])}")


def when(timestamp: object) -> str:
    """A commit time as local date and time; a manifest without a checksum (older stores) is
    not checked field by field, so anything else is shown as it is rather than raising."""
    if isinstance(timestamp, int | float) and not isinstance(timestamp, bool):
        try:
            return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))
        except (OverflowError, ValueError, OSError):  # out of time_t's range, NaN
            pass
    return f"unknown time (the manifest records {timestamp!r})"
