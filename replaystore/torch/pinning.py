"""Pinning batches for the GPU: copies into page-locked memory, off the training loop's thread.

A batch that reaches ``.to("cuda", non_blocking=True)`` from page-locked memory is copied by
the GPU's DMA engine while the loop goes on. Copying the batch into such memory is CPU work
that, done in the loop's own thread, adds to every step; :func:`in_background` moves it (and
the wait for the workers) to a thread, and :class:`_PinCopier` splits big copies over idle
cores.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

T = TypeVar("T")


class _PinCopier:
    """Copies batches out of the slots into page-locked memory, big ones on several threads.

    One thread copies into pinned memory at ~6 GB/s, which caps a many-core machine feeding
    a GPU at ~400 batches/s of 256 Atari stacks and next stacks (14 MB) whatever the number of
    workers. numpy releases the GIL while it copies, so pieces on a few threads add up. The
    copies use numpy, not torch's ``copy_``: torch's intra-op pool spins while it waits and
    steals CPU from the workers.
    """

    PIECE = 1 << 20  # bytes; smaller pieces are not worth a thread hand-off

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def for_workers(cls, num_workers: int) -> _PinCopier:
        """As many threads as the cores the workers and the caller leave idle, at most 4."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
            os.cpu_count() or 1
        return cls(min(4, cores - num_workers - 1))

    def copy(self, dest: np.ndarray, src: np.ndarray) -> None:
        """``dest[:] = src`` for 1-D byte arrays of one length."""
        pieces = min(self.threads, len(src) // self.PIECE)
        if pieces <= 1:
            np.copyto(dest, src)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="replaystore-pin")
        bounds = [len(src) * i // pieces for i in range(pieces + 1)]
        pending = [self._pool.submit(np.copyto, dest[a:b], src[a:b])
                   for a, b in itertools.pairwise(bounds[1:])]
        np.copyto(dest[:bounds[1]], src[:bounds[1]])
        for done in pending:
            done.result()


def in_background(items: Iterator[T], depth: int = 2) -> Generator[T, None, None]:
    """The items of ``items``, produced on a daemon thread up to ``depth`` ahead, in order.

    An exception raised while producing an item is raised here, in its place. Closing the
    generator (or dropping it) stops the thread before the next item it would produce, and
    waits for it, so nothing keeps using ``items`` afterwards.
    """
    results: queue.Queue[tuple[bool, object]] = queue.Queue(depth)
    stop = threading.Event()

    def put(message: tuple[bool, object]) -> bool:
        while not stop.is_set():
            try:
                results.put(message, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as exc:  # handed to the consumer, raised there
            put((False, exc))

    thread = threading.Thread(target=produce, name="replaystore-pin", daemon=True)
    thread.start()
    try:
        while True:
            ok, value = results.get()
            if ok:
                yield value  # type: ignore[misc]
            elif value is None:
                return
            else:
                raise value  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()
