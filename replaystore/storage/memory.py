"""Storage in a dict: for tests, for stores that live in RAM, and as the model of what a power
cut can leave.

Besides the current values, :class:`MemoryStorage` keeps each key's last *durable* state and
the changes made to it since. That is what a file system keeps in its page cache and may or
may not have written when the power goes, so :meth:`MemoryStorage.power_loss` can build any
state a cut could leave, and crash tests can check the store above it against all of them
instead of against the few that one real power cut happens to produce.
"""

from __future__ import annotations

import builtins
import errno
import itertools
import os
import random
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

from ..errors import CorruptStoreError
from .base import BytesLike, Capabilities, Storage, check_key, check_new_key

__all__ = ["POWER_LOSS_MODES", "Change", "MemoryStorage", "PowerLossMode", "Seed"]

PowerLossMode: TypeAlias = Literal["drop", "keep", "atomic", "mixed", "tear"]
"""How a simulated power cut treats changes that were not durable yet (see
:meth:`MemoryStorage.power_loss`)."""

POWER_LOSS_MODES: tuple[PowerLossMode, ...] = ("drop", "keep", "atomic", "mixed", "tear")

Seed: TypeAlias = random.Random | int | None
"""A random generator, or a seed for one (``None``: seed 0, so a failing cut reproduces)."""


@dataclass(frozen=True, slots=True)
class Change:
    """One change of a key made since its last durable state (not durable itself)."""

    value: bytes | None
    """The value put, or ``None`` for a delete."""
    replaced: bool
    """Whether the key held a value when the change was made. A put that replaced a value is
    one the storage must never leave empty after a power cut (see ``put``); a put of a new key
    may be."""


class MemoryStorage(Storage):
    """A :class:`~replaystore.storage.base.Storage` in RAM that knows what is durable.

    ``values`` (optional) are the initial content, all durable. Every verb behaves as the
    protocol says, including the refusals a file system makes (unsafe keys, a key that is both
    a value and a folder), so that code tested here does not fail on disk. One writer and any
    number of reader threads may use it at once: each call holds a lock, and values are
    immutable ``bytes``.

    Nothing is lost when the process ends that a test does not ask for: durability is only
    *tracked* here (:meth:`is_durable`, :meth:`pending`) and acted on by :meth:`power_loss`.
    """

    capabilities = Capabilities(local_path=None, atomic_exchange=False, conditional_put=True)

    def __init__(self, values: Mapping[str, BytesLike] | None = None) -> None:
        self._lock = threading.RLock()
        self._values: dict[str, bytes] = {}
        self._durable: dict[str, bytes] = {}
        self._pending: dict[str, builtins.list[Change]] = {}
        self._folders: dict[str, int] = {}  # folder key -> number of values under it
        for key, value in (values or {}).items():
            check_key(key)
            self._values[key] = self._durable[key] = bytes(value)
            self._count_folders(key, 1)

    def __repr__(self) -> str:
        with self._lock:
            return (f"MemoryStorage({len(self._values)} keys, {len(self._pending)} with changes "
                    "not durable)")

    # -- the protocol ------------------------------------------------------------------------

    def get(self, key: str, *, limit: int | None = None) -> bytes:
        check_key(key)
        value = self._value(key)
        if limit is not None and len(value) > limit:
            raise CorruptStoreError(f"{key!r} holds {len(value):,} bytes, more than the "
                                    f"{limit:,} its format allows", key=key)
        return value

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        check_key(key)
        if offset < 0 or length < 0:
            raise ValueError(f"reading {key!r}: offset ({offset}) and length ({length}) must not "
                             "be negative")
        return self._value(key)[offset:offset + length]

    def put(self, key: str, data: BytesLike, *, durable: bool = False) -> None:
        check_new_key(key)
        value = bytes(data)
        with self._lock:
            replaced = key in self._values
            if not replaced:
                self._check_placeable(key)
                self._count_folders(key, 1)
            self._values[key] = value
            self._pending.setdefault(key, []).append(Change(value, replaced))
            if durable:
                self._make_durable(key)

    def put_if_absent(self, key: str, data: BytesLike) -> bool:
        check_new_key(key)
        with self._lock:
            if key in self._values:
                return False
            self.put(key, data, durable=True)
            return True

    def sync(self, keys: Iterable[str]) -> None:
        keys = [check_key(key) for key in keys]  # refuse a bad key before syncing any
        with self._lock:
            for key in keys:
                self._make_durable(key)

    def exists(self, key: str) -> bool:
        check_key(key)
        with self._lock:
            return key in self._values

    def size(self, key: str) -> int:
        check_key(key)
        return len(self._value(key))

    def delete(self, key: str, *, durable: bool = False) -> None:
        check_key(key)
        with self._lock:
            if key in self._values:
                del self._values[key]
                self._count_folders(key, -1)
                self._pending.setdefault(key, []).append(Change(None, True))
            if durable:
                self._make_durable(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        if prefix:
            check_key(prefix)
        start = f"{prefix}/" if prefix else ""
        with self._lock:  # a snapshot: puts while the caller iterates cannot break it
            keys = sorted(k for k in self._values if k.startswith(start))
        return iter(keys)

    # -- what is durable ---------------------------------------------------------------------

    def is_durable(self, key: str) -> bool:
        """Whether ``key``'s current state (its value, or its absence) survives a power cut."""
        with self._lock:
            return key not in self._pending

    def pending(self) -> dict[str, tuple[Change, ...]]:
        """Each key with changes that are not durable yet, and those changes, oldest first."""
        with self._lock:
            return {key: tuple(changes) for key, changes in self._pending.items()}

    def durable_values(self) -> dict[str, bytes]:
        """What the least lucky power cut leaves: every key's last durable value."""
        with self._lock:
            return dict(self._durable)

    def values(self) -> dict[str, bytes]:
        """Every key's current value (what readers see now)."""
        with self._lock:
            return dict(self._values)

    def copy(self) -> MemoryStorage:
        """An independent copy with the same values *and* the same durability state, so one
        history can be continued in several ways (or replayed) without touching this one."""
        twin = MemoryStorage()
        with self._lock:
            twin._values = dict(self._values)
            twin._durable = dict(self._durable)
            twin._pending = {key: builtins.list(changes) for key, changes in self._pending.items()}
            twin._folders = dict(self._folders)
        return twin

    def power_loss(self, rng: Seed = None, mode: PowerLossMode = "mixed") -> MemoryStorage:
        """A new storage holding what a power cut now could leave on disk (all of it durable).

        Every durable value is kept. Each key with changes that are not durable ends,
        independently of every other key, in one of the states ``mode`` allows:

        ``"drop"``
            its last durable state (value or absence): the least a cut can keep.
        ``"keep"``
            its current state: nothing lost, as after a process crash or a cut that came after
            the system flushed everything.
        ``"atomic"``
            its last durable state or any state it had since, chosen at random: each put is
            all or nothing, as on an object store. No order between keys survives, because
            nothing in the protocol orders non-durable changes of different keys.
        ``"mixed"`` (the protocol's promise)
            as ``"atomic"``, and a put of a key that held no value may also leave it *empty*:
            on a file system the rename can reach the disk before the unsynced data. Anything
            durable that names a key not yet synced can then find it empty.
        ``"tear"``
            as ``"mixed"``, and a put that *replaced* a value may also leave the key empty: what
            a file-system storage that renames without syncing the new data first would leave
            on XFS or ext4 with ``noauto_da_alloc``. The protocol forbids this; use the mode to
            show that a test notices a storage (or a caller's own file writing) that skips that
            step, or to check code meant to survive such storage.
        """
        durable, options = self._options(mode)
        generator = _generator(rng)
        return _state(durable, options, [generator.choice(o) for o in options.values()])

    def power_loss_states(self, mode: PowerLossMode = "mixed", *, limit: int = 64,
                          rng: Seed = None) -> builtins.list[MemoryStorage]:
        """Distinct states a power cut now could leave under ``mode`` (see :meth:`power_loss`).

        All of them when there are at most ``limit``; otherwise the two extremes (every change
        dropped, every change kept) and random others, ``limit`` in all. A test that checks
        each one checks every cut, not just the likely ones.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        durable, options = self._options(mode)
        choices = builtins.list(options.values())
        total = 1
        for opts in choices:
            total *= len(opts)
        if total <= limit:
            return [_state(durable, options, combo) for combo in itertools.product(*choices)]
        generator = _generator(rng)
        extremes = [tuple(opts[0] for opts in choices), tuple(opts[-1] for opts in choices)]
        picked = set(extremes)
        ordered = builtins.list(dict.fromkeys(extremes))
        for _ in range(limit * 20):
            if len(ordered) >= limit:
                break
            combo = tuple(generator.choice(opts) for opts in choices)
            if combo not in picked:
                picked.add(combo)
                ordered.append(combo)
        return [_state(durable, options, combo) for combo in ordered]

    # -- internals ---------------------------------------------------------------------------

    def _value(self, key: str) -> bytes:
        with self._lock:
            value = self._values.get(key)
        if value is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), key)
        return value

    def _make_durable(self, key: str) -> None:
        if key in self._values:
            self._durable[key] = self._values[key]
        else:
            self._durable.pop(key, None)
        self._pending.pop(key, None)

    def _check_placeable(self, key: str) -> None:
        """Refuse what a file system cannot hold: a value where a folder is, or under a value."""
        if self._folders.get(key):
            raise IsADirectoryError(errno.EISDIR, f"{key!r} is a folder of other keys", key)
        parts = key.split("/")
        for i in range(1, len(parts)):
            folder = "/".join(parts[:i])
            if folder in self._values:
                raise NotADirectoryError(errno.ENOTDIR, f"{folder!r} holds a value, so it "
                                         "cannot be a folder", key)

    def _count_folders(self, key: str, step: int) -> None:
        parts = key.split("/")
        for i in range(1, len(parts)):
            folder = "/".join(parts[:i])
            count = self._folders.get(folder, 0) + step
            if count:
                self._folders[folder] = count
            else:
                self._folders.pop(folder, None)

    def _options(self, mode: PowerLossMode) -> tuple[dict[str, bytes],
                                                     dict[str, builtins.list[bytes | None]]]:
        """The durable values, and for each key with changes not durable the states a cut may
        leave it in (the last durable state first, the current state last), taken together."""
        if mode not in POWER_LOSS_MODES:
            raise ValueError(f"unknown power-loss mode {mode!r}; choose one of {POWER_LOSS_MODES}")
        options: dict[str, builtins.list[bytes | None]] = {}
        with self._lock:
            for key in sorted(self._pending):
                changes = self._pending[key]
                states: builtins.list[bytes | None] = [self._durable.get(key)]
                if mode == "keep":
                    states = [changes[-1].value]
                elif mode != "drop":
                    for change in changes:
                        if change.value is not None and (
                                (mode == "mixed" and not change.replaced) or mode == "tear"):
                            states.append(b"")
                        states.append(change.value)
                    current = states.pop()  # keep the current state last, duplicates removed
                    states = [s for i, s in enumerate(states) if s not in states[:i]]
                    states = [s for s in states if s != current] + [current]
                options[key] = states
            return dict(self._durable), options


def _state(durable: Mapping[str, bytes], options: Mapping[str, Sequence[bytes | None]],
           combo: Sequence[bytes | None]) -> MemoryStorage:
    """The storage a cut leaves: the durable values, with each listed key set as ``combo`` says."""
    values = dict(durable)
    for key, value in zip(options, combo, strict=True):
        if value is None:
            values.pop(key, None)
        else:
            values[key] = value
    return MemoryStorage(values)


def _generator(rng: Seed) -> random.Random:
    if isinstance(rng, random.Random):
        return rng
    return random.Random(0 if rng is None else rng)
