"""The one place that touches files: every chunk, manifest, episode block and lock goes through here.

Keys are ``/``-separated relative names (``obs/c/3/0``, ``_replaystore/manifest.json``). The
verbs are few on purpose, so that an object-storage backend can implement the same set later:
``read``, ``write`` (atomic replace), ``sync`` (make earlier writes durable), ``exists``,
``size``, ``delete``, ``list``, and ``lock`` for the single-writer lock. The priority index
needs three more that only local storage offers: ``allocate`` (space reserved), ``memmap`` and
``open_log`` (an append-only undo log); an object-storage backend keeps that index on local
disk.

Unlike zarr's local store, ``write`` never exposes a half-written file (it writes a temporary
file and renames it over the key) and durable writes fsync the file before the rename and the
directory after it.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import CorruptStoreError
from .lock import WriterLock

_SEGMENT = re.compile(r"[A-Za-z0-9_.-]+")
TMP_MARK = ".tmp-"
_RENAME_EXCHANGE = 2  # linux/fs.h


def check_key(key: str) -> str:
    """Refuse keys that could escape the store (absolute paths, ``..``, odd characters)."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") or not _SEGMENT.fullmatch(p) for p in parts):
        raise CorruptStoreError(f"refusing unsafe storage key {key!r}", key=key)
    return key


class LocalBackend:
    """Files under one root directory of the local file system."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._counter = itertools.count()
        self._unsynced_dirs: set[Path] = set()
        self._safe_dirs: set[Path] = set()

    def __repr__(self) -> str:
        return f"LocalBackend({str(self.root)!r})"

    def is_container(self) -> bool:
        """Whether the root exists as a folder (object stores: the prefix is usable)."""
        return self.root.is_dir()

    def is_empty(self) -> bool:
        """Whether nothing at all is stored under the root (a missing root is empty)."""
        return not self.root.exists() or (self.root.is_dir() and not any(self.root.iterdir()))

    def make_container(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def destroy(self) -> None:
        """Delete the root and everything under it."""
        shutil.rmtree(self.root)

    def _path(self, key: str) -> Path:
        path = self.root / check_key(key)
        if path.parent != self.root and path.parent not in self._safe_dirs:
            self._check_folders(path.parent, key)
        return path

    def _check_folders(self, folder: Path, key: str) -> None:
        """Refuse a key whose folders include a symbolic link (out of the store, perhaps).

        O_NOFOLLOW guards only a path's last component; folders are checked here, once each.
        """
        current = self.root
        for part in folder.relative_to(self.root).parts:
            current = current / part
            if current.is_symlink():
                raise CorruptStoreError(f"refusing {key!r}: {str(current)!r} is a symbolic "
                                        "link", key=key)
        if folder.is_dir():
            self._safe_dirs.add(folder)

    def read(self, key: str) -> bytes:
        """Return the bytes stored at ``key``; FileNotFoundError if there are none."""
        # O_NOFOLLOW: a symlink planted in a store must not make us read outside of it.
        fd = _open_no_link(self._path(key), os.O_RDONLY, key)
        try:
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read()
        finally:
            os.close(fd)

    def write(self, key: str, data: bytes | memoryview, *, durable: bool = False) -> None:
        """Atomically replace ``key`` with ``data``.

        Readers see the old bytes or the new ones, never a mix. With ``durable=True`` the data
        and the rename are on disk when this returns; otherwise call :meth:`sync` later.
        """
        path = self._path(key)
        self._make_parent(path)
        tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}-{next(self._counter)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            raise _naming(exc, path) from None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        except BaseException as exc:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise _naming(exc, path) from None
            raise
        os.close(fd)
        os.replace(tmp, path)
        if durable:
            self._fsync_dir(path.parent)
            self.sync_dirs()

    def sync(self, keys: Iterable[str]) -> None:
        """Make earlier non-durable writes of ``keys`` (and the directories holding them) durable."""
        dirs = set()
        for key in keys:
            path = self._path(key)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            dirs.add(path.parent)
        for directory in dirs:
            self._fsync_dir(directory)
        self.sync_dirs()

    def sync_dirs(self) -> None:
        """fsync the parents of directories created since the last sync."""
        while self._unsynced_dirs:
            self._fsync_dir(self._unsynced_dirs.pop())

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def allocated(self, key: str) -> int:
        """Bytes of disk the stored value occupies (less than its size when sparse)."""
        return self._path(key).stat().st_blocks * 512

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix`` (a directory key, or "" for all), temporary files excluded."""
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return
        for dirpath, _, files in os.walk(base):
            rel = Path(dirpath).relative_to(self.root)
            for name in files:
                if TMP_MARK not in name:
                    yield (rel / name).as_posix()

    def remove_temporary(self) -> int:
        """Delete temporary files left by a writer that died mid-write; return how many."""
        removed = 0
        for dirpath, _, files in os.walk(self.root):
            for name in files:
                if TMP_MARK in name:
                    (Path(dirpath) / name).unlink(missing_ok=True)
                    removed += 1
        return removed

    def allocate(self, key: str, nbytes: int) -> None:
        """Create ``key`` as ``nbytes`` zero bytes, its disk space reserved but not written.

        The space is reserved (``posix_fallocate``) because the file is then written through a
        memory mapping: on a full disk, a store to an unreserved page cannot raise an error and
        kills the process with SIGBUS instead. Reserving raises ENOSPC here, naming the file.
        Nothing is read into memory until touched.
        """
        path = self._path(key)
        self._make_parent(path)
        try:
            with open(path, "wb") as f:
                f.truncate(nbytes)
                os.posix_fallocate(f.fileno(), 0, nbytes)
                os.fsync(f.fileno())
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise _naming(exc, path) from None
        self._fsync_dir(path.parent)

    def memmap(self, key: str, dtype: str, shape: tuple[int, ...], *,
               writable: bool) -> np.memmap:
        """Map ``key`` into memory, shared with every other process that maps it."""
        path = self._path(key)
        if path.is_symlink():
            raise CorruptStoreError(f"refusing to map {key!r}: it is a symbolic link", key=key)
        return np.memmap(path, dtype=dtype, mode="r+" if writable else "r", shape=shape)

    def open_log(self, key: str) -> BinaryIO:
        """An append-only handle on ``key`` (created if missing), for undo logs."""
        path = self._path(key)
        self._make_parent(path)
        fd = _open_no_link(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, key)
        return os.fdopen(fd, "ab")

    def lock(self, key: str) -> WriterLock:
        """Take the exclusive single-writer lock stored at ``key`` (raises if another holds it)."""
        path = self._path(key)
        self._make_parent(path)
        if path.is_symlink():
            raise CorruptStoreError(f"refusing the lock {key!r}: it is a symbolic link", key=key)
        return WriterLock.acquire(path)

    def lock_holder(self, key: str) -> int | None:
        """The pid of the live process holding the lock at ``key``, or None."""
        path = self._path(key)
        if path.is_symlink():
            raise CorruptStoreError(f"refusing the lock {key!r}: it is a symbolic link", key=key)
        return WriterLock.holder(path)

    # -- replacing the whole store (prune, compact, repair) ----------------------------------

    def identity(self) -> tuple[int, int]:
        """What the root currently is (device, inode); it changes when the store is replaced."""
        st = self.root.stat()
        return st.st_dev, st.st_ino

    def staging(self) -> LocalBackend:
        """An empty backend beside this one, where a replacement store is built.

        A staging folder left by a rewrite that died is deleted here, so callers must hold
        the store's writer lock (only one rewrite at a time).
        """
        staged = LocalBackend(self._sibling("rewrite"))
        if staged.root.exists():
            staged.destroy()
        staged.make_container()
        self._fsync_dir(self.root.parent)
        return staged

    def replace_with(self, staged: LocalBackend) -> None:
        """Make the content of ``staged`` (fully written and synced) this store's content.

        Readers and a crash see the old store or the new one, never a mix: the two folders are
        exchanged with one ``renameat2(RENAME_EXCHANGE)`` call. Where the file system lacks
        it, an intent file is written first and :meth:`finish_replace` completes the two
        renames after a crash. The old content is deleted afterwards.
        """
        self._fsync_dir(staged.root)
        if _exchange(staged.root, self.root):
            self._fsync_dir(self.root.parent)
            staged.destroy()
            return
        intent = self._sibling("replace")
        intent.write_bytes(b"")
        self._fsync_dir(self.root.parent)
        os.rename(self.root, self._sibling("old"))
        self.finish_replace()

    def finish_replace(self) -> None:
        """Complete a fallback replacement that a crash interrupted (see :meth:`replace_with`)."""
        intent, staged, old = (self._sibling(t) for t in ("replace", "rewrite", "old"))
        if not intent.exists() or (self.root.exists() and staged.exists()):
            return  # nothing begun, or the rewriter (holding the old store's lock) is mid-way
        try:
            os.rename(staged, self.root)
        except OSError:
            if not self.root.exists():  # else a concurrent opener finished it for us
                raise
        self._fsync_dir(self.root.parent)
        intent.unlink(missing_ok=True)
        shutil.rmtree(old, ignore_errors=True)

    def _sibling(self, tag: str) -> Path:
        return self.root.parent / f".{self.root.name}.{tag}"

    def _make_parent(self, path: Path) -> None:
        parent = path.parent
        if parent.is_dir():
            return
        missing = []
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        path.parent.mkdir(parents=True, exist_ok=True)
        self._unsynced_dirs.update(p.parent for p in missing)

    @staticmethod
    def _fsync_dir(directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _naming(exc: OSError, path: Path) -> OSError:
    """The same error, naming the file (os.write's errors name none: 'File too large')."""
    return type(exc)(exc.errno, exc.strerror, str(path))


def _open_no_link(path: Path, flags: int, key: str, mode: int = 0o644) -> int:
    try:
        return os.open(path, flags | os.O_NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CorruptStoreError(f"refusing {key!r}: it is a symbolic link", key=key) from None
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories atomically; False where the platform or file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_cwd = -100
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))
