"""Click parameter types: a bad store path is a usage error (exit 2) naming the path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


class StorePath(click.ParamType):
    """A path to an existing replay store (a folder holding ``_replaystore/manifest.json``)."""

    name = "store"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        path = Path(value)
        if not path.is_dir():
            self.fail(f"{str(path)!r} is not a directory", param, ctx)
        if not (path / "_replaystore" / "manifest.json").is_file():
            self.fail(f"{str(path)!r} holds no replay store", param, ctx)
        return path


STORE = StorePath()
