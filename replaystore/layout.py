"""Where each file of a store lives, and the zarr v3 metadata documents that describe them.

A store directory::

    zarr.json                      zarr v3 group; attributes["replaystore"] = format version,
                                   schema and capacity
    <field>/zarr.json              one zarr v3 array per field, rows along axis 0
    <field>/c.<chunk>.0...         chunk (or shard) files: zarr's default key encoding with
                                   the "." separator, so a field's chunks share one folder
    _replaystore/zarr.json         an empty zarr group, so zarr lists the folder without warning
    _replaystore/manifest.json     the commit record (see manifest.py)
    _replaystore/episodes.<block>  finished episodes, 4096 per block (see episodes.py)
    _replaystore/writer.lock       the single-writer lock

``zarr.open(path)`` reads the arrays without knowing about replaystore: each array's shape is
updated at every commit to the committed extent of the ring.
"""

from __future__ import annotations

import json
from typing import Any

from .codecs import zarr_codecs
from .errors import CorruptStoreError
from .schema import Field, Schema

FORMAT_VERSION = 1
GROUP = "zarr.json"
META = "_replaystore"
META_GROUP = f"{META}/zarr.json"
MANIFEST = f"{META}/manifest.json"
LOCK = f"{META}/writer.lock"


def array_key(name: str) -> str:
    return f"{name}/zarr.json"


def chunk_key(field: Field, chunk: int) -> str:
    return f"{field.name}/c.{chunk}" + ".0" * len(field.shape)


def episode_block_key(block: int) -> str:
    return f"{META}/episodes.{block}"


JSON_LIMIT = 4 << 20  # the most bytes a metadata document of a store may hold


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, indent=2, sort_keys=True).encode()


def loads(raw: bytes, key: str) -> Any:
    """Parse a metadata document read from ``key``; anything that is not JSON the writer could
    have made (nesting deep enough to exhaust the stack, a number of thousands of digits, bad
    UTF-8) raises CorruptStoreError naming the key, never the parser's own error."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        detail = "it nests too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise CorruptStoreError(f"{key!r} is not a valid JSON document: {detail}",
                                key=key) from None


def group_document(schema: Schema, capacity: int | None) -> dict[str, Any]:
    return {
        "zarr_format": 3,
        "node_type": "group",
        "attributes": {"replaystore": {
            "format_version": FORMAT_VERSION,
            "capacity": capacity,
            "schema": schema.to_json(),
        }},
    }


def meta_group_document() -> dict[str, Any]:
    return {"zarr_format": 3, "node_type": "group",
            "attributes": {"description": "replaystore bookkeeping: manifest, episode table"}}


def array_document(field: Field, rows: int) -> dict[str, Any]:
    chunk_shape = [field.chunk_rows, *field.shape]
    fill: bool | int | float = False if field.dtype.kind == "b" else 0
    return {
        "zarr_format": 3,
        "node_type": "array",
        "shape": [rows, *field.shape],
        "data_type": field.dtype.name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunk_shape}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "."}},
        "fill_value": fill,
        "codecs": zarr_codecs(field.codec, tuple(chunk_shape), field.dtype),
        "attributes": {},
    }
