"""``replaystore sample``: draw rows the way a learner would and print them."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import click
import numpy as np

from .output import emit_json, table
from .params import STORE


def fmt(value: np.ndarray) -> str:
    """One value of a field, compact: scalars as is, short vectors inline, big arrays summarised."""
    value = np.asarray(value)
    if value.ndim == 0:
        item = value.item()
        return f"{item:.4g}" if isinstance(item, float) else str(item)
    if value.size <= 8 and value.ndim == 1:
        if value.dtype.kind == "f":
            return "[" + " ".join(f"{v:.4g}" for v in value.tolist()) + "]"
        return "[" + " ".join(str(v) for v in value.tolist()) + "]"
    shape = "x".join(map(str, value.shape))
    if value.dtype.kind == "b":
        return f"bool {shape}: {int(value.sum())} true"
    return (f"{value.dtype} {shape}: min {value.min():.4g} max {value.max():.4g} "
            f"mean {value.mean(dtype=np.float64):.4g}")


def jsonable(value: np.ndarray) -> Any:
    """Nested lists; NaN and infinities become null so that strict JSON parsers accept it."""
    value = np.asarray(value)
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        obj = value.astype(object)
        obj[~np.isfinite(value)] = None
        return obj.tolist()
    return value.tolist()


class FieldList(click.ParamType):
    name = "a,b,..."

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> list[str]:
        if isinstance(value, list):
            return value
        names = [n.strip() for n in str(value).split(",") if n.strip()]
        if not names:
            self.fail("expected a comma-separated list of field names", param, ctx)
        return names


@click.command(short_help="Draw rows uniformly or by priority and print them.", epilog="""\b
Examples:
  replaystore sample runs/cartpole -n 5
  replaystore sample runs/cartpole -n 8 --prioritized --fields obs,action,reward
  replaystore sample runs/cartpole -n 3 --seed 0 --json | jq '.rows[].reward'""")
@click.argument("path", type=STORE)
@click.option("-n", "count", type=click.IntRange(min=1), default=5, show_default=True,
              metavar="K", help="Rows to draw (with replacement).")
@click.option("--prioritized", is_flag=True,
              help="Draw by the store's priority index (also prints probability and weight).")
@click.option("--fields", type=FieldList(), help="Only these fields (default: all).")
@click.option("--seed", type=int, metavar="S", help="Seed of the sampler (default: random).")
@click.option("--beta", type=float, default=0.4, show_default=True,
              help="Importance-sampling exponent of the weights (with --prioritized).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (non-finite floats as null).")
def sample(path: Path, count: int, prioritized: bool, fields: list[str] | None,
           seed: int | None, beta: float, as_json: bool) -> None:
    """Draw K rows from the store at PATH, uniformly or by priority, and print them.

    Derived fields are shown as a learner reads them (next_obs rebuilt, frame stacks
    stacked). Rows print as a table, or one block per row when the table is wider than the
    terminal; arrays of more than 8 values are summarised (use --json for every value).
    """
    import replaystore as rs

    store = rs.open(path)
    names = list(store.schema.names)
    if fields is not None:
        for name in fields:
            if name not in names:
                try:
                    store.schema[name]
                except KeyError as exc:
                    raise click.BadParameter(exc.args[0], param_hint="--fields") from None
        names = fields
    if len(store) == 0:
        raise click.ClickException(f"store {str(path)!r} has no committed rows to sample")
    if prioritized:
        try:
            index = store.priority_index()
        except rs.ReadOnlyError:
            raise click.ClickException(
                f"store {str(path)!r} has no priority index: a trainer creates one with "
                "rs.PrioritizedSampler on the store opened with mode='a'; sample without "
                "--prioritized") from None
        sampler: rs.Sampler = rs.PrioritizedSampler(store, alpha=index.header.alpha, beta=beta,
                                                    seed=seed)
    else:
        sampler = rs.UniformSampler(store, seed=seed)
    batch = sampler.sample(count)
    rows = store.get(batch.indices, names)
    global_rows = store.manifest.row_of(batch.indices)
    extra: dict[str, np.ndarray] = {}
    if prioritized:
        extra = {"probability": batch.probabilities, "weight": batch.weights}

    if as_json:
        emit_json({
            "path": str(path), "count": count, "prioritized": prioritized, "seed": seed,
            "rows": [{"slot": int(batch.indices[i]), "row": int(global_rows[i]),
                      **{k: float(v[i]) for k, v in extra.items()},
                      **{n: jsonable(rows[n][i]) for n in names}} for i in range(count)]})
        return
    headers = ["slot", "row", *extra, *names]
    cells = [[str(batch.indices[i]), str(global_rows[i]),
              *(f"{v[i]:.4g}" for v in extra.values()),
              *(fmt(rows[n][i]) for n in names)] for i in range(count)]
    text = table(headers, cells)
    width = shutil.get_terminal_size((160, 24)).columns
    if max(map(len, text.splitlines())) <= width:
        click.echo(text)
        return
    pad = max(map(len, headers))
    for i, row in enumerate(cells):
        if i:
            click.echo()
        click.echo(f"-- sample {i + 1} of {count} " + "-" * max(0, min(width, 60) - 20
                                                                 - int(math.log10(count + 1))))
        for header, cell in zip(headers, row, strict=True):
            click.echo(f"{header.ljust(pad)}  {cell}")
