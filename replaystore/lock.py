"""Single-writer lock: an OS advisory lock (flock) on a file that records the holder's pid.

The kernel drops the lock when the holder dies, even by SIGKILL, so a crashed writer never
leaves a store locked; the pid in the file only serves the error message.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import WriterLockedError


class WriterLock:
    """A held lock; release it with :meth:`release` (also done when the process exits)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: Path) -> WriterLock:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            who = f"process {pid}" if pid else "another process"
            raise WriterLockedError(
                f"store {str(path.parent.parent)!r} is being written by {who}; "
                "a store has one writer at a time (open it with mode='r' to read)", pid=pid
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    @staticmethod
    def holder(path: Path) -> int | None:
        """The pid holding the lock at ``path``, or None when nobody holds it."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
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
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
    except ValueError:
        return None
