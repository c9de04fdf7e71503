"""Click parameter types: a path that holds no store is a usage error (exit 2) naming it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


class StorePath(click.ParamType):
    """A path to an existing replay store."""

    name = "store"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        import replaystore as rs

        try:
            rs.open(value).close()
        except rs.StoreNotFoundError as exc:
            self.fail(str(exc), param, ctx)
        return Path(value)


STORE = StorePath()
