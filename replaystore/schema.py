"""Fields and schemas: what a store holds, and the checks every row passes before it is stored.

A schema always contains the three fields that episodes are built from, ``reward`` (float32),
``terminated`` and ``truncated`` (bool); any other numeric field (``obs``, ``action``,
``next_obs``, ``log_prob``, ...) is declared by name, shape and dtype.

Casting rule for appended values: a cast numpy calls *safe* is done silently; float to a
narrower float is done when no finite value overflows (observations arrive as float64 from many
environments and are rounded, as every RL library does); any other cast (int64 into uint8, int8
into uint8, float into int, int into bool) is done only when every value is stored exactly:
integers must lie in the field's range (a round trip alone would miss int8 -1 stored as uint8
255, because the cast back wraps too), floats must also be whole numbers. Anything else raises
:class:`~replaystore.errors.SchemaError` naming the field, the value's dtype and the field's.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .codecs import MAX_CHUNK_BYTES, Codec, default_chunk_rows, default_codec
from .errors import SchemaError

EPISODE_FIELDS = {"reward": "float32", "terminated": "bool", "truncated": "bool"}
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_DTYPES = frozenset(
    ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
     "float16", "float32", "float64"])
MAX_ROW_BYTES = 256 << 20
MAX_FIELDS = 256

FieldSpec = Any  # tuple (shape, dtype), a Field, or a mapping with shape/dtype/codec/chunk_rows


@dataclass(frozen=True)
class Field:
    """One named array of a store; every row holds one value of ``shape`` and ``dtype``.

    Examples
    --------
    >>> Field("obs", (17,), "float32").row_nbytes
    68
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype = field(compare=True)
    codec: Codec = field(default_factory=Codec)
    chunk_rows: int = 0
    next_of: str | None = None
    stack: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise SchemaError(
                f"invalid field name {self.name!r}: use a letter followed by letters, digits or "
                "underscores (at most 64), so it is a safe file name and a Python identifier")
        try:
            shape = tuple(int(d) for d in self.shape)
        except (TypeError, ValueError):
            raise SchemaError(f"field {self.name!r}: shape must be a tuple of ints, "
                              f"got {self.shape!r}") from None
        if any(d <= 0 for d in shape) or len(shape) > 8:
            raise SchemaError(f"field {self.name!r}: shape {shape} must have at most 8 "
                              "dimensions, each >= 1")
        try:
            dtype = np.dtype(self.dtype)
        except TypeError:
            raise SchemaError(f"field {self.name!r}: unknown dtype {self.dtype!r}") from None
        if dtype.name not in _DTYPES:
            raise SchemaError(f"field {self.name!r}: dtype {dtype} is not supported; use one of "
                              f"{', '.join(sorted(_DTYPES))}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "dtype", dtype)
        if self.row_nbytes > MAX_ROW_BYTES:
            raise SchemaError(f"field {self.name!r}: one row of shape {shape} {dtype} is "
                              f"{self.row_nbytes} bytes, more than {MAX_ROW_BYTES}")
        rows = int(self.chunk_rows) or default_chunk_rows(self.row_nbytes, self.codec)
        if not 1 <= rows <= 1 << 24:
            raise SchemaError(f"field {self.name!r}: chunk_rows must be in 1..{1 << 24}, "
                              f"got {self.chunk_rows!r}")
        if rows * self.row_nbytes > MAX_CHUNK_BYTES:
            raise SchemaError(f"field {self.name!r}: a chunk of {rows} rows of "
                              f"{self.row_nbytes} bytes exceeds {MAX_CHUNK_BYTES >> 20} MiB; "
                              "use fewer chunk_rows")
        object.__setattr__(self, "chunk_rows", rows)
        if not isinstance(self.stack, int) or not 1 <= self.stack <= 64:
            raise SchemaError(f"field {self.name!r}: stack must be an integer from 1 to 64, "
                              f"got {self.stack!r}")
        if self.next_of is not None and not self.codec.per_row:
            raise SchemaError(f"field {self.name!r}: a next_of field is stored only at episode "
                              "ends, which needs the per-row layout (a codec like 'lz4hc:5/rows')")

    @property
    def row_nbytes(self) -> int:
        """Bytes of one row, uncompressed."""
        return math.prod(self.shape) * self.dtype.itemsize  # Python ints: no overflow

    @property
    def read_shape(self) -> tuple[int, ...]:
        """Shape of one row as ``get`` returns it: ``(stack, *shape)`` for stacked fields."""
        return (self.stack, *self.shape) if self.stack > 1 else self.shape

    @property
    def derived(self) -> bool:
        """Whether reads rebuild this field (a next_of field, or a frame stack)."""
        return self.next_of is not None or self.stack > 1

    def describe(self) -> str:
        return f"shape {self.shape} {self.dtype}"

    def to_json(self) -> dict[str, Any]:
        doc = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype.name,
               "codec": self.codec.to_json(), "chunk_rows": self.chunk_rows}
        if self.next_of is not None:
            doc["next_of"] = self.next_of
        if self.stack > 1:
            doc["stack"] = self.stack
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Field:
        try:
            return cls(doc["name"], tuple(doc["shape"]), doc["dtype"],
                       Codec.from_json(doc["codec"]), int(doc["chunk_rows"]),
                       doc.get("next_of"), int(doc.get("stack", 1)))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, SchemaError):
                raise
            raise SchemaError(f"malformed field description {doc!r}: {exc}") from None

    def check(self, value: Any) -> np.ndarray:
        """Return ``value`` as an array of this field's shape and dtype, or raise SchemaError."""
        if type(value) is np.ndarray and value.dtype == self.dtype and value.shape == self.shape:
            return value
        if type(value) in _PY_SCALARS and not self.shape:
            return self._scalar(value)
        array = np.asarray(value)
        if array.shape != self.shape:
            raise SchemaError(f"field {self.name!r}: expected {self.describe()}, "
                              f"got shape {array.shape} {array.dtype}")
        return self._cast(array, "")

    def check_batch(self, value: Any) -> np.ndarray:
        """Like :meth:`check` for a batch: shape ``(n, *self.shape)``."""
        array = np.asarray(value)
        if array.shape[1:] != self.shape or array.ndim != len(self.shape) + 1:
            raise SchemaError(f"field {self.name!r}: expected a batch of shape (n, "
                              f"{', '.join(map(str, self.shape))}{',' if len(self.shape) == 1 else ''})"
                              f" {self.dtype}, got shape {array.shape} {array.dtype}")
        return self._cast(array, "batch ")

    def _scalar(self, value: bool | int | float) -> np.ndarray:
        """A Python scalar for a scalar field: the same rules as :meth:`_cast`, 5x faster (a
        reward and two flags arrive this way with every appended row)."""
        try:
            if self.dtype.kind == "f":  # rounding is fine, overflow to inf is not
                lossless = not (math.isfinite(value) and abs(value) > _FLOAT_MAX[self.dtype.char])
                cast = self.dtype.type(value) if lossless else None
            else:  # numpy converts through a Python int: exact, or OverflowError
                cast = self.dtype.type(value)
                lossless = cast == value
        except (OverflowError, ValueError):  # 10**400 has no float; NaN no int
            lossless = False
        if not lossless:
            text = repr(value)
            if len(text) > 40:  # 10**400
                text = f"{text[:20]}...({len(text)} digits)"
            raise SchemaError(f"field {self.name!r}: value {text} ({type(value).__name__}) "
                              f"does not fit a {self.dtype} field without loss (expected "
                              f"{self.describe()})")
        return cast  # type: ignore[return-value]  # a numpy scalar stands in for a 0-d array

    def _cast(self, array: np.ndarray, what: str) -> np.ndarray:
        src, dst = array.dtype, self.dtype
        if src == dst:
            return array
        if src.kind not in "biuf":
            raise SchemaError(f"field {self.name!r}: cannot store {what}values of dtype {src} "
                              f"in a {dst} field")
        if np.can_cast(src, dst, "safe"):
            return array.astype(dst)
        with np.errstate(all="ignore"):
            if dst.kind in "iu":
                # In range first: a wrapped value can survive the cast back (int8 -1 -> uint8
                # 255 -> int8 -1), and an out-of-range float's cast is undefined.
                lossless = _within(array, dst)
                cast = array.astype(dst) if lossless else array
                if lossless and src.kind == "f":  # whole numbers only
                    lossless = np.array_equal(cast.astype(src), array)
            elif dst.kind == "f":
                cast = array.astype(dst)
                if src.kind == "f":
                    lossless = np.all(np.isfinite(cast) | ~np.isfinite(array))
                else:  # int to a float that cannot hold every int of src: round trip, in range
                    lossless = (_within(cast, src)
                                and np.array_equal(cast.astype(src), array))
            else:  # into bool: exact when every value is 0 or 1, which the cast back shows
                cast = array.astype(dst)
                lossless = np.array_equal(cast.astype(src), array, equal_nan=src.kind == "f")
        if not lossless:
            raise SchemaError(f"field {self.name!r}: {what}values of dtype {src} do not fit a "
                              f"{dst} field without loss{_first_misfit(array, dst)} "
                              f"(expected {self.describe()})")
        return cast


def _within(array: np.ndarray, dtype: np.dtype) -> bool:
    """Whether every value of an int or float ``array`` lies in integer ``dtype``'s range
    (NaN does not). Two reductions, compared as Python numbers, which is exact."""
    if array.size == 0:
        return True
    info = np.iinfo(dtype)
    if array.size == 1:  # one row of a scalar field: skip two reductions (a few µs)
        low = high = array.reshape(-1)[0]
    else:
        low, high = array.min(), array.max()
    if array.dtype.kind == "f":  # the bounds min and max + 1 are powers of two: exact floats
        return float(info.min) <= float(low) and float(high) < float(info.max + 1)
    return int(info.min) <= int(low) and int(high) <= int(info.max)


def _first_misfit(array: np.ndarray, dst: np.dtype) -> str:
    """``: -1 is outside the uint8 range [0, 255]`` for the first value outside an integer
    ``dst``'s range, to name in the error; an empty string otherwise."""
    if dst.kind not in "iu" or array.dtype.kind not in "iu":
        return ""
    info = np.iinfo(dst)
    flat = array.reshape(-1)
    bad = np.flatnonzero((flat < info.min) | (flat > info.max))
    return (f": {flat[bad[0]].item()} is outside the {dst} range [{info.min}, {info.max}]"
            if len(bad) else "")


_PY_SCALARS = (bool, int, float)
_FLOAT_MAX = {t: float(np.finfo(t).max) for t in "efd"}


def _parse_field(name: str, spec: FieldSpec) -> Field:
    if isinstance(spec, Field):
        if spec.name != name:
            raise SchemaError(f"field declared as {name!r} is named {spec.name!r}")
        return spec
    options: dict[str, Any] = {}
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"shape", "dtype", "codec", "chunk_rows", "next_of", "stack"}
        if unknown:
            raise SchemaError(f"field {name!r}: unknown option(s) {sorted(unknown)}")
        options = dict(spec)
    elif isinstance(spec, tuple | list) and len(spec) == 2:
        options = {"shape": spec[0], "dtype": spec[1]}
    else:
        raise SchemaError(f"field {name!r}: expected (shape, dtype), a mapping or a Field, "
                          f"got {spec!r}")
    shape = options.get("shape", ())
    probe = Field(name, (shape,) if isinstance(shape, int) else shape,
                  options.get("dtype", "float32"))
    codec = options.get("codec")
    if codec is not None:
        parsed = Codec.parse(codec)
    elif options.get("next_of") is not None:
        parsed = Codec("lz4hc", 5, per_row=True)  # sparse: stored at episode ends only
    else:
        parsed = default_codec(probe.row_nbytes, probe.dtype.kind)
    return Field(name, probe.shape, probe.dtype, parsed, options.get("chunk_rows") or 0,
                 options.get("next_of"), options.get("stack", 1))


@dataclass(frozen=True)
class Schema:
    """The ordered fields of a store.

    Examples
    --------
    >>> s = Schema.from_fields({"obs": ((4,), "float32"), "action": ((), "int64")})
    >>> s.names
    ('obs', 'action', 'reward', 'terminated', 'truncated')
    """

    fields: tuple[Field, ...]

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise SchemaError(f"duplicate field names in {names}")
        if len(names) > MAX_FIELDS:
            raise SchemaError(f"a schema holds at most {MAX_FIELDS} fields, got {len(names)}")
        by_name = {f.name: f for f in self.fields}
        for name, dtype in EPISODE_FIELDS.items():
            f = by_name.get(name)
            if f is None or f.shape != () or (f.dtype.kind != "f" if dtype == "float32"
                                             else f.dtype != np.dtype(dtype)):
                raise SchemaError(f"field {name!r} must be a scalar {dtype} field "
                                  f"(got {f.describe() if f else 'nothing'})")
        for f in self.fields:
            target = by_name.get(f.next_of) if f.next_of is not None else None
            if f.next_of is None:
                continue
            if target is None or target.next_of is not None:
                raise SchemaError(f"field {f.name!r}: next_of={f.next_of!r} must name another "
                                  "stored field of the schema")
            if (target.shape, target.dtype, target.stack) != (f.shape, f.dtype, f.stack):
                raise SchemaError(f"field {f.name!r} is next_of {target.name!r} but has "
                                  f"{f.describe()} stack {f.stack}, not {target.describe()} "
                                  f"stack {target.stack}")
        object.__setattr__(self, "_by_name", by_name)

    @classmethod
    def from_fields(cls, fields: Mapping[str, FieldSpec] | Schema) -> Schema:
        """Build a schema from ``{name: (shape, dtype)}``; reward/terminated/truncated are added."""
        if isinstance(fields, Schema):
            return fields
        if not isinstance(fields, Mapping) or not fields:
            raise SchemaError("fields must be a non-empty mapping of name to (shape, dtype)")
        plain = {str(n): _parse_field(str(n), spec) for n, spec in fields.items()
                 if not (isinstance(spec, Mapping) and spec.get("next_of") is not None)}
        parsed = []
        for name, spec in fields.items():
            if str(name) in plain:
                parsed.append(plain[str(name)])
                continue
            # A next_of field defaults to its target's shape, dtype and stack.
            target = plain.get(str(spec["next_of"]))
            defaults = {"shape": target.shape, "dtype": target.dtype.name,
                        "stack": target.stack} if target else {}
            parsed.append(_parse_field(str(name), {**defaults, **spec}))
        declared = {f.name for f in parsed}
        parsed += [_parse_field(n, ((), d)) for n, d in EPISODE_FIELDS.items() if n not in declared]
        return cls(tuple(parsed))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def __getitem__(self, name: str) -> Field:
        try:
            return self._by_name[name]  # type: ignore[attr-defined]
        except KeyError:
            raise KeyError(self._unknown_message([name])) from None

    def __iter__(self) -> Iterator[Field]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    @property
    def row_nbytes(self) -> int:
        return sum(f.row_nbytes for f in self.fields)

    def to_json(self) -> dict[str, Any]:
        return {"fields": [f.to_json() for f in self.fields]}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Schema:
        if not isinstance(doc, Mapping) or not isinstance(doc.get("fields"), list):
            raise SchemaError(f"malformed schema document: {str(doc)[:200]}")
        return cls(tuple(Field.from_json(f) for f in doc["fields"]))

    @property
    def hash(self) -> str:
        """A short, stable digest of the schema; the manifest records it."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _unknown_message(self, names: list[str]) -> str:
        hints = []
        for name in names:
            close = difflib.get_close_matches(name, self.names, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        return f"unknown field(s) {', '.join(hints)}; the schema has {', '.join(self.names)}"

    def _check_keys(self, values: Mapping[str, Any]) -> None:
        if len(values) == len(self.fields) and all(k in self._by_name for k in values):  # type: ignore[attr-defined]
            return
        extra = [k for k in values if k not in self._by_name]  # type: ignore[attr-defined]
        if extra:
            raise SchemaError(self._unknown_message(extra))
        missing = [n for n in self.names if n not in values]
        raise SchemaError(f"missing field(s) {', '.join(map(repr, missing))}; every row needs "
                          f"all of {', '.join(self.names)}")

    def check_row(self, values: Mapping[str, Any]) -> list[np.ndarray]:
        """Validate one row; return its values in field order."""
        self._check_keys(values)
        return [f.check(values[f.name]) for f in self.fields]

    def check_batch(self, values: Mapping[str, Any]) -> tuple[list[np.ndarray], int]:
        """Validate a batch (leading axis = rows); return values in field order and the row count."""
        self._check_keys(values)
        arrays = [f.check_batch(values[f.name]) for f in self.fields]
        counts = {f.name: len(a) for f, a in zip(self.fields, arrays, strict=True)}
        if len(set(counts.values())) > 1:
            raise SchemaError(f"fields of a batch must have the same number of rows, got {counts}")
        return arrays, len(arrays[0])
