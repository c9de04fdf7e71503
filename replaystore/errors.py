"""Every exception replaystore raises on purpose.

All of them derive from :class:`ReplayStoreError`, so ``except rs.ReplayStoreError`` catches
"a replay-store problem", and each also derives from the builtin a caller would expect
(``ValueError`` for bad input, ``FileNotFoundError`` for a missing store, ...), so existing
``except ValueError`` code keeps working.
"""

from __future__ import annotations


class ReplayStoreError(Exception):
    """Base class of every error raised by replaystore."""


class SchemaError(ReplayStoreError, ValueError):
    """A schema declaration, or a row or batch appended to a store, does not fit the schema."""


class StoreNotFoundError(ReplayStoreError, FileNotFoundError):
    """The path holds no replay store."""


class StoreExistsError(ReplayStoreError, FileExistsError):
    """A store (or other files) already exist where a new store was to be created."""


class FormatVersionError(ReplayStoreError):
    """The store was written by a newer, unknown version of the on-disk format."""


class CorruptStoreError(ReplayStoreError):
    """A file of the store is missing, truncated, malformed or fails its checksum."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class CorruptChunkError(CorruptStoreError):
    """A chunk file of a field is missing, truncated or fails its crc32c checksum."""

    def __init__(self, message: str, *, key: str | None = None, field: str | None = None) -> None:
        super().__init__(message, key=key)
        self.field = field


class WriterLockedError(ReplayStoreError, BlockingIOError):
    """Another process holds the store's single-writer lock."""

    def __init__(self, message: str, *, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


class ReadOnlyError(ReplayStoreError, PermissionError):
    """A write was attempted on a store opened for reading."""


class StaleReadError(ReplayStoreError):
    """Rows of this reader's snapshot were overwritten by the ring writer; call ``refresh()``."""


class StoreReplacedError(StaleReadError):
    """The store was replaced (pruned, compacted or repaired) after this reader opened it."""


class SyncError(ReplayStoreError, OSError):
    """An fsync failed (EIO, ENOSPC, ...); ``filename`` names the file.

    After a failed fsync the kernel may have dropped the pages it could not write, and a
    second fsync can report success over the lost data, so the writer that saw this refuses
    every further append and commit: close the store and open it again, which continues from
    the last commit.
    """


class WriterFailedError(ReplayStoreError, OSError):
    """The writer saw a failed fsync earlier and can no longer prove its rows durable."""


class ClosedError(ReplayStoreError, ValueError):
    """The store was closed."""


__all__ = [
    "ClosedError",
    "CorruptChunkError",
    "CorruptStoreError",
    "FormatVersionError",
    "ReadOnlyError",
    "ReplayStoreError",
    "SchemaError",
    "StaleReadError",
    "StoreExistsError",
    "StoreNotFoundError",
    "StoreReplacedError",
    "SyncError",
    "WriterFailedError",
    "WriterLockedError",
]
