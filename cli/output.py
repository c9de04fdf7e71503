"""All formatting of command output: tables, sizes, JSON."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from typing import Any

import click


def emit_json(doc: Any) -> None:
    """Print ``doc`` as strict JSON: NaN and infinities (which JSON lacks, and which Python's
    json module would write as ``NaN``, ``Infinity``) become null."""
    click.echo(json.dumps(finite(doc), indent=2, allow_nan=False))


def finite(doc: Any) -> Any:
    """``doc`` with every non-finite float replaced by None and numpy scalars as Python ones;
    dicts, lists and tuples are copied, anything else is kept (json.dumps judges it)."""
    if isinstance(doc, dict):
        return {key: finite(value) for key, value in doc.items()}
    if isinstance(doc, list | tuple):
        return [finite(value) for value in doc]
    if getattr(doc, "ndim", None) == 0 and hasattr(doc, "item"):  # np.float32(nan), ...
        return finite(doc.item())
    if isinstance(doc, float) and not math.isfinite(doc):
        return None
    return doc


def size(nbytes: float | None) -> str:
    if nbytes is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(nbytes) < 1000 or unit == "TB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} TB"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


class _Silent:
    """A progress bar that shows nothing (output is not a terminal)."""

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None


def progress_bar(label: str, total: int) -> Any:
    """A progress bar on stderr over ``total`` items; silent unless stderr is a terminal, so
    piped and ``--json`` output stays clean."""
    if not sys.stderr.isatty():
        return _Silent()
    return click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True)
