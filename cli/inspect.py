"""``replaystore inspect``: a figure of what a store holds."""

from __future__ import annotations

from pathlib import Path

import click

from .output import emit_json
from .params import STORE

FORMATS = ("png", "svg", "pdf", "jpg", "jpeg")


def _check_plot(ctx: click.Context, param: click.Parameter, value: Path) -> Path:
    if value.suffix.lower().lstrip(".") not in FORMATS:
        raise click.BadParameter(f"{str(value)!r}: the extension picks the format; use one of "
                                 f"{', '.join('.' + f for f in FORMATS)}", ctx, param)
    if not value.parent.is_dir():
        raise click.BadParameter(f"{str(value)!r}: folder {str(value.parent)!r} does not exist",
                                 ctx, param)
    return value


@click.command(short_help="Plot episode returns, lengths, rewards and priorities.", epilog="""\b
Examples:
  replaystore inspect runs/cartpole --plot cartpole.png
  replaystore inspect runs/breakout --plot breakout.svg --max-rows 200000""")
@click.argument("path", type=STORE)
@click.option("--plot", "plot", type=click.Path(dir_okay=False, path_type=Path), required=True,
              callback=_check_plot, metavar="FILE.png",
              help="Image file to write (.png, .svg, .pdf or .jpg); replaced atomically.")
@click.option("--max-rows", type=click.IntRange(min=1), default=1_000_000, show_default=True,
              help="Read rewards and priorities of at most this many rows (a uniform subsample).")
@click.option("--json", "as_json", is_flag=True, help="Print what was plotted as JSON.")
def inspect(path: Path, plot: Path, max_rows: int, as_json: bool) -> None:
    """Draw one figure of the store at PATH: episode return over time, episode length and
    reward histograms, and the priority histogram when the store has a priority index.

    Needs matplotlib: pip install 'replaystore[plot]'.
    """
    from replaystore.plotting import plot_store

    summary = plot_store(path, plot, max_rows=max_rows)
    if as_json:
        emit_json(summary)
        return
    mean = summary["mean_return"]
    click.echo(f"wrote {summary['plot']}: {summary['rows']:,} rows, {summary['episodes']:,} "
               "finished episodes" + (f", mean return {mean:.4g}" if mean is not None else "")
               + f"; panels: {', '.join(summary['panels'])}")
