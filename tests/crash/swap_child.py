"""Swap child for the SIGKILL crash tests: one prune that kills itself at a chosen step.

    python tests/crash/swap_child.py PATH KEEP KILL_AT EXCHANGE

Prunes the store at PATH to its newest KEEP rows. EXCHANGE ``0`` replaces
``replaystore.storage.local._exchange`` by a function that reports it unavailable, as on NFS (test
code only: the library has no switch for it); ``1`` leaves it.

A *step* is one file-system change made by the store-replacing part of the backend
(``LocalStorage.finish_replace``, ``staging`` and ``replace_with``: a folder made, renamed or
exchanged, a file created or unlinked, each unlink and rmdir inside an ``rmtree``), plus
``build``: the final manifest commit of the staged copy. Before making step ``k`` the child
prints ``step k WHAT NAME [in FOLDER]`` (``in``: inside an rmtree of FOLDER) and, when ``k`` is
KILL_AT, sends itself SIGKILL instead. KILL_AT 0 runs to the end and prints ``done``.
"""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import sys
from pathlib import Path

import replaystore as rs

backend = importlib.import_module("replaystore.storage.local")
rewrite = importlib.import_module("replaystore.rewrite")  # rs.rewrite is the function


class Steps:
    def __init__(self, kill_at: int) -> None:
        self.kill_at = kill_at
        self.count = 0
        self.depth = 0  # > 0 inside the store-replacing methods
        self.rmtree: list[str] = []  # folders being removed, innermost last

    def step(self, what: str, name: object) -> None:
        self.count += 1
        inside = f" in {self.rmtree[-1]}" if self.rmtree else ""
        print(f"step {self.count} {what} {Path(os.fsdecode(name)).name}{inside}", flush=True)
        if self.count == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def region(self, method):
        def wrapped(*args, **kwargs):
            self.depth += 1
            try:
                return method(*args, **kwargs)
            finally:
                self.depth -= 1
        return wrapped

    def counted(self, what: str, function, *, creates_only: bool = False):
        def wrapped(name, *args, **kwargs):
            flags = args[0] if args else kwargs.get("flags", 0)
            if self.depth and (not creates_only or flags & os.O_CREAT):
                self.step(what, name)
            return function(name, *args, **kwargs)
        return wrapped


def main() -> None:
    path, keep, kill_at, exchange = sys.argv[1:5]
    steps = Steps(int(kill_at))
    for name in ("finish_replace", "staging", "replace_with"):
        setattr(backend.LocalStorage, name, steps.region(getattr(backend.LocalStorage, name)))
    for what in ("rename", "replace", "unlink", "rmdir", "mkdir"):
        setattr(os, what, steps.counted(what, getattr(os, what)))
    os.open = steps.counted("create", os.open, creates_only=True)

    real_rmtree = shutil.rmtree

    def rmtree(folder, *args, **kwargs):
        steps.rmtree.append(Path(folder).name)
        try:
            return real_rmtree(folder, *args, **kwargs)
        finally:
            steps.rmtree.pop()

    shutil.rmtree = rmtree
    real_exchange = (lambda a, b: False) if exchange == "0" else backend._exchange

    def exchange_step(a, b):
        steps.step("exchange", a)
        return real_exchange(a, b)

    backend._exchange = exchange_step
    real_commit = rewrite.commit_manifest

    def build_commit(store_backend, manifest):
        steps.step("build", store_backend.root)
        return real_commit(store_backend, manifest)

    rewrite.commit_manifest = build_commit
    rs.prune(path, keep_last=int(keep), by="rows")
    print("done", flush=True)


if __name__ == "__main__":
    main()
