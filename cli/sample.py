"""``replaystore sample``: draw rows the way a learner would and print them."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import click
import numpy as np

from .output import emit_json, size, table
from .params import STORE, FiniteFloatRange

# Limits of one call, so that a typo in -n is a usage error rather than a MemoryError (-n 10**12
# asked for 7 TiB of slots) or minutes of output: rows drawn, bytes of the rows read at once,
# and values printed with --json (each one a Python object, then text).
MAX_COUNT = 100_000
MAX_READ_BYTES = 256 << 20
MAX_JSON_VALUES = 10_000_000


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


def check_size(store: Any, names: list[str], count: int, as_json: bool) -> None:
    """Refuse a ``count`` whose rows would read more than MAX_READ_BYTES, or print more than
    MAX_JSON_VALUES values with --json, as a usage error naming -n and the largest count."""
    read = [store.schema[name] for name in names]
    row_values = sum(math.prod(f.read_shape) for f in read)  # frame stacks as a learner reads
    row_bytes = sum(math.prod(f.read_shape) * f.dtype.itemsize for f in read)
    what = f"{', '.join(names)}" if len(names) <= 6 else f"{len(names)} fields"
    if count * row_bytes > MAX_READ_BYTES:
        most = MAX_READ_BYTES // row_bytes
        raise click.BadParameter(
            f"{count:,} rows of {what} ({size(row_bytes)} a row) would read "
            f"{size(count * row_bytes)}, more than the limit of {MAX_READ_BYTES >> 20} MiB: "
            + (f"draw at most {most:,} rows, or fewer --fields" if most else
               "one row is over the limit; choose fewer --fields"), param_hint="'-n'")
    if as_json and count * row_values > MAX_JSON_VALUES:
        most = MAX_JSON_VALUES // row_values
        raise click.BadParameter(
            f"{count:,} rows of {what} ({row_values:,} values a row) would print "
            f"{count * row_values:,} values as JSON, more than the limit of "
            f"{MAX_JSON_VALUES:,}: "
            + (f"draw at most {most:,} rows, or fewer --fields" if most else
               "one row is over the limit; choose fewer --fields"), param_hint="'-n'")


@click.command(short_help="Draw rows uniformly or by priority and print them.", epilog="""\b
Examples:
  replaystore sample runs/cartpole -n 5
  replaystore sample runs/cartpole -n 8 --prioritized --fields obs,action,reward
  replaystore sample runs/cartpole -n 3 --seed 0 --json | jq '.rows[].reward'""")
@click.argument("path", type=STORE)
@click.option("-n", "count", type=click.IntRange(min=1, max=MAX_COUNT), default=5,
              show_default=True, metavar="K",
              help=f"Rows to draw (with replacement), at most {MAX_COUNT:,}.")
@click.option("--prioritized", is_flag=True,
              help="Draw by the store's priority index (also prints probability and weight).")
@click.option("--fields", type=FieldList(), help="Only these fields (default: all).")
@click.option("--seed", type=click.IntRange(min=0), metavar="S",
              help="Seed of the sampler, an integer >= 0 (default: random).")
@click.option("--beta", type=FiniteFloatRange(0.0, 1.0), default=0.4, show_default=True,
              metavar="B",
              help="Importance-sampling exponent of the weights, 0 to 1 (with --prioritized).")
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
    check_size(store, names, count, as_json)
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
    try:
        batch = sampler.sample(count)
    except IndexError as exc:  # every priority 0 (eps=0), or rows pruned since the check
        raise click.ClickException(f"store {str(path)!r}: {exc}") from None
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
