"""The local file system as :class:`~replaystore.storage.Storage`, plus what only a local disk
offers.

Keys are ``/``-separated relative names (``obs/c.3.0``, ``_replaystore/manifest.json``) under
one root folder. The protocol's verbs (``get``, ``get_range``, ``put``, ``put_if_absent``,
``sync``, ``exists``, ``size``, ``delete``, ``list``) are all the layers above need to keep a
store. What only a local disk offers is kept apart: :class:`LocalDisk` (``allocate``,
``memmap``, ``open_log``) for the priority index alone; on this class, ``lock`` for the
single-writer lock and the folder swap of prune, compact and repair.

Unlike zarr's local store, ``put`` never exposes a half-written file (it writes a temporary
file and renames it over the key), a key that holds bytes is only replaced by synced bytes,
and durable puts fsync the file before the rename and the directory after it.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import re
import shutil
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import CorruptStoreError, SyncError
from ..lock import WriterLock
from .base import TEMPORARY_MARK, BytesLike, Capabilities, Storage, check_key, check_new_key

_RENAME_EXCHANGE = 2  # linux/fs.h


class LocalStorage(Storage):
    """Files under one root directory of the local file system."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.capabilities = Capabilities(local_path=self.root, atomic_exchange=True,
                                         conditional_put=True)
        self._counter = itertools.count()
        self._unsynced_dirs: set[Path] = set()
        self._data_synced: set[str] = set()  # keys whose last write synced its data
        self._safe_dirs: set[Path] = set()

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

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

    def discard(self) -> None:
        """Delete the root and everything under it, first moving it aside in one rename: no
        process ever sees a half-deleted store at the root."""
        aside = self._sibling(f"discard-{os.getpid()}-{next(self._counter)}")
        os.rename(self.root, aside)
        self._fsync_dir(self.root.parent)
        shutil.rmtree(aside)

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

    def get(self, key: str, *, limit: int | None = None) -> bytes:
        """Return the bytes stored at ``key``; FileNotFoundError if there are none.

        ``limit`` is the most bytes the format allows at this key: a larger file (a sparse
        file, a device node planted in a store) is refused before anything is read. Anything
        but a regular file (a FIFO, a folder, a device) is refused without blocking.
        """
        # O_NOFOLLOW: a symlink planted in a store must not make us read outside of it;
        # O_NONBLOCK: opening a FIFO planted in a store must not wait for a writer forever.
        fd = self._open_value(key)
        try:
            size = _regular_size(fd, key)
            if limit is not None and size > limit:
                raise CorruptStoreError(f"{key!r} holds {size:,} bytes, more than the "
                                        f"{limit:,} its format allows", key=key)
            with os.fdopen(fd, "rb", closefd=False) as f:
                # Never more than the limit allows, even from a file that grew since fstat.
                data = f.read() if limit is None else f.read(limit + 1)
            if limit is not None and len(data) > limit:
                raise CorruptStoreError(f"{key!r} grew past the {limit:,} bytes its format "
                                        "allows while being read", key=key)
            return data
        except OSError as exc:
            raise _naming(exc, self.root / key) from None
        finally:
            os.close(fd)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes stored at ``key`` from ``offset`` (fewer past its end)."""
        if offset < 0 or length < 0:
            raise ValueError(f"get_range of {key!r}: offset {offset} and length {length} must "
                             "be >= 0")
        fd = self._open_value(key)
        try:
            _regular_size(fd, key)
            return os.pread(fd, length, offset)
        except OSError as exc:
            raise _naming(exc, self.root / key) from None
        finally:
            os.close(fd)

    def _open_value(self, key: str) -> int:
        """A read-only descriptor of the value at ``key``; FileNotFoundError when none is (also
        when a folder on its path holds a value: ``v/w`` under a value ``v``)."""
        # O_NOFOLLOW: a symlink planted in a store must not make us read outside of it;
        # O_NONBLOCK: opening a FIFO planted in a store must not wait for a writer forever.
        try:
            return _open_no_link(self._path(key), os.O_RDONLY | os.O_NONBLOCK, key)
        except NotADirectoryError:
            raise FileNotFoundError(errno.ENOENT, "no value", str(self.root / key)) from None

    def put(self, key: str, data: BytesLike, *, durable: bool = False) -> None:
        """Atomically replace ``key`` with ``data``.

        Readers see the old bytes or the new ones, never a mix. With ``durable=True`` the data
        and the rename are on disk when this returns; otherwise call :meth:`sync` later.

        A key that already holds bytes (a partly filled chunk rewritten at each commit, an
        episode block, an array document) is only ever replaced by bytes that are already on
        disk: file systems may make a rename durable before the renamed file's data (XFS, ext4
        with ``noauto_da_alloc``), and any fsync on the file system, by anyone, can do it, so
        renaming first and syncing later could leave committed rows in a file of 0 bytes after
        a power cut. A new key is not synced until :meth:`sync`: it holds nothing committed.
        """
        path = self._path(check_new_key(key))
        self._make_parent(path)
        replaces = os.path.lexists(path)
        tmp = path.with_name(f"{path.name}{TEMPORARY_MARK}{os.getpid()}-{next(self._counter)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise _naming(exc, path) from None
        try:
            _write_all(fd, data)
            if durable or replaces:
                _fsync(fd, path)
                self._data_synced.add(key)  # sync() then has only the folder to sync
            else:
                self._data_synced.discard(key)
        except BaseException as exc:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError) and not isinstance(exc, SyncError):
                raise _naming(exc, path) from None
            raise
        os.close(fd)
        try:
            os.replace(tmp, path)
        except OSError as exc:  # a folder at the key, say
            tmp.unlink(missing_ok=True)
            raise _naming(exc, path) from None
        if durable:
            self._fsync_dir(path.parent)
            self.sync_dirs()

    def put_if_absent(self, key: str, data: BytesLike) -> bool:
        """Create ``key`` durably unless it exists (False: another writer won the race).

        Written and synced under a temporary name, then ``link(2)``ed to the key: the link
        fails if the key exists (race-free, on NFS too) and never exposes a partly written
        value, as creating the key itself with O_EXCL would (to readers, and to a crash that
        would leave an empty key no later call can replace).
        """
        path = self._path(check_new_key(key))
        self._make_parent(path)
        tmp = path.with_name(f"{path.name}{TEMPORARY_MARK}{os.getpid()}-{next(self._counter)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            try:
                _write_all(fd, data)
                _fsync(fd, path)
            finally:
                os.close(fd)
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as exc:
            raise exc if isinstance(exc, SyncError) else _naming(exc, path) from None
        finally:
            tmp.unlink(missing_ok=True)
        self._fsync_dir(path.parent)
        self.sync_dirs()
        return True

    def sync(self, keys: Iterable[str]) -> None:
        """Make earlier non-durable writes of ``keys`` (and the directories holding them) durable.

        A failed fsync raises :class:`SyncError` naming the file: the kernel may have dropped
        the unwritten pages, and syncing again would report success over lost data.
        """
        dirs = set()
        for key in keys:
            path = self._path(key)
            dirs.add(path.parent)
            if key in self._data_synced:
                self._data_synced.discard(key)
                continue
            try:
                fd = _open_no_link(path, os.O_RDONLY | os.O_NONBLOCK, key)
            except (FileNotFoundError, NotADirectoryError):
                continue  # deleted (or never made): syncing its folder makes that durable
            try:
                _fsync(fd, path)
            finally:
                os.close(fd)
        for directory in dirs:
            while not directory.is_dir() and directory != self.root:
                directory = directory.parent  # a folder emptied by deletes went too
            if directory.is_dir():
                self._fsync_dir(directory)
        self.sync_dirs()

    def sync_dirs(self) -> None:
        """fsync the parents of directories created since the last sync."""
        while self._unsynced_dirs:
            self._fsync_dir(self._unsynced_dirs.pop())

    def exists(self, key: str) -> bool:
        """Whether something is stored at ``key`` (a folder of other keys is not; a link or
        FIFO planted there is, and reading it raises CorruptStoreError)."""
        try:
            return not stat.S_ISDIR(os.lstat(self._path(key)).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False

    def size(self, key: str) -> int:
        """Bytes stored at ``key``; FileNotFoundError when it holds no value."""
        try:
            st = os.lstat(self._path(key))
        except NotADirectoryError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            raise FileNotFoundError(errno.ENOENT, "no value", str(self.root / key))
        return st.st_size

    def allocated(self, key: str) -> int:
        """Bytes of disk the stored value occupies (less than its size when sparse)."""
        return self._path(key).stat().st_blocks * 512

    def delete(self, key: str, *, durable: bool = False) -> None:
        """Remove ``key`` (nothing to do when it holds no value), and the folders it leaves
        empty; ``durable``: the removal survives a power cut when this returns."""
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        self._data_synced.discard(key)
        folder = path.parent
        while folder != self.root:
            try:
                folder.rmdir()  # only when empty: "a" can then hold a value after "a/b" went
            except OSError:
                break
            self._safe_dirs.discard(folder)
            folder = folder.parent
        if durable:
            self._fsync_dir(folder)

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix`` (a directory key, or "" for all), temporary files excluded."""
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return
        for dirpath, _, files in os.walk(base):
            rel = Path(dirpath).relative_to(self.root)
            for name in files:
                if TEMPORARY_MARK not in name:
                    yield (rel / name).as_posix()

    def remove_temporary(self) -> int:
        """Delete temporary files left by a writer that died mid-write; return how many."""
        removed = 0
        for dirpath, _, files in os.walk(self.root):
            for name in files:
                if TEMPORARY_MARK in name:
                    (Path(dirpath) / name).unlink(missing_ok=True)
                    removed += 1
        return removed

    def disk(self) -> LocalDisk:
        """What only a local disk offers (files reserved on disk, shared memory mappings, an
        append-only log), for the priority index alone."""
        return LocalDisk(self)

    def lock(self, key: str) -> WriterLock:
        """Take the exclusive single-writer lock stored at ``key`` (raises if another holds it)."""
        path = self._path(key)
        self._make_parent(path)
        fd = _open_no_link(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, key)
        try:
            _check_private(fd, key)  # the lock file is truncated and written: never a link
        except BaseException:
            os.close(fd)
            raise
        return WriterLock.acquire(path, fd)

    def lock_holder(self, key: str) -> int | None:
        """The pid of the live process holding the lock at ``key``, or None."""
        path = self._path(key)
        try:
            fd = _open_no_link(path, os.O_RDONLY | os.O_NONBLOCK, key)
        except FileNotFoundError:
            return None
        try:
            _regular_size(fd, key)
        except BaseException:
            os.close(fd)
            raise
        return WriterLock.holder(path, fd)

    # -- replacing the whole store (prune, compact, repair) ----------------------------------

    def identity(self) -> tuple[int, int]:
        """What the root currently is (device, inode); it changes when the store is replaced."""
        return folder_identity(self.root)

    def staging(self) -> LocalStorage:
        """An empty backend beside this one, where a replacement store is built.

        What an interrupted replacement left beside the store is cleared first
        (:meth:`finish_replace` with ``locked=True``), so callers must hold the store's writer
        lock (one rewrite at a time).
        """
        self.finish_replace(locked=True)
        staged = LocalStorage(self._sibling("rewrite"))
        staged.make_container()
        self._fsync_dir(self.root.parent)
        return staged

    def replace_with(self, staged: LocalStorage) -> None:
        """Make the content of ``staged`` (fully written and synced) this store's content.

        Readers and a crash see the old store or the new one, never a mix. Where the file
        system offers it, one ``renameat2(RENAME_EXCHANGE)`` swaps the two folders. Elsewhere
        (NFS, ...) the swap takes three steps:

        1. the intent file ``.<name>.replace`` is created and made durable: the staged store
           is complete, and from here on the swap only goes forward;
        2. the store's folder is renamed to ``.<name>.old``;
        3. at once, the staged folder is renamed to the store's name.

        Between 2 and 3 the store's path names nothing: a process that opens the store then
        does step 3 itself (``open`` calls :meth:`finish_replace`), and one that had it open
        gets :class:`StoreReplacedError`, as after any replacement. After a crash the next
        ``open`` does step 3, and the next rewrite clears the rest under the writer lock.

        The old content is deleted afterwards, unless another process cleared it already.
        """
        before = self.identity()
        self._fsync_dir(staged.root)
        if _exchange(staged.root, self.root):
            self._fsync_dir(self.root.parent)
            old, intent = staged.root, None
        else:
            intent, old = self._sibling("replace"), self._sibling("old")
            os.close(os.open(intent, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
            self._fsync_dir(self.root.parent)
            try:
                os.rename(self.root, old)
            except OSError:
                intent.unlink(missing_ok=True)  # nothing moved: roll back
                raise
            try:
                os.rename(staged.root, self.root)
            except OSError:
                if not self.root.exists():  # else an opener did this step for us
                    raise
            self._fsync_dir(self.root.parent)
        try:
            st = os.lstat(old)
        except FileNotFoundError:
            return  # a writer of the new store cleared it already
        if (st.st_dev, st.st_ino) != before:
            return  # ... and the name is another rewrite's now
        if intent is not None:
            intent.unlink(missing_ok=True)
        shutil.rmtree(old, ignore_errors=True)  # what stays (NFS: files held open elsewhere)
        # is moved aside by the next rewrite

    def finish_replace(self, *, locked: bool = False) -> None:
        """Finish or roll back a replacement that a crash interrupted (see :meth:`replace_with`).

        Without ``locked`` (any process, no lock taken; ``open`` calls this): only if the store's
        folder is missing while the intent file and the staged folder exist, rename the staged
        folder into place (step 3). Readers never delete anything.

        With ``locked=True`` the caller holds the store's writer lock, so no rewrite is under
        way: after step 3 if needed, delete the intent file (this rolls back a swap that never
        moved the store), then the staged and old folders and folders moved aside earlier.
        A folder that cannot be deleted (NFS keeps files another process holds open) is
        renamed aside, so it never blocks the next swap.
        """
        intent, staged, old = (self._sibling(t) for t in ("replace", "rewrite", "old"))
        if not self.root.exists() and intent.exists() and staged.is_dir():
            try:
                os.rename(staged, self.root)
            except OSError:
                if not self.root.exists():  # else a concurrent opener finished it for us
                    raise
            self._fsync_dir(self.root.parent)
        if not locked or not self.root.is_dir():
            return
        parent = self.root.parent
        if os.path.lexists(intent):
            intent.unlink(missing_ok=True)  # first: what is left is garbage from here on
            self._fsync_dir(parent)
        aside = re.compile(rf"\.{re.escape(self.root.name)}\.discard-\d+-[0-9a-f]+")
        leftovers = [p for p in (staged, old) if os.path.lexists(p)]
        leftovers += [parent / n for n in os.listdir(parent) if aside.fullmatch(n)]
        for path in leftovers:
            if path.is_symlink() or not path.is_dir():
                path.unlink(missing_ok=True)
            else:
                shutil.rmtree(path, ignore_errors=True)
            if os.path.lexists(path) and not aside.fullmatch(path.name):
                os.rename(path, self._sibling(f"discard-{os.getpid()}-{os.urandom(4).hex()}"))
        if leftovers:
            self._fsync_dir(parent)

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
            _fsync(fd, directory)
        finally:
            os.close(fd)


class LocalDisk:
    """The priority index's files on a local disk: reserved, memory-mapped, appended to.

    Not part of the storage protocol: an object store cannot map or append, so the index of a
    store kept elsewhere will live on local disk beside it. Keys are checked as everywhere.
    """

    def __init__(self, storage: LocalStorage) -> None:
        self._storage = storage

    def allocate(self, key: str, nbytes: int) -> None:
        """Create ``key`` as ``nbytes`` zero bytes, its disk space reserved but not written.

        The space is reserved (``posix_fallocate``) because the file is then written through a
        memory mapping: on a full disk, a store to an unreserved page cannot raise an error and
        kills the process with SIGBUS instead. Reserving raises ENOSPC here, naming the file.
        Nothing is read into memory until touched.
        """
        path = self._storage._path(key)
        self._storage._make_parent(path)
        # Built under a new name and renamed over the key: whatever was planted at the key
        # (a symbolic link out of the store, a hard link) is replaced, never written through.
        tmp = path.with_name(f"{path.name}{TEMPORARY_MARK}{os.getpid()}-{next(self._storage._counter)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            try:
                os.ftruncate(fd, nbytes)
                os.posix_fallocate(fd, 0, nbytes)
                _fsync(fd, path)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise exc if isinstance(exc, SyncError) else _naming(exc, path) from None
        self._storage._fsync_dir(path.parent)

    def memmap(self, key: str, dtype: str, shape: tuple[int, ...], *,
               writable: bool) -> np.memmap:
        """Map ``key`` into memory, shared with every other process that maps it.

        The file must be a regular file of exactly the mapped size (a planted device node or
        FIFO, or a file of another size, is refused before mapping).
        """
        path = self._storage._path(key)
        fd = _open_no_link(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_NONBLOCK, key)
        with os.fdopen(fd, "r+b" if writable else "rb") as f:
            size = _regular_size(fd, key)
            want = int(np.prod(shape)) * np.dtype(dtype).itemsize
            if size != want:
                raise CorruptStoreError(f"{key!r} holds {size:,} bytes; a mapping of shape "
                                        f"{shape} {dtype} needs {want:,}", key=key)
            return np.memmap(f, dtype=dtype, mode="r+" if writable else "r", shape=shape)

    def open_log(self, key: str) -> BinaryIO:
        """An append-only handle on ``key`` (created if missing), for undo logs."""
        path = self._storage._path(key)
        self._storage._make_parent(path)
        fd = _open_no_link(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, key)
        try:
            _check_private(fd, key)
        except BaseException:
            os.close(fd)
            raise
        return os.fdopen(fd, "ab")


def folder_identity(folder: str | os.PathLike[str]) -> tuple[int, int]:
    """What a store's folder currently is (device, inode): a folder swap changes it."""
    st = os.stat(folder)
    return st.st_dev, st.st_ino


def _write_all(fd: int, data: BytesLike) -> None:
    view = memoryview(data).cast("B")  # bytes, whatever the item size of the view given
    while view:
        view = view[os.write(fd, view):]


def _fsync(fd: int, path: Path) -> None:
    """fsync ``fd``; a failure raises :class:`SyncError` naming ``path``."""
    try:
        os.fsync(fd)
    except OSError as exc:
        raise SyncError(exc.errno, exc.strerror, str(path)) from None


def _regular_size(fd: int, key: str) -> int:
    """The size of the regular file open at ``fd``; anything else is refused, naming ``key``."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise CorruptStoreError(f"refusing {key!r}: it is {kind}", key=key)
    return st.st_size


def _check_private(fd: int, key: str) -> None:
    """Refuse a file we are about to write in place unless it is a regular file of the store's
    own: a hard link planted there would make us overwrite a file outside the store."""
    _regular_size(fd, key)
    if os.fstat(fd).st_nlink > 1:
        raise CorruptStoreError(f"refusing {key!r}: it is a hard link to a file that may lie "
                                "outside the store", key=key)


def _naming(exc: OSError, path: Path) -> OSError:
    """The same error, naming the file (os.write's errors name none: 'File too large')."""
    return type(exc)(exc.errno, exc.strerror, str(path))


def _open_no_link(path: Path, flags: int, key: str, mode: int = 0o644) -> int:
    try:
        return os.open(path, flags | os.O_NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CorruptStoreError(f"refusing {key!r}: it is a symbolic link", key=key) from None
        if exc.errno in (errno.EISDIR, errno.ENXIO):  # a folder, or a FIFO nobody reads
            raise CorruptStoreError(f"refusing {key!r}: it is not a regular file",
                                    key=key) from None
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
