"""A storage wrapper for tests that makes durability observable.

A commit protocol is only as good as the order of its durability steps, and no ordinary test
notices when one is dropped: everything still works until the power goes. Wrapping the store's
storage in :class:`RecordingStorage` makes the steps visible and checkable:

* every call is recorded as an :class:`Event` (verb, key, whether its change was durable when
  it returned, size), so a test can assert orders such as "every chunk was durable before the
  manifest that names it" (:meth:`RecordingStorage.assert_durable_before`) or "the manifest is
  durable when ``commit`` returns" (:meth:`RecordingStorage.assert_all_durable`);
* :meth:`RecordingStorage.fail` injects an ``OSError`` or
  :class:`~replaystore.errors.SyncError` at chosen calls, before or after the change happens;
* :meth:`RecordingStorage.power_loss` builds what a power cut could leave, now or after any
  recorded event (:meth:`RecordingStorage.cuts`), so a test can reopen the store from every
  such state and check that no committed row is lost.

Removing any durability step from the code under test (or moving it after the step it must
precede) then fails such a test deterministically, without a real power cut.
"""

from __future__ import annotations

import builtins
import errno
import fnmatch
import functools
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal, TypeAlias, TypeVar

from ..errors import SyncError
from .base import BytesLike, Storage, check_key
from .memory import MemoryStorage, PowerLossMode, Seed

__all__ = ["VERBS", "ErrorSpec", "Event", "Fault", "RecordingStorage"]

T = TypeVar("T")

VERBS = ("get", "get_range", "put", "put_if_absent", "sync", "exists", "size", "delete", "list")
"""The verbs of the storage protocol, as :attr:`Event.verb` and :meth:`RecordingStorage.fail`
name them."""

ErrorSpec: TypeAlias = BaseException | Callable[[str], BaseException] | None
"""What an injected fault raises: an exception, a function of the key returning one, or
``None`` for the default (``SyncError`` for ``sync``, ``OSError(EIO)`` otherwise)."""


@dataclass(frozen=True, slots=True)
class Event:
    """One call made through a :class:`RecordingStorage` (a ``sync`` of several keys is one
    event per key, in the order they were synced)."""

    seq: int
    """Position in :attr:`RecordingStorage.events`."""
    verb: str
    """One of :data:`VERBS`."""
    key: str
    """The key (for ``list``: the prefix)."""
    durable: bool
    """The call made its key's state durable: a durable ``put`` or ``delete``, a ``sync``, a
    ``put_if_absent`` that created the key. False when the call failed before becoming
    durable."""
    changed: bool
    """The call changed a stored value (a put, a created key, a deleted value)."""
    size: int | None
    """Bytes written (``put``, ``put_if_absent``) or read (``get``, ``get_range``), the result
    of ``size``, or the number of keys ``list`` returned; else ``None``."""
    error: BaseException | None = None
    """What the call raised, injected or not."""
    data: bytes | None = field(default=None, repr=False, compare=False)
    """The value a put wrote (kept so that history can be replayed)."""


@dataclass(slots=True)
class Fault:
    """An error to inject at matching calls (see :meth:`RecordingStorage.fail`)."""

    verb: str
    pattern: str
    error: ErrorSpec
    times: int | None
    when: Literal["before", "after"]
    fired: int = 0
    """How many calls it has failed so far: a test can check that its fault was reached."""

    def _matches(self, verb: str, key: str) -> bool:
        return ((self.times is None or self.fired < self.times)
                and self.verb in ("*", verb) and fnmatch.fnmatchcase(key, self.pattern))

    def _exception(self, key: str) -> BaseException:
        if isinstance(self.error, BaseException):
            return self.error
        if self.error is not None:
            return self.error(key)
        if self.verb == "sync":
            return SyncError(errno.EIO, "injected fsync failure", key)
        return OSError(errno.EIO, "injected I/O error", key)


class RecordingStorage(Storage):
    """Wraps a :class:`MemoryStorage`, recording every call and injecting faults on demand.

    It behaves exactly like ``inner`` (it passes the same conformance tests). Every change
    must go through the wrapper once it exists: :meth:`replay`, :meth:`power_loss` with ``at``
    and :meth:`cuts` rebuild history from a copy of ``inner`` taken at construction and the
    recorded events. Calls are serialized by one lock, so the event order is the order the
    changes happened in.
    """

    def __init__(self, inner: MemoryStorage | None = None) -> None:
        self.inner = MemoryStorage() if inner is None else inner
        self.capabilities = self.inner.capabilities
        self._origin = self.inner.copy()
        self._events: builtins.list[Event] = []
        self._faults: builtins.list[Fault] = []
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"RecordingStorage({self.inner!r}, {len(self._events)} events)"

    # -- the protocol, recorded --------------------------------------------------------------

    def get(self, key: str, *, limit: int | None = None) -> bytes:
        with self._lock:
            late = self._begin("get", key)
            value = self._attempt("get", key, lambda: self.inner.get(key, limit=limit))
            return self._finish(late, "get", key, value, size=len(value))

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        with self._lock:
            late = self._begin("get_range", key)
            value = self._attempt("get_range", key,
                                  lambda: self.inner.get_range(key, offset, length))
            return self._finish(late, "get_range", key, value, size=len(value))

    def put(self, key: str, data: BytesLike, *, durable: bool = False) -> None:
        value = bytes(data)
        with self._lock:
            late = self._begin("put", key)
            durable = durable and late is None  # an "after" fault: applied, never durable
            self._attempt("put", key, lambda: self.inner.put(key, value, durable=durable))
            self._finish(late, "put", key, None, durable=durable, changed=True, size=len(value),
                         data=value)

    def put_if_absent(self, key: str, data: BytesLike) -> bool:
        value = bytes(data)
        with self._lock:
            late = self._begin("put_if_absent", key)

            def create() -> bool:
                if late is None:
                    return self.inner.put_if_absent(key, value)
                if self.inner.exists(key):
                    return False
                self.inner.put(key, value)
                return True

            created = self._attempt("put_if_absent", key, create)
            return self._finish(late, "put_if_absent", key, created,
                                durable=created and late is None, changed=created,
                                size=len(value), data=value)

    def sync(self, keys: Iterable[str]) -> None:
        keys = builtins.list(keys)
        with self._lock:
            for key in keys:  # refuse a bad key before syncing any, as MemoryStorage does
                self._attempt("sync", key, functools.partial(check_key, key))
            for key in keys:
                late = self._begin("sync", key)
                if late is not None:  # a failed fsync makes nothing durable
                    self._record("sync", key, error=late)
                    raise late
                self._attempt("sync", key, functools.partial(self.inner.sync, [key]))
                self._record("sync", key, durable=True)

    def exists(self, key: str) -> bool:
        with self._lock:
            late = self._begin("exists", key)
            found = self._attempt("exists", key, lambda: self.inner.exists(key))
            return self._finish(late, "exists", key, found)

    def size(self, key: str) -> int:
        with self._lock:
            late = self._begin("size", key)
            size = self._attempt("size", key, lambda: self.inner.size(key))
            return self._finish(late, "size", key, size, size=size)

    def delete(self, key: str, *, durable: bool = False) -> None:
        with self._lock:
            late = self._begin("delete", key)
            durable = durable and late is None

            def remove() -> bool:
                had = self.inner.exists(key)
                self.inner.delete(key, durable=durable)
                return had

            removed = self._attempt("delete", key, remove)
            self._finish(late, "delete", key, None, durable=durable, changed=removed)

    def list(self, prefix: str = "") -> Iterator[str]:
        with self._lock:
            late = self._begin("list", prefix)
            keys = self._attempt("list", prefix, lambda: builtins.list(self.inner.list(prefix)))
            return iter(self._finish(late, "list", prefix, keys, size=len(keys)))

    # -- faults ------------------------------------------------------------------------------

    def fail(self, verb: str, key_pattern: str = "*", error: ErrorSpec = None, *,
             times: int | None = 1, when: Literal["before", "after"] = "before") -> Fault:
        """Make the next ``times`` calls of ``verb`` on keys matching ``key_pattern`` raise.

        ``verb`` is one of :data:`VERBS` or ``"*"``; ``key_pattern`` is a shell-style pattern
        (``fnmatch``: ``*`` also matches ``/``) on the key (for ``list``, the prefix);
        ``times=None`` fails every matching call from now on. ``sync`` of several keys fails at
        the first matching key: the keys before it are synced, as with a real fsync loop.

        ``when="before"``: the call changes nothing, like a write refused for a full disk.
        ``when="after"``: the change happens but is *not* durable, then the error is raised,
        like an fsync that fails after the rename (a ``sync`` makes nothing durable either
        way). Returns the :class:`Fault`, whose ``fired`` counts the calls it failed.
        """
        if verb != "*" and verb not in VERBS:
            raise ValueError(f"unknown verb {verb!r}; choose one of {VERBS} or '*'")
        if when not in ("before", "after"):
            raise ValueError(f"when must be 'before' or 'after', not {when!r}")
        if times is not None and times < 1:
            raise ValueError(f"times must be at least 1 (or None for always), not {times}")
        fault = Fault(verb, key_pattern, error, times, when)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Stop injecting errors (faults already fired keep their counts)."""
        with self._lock:
            self._faults.clear()

    # -- the record --------------------------------------------------------------------------

    @property
    def events(self) -> tuple[Event, ...]:
        """Every call so far, oldest first."""
        with self._lock:
            return tuple(self._events)

    def mark(self) -> int:
        """The number of events so far: pass it as ``since`` to look only at later calls."""
        with self._lock:
            return len(self._events)

    def find(self, verb: str | None = None, key_pattern: str = "*", *,
             since: int = 0) -> builtins.list[Event]:
        """The events of ``verb`` (any if ``None``) on keys matching ``key_pattern``."""
        return [e for e in self.events[since:]
                if verb in (None, e.verb) and fnmatch.fnmatchcase(e.key, key_pattern)]

    def is_durable(self, key: str) -> bool:
        """Whether ``key``'s current state (value or absence) would survive a power cut now."""
        return self.inner.is_durable(key)

    def assert_all_durable(self, key_pattern: str = "*") -> None:
        """Fail unless every key matching ``key_pattern`` is durable now, e.g. right after a
        commit returned: whatever a power cut now does, those keys stay as they are."""
        pending = sorted(k for k in self.inner.pending() if fnmatch.fnmatchcase(k, key_pattern))
        if pending:
            details = "; ".join(f"{k!r} (last changed by {self._last_change(k)})" for k in pending)
            raise AssertionError(f"not durable: {details}")

    def assert_durable_before(self, key_pattern: str, key: str, *, since: int = 0,
                              deletes: bool = False) -> int:
        """Fail unless, each time ``key`` was made durable (at or after event ``since``), every
        earlier put of a key matching ``key_pattern`` was durable already.

        This is "chunk data durable before the manifest that names it": ``key`` is the record
        that publishes, ``key_pattern`` what it refers to. A put counts as durable once a later
        (or its own) durable put, ``sync`` or ``put_if_absent`` of the same key came first; a
        later delete of the key withdraws the requirement unless ``deletes=True``, when
        the delete itself must be durable too. Returns how many times ``key`` was made
        durable; zero fails, so a test cannot pass by never publishing.
        """
        events = self.events
        pending: dict[str, Event | None] = dict.fromkeys(self._origin.pending())
        checked = 0
        problems: builtins.list[str] = []
        for event in events:
            if not (event.changed or event.durable):
                continue
            publishes = event.key == key and event.durable and (
                event.verb in ("put", "put_if_absent") or (event.verb == "sync" and key in pending))
            if publishes and event.seq >= since:
                checked += 1
                for other, change in pending.items():
                    if other != key and fnmatch.fnmatchcase(other, key_pattern):
                        when = "before recording began" if change is None else f"by {change}"
                        problems.append(f"{other!r} (changed {when}) was not durable when "
                                        f"{key!r} was made durable by {event}")
            if event.durable or (event.verb == "delete" and not deletes):
                pending.pop(event.key, None)
            else:
                pending[event.key] = event
        if problems:
            raise AssertionError("durability order violated:\n  " + "\n  ".join(problems))
        if not checked:
            raise AssertionError(f"{key!r} was never made durable (after event {since})")
        return checked

    # -- power cuts --------------------------------------------------------------------------

    def replay(self, upto: int | None = None) -> MemoryStorage:
        """The storage, with its durability state, as it was after the first ``upto`` events
        (all of them if ``None``): a new :class:`MemoryStorage`, this one is untouched."""
        events = self.events
        state = self._origin.copy()
        for event in events[:len(events) if upto is None else upto]:
            _apply(state, event)
        return state

    def power_loss(self, rng: Seed = None, mode: PowerLossMode = "mixed", *,
                   at: int | None = None) -> MemoryStorage:
        """A NEW storage holding what a power cut could leave, now or just after the first
        ``at`` events: every durable value, and each change not yet durable kept, dropped or
        (by ``mode``) emptied, key by key; see :meth:`MemoryStorage.power_loss` for the modes
        and what each models."""
        state = self.inner if at is None else self.replay(at)
        return state.power_loss(rng, mode)

    def power_loss_states(self, mode: PowerLossMode = "mixed", *, at: int | None = None,
                          limit: int = 64, rng: Seed = None) -> builtins.list[MemoryStorage]:
        """Distinct states a power cut could leave, now or after the first ``at`` events (all
        of them up to ``limit``, else the extremes and a sample; see
        :meth:`MemoryStorage.power_loss_states`)."""
        state = self.inner if at is None else self.replay(at)
        return state.power_loss_states(mode, limit=limit, rng=rng)

    def cuts(self, since: int = 0, mode: PowerLossMode = "mixed", *, per_cut: int = 8,
             rng: Seed = None) -> Iterator[tuple[int, MemoryStorage]]:
        """Every power cut from event ``since`` on: ``(at, state)`` for each point between two
        calls at which the stored state or its durability had changed, and up to ``per_cut``
        states a cut there could leave. This is "crash at every step of a commit" in a loop::

            mark = recorder.mark()
            store.commit()
            for at, state in recorder.cuts(mark):
                check_reopens_at_a_commit(state)
        """
        events = self.events
        state = self.replay(since)
        for at in range(since, len(events) + 1):
            if at == since or _apply(state, events[at - 1]):
                for cut in state.power_loss_states(mode, limit=per_cut, rng=rng):
                    yield at, cut

    # -- internals ---------------------------------------------------------------------------

    def _begin(self, verb: str, key: str) -> BaseException | None:
        """Fire the first matching fault: raise now for "before", return the error for
        "after" (the caller raises it once the change is made)."""
        for fault in self._faults:
            if fault._matches(verb, key):
                fault.fired += 1
                exc = fault._exception(key)
                if fault.when == "after":
                    return exc
                self._record(verb, key, error=exc)
                raise exc
        return None

    def _attempt(self, verb: str, key: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except BaseException as exc:
            self._record(verb, key, error=exc)
            raise

    def _finish(self, late: BaseException | None, verb: str, key: str, result: T, *,
                   durable: bool = False, changed: bool = False, size: int | None = None,
                   data: bytes | None = None) -> T:
        self._record(verb, key, durable=durable, changed=changed, size=size, error=late,
                     data=data)
        if late is not None:
            raise late
        return result

    def _record(self, verb: str, key: str, *, durable: bool = False, changed: bool = False,
                size: int | None = None, error: BaseException | None = None,
                data: bytes | None = None) -> None:
        self._events.append(Event(len(self._events), verb, key, durable, changed, size, error,
                                  data))

    def _last_change(self, key: str) -> str:
        for event in reversed(self.events):
            if event.key == key and event.changed:
                return str(event)
        return "a change before recording began"


def _apply(state: MemoryStorage, event: Event) -> bool:
    """Redo ``event``'s change on ``state``; whether it had one."""
    if not (event.changed or event.durable):
        return False
    if event.verb in ("put", "put_if_absent"):
        assert event.data is not None
        state.put(event.key, event.data, durable=event.durable)
    elif event.verb == "delete":
        state.delete(event.key, durable=event.durable)
    elif event.verb == "sync":
        state.sync([event.key])
    return True
