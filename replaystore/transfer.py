"""Moving rows between stores and files: export, import and merge.

Formats
-------
``npz``
    One array per field, named by field, rows oldest first, as a learner reads them (derived
    fields rebuilt: ``next_obs`` in full, frame stacks stacked), plus ``_meta`` (a JSON string:
    the schema, capacity and priority alpha) and ``_priority`` when the store has a priority
    index. Written member by member and read back in blocks, so neither direction holds the
    store in memory.
``hdf5`` (D4RL style, needs h5py)
    Datasets ``observations``, ``actions``, ``rewards``, ``terminals``, ``timeouts`` and
    ``next_observations`` for obs, action, reward, terminated, truncated and next_obs; other
    fields under their own names; ``_meta`` and ``_priority`` as in npz (``_meta`` is a file
    attribute). Plain D4RL files import too (their ``infos/`` and ``metadata/`` groups are
    skipped).
``minari`` (import only, needs minari)
    A Minari dataset folder (the one holding ``metadata.json`` and the data file, or its
    parent).

Files made without ``_meta`` (a D4RL file, an npz from another tool) get a schema inferred from
the arrays: names are mapped as above, shapes and dtypes kept.

Every output is written under a temporary name next to it and renamed into place when
complete; on any error the temporary output is removed, so a half-written store or file never
appears under the requested name.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ReplayStoreError, SchemaError, StoreExistsError
from .optional import require
from .schema import EPISODE_FIELDS, Schema
from .store import Store, create, open

FORMATS = ("npz", "hdf5")
#: Store field -> D4RL dataset name.
D4RL_NAMES = {"obs": "observations", "action": "actions", "reward": "rewards",
              "terminated": "terminals", "truncated": "timeouts",
              "next_obs": "next_observations"}
_FROM_D4RL = {v: k for k, v in D4RL_NAMES.items()}
META_KEY = "_meta"
PRIORITY_KEY = "_priority"
BLOCK_BYTES = 64 << 20
_NEVER_ROWS = 1 << 62


class TransferError(ReplayStoreError, ValueError):
    """A file cannot be exported, imported or merged (unknown format, missing arrays...)."""


@dataclass
class TransferResult:
    """What an export, import or merge wrote."""

    path: str
    format: str
    rows: int
    episodes: int
    fields: list[str]
    priorities: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def detect_format(path: str | os.PathLike[str]) -> str:
    """``npz``, ``hdf5`` or ``minari`` from a file's extension, or a folder's contents."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix in (".h5", ".hdf5", ".hdf"):
        return "hdf5"
    if p.is_dir() and (_minari_data_path(p) is not None):
        return "minari"
    raise TransferError(f"cannot tell the format of {str(path)!r}: use a .npz, .h5 or .hdf5 "
                        "file, or a Minari dataset folder")


# -- crash-safe outputs ----------------------------------------------------------------------

def _partial_name(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial-{os.getpid()}")


def _remove_stale_partials(out: Path) -> None:
    """Remove temporary outputs of earlier runs that died (their process is gone)."""
    prefix = f".{out.name}.partial-"
    with contextlib.suppress(OSError):
        for entry in out.parent.iterdir():
            if not entry.name.startswith(prefix):
                continue
            try:
                pid = int(entry.name[len(prefix):])
                os.kill(pid, 0)
            except ProcessLookupError:
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink()
            except (ValueError, PermissionError):
                continue


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _staged(out: Path, *, directory: bool, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; rename it to ``out`` if the block succeeds."""
    out = Path(out)
    if out.exists():
        empty_dir = out.is_dir() and not any(out.iterdir())
        if not (empty_dir or (overwrite and not directory and out.is_file())):
            raise StoreExistsError(f"{str(out)!r} exists; choose a new name"
                                   + ("" if directory else " (or overwrite it)"))
    if not out.parent.is_dir():
        raise FileNotFoundError(f"folder {str(out.parent)!r} does not exist")
    _remove_stale_partials(out)
    tmp = _partial_name(out)
    try:
        yield tmp
        if directory and out.is_dir():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
        _fsync_dir(out.parent)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


# -- reading a store in blocks -----------------------------------------------------------------

def _block_rows(schema: Schema, names: Sequence[str]) -> int:
    row = sum(int(np.prod(schema[n].read_shape, dtype=np.int64)) * schema[n].dtype.itemsize
              for n in names)
    return max(1, BLOCK_BYTES // max(row, 1))


def _blocks(store: Store, names: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
    slots = store.slots()
    step = _block_rows(store.schema, names)
    for i in range(0, len(slots), step):
        yield store.get(slots[i:i + step], names)


def priority_values(store: Store, slots: np.ndarray | None = None
                    ) -> tuple[np.ndarray, float] | None:
    """Priorities of ``slots`` (default: every committed row, oldest first) and the index's
    alpha, or None when the store has no priority index (none is created, even on a writer)."""
    if not store.has_priority_index():
        return None
    index = store.priority_index()
    slots = store.slots() if slots is None else slots
    return np.asarray(index.priorities(slots), np.float64), float(index.header.alpha)


def _meta(store: Store, alpha: float | None) -> str:
    return json.dumps({"format": "replaystore-export", "version": 1,
                       "schema": store.schema.to_json(), "capacity": store.capacity,
                       "priority_alpha": alpha})


def _to_stored(schema: Schema, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Values as read (stacks, rebuilt next values) back to what ``extend`` takes."""
    out = {}
    for f in schema:
        value = np.asarray(batch[f.name])
        out[f.name] = value[:, -1] if f.stack > 1 else value  # a stack ends with the row's frame
    return out


# -- export ------------------------------------------------------------------------------------

def export_store(store: Store | str | os.PathLike[str], out: str | os.PathLike[str], *,
                 format: str | None = None, compress: bool = False,
                 overwrite: bool = False) -> TransferResult:
    """Write a store's committed rows to an npz or D4RL-style HDF5 file.

    Parameters
    ----------
    store
        An open store or a path.
    out
        The file to write; the format comes from its extension (``.npz``, ``.h5``, ``.hdf5``)
        unless ``format`` is given.
    format
        ``"npz"`` or ``"hdf5"``.
    compress
        Deflate the npz members / gzip the HDF5 datasets.
    overwrite
        Replace an existing file (atomically).

    Examples
    --------
    >>> import replaystore as rs
    >>> rs.export_store("runs/cartpole", "cartpole.h5").rows  # doctest: +SKIP
    50000
    """
    if not isinstance(store, Store):
        with open(store) as opened:
            return export_store(opened, out, format=format, compress=compress,
                                overwrite=overwrite)
    out = Path(out)
    fmt = format or detect_format(out)
    if fmt not in FORMATS:
        raise TransferError(f"cannot export to format {fmt!r}; use npz or hdf5")
    h5py = require("h5py", "hdf5", "exporting to HDF5") if fmt == "hdf5" else None
    prio = priority_values(store)
    meta = _meta(store, prio[1] if prio else None)
    rows = len(store)
    with _staged(out, directory=False, overwrite=overwrite) as tmp:
        if fmt == "npz":
            _write_npz(tmp, store, meta, prio, compress)
        else:
            _write_hdf5(h5py, tmp, store, meta, prio, compress)
    return TransferResult(str(out), fmt, rows, len(store.episodes), list(store.schema.names),
                          priorities=prio is not None)


def _write_npz(tmp: Path, store: Store, meta: str, prio: tuple[np.ndarray, float] | None,
               compress: bool) -> None:
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    rows = len(store)
    with zipfile.ZipFile(tmp, "w", compression=mode, allowZip64=True) as zf:
        for f in store.schema:
            header = {"descr": np.lib.format.dtype_to_descr(f.dtype), "fortran_order": False,
                      "shape": (rows, *f.read_shape)}
            with zf.open(f"{f.name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_2_0(member, header)
                for block in _blocks(store, [f.name]):
                    member.write(np.ascontiguousarray(block[f.name], f.dtype).tobytes())
        extras = {META_KEY: np.array(meta)}
        if prio is not None:
            extras[PRIORITY_KEY] = prio[0]
        for key, array in extras.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
        zf.fp.flush()  # type: ignore[union-attr]
        os.fsync(zf.fp.fileno())  # type: ignore[union-attr]


def _write_hdf5(h5py: Any, tmp: Path, store: Store, meta: str,
                prio: tuple[np.ndarray, float] | None, compress: bool) -> None:
    rows = len(store)
    with h5py.File(tmp, "w") as h5:
        h5.attrs[META_KEY] = meta
        for f in store.schema:
            shape = (rows, *f.read_shape)
            chunk_rows = max(1, min(rows, (1 << 20) // max(1, f.row_nbytes * f.stack)))
            ds = h5.create_dataset(D4RL_NAMES.get(f.name, f.name), shape=shape, dtype=f.dtype,
                                   chunks=(chunk_rows, *f.read_shape) if rows else None,
                                   compression="gzip" if compress and rows else None)
            at = 0
            for block in _blocks(store, [f.name]):
                ds[at:at + len(block[f.name])] = block[f.name]
                at += len(block[f.name])
        if prio is not None:
            h5.create_dataset(PRIORITY_KEY, data=prio[0])
    with tmp.open("rb+") as fh:
        os.fsync(fh.fileno())


# -- sources: npz, hdf5, minari --------------------------------------------------------------

class _Source:
    """Rows of an input file, in blocks: ``names`` -> (shape per row, dtype)."""

    meta: dict[str, Any] | None
    rows: int
    arrays: dict[str, tuple[tuple[int, ...], np.dtype]]
    priorities: np.ndarray | None
    notes: list[str]

    def blocks(self, rows: int) -> Iterator[dict[str, np.ndarray]]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _NpzSource(_Source):
    def __init__(self, path: Path) -> None:
        self.notes = []
        try:
            self.zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise TransferError(f"{str(path)!r} is not an npz file: {exc}") from None
        self.members: dict[str, str] = {}
        self.arrays = {}
        self.meta = None
        self.priorities = None
        headers = {}
        for info in self.zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            key = info.filename[:-4]
            with self.zf.open(info) as fh:
                shape, fortran, dtype = _read_npy_header(fh, path, key)
            if key in (META_KEY, PRIORITY_KEY):
                # Checked before numpy reads it: object arrays would need unpickling, and a
                # header may claim far more data than the member holds.
                if dtype.hasobject or math.prod(shape) * dtype.itemsize > info.file_size:
                    raise TransferError(f"{str(path)!r}: member {key!r} is not a plain array "
                                        f"of the size it claims ({shape}, {dtype})")
                value = self._load(info.filename)
                if key == META_KEY:
                    self.meta = _parse_meta(str(value), path)
                else:
                    self.priorities = np.asarray(value, np.float64)
                continue
            if fortran or dtype.hasobject or not shape:
                self.notes.append(f"skipped {key!r}: not a row array (shape {shape}, {dtype})")
                continue
            headers[key] = (shape, dtype, info.filename)
        self.rows = _common_rows({k: v[0] for k, v in headers.items()}, path, self.notes)
        for key, (shape, dtype, member) in headers.items():
            if shape[0] == self.rows:
                self.arrays[key] = (tuple(shape[1:]), dtype)
                self.members[key] = member

    def _load(self, member: str) -> np.ndarray:
        with self.zf.open(member) as fh:
            return np.lib.format.read_array(fh, allow_pickle=False)

    def blocks(self, rows: int) -> Iterator[dict[str, np.ndarray]]:
        handles = {}
        try:
            for key, member in self.members.items():
                fh = self.zf.open(member)
                handles[key] = fh
                _read_npy_header(fh, Path(member), key)
            for start in range(0, self.rows, rows):
                n = min(rows, self.rows - start)
                out = {}
                for key, fh in handles.items():
                    shape, dtype = self.arrays[key]
                    count = n * int(np.prod(shape, dtype=np.int64))
                    data = fh.read(count * dtype.itemsize)
                    if len(data) != count * dtype.itemsize:
                        raise TransferError(f"array {key!r} of the npz file is truncated")
                    out[key] = np.frombuffer(data, dtype).reshape((n, *shape))
                yield out
        finally:
            for fh in handles.values():
                fh.close()

    def close(self) -> None:
        self.zf.close()


def _read_npy_header(fh: Any, path: Path, key: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(fh)
        return np.lib.format.read_array_header_2_0(fh)
    except ValueError as exc:
        raise TransferError(f"{str(path)!r}: member {key!r} is not a .npy array: {exc}") from None


def _parse_meta(text: str, path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(text)
        Schema.from_json(meta["schema"])
    except (ValueError, KeyError, TypeError, SchemaError) as exc:
        raise TransferError(f"{str(path)!r}: malformed {META_KEY}: {exc}") from None
    return meta


def _common_rows(shapes: dict[str, tuple[int, ...]], path: Path, notes: list[str]) -> int:
    if not shapes:
        raise TransferError(f"{str(path)!r} holds no arrays")
    lengths = {k: s[0] for k, s in shapes.items()}
    reward = next((lengths[k] for k in ("reward", "rewards") if k in lengths), None)
    rows = reward if reward is not None else max(lengths.values())
    for key, n in lengths.items():
        if n != rows:
            notes.append(f"skipped {key!r}: {n} rows, not {rows}")
    return rows


class _Hdf5Source(_Source):
    def __init__(self, path: Path) -> None:
        h5py = require("h5py", "hdf5", "importing HDF5")
        self.notes = []
        try:
            self.h5 = h5py.File(path, "r")
        except OSError as exc:
            raise TransferError(f"{str(path)!r} is not an HDF5 file: {exc}") from None
        self.meta = (_parse_meta(str(self.h5.attrs[META_KEY]), path)
                     if META_KEY in self.h5.attrs else None)
        self.priorities = (np.asarray(self.h5[PRIORITY_KEY], np.float64)
                           if PRIORITY_KEY in self.h5 else None)
        datasets = {}
        for key, item in self.h5.items():
            if key == PRIORITY_KEY:
                continue
            if not isinstance(item, h5py.Dataset):
                self.notes.append(f"skipped group {key!r}/")
                continue
            if item.dtype.kind not in "biuf" or not item.shape:
                self.notes.append(f"skipped {key!r}: not a numeric row array")
                continue
            datasets[key] = item
        self.rows = _common_rows({k: d.shape for k, d in datasets.items()}, path, self.notes)
        self.datasets = {k: d for k, d in datasets.items() if d.shape[0] == self.rows}
        self.arrays = {k: (tuple(d.shape[1:]), np.dtype(d.dtype))
                       for k, d in self.datasets.items()}

    def blocks(self, rows: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self.rows, rows):
            yield {k: d[start:start + rows] for k, d in self.datasets.items()}

    def close(self) -> None:
        self.h5.close()


def _minari_data_path(folder: Path) -> Path | None:
    for candidate in (folder, folder / "data"):
        meta = candidate / "metadata.json"
        if meta.is_file():
            with contextlib.suppress(OSError, ValueError):
                if "minari_version" in json.loads(meta.read_text()):
                    return candidate
    return None


class _MinariSource(_Source):
    """Episodes of a Minari dataset: ``observations`` has one more row than the actions."""

    def __init__(self, path: Path) -> None:
        minari = require("minari", "minari", "importing a Minari dataset")
        data_path = _minari_data_path(path)
        if data_path is None:
            raise TransferError(f"{str(path)!r} is not a Minari dataset folder")
        self.notes = []
        self.meta = None
        self.priorities = None
        try:
            self.dataset = minari.MinariDataset(data_path.resolve())
        except Exception as exc:  # minari raises ValueError, KeyError, OSError...
            raise TransferError(f"cannot read the Minari dataset at {str(path)!r}: "
                                f"{type(exc).__name__}: {exc}") from exc
        self.rows = int(self.dataset.total_steps)
        first = next(iter(self.dataset.iterate_episodes()), None)
        if first is None:
            raise TransferError(f"the Minari dataset at {str(path)!r} has no episodes")
        for name, value in (("observations", first.observations), ("actions", first.actions)):
            if not isinstance(value, np.ndarray):
                raise TransferError(f"Minari {name} of type {type(value).__name__} (a dict or "
                                    "tuple space) cannot be imported; only array spaces can")
        obs, act = np.asarray(first.observations), np.asarray(first.actions)
        self.arrays = {"obs": (obs.shape[1:], obs.dtype), "action": (act.shape[1:], act.dtype),
                       "next_obs": (obs.shape[1:], obs.dtype),
                       "reward": ((), np.dtype("float32")), "terminated": ((), np.dtype(bool)),
                       "truncated": ((), np.dtype(bool))}
        self.meta_fields = {"obs": {"shape": obs.shape[1:], "dtype": _storable(obs.dtype)},
                            "action": {"shape": act.shape[1:], "dtype": _storable(act.dtype)},
                            "next_obs": {"next_of": "obs"}}
        self.unended = 0

    def blocks(self, rows: int) -> Iterator[dict[str, np.ndarray]]:
        for ep in self.dataset.iterate_episodes():
            obs = np.asarray(ep.observations)
            terminated = np.asarray(ep.terminations, bool).copy()
            truncated = np.asarray(ep.truncations, bool).copy()
            if len(terminated) and not (terminated[-1] or truncated[-1]):
                truncated[-1] = True  # Minari episodes are whole: keep them apart
                self.unended += 1
            yield {"obs": obs[:-1], "next_obs": obs[1:], "action": np.asarray(ep.actions),
                   "reward": np.asarray(ep.rewards, np.float32), "terminated": terminated,
                   "truncated": truncated}


def _storable(dtype: np.dtype) -> str:
    return "float32" if dtype == np.float64 else np.dtype(dtype).name


def _open_source(path: Path, fmt: str) -> _Source:
    if fmt == "npz":
        return _NpzSource(path)
    if fmt == "hdf5":
        return _Hdf5Source(path)
    if fmt == "minari":
        return _MinariSource(path)
    raise TransferError(f"cannot import format {fmt!r}; use npz, hdf5 or minari")


def _plan(source: _Source
          ) -> tuple[dict[str, Any] | Schema, dict[str, str], int | None, float | None]:
    """The fields to create, source array -> field, capacity and priority alpha."""
    if isinstance(source, _MinariSource):
        return source.meta_fields, {k: k for k in source.arrays}, None, None
    if source.meta is not None:
        schema = Schema.from_json(source.meta["schema"])
        mapping = {}
        for f in schema:
            key = f.name if f.name in source.arrays else D4RL_NAMES.get(f.name)
            if key not in source.arrays:
                raise TransferError(f"the file's schema names field {f.name!r} but it holds no "
                                    "such array")
            shape, _ = source.arrays[key]
            if shape != f.read_shape:
                raise TransferError(f"array {key!r} has rows of shape {shape}, the schema's "
                                    f"field {f.name!r} {f.read_shape}")
            mapping[key] = f.name
        return (schema, mapping, source.meta.get("capacity"), source.meta.get("priority_alpha"))
    fields: dict[str, Any] = {}
    mapping = {}
    for key, (shape, dtype) in source.arrays.items():
        name = _FROM_D4RL.get(key, key)
        if name in fields:
            source.notes.append(f"skipped {key!r}: field {name!r} already comes from another "
                                "array")
            continue
        # terminals stored as float 0/1 become bool (the write checks that nothing is lost)
        spec = ((), EPISODE_FIELDS[name]) if name in EPISODE_FIELDS and shape == () \
            else (shape, dtype.name)
        try:
            Schema.from_fields({name: spec})
        except SchemaError as exc:
            source.notes.append(f"skipped {key!r}: {exc}")
            continue
        fields[name] = spec
        mapping[key] = name
    missing = [n for n in EPISODE_FIELDS if n not in fields]
    if missing:
        raise TransferError(f"the file has no {', '.join(map(repr, missing))} array (D4RL "
                            f"names: {', '.join(D4RL_NAMES[n] for n in missing)}); "
                            "episodes are built from them")
    return fields, mapping, None, None


# -- import ------------------------------------------------------------------------------------

def import_store(src: str | os.PathLike[str], path: str | os.PathLike[str], *,
                 format: str | None = None, capacity: int | None = None) -> TransferResult:
    """Create a store at ``path`` from an npz file, a (D4RL-style) HDF5 file or a Minari
    dataset folder.

    Files written by :func:`export_store` come back exactly: same schema (codecs, derived
    fields), rows, episodes and priorities. Other files get a schema inferred from their
    arrays (D4RL names are mapped to obs, action, reward, terminated, truncated, next_obs).
    The store is built under a temporary name and renamed into place when committed.

    Parameters
    ----------
    src
        The file or folder to read.
    path
        The store to create; it must not exist (an empty folder is fine).
    format
        ``"npz"``, ``"hdf5"`` or ``"minari"``; guessed from ``src`` when None.
    capacity
        Ring size of the new store (default: the exported store's, else unbounded).

    Examples
    --------
    >>> import replaystore as rs
    >>> rs.import_store("hopper-medium-v2.hdf5", "runs/hopper").rows  # doctest: +SKIP
    1000000
    """
    src, out = Path(src), Path(path)
    fmt = format or detect_format(src)
    if not src.exists():
        raise FileNotFoundError(f"{str(src)!r} does not exist")
    source = _open_source(src, fmt)
    try:
        fields, mapping, saved_capacity, alpha = _plan(source)
        cap = capacity if capacity is not None else saved_capacity
        with _staged(out, directory=True) as tmp:
            store = create(tmp, fields, capacity=cap, commit_every_rows=_NEVER_ROWS,
                           commit_every_seconds=float("inf"))
            try:
                step = _block_rows(store.schema, store.schema.names)
                for block in source.blocks(step):
                    batch = {mapping[k]: v for k, v in block.items() if k in mapping}
                    store.extend(_to_stored(store.schema, batch))
                store.commit()
                has_prio = _restore_priorities(store, source, alpha)
                result = TransferResult(str(out), fmt, len(store), len(store.episodes),
                                        list(store.schema.names), has_prio, source.notes)
            finally:
                store.close()
        if isinstance(source, _MinariSource) and source.unended:
            result.notes.append(f"{source.unended} episodes ended with neither flag; their "
                                "last step is stored truncated=True")
        return result
    finally:
        source.close()


def _restore_priorities(store: Store, source: _Source, alpha: float | None) -> bool:
    prio = source.priorities
    if prio is None or alpha is None:
        return False
    if len(prio) != source.rows:
        source.notes.append(f"skipped {PRIORITY_KEY!r}: {len(prio)} values for "
                            f"{source.rows} rows")
        return False
    prio = prio[source.rows - len(store):]  # a smaller ring keeps the newest rows
    index = store.priority_index(alpha)
    index.set(store.slots(), prio ** alpha)
    index.note_max(float(prio.max()) if len(prio) else 1.0)
    store.commit()
    return True


# -- merge -------------------------------------------------------------------------------------

def _describe(schema: Schema, name: str) -> str:
    f = schema[name]
    extra = (f" next_of={f.next_of}" if f.next_of else "") + (f" stack={f.stack}"
                                                               if f.stack > 1 else "")
    return f"{f.describe()}{extra}"


def check_same_schema(a: Schema, b: Schema, a_name: str, b_name: str) -> None:
    """Raise SchemaError naming the first field that differs (codecs may differ)."""
    for name in a.names:
        if name not in b.names:
            raise SchemaError(f"schemas differ: field {name!r} is in {a_name} but not in "
                              f"{b_name}")
        if _describe(a, name) != _describe(b, name):
            raise SchemaError(f"schemas differ: field {name!r} is {_describe(a, name)} in "
                              f"{a_name} but {_describe(b, name)} in {b_name}")
    for name in b.names:
        if name not in a.names:
            raise SchemaError(f"schemas differ: field {name!r} is in {b_name} but not in "
                              f"{a_name}")


def merge_stores(sources: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                 capacity: int | None = None) -> TransferResult:
    """Create a store at ``out`` holding the committed rows of each source, in order.

    The schemas must match field for field (name, shape, dtype, derived-field settings; the
    first source's codecs are used). Episodes stay whole: each source's rows are copied in
    order, and an episode a source left unfinished is closed by marking its last step
    ``truncated=True``, so no episode runs from one source into the next and the output ends
    between episodes (``record --append`` can continue it). Priorities are
    carried over when every source has a priority index with the same alpha. The output is
    built under a temporary name and renamed into place when committed.

    Examples
    --------
    >>> import replaystore as rs
    >>> rs.merge_stores(["runs/a", "runs/b"], "runs/ab").rows  # doctest: +SKIP
    150000
    """
    if len(sources) < 2:
        raise TransferError("merge needs at least two source stores")
    out = Path(out)
    stores: list[Store] = []
    try:
        for src in sources:
            stores.append(open(src))
        first = stores[0]
        for other, name in zip(stores[1:], sources[1:], strict=True):
            check_same_schema(first.schema, other.schema, str(sources[0]), str(name))
        prios = [priority_values(s) for s in stores]
        alphas = {p[1] for p in prios if p is not None}
        carry = all(p is not None for p in prios) and len(alphas) == 1
        notes = []
        if any(p is not None for p in prios) and not carry:
            notes.append("priorities not carried: not every source has a priority index with "
                         "the same alpha")
        with _staged(out, directory=True) as tmp:
            dest = create(tmp, first.schema, capacity=capacity, commit_every_rows=_NEVER_ROWS,
                          commit_every_seconds=float("inf"))
            try:
                for src, store in zip(sources, stores, strict=True):
                    closed = _copy_rows(store, dest)
                    if closed:
                        notes.append(f"{src}: its unfinished last episode ({closed} rows) is "
                                     "stored with truncated=True on its last step")
                dest.commit()
                if carry:
                    values = np.concatenate([p[0] for p in prios if p is not None])
                    values = values[len(values) - len(dest):]
                    alpha = alphas.pop()
                    index = dest.priority_index(alpha)
                    index.set(dest.slots(), values ** alpha)
                    index.note_max(float(values.max()) if len(values) else 1.0)
                    dest.commit()
                result = TransferResult(str(out), "store", len(dest), len(dest.episodes),
                                        list(dest.schema.names), carry, notes)
            finally:
                dest.close()
        return result
    finally:
        for store in stores:
            store.close()


def _copy_rows(src: Store, dest: Store) -> int:
    """Append src's committed rows to dest; returns the length of an episode it had to close."""
    names = src.schema.names
    open_episode = src.manifest.open_episode
    total = len(src)
    copied = 0
    for block in _blocks(src, names):
        stored = _to_stored(src.schema, block)
        copied += len(block["reward"])
        if copied == total and open_episode is not None and len(block["reward"]):
            stored["truncated"] = stored["truncated"].copy()
            stored["truncated"][-1] = True
        dest.extend(stored)
    return open_episode[1] if open_episode is not None and total else 0
