"""How the bytes of one field are encoded on disk, and the defaults chosen from measurements.

Two layouts, both plain zarr v3:

``chunks``
    A chunk holds ``chunk_rows`` consecutive rows, encoded as ``bytes`` (little endian), an
    optional ``blosc`` compressor, then ``crc32c``. Small float fields default to
    ``lz4:1/noshuffle``: measured on float32[17] chunks, byte shuffle gains little (1.09x on
    i.i.d. values, 1.24x on random-walk observations) at 0.7-2.3 GB/s encode, while without
    shuffle blosc stores incompressible blocks as they are (4.4 GB/s encode, 17 GB/s decode)
    and still squeezes out the zero padding of the partly filled last chunk (15x), which a raw
    chunk would keep on disk. Small integer and bool fields (flags, discrete actions) default
    to ``lz4:1`` with shuffle, which shrinks them 10-100x at 0.7-1.9 GB/s encode and 3.7-6.8
    GB/s decode. Decoded chunks are cached, so the codec only matters for disk size and cold
    reads.
``rows``
    A zarr v3 shard of ``chunk_rows`` rows whose inner chunks are single rows, each compressed on
    its own (``bytes`` → ``blosc`` → ``crc32c``), with the shard index (offset, length per row,
    ``crc32c``-protected) at the end. A random sample then decompresses only the rows it asks
    for: on 84x84 frames one row costs ~3 µs with blosc-lz4hc, while decoding a whole 256-row
    chunk to serve one row costs ~0.5-2 ms. Image-like fields (>= 1 KiB per row) default to it.

Measured on this project's 84x84 uint8 "moving shapes" frames, one row at a time (2 cores,
numcodecs 0.16, blosc without threads):

=================== ===== ============ ============
codec (blosc)       ratio decode, row  encode, row
=================== ===== ============ ============
lz4:5 bitshuffle     6.9x  6.7 µs       8 µs
blosclz:5            9.3x  4.3 µs       8 µs
lz4hc:5 bitshuffle  15.1x  5.6 µs      28 µs
lz4hc:5 noshuffle   21.1x  3.2 µs      29 µs
lz4hc:9 noshuffle   29.1x  3.4 µs      87 µs
zstd:1              13.8x 28.7 µs      37 µs
zstd:5              30.9x 22.3 µs     125 µs
=================== ===== ============ ============

so ``lz4hc:5`` without shuffle (for one-byte dtypes) is the default for the rows layout: zstd
saves a little more disk but decodes seven times slower per row, which would cap image
sampling below 250 batches/s, and level 9 triples the encode cost for 1.4x.
"""

from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass
from typing import Any

import google_crc32c
import numpy as np
from numcodecs import blosc

from .errors import CorruptChunkError, SchemaError

# numcodecs' default lets blosc spawn threads guarded by a global lock; for the small buffers we
# decode (one chunk or one row at a time) that costs 4x in per-call overhead.
blosc.use_threads = False

COMPRESSORS = ("lz4", "lz4hc", "zstd", "blosclz", "zlib")
RAW = "raw"
CHECKSUM_BYTES = 4
ROWS_LAYOUT_MIN_BYTES = 1024
MAX_CHUNK_BYTES = 1 << 30  # the writer buffers a whole chunk (or shard) of decoded rows
_MISSING = np.uint64(2**64 - 1)


@dataclass(frozen=True)
class Codec:
    """Encoding of one field: compressor name and level, and the layout.

    Parameters
    ----------
    name
        ``"raw"`` (no compression) or a blosc compressor: ``lz4``, ``lz4hc``, ``zstd``,
        ``blosclz``, ``zlib``.
    level
        Compression level, 1-9 (ignored for ``raw``).
    per_row
        Compress each row on its own inside a zarr v3 shard (the ``rows`` layout).
    shuffle
        Byte-shuffle multi-byte values before compressing (never for one-byte dtypes).
    """

    name: str = RAW
    level: int = 5
    per_row: bool = False
    shuffle: bool = True

    def __post_init__(self) -> None:
        if self.name != RAW and self.name not in COMPRESSORS:
            raise SchemaError(
                f"unknown codec {self.name!r}; choose 'raw' or one of {', '.join(COMPRESSORS)}"
            )
        if not isinstance(self.level, int) or not 1 <= self.level <= 9:
            raise SchemaError(f"codec level must be an integer from 1 to 9, got {self.level!r}")
        if self.per_row and self.name == RAW:
            raise SchemaError("the per-row layout needs a compressor; 'raw' rows would gain nothing")
        if not self.shuffle and self.name == RAW:
            raise SchemaError("'noshuffle' applies to a compressor, not to 'raw'")

    def __str__(self) -> str:
        text = self.name if self.name == RAW else f"{self.name}:{self.level}"
        return text + ("" if self.shuffle else "/noshuffle") + ("/rows" if self.per_row else "")

    @classmethod
    def parse(cls, spec: str | Codec) -> Codec:
        """Parse ``"raw"``, ``"zstd"``, ``"lz4hc:9"``, ``"lz4:1/noshuffle"`` or
        ``"lz4hc:9/rows"`` into a Codec."""
        if isinstance(spec, Codec):
            return spec
        match = re.fullmatch(r"([a-z0-9]+)(?::(\d))?(/noshuffle)?(/rows|/chunks)?",
                             str(spec).strip())
        if match is None:
            raise SchemaError(
                f"cannot parse codec {spec!r}; expected NAME[:LEVEL][/noshuffle][/rows|/chunks], "
                "for instance 'raw', 'zstd:3' or 'lz4hc:5/rows'"
            )
        name, level, noshuffle, layout = match.groups()
        return cls(name, int(level) if level else 5, layout == "/rows", not noshuffle)

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {"name": self.name, "level": self.level, "per_row": self.per_row}
        if not self.shuffle:  # absent when true, so schemas written before it keep their hash
            doc["shuffle"] = False
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> Codec:
        return cls(str(doc["name"]), int(doc["level"]), bool(doc["per_row"]),  # type: ignore[call-overload]
                   bool(doc.get("shuffle", True)))


def default_codec(row_nbytes: int, kind: str = "f") -> Codec:
    """Per-row lz4hc for image-like rows (>= 1 KiB); lz4:1 chunks for small integer and bool
    fields (flags and discrete actions compress 10-100x at ~1 GB/s); lz4:1 without shuffle for
    small float fields, which compress 1.05-1.25x at best: near memcpy speed, and the padding
    of a partly filled chunk costs no disk."""
    if row_nbytes >= ROWS_LAYOUT_MIN_BYTES:
        return Codec("lz4hc", 5, per_row=True)
    if kind in "biu":
        return Codec("lz4", 1)
    return Codec("lz4", 1, shuffle=False)


def default_chunk_rows(row_nbytes: int, codec: Codec) -> int:
    """Rows per chunk (or per shard): a power of two near 1 MiB raw (16 MiB raw for shards).

    Big enough that a 1M-row store has few files, small enough that the partial chunk rewritten
    at each commit stays cheap.
    """
    target = (16 << 20) if codec.per_row else (1 << 20)
    rows = 1 << max(0, int(np.log2(max(1, target // max(1, row_nbytes)))))
    # A shard's index costs 16 bytes a row, written whole at each commit: at most 4096 rows.
    rows = min(max(rows, 64), 4096) if codec.per_row else min(max(rows, 1024), 65536)
    return int(max(1, min(rows, MAX_CHUNK_BYTES // max(1, row_nbytes))))


def _shuffle(codec: Codec, itemsize: int) -> int:
    # Byte shuffle groups the bytes of multi-byte numbers; for uint8 frames no shuffle beats
    # bitshuffle (lz4hc:5 on 84x84 frames: 21x and 3.2 µs/row against 15x and 5.6 µs/row).
    return blosc.SHUFFLE if codec.shuffle and itemsize > 1 else blosc.NOSHUFFLE


def _shuffle_name(codec: Codec, itemsize: int) -> str:
    return "shuffle" if _shuffle(codec, itemsize) == blosc.SHUFFLE else "noshuffle"


def crc_bytes(data: object) -> bytes:
    """The crc32c of ``data`` as zarr's crc32c codec stores it (uint32, little endian)."""
    if isinstance(data, memoryview):
        data = np.frombuffer(data, np.uint8)  # google_crc32c takes bytes or arrays, not views
    return int(google_crc32c.value(data)).to_bytes(4, "little")


def _compress(codec: Codec, array: np.ndarray) -> bytes:
    data = np.ascontiguousarray(array)
    if codec.name == RAW:
        return data.tobytes()
    itemsize = data.dtype.itemsize
    return blosc.compress(
        data, codec.name.encode(), codec.level, _shuffle(codec, itemsize), 0, itemsize
    )


def encode_chunk(codec: Codec, array: np.ndarray) -> bytes:
    """Encode a whole chunk (``chunks`` layout): payload followed by its crc32c."""
    payload = _compress(codec, array)
    return payload + crc_bytes(payload)


def decode_chunk(codec: Codec, data: bytes | memoryview, out: np.ndarray, *, key: str,
                 field: str) -> None:
    """Verify and decode a chunk file into ``out`` (C-contiguous, the chunk's full shape)."""
    view = memoryview(data)
    if len(view) < CHECKSUM_BYTES:
        raise CorruptChunkError(f"chunk {key!r} of field {field!r} is truncated "
                                f"({len(view)} bytes)", key=key, field=field)
    payload, stored = view[:-CHECKSUM_BYTES], bytes(view[-CHECKSUM_BYTES:])
    if crc_bytes(payload) != stored:
        raise CorruptChunkError(f"chunk {key!r} of field {field!r} fails its crc32c checksum",
                                key=key, field=field)
    target = out.reshape(-1).view(np.uint8)
    if codec.name == RAW:
        if len(payload) != target.nbytes:
            raise CorruptChunkError(
                f"chunk {key!r} of field {field!r} holds {len(payload)} bytes, "
                f"expected {target.nbytes}", key=key, field=field)
        target[:] = np.frombuffer(payload, np.uint8)
        return
    _decompress(payload, target, key=key, field=field)


def _decompress(payload: memoryview, target: np.ndarray, *, key: str, field: str) -> None:
    _check_blosc_header(payload, target.nbytes, key=key, field=field)
    try:
        blosc.decompress(payload, target)
    except RuntimeError as exc:
        raise CorruptChunkError(f"chunk {key!r} of field {field!r} cannot be decoded: {exc}",
                                key=key, field=field) from exc


def encode_row(codec: Codec, row: np.ndarray) -> bytes:
    """Encode one row as an inner chunk of a shard (``rows`` layout)."""
    return encode_chunk(codec, row)


def encode_shard(rows: list[bytes | None]) -> bytes:
    """Concatenate encoded rows and append the zarr v3 shard index (at the end, crc32c'd).

    ``None`` marks a row not yet written: the index records it as missing, which zarr reads as
    the fill value.
    """
    index = np.full((len(rows), 2), _MISSING, dtype="<u8")
    offset = 0
    for i, row in enumerate(rows):
        if row is not None:
            index[i] = offset, len(row)
            offset += len(row)
    index_bytes = index.tobytes()
    return b"".join(r for r in rows if r is not None) + index_bytes + crc_bytes(index_bytes)


BLOSC_MAX_OVERHEAD = 32  # blosc adds at most 16 bytes (its header) to incompressible data


def max_stored_bytes(codec: Codec, rows: int, row_nbytes: int) -> int:
    """The most bytes an encoded chunk (or shard) of ``rows`` rows can take: a larger file at
    its key is not one the writer made, and is refused before it is read."""
    if codec.per_row:
        return rows * (row_nbytes + BLOSC_MAX_OVERHEAD + CHECKSUM_BYTES) + shard_index_nbytes(rows)
    return rows * row_nbytes + BLOSC_MAX_OVERHEAD + CHECKSUM_BYTES


def shard_index_nbytes(rows: int) -> int:
    return rows * 16 + CHECKSUM_BYTES


def parse_shard(data: bytes | memoryview, rows: int, row_nbytes: int, *, key: str,
                field: str) -> tuple[list[int], list[int]]:
    """Check a shard's index and every row's blosc header; return (offsets, lengths).

    Missing rows have length 0. The header check (vectorised) guarantees that no row can make
    the decompressor read or write out of bounds; each row's crc32c is checked when the row is
    first decoded (:func:`decode_rows`), so opening a shard to read a few rows of it does not
    hash all of them.
    """
    view = memoryview(data)
    index_len = shard_index_nbytes(rows)
    if len(view) < index_len:
        raise CorruptChunkError(f"shard {key!r} of field {field!r} is truncated "
                                f"({len(view)} bytes)", key=key, field=field)
    index_bytes = view[len(view) - index_len:len(view) - CHECKSUM_BYTES]
    if crc_bytes(index_bytes) != bytes(view[len(view) - CHECKSUM_BYTES:]):
        raise CorruptChunkError(f"shard {key!r} of field {field!r}: index fails its crc32c "
                                "checksum", key=key, field=field)
    index = np.frombuffer(index_bytes, "<u8").reshape(rows, 2)
    missing = index[:, 0] == _MISSING
    offsets = np.where(missing, 0, index[:, 0]).astype(np.int64)
    lengths = np.where(missing, 0, index[:, 1]).astype(np.int64)
    body = len(view) - index_len
    if np.any(offsets + lengths > body) or np.any((lengths < CHECKSUM_BYTES + 16) & ~missing):
        raise CorruptChunkError(f"shard {key!r} of field {field!r}: index points outside the "
                                "shard", key=key, field=field)
    present = np.flatnonzero(~missing)
    if len(present):
        # blosc's 16-byte header: decoded size at bytes 4:8, encoded size at 12:16.
        header = np.frombuffer(view, np.uint8)[offsets[present, None] + np.arange(16)]
        words = header.copy().view("<u4")
        bad = (words[:, 1] != row_nbytes) | (words[:, 3] != lengths[present] - CHECKSUM_BYTES)
        if bad.any():
            raise CorruptChunkError(
                f"shard {key!r} of field {field!r}: row {int(present[np.argmax(bad)])} has a "
                f"malformed blosc header (expected {row_nbytes} bytes decoded)",
                key=key, field=field)
    return offsets.tolist(), lengths.tolist()


def _check_blosc_header(payload: memoryview, nbytes: int, *, key: str, field: str) -> None:
    # blosc's 16-byte header holds the decoded size at 4:8 and the encoded size at 12:16;
    # checking both before C sees the buffer means a damaged chunk cannot overrun ``out``.
    if (len(payload) < 16 or int.from_bytes(payload[4:8], "little") != nbytes
            or int.from_bytes(payload[12:16], "little") != len(payload)):
        raise CorruptChunkError(f"chunk {key!r} of field {field!r} has a malformed blosc "
                                f"header (expected {nbytes} bytes decoded)", key=key, field=field)


def _c_decompress() -> Any:
    """c-blosc's ``blosc_decompress_ctx``, called straight from numcodecs' extension module.

    numcodecs' Python wrapper spends ~3 µs a call on buffer checks and a multiprocessing
    lookup, about as long as decoding an 84x84 frame; a batch decodes hundreds of single
    rows, so rows go to C directly. None (numcodecs' wrapper is used) where the extension does
    not export the symbol.
    """
    try:
        fn = ctypes.CDLL(blosc.__file__).blosc_decompress_ctx
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_C_DECOMPRESS = _c_decompress()


def buffer_address(data: bytes) -> int:
    """Where the (immutable, unmoving) bytes of ``data`` lie, for :func:`decode_rows`."""
    return np.frombuffer(data, np.uint8).ctypes.data if len(data) else 0


def decode_rows(shards: list[Any], rows: list[int], out: np.ndarray, *, field: str,
                missing: np.ndarray | None = None) -> None:
    """Decode row ``rows[i]`` of shard ``shards[i]`` into ``out[i]`` (C-contiguous).

    Each shard has ``key``, ``data`` (memoryview of bytes), ``address`` (see
    :func:`buffer_address`), ``offsets`` and ``lengths`` (lists, as returned by
    :func:`parse_shard`, which already checked every row's blosc header, so a row cannot make
    the decoder read or write out of bounds) and ``verified`` (a bytearray: rows whose crc32c
    was checked; a row is checked the first time it is decoded). A row the shard does not hold
    raises, unless ``missing`` is given: then ``missing[i]`` is set instead.
    """
    if not rows:
        return
    flat = out.reshape(len(rows), -1).view(np.uint8)
    size = flat.shape[1]
    base = flat.ctypes.data
    c_decompress = _C_DECOMPRESS
    for i, (shard, row) in enumerate(zip(shards, rows, strict=True)):
        offset, length = shard.offsets[row], shard.lengths[row]
        if length == 0 and missing is not None:
            missing[i] = True
            continue
        if length == 0:
            raise CorruptChunkError(f"shard {shard.key!r} of field {field!r} lacks committed "
                                    f"row {row}", key=shard.key, field=field)
        if not shard.verified[row]:
            end = offset + length - CHECKSUM_BYTES
            if crc_bytes(shard.data[offset:end]) != shard.data[end:end + CHECKSUM_BYTES]:
                raise CorruptChunkError(f"shard {shard.key!r} of field {field!r}: row {row} "
                                        "fails its crc32c checksum", key=shard.key, field=field)
            shard.verified[row] = 1
        if c_decompress is not None:
            ok = c_decompress(shard.address + offset, base + i * size, size, 1) == size
            error = "blosc_decompress_ctx failed"
        else:
            try:
                blosc.decompress(shard.data[offset:offset + length - CHECKSUM_BYTES], flat[i])
                ok = True
            except RuntimeError as exc:
                ok, error = False, str(exc)
        if not ok:
            raise CorruptChunkError(f"shard {shard.key!r} of field {field!r} cannot be "
                                    f"decoded: {error}", key=shard.key, field=field)


def zarr_codecs(codec: Codec, chunk_shape: tuple[int, ...], dtype: np.dtype) -> list[dict]:
    """The zarr v3 ``codecs`` list that describes exactly the bytes this module writes."""
    itemsize = dtype.itemsize
    inner: list[dict] = [{"name": "bytes", "configuration": {"endian": "little"}}]
    if codec.name != RAW:
        inner.append({"name": "blosc", "configuration": {
            "typesize": itemsize, "cname": codec.name, "clevel": codec.level,
            "shuffle": _shuffle_name(codec, itemsize), "blocksize": 0}})
    inner.append({"name": "crc32c"})
    if not codec.per_row:
        return inner
    return [{"name": "sharding_indexed", "configuration": {
        "chunk_shape": [1, *chunk_shape[1:]],
        "codecs": inner,
        "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                         {"name": "crc32c"}],
        "index_location": "end"}}]
