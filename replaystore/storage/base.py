"""The storage protocol: everything a replay store keeps goes through these few verbs.

A store is a set of *keys* (``/``-separated relative names such as ``obs/c/3/0`` or
``_replaystore/manifest.json``), each holding one immutable byte string. The verbs are the
smallest set that both a local file system and an object store (S3, GCS, ...) can implement
with the same guarantees, so that the commit protocol above them is written, and tested, once:

=================  ======================================================================
``get``            the whole value (with a size limit checked before anything is read)
``get_range``      part of a value
``put``            atomic replace, durable when asked
``put_if_absent``  create-only, durable; reports a lost race
``sync``           make earlier puts and deletes of some keys durable
``exists``         whether a key holds a value
``size``           its length in bytes
``delete``         remove a key (a missing key is fine), durable when asked
``list``           the keys under a folder key
=================  ======================================================================

Where implementations differ in ways callers must plan for (memory maps, folder swaps,
race-free create-only puts), :class:`Capabilities` says so instead of a verb failing at run
time.

Durability vocabulary used by every docstring here: a change is *durable* once a power cut
(or kernel crash) can no longer undo it; a process crash never undoes a completed call on any
implementation. After a power cut, each key independently holds its last durable state or a
state it had later (see :meth:`Storage.put`); nothing orders non-durable changes of different
keys, which is why a caller that must publish B only after A syncs A first.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from ..errors import CorruptStoreError

__all__ = ["TEMPORARY_MARK", "BytesLike", "Capabilities", "Storage", "check_key", "check_new_key"]

BytesLike: TypeAlias = bytes | bytearray | memoryview
"""What ``put`` accepts. The bytes are copied (or written out) before ``put`` returns, so the
caller may reuse its buffer at once."""

TEMPORARY_MARK = ".tmp-"
"""Names containing this are reserved for implementations: the local file system writes a
value under such a name and renames it over its key, and clean-up deletes what a crash left.
:meth:`Storage.put` and :meth:`Storage.put_if_absent` refuse keys containing it (a caller's
value there would be hidden from :meth:`Storage.list` and deleted as debris)."""

_SEGMENT = re.compile(r"[A-Za-z0-9_.-]+")


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe storage key; raise :class:`CorruptStoreError` if not.

    Keys come from store metadata that may be hostile, so every implementation refuses the
    same set before touching anything: the empty key, empty segments (``a//b``, a leading or
    trailing ``/``, hence absolute paths), ``.`` and ``..`` segments, and any character outside
    ``[A-Za-z0-9_.-]``. One rule everywhere means a store that works in memory works on disk
    and in a bucket. This is the same rule as ``replaystore.storage.local.check_key`` (the tests
    compare the two).
    """
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") or not _SEGMENT.fullmatch(p) for p in parts):
        raise CorruptStoreError(f"refusing unsafe storage key {key!r}", key=key)
    return key


def check_new_key(key: str) -> str:
    """:func:`check_key`, and refuse the names reserved for temporary files
    (:data:`TEMPORARY_MARK`): what ``put`` and ``put_if_absent`` apply."""
    check_key(key)
    if TEMPORARY_MARK in key:
        raise CorruptStoreError(f"refusing storage key {key!r}: names containing "
                                f"{TEMPORARY_MARK!r} are reserved for temporary files", key=key)
    return key


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an implementation can do beyond the common verbs, so callers choose a strategy up
    front rather than discovering a missing feature halfway through a commit.

    Frozen: a storage's capabilities do not change while it is in use.
    """

    local_path: Path | None = None
    """The folder that holds the keys, set only when they are files of the local file system.
    What needs real files reads it: memory-mapped priority trees, ``flock`` writer locks,
    append-only undo logs, folder swaps. ``None`` means none of those is available and the
    caller must use an alternative (or refuse)."""

    atomic_exchange: bool = False
    """Whether a whole store can replace another in one atomic step (``renameat2`` with
    ``RENAME_EXCHANGE`` on Linux local file systems). False means a replacement needs the
    slower intent-file protocol, during which the store's name briefly names nothing."""

    conditional_put: bool = False
    """Whether :meth:`Storage.put_if_absent` is race-free against other processes and
    machines (``link(2)`` on a local file system, ``If-None-Match: *`` on S3). False means it
    is check-then-put: fine for one writer, useless as a lock between writers."""


class Storage(ABC):
    """Everything a replay store keeps: keys holding byte strings, with atomic replacement and
    explicit durability.

    Implementations: :class:`~replaystore.storage.memory.MemoryStorage` (RAM, and the model the
    crash tests use) and the local file system (``replaystore.storage.local.LocalStorage``, being
    adapted to it). Each must pass :class:`~replaystore.storage.testing.StorageTests`.

    Every verb that takes a key first applies :func:`check_key` (``CorruptStoreError``); the
    two verbs that create values also refuse keys containing :data:`TEMPORARY_MARK`. A key
    with no value raises ``FileNotFoundError`` from ``get``, ``get_range`` and ``size``. An
    I/O failure raises ``OSError`` naming the key or file; a put or delete that raised left
    the key at its old value, or (when the failure came after the replacement, such as a
    failed fsync of the folder) at the new one, not durably. A failed fsync raises
    :class:`~replaystore.errors.SyncError`, after which the caller must assume that every
    change not yet durable may be lost (retrying the sync proves nothing).

    A key is a value or a folder of other keys, never both: a put of ``a`` while ``a/b`` exists,
    or of ``a/b`` while ``a`` exists, raises ``OSError`` on file systems, so no caller may rely
    on it anywhere (the in-memory storage refuses it too).
    """

    capabilities: Capabilities
    """What this implementation can do beyond the verbs (see :class:`Capabilities`)."""

    @abstractmethod
    def get(self, key: str, *, limit: int | None = None) -> bytes:
        """The whole value stored at ``key``.

        ``limit`` is the most bytes the format allows at this key: a larger value (a sparse
        file, ``/dev/zero`` planted in a store, a lying object) is refused with
        ``CorruptStoreError`` naming the key *before* it is read, so hostile stores cannot
        exhaust memory. ``FileNotFoundError`` if the key holds no value. Implementations may
        refuse something that is not a plain value (a folder, FIFO or symbolic link planted at
        the key) with ``CorruptStoreError`` instead.
        """

    @abstractmethod
    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes of the value at ``key`` starting at ``offset``.

        Fewer bytes (possibly none) come back past the end of the value, never an error, so a
        caller reading fixed-size records detects a short value itself. ``offset`` and
        ``length`` must be ``>= 0`` (``ValueError``); ``FileNotFoundError`` if the key holds no
        value. Used where whole values are large and only a slice is needed (undo logs, shard
        indexes).
        """

    @abstractmethod
    def put(self, key: str, data: BytesLike, *, durable: bool = False) -> None:
        """Store ``data`` at ``key``, replacing any value atomically.

        Readers (other threads, other processes) see the old value or the new one, never a mix
        and never an empty or partial value.

        After a power cut:

        * ``durable=True``: the new value, once ``put`` returns. (Other keys' changes are not
          made durable by this call, even where an implementation happens to.)
        * ``durable=False``, the key held a value before: that earlier value (the last durable
          one, or one put in between) or the new one, never empty, never a mix. Implementations
          on file systems must make the new bytes durable *before* they replace the old ones,
          because a file system may persist a rename before the renamed file's data (XFS,
          ext4 with ``noauto_da_alloc``), which would leave committed bytes as an empty file.
        * ``durable=False``, the key held no value: the key may be absent, hold the new value,
          or hold an incomplete one (empty, on file systems) until :meth:`sync` or a durable
          put. So nothing durable may name a new key before that key is synced.

        The cost of durability is one or two fsyncs per call; a commit that writes many keys
        puts them without it and calls :meth:`sync` once.
        """

    @abstractmethod
    def put_if_absent(self, key: str, data: BytesLike) -> bool:
        """Create ``key`` holding ``data`` unless it holds a value already.

        True: this call created the key, and the value is durable when it returns. False: the
        key already held a value (another writer won the race); nothing was changed and the
        existing value stays, whatever it is. Readers never see the key empty or partly
        written. Race-free between processes and machines only where
        :attr:`Capabilities.conditional_put` is set.
        """

    @abstractmethod
    def sync(self, keys: Iterable[str]) -> None:
        """Make every earlier put *and delete* of ``keys`` durable.

        When ``sync`` returns, a power cut leaves each key exactly as it is now: its latest
        value, or absent when it was deleted (or never existed; that is not an error). Changes
        to other keys are not promised durable. A failed fsync raises
        :class:`~replaystore.errors.SyncError`; keys synced before the failure are durable, the
        rest are in doubt.
        """

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` holds a value. A key that is only a folder of other keys (``a`` when
        ``a/b`` exists) holds none."""

    @abstractmethod
    def size(self, key: str) -> int:
        """Length in bytes of the value at ``key`` (``FileNotFoundError`` if none), without
        reading it: sizing a store, or checking a value's length against its format."""

    @abstractmethod
    def delete(self, key: str, *, durable: bool = False) -> None:
        """Remove ``key``; a key that holds no value is not an error (deleting is idempotent, so
        clean-up can be retried after a crash).

        After a power cut: with ``durable=True`` the key is absent once this returns; otherwise
        it may hold its last durable value (or a later one) until :meth:`sync` of the key.
        """

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Every key under the folder key ``prefix`` (keys starting with ``prefix + "/"``), or
        every key when ``prefix`` is ``""``; ``prefix`` itself is not listed even if it holds a
        value.

        Order is unspecified (sort if it matters). An implementation's temporary names
        (containing :data:`TEMPORARY_MARK`) are never listed. A key put or deleted while the
        iterator runs may or may not appear. A non-empty ``prefix`` must pass
        :func:`check_key`.
        """
