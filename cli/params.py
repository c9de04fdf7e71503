"""Click parameter types: a path that holds no store is a usage error (exit 2) naming it."""

from __future__ import annotations

import math
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


class FieldCodec(click.ParamType):
    """``FIELD=SPEC``, e.g. ``obs=zstd:3`` (see ``replaystore.Codec.parse`` for specs)."""

    name = "FIELD=SPEC"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[str, str]:
        from replaystore import Codec, SchemaError

        if isinstance(value, tuple):
            return value
        name, sep, spec = str(value).partition("=")
        if not sep or not name:
            self.fail(f"{value!r}: expected FIELD=SPEC, e.g. obs=zstd:3", param, ctx)
        try:
            return name, str(Codec.parse(spec))
        except SchemaError as exc:
            self.fail(f"{value!r}: {exc}", param, ctx)


FIELD_CODEC = FieldCodec()


class FiniteFloatRange(click.FloatRange):
    """A :class:`click.FloatRange` that also refuses NaN, which compares false with both
    bounds and so passes the plain one."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a number", param, ctx)
        return number
