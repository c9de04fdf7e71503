"""Single-writer lock: an OS advisory lock (flock) on a file that records the holder's pid.

The kernel drops the lock when the holder dies, even by SIGKILL, so a crashed writer never
leaves a store locked; the pid in the file only serves the error message.

A lock belongs to the process that took it. A forked child inherits the descriptor, and with
it the lock (flock locks belong to the open file, not the process): unlocking it there would
let a third process open a second writer while the parent still writes. So releasing in any
other process only closes the child's copy of the descriptor.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from .errors import WriterLockedError

# How long a writer keeps trying while only readers probe the lock (a probe holds a shared
# lock for microseconds; see holder()).
_PROBE_WAIT_SECONDS = 1.0

# This process's pid, kept current across fork() so that checking "is this the process that
# took the lock?" on every append costs no system call.
_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def current_pid() -> int:
    """This process's pid (cached; updated in a forked child)."""
    return _pid


class WriterLock:
    """A held lock; release it with :meth:`release` (also done when the process exits)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd
        self._owner = os.getpid()

    @property
    def owned(self) -> bool:
        """Whether this process took the lock (False in a forked child)."""
        return self._fd is not None and _pid == self._owner

    @classmethod
    def acquire(cls, path: Path, fd: int) -> WriterLock:
        """Lock the open lock file ``fd`` (at ``path``) exclusively; the lock owns ``fd``."""
        try:
            _lock_exclusive(fd, path)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    @staticmethod
    def holder(path: Path, fd: int) -> int | None:
        """The pid holding the lock on the open lock file ``fd``, or None when nobody holds it.

        Closes ``fd``.
        """
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or -1
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def release(self) -> None:
        """Release the lock (in the process that took it; elsewhere only close our copy)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if os.getpid() == self._owner:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _lock_exclusive(fd: int, path: Path) -> None:
    """Take the exclusive lock or raise WriterLockedError naming the writer.

    ``holder()`` probes with a short shared lock, which makes an exclusive attempt fail at that
    instant though no writer exists; such a failure is told apart (a shared lock is then
    granted) and retried.
    """
    deadline = time.monotonic() + _PROBE_WAIT_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            break  # an exclusive holder: a writer
        fcntl.flock(fd, fcntl.LOCK_UN)
        if time.monotonic() > deadline:
            break
        time.sleep(0.0005)
    pid = _read_pid(fd)
    who = f"process {pid}" if pid else "another process"
    raise WriterLockedError(
        f"store {str(path.parent.parent)!r} is being written by {who}; "
        "a store has one writer at a time (open it with mode='r' to read)", pid=pid)


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
    except ValueError:
        return None
