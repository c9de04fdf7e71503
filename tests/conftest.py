"""Shared fixtures: small schemas and a factory of stores in a temporary folder."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import replaystore as rs

VECTOR = {"obs": ((3,), "float32"), "action": ((), "int64"), "next_obs": ((3,), "float32")}
IMAGE = {"frame": ((16, 16), "uint8"), "action": ((), "int64")}


def rows_for(schema: rs.Schema, first: int, count: int) -> dict[str, np.ndarray]:
    """Deterministic rows: row g of every field is a function of g alone."""
    g = np.arange(first, first + count)
    out = {}
    for field in schema:
        if field.name == "terminated":
            out[field.name] = g % 7 == 6
        elif field.name == "truncated":
            out[field.name] = g % 11 == 10
        else:
            size = int(np.prod(field.shape, dtype=np.int64))
            base = (g[:, None] * 31 + np.arange(size)[None, :]) % 251
            if field.dtype.kind == "b":
                base = base % 2
            out[field.name] = base.reshape((count, *field.shape)).astype(field.dtype)
    return out


@pytest.fixture
def make_store(tmp_path: Path) -> Callable[..., rs.Store]:
    counter = iter(range(10_000))

    def make(fields: dict | None = None, **kwargs) -> rs.Store:
        return rs.create(tmp_path / f"store{next(counter)}", fields or VECTOR, **kwargs)

    return make


@pytest.fixture(scope="session")
def replaystore_exe() -> str:
    """The console script installed with the package (the one beside this Python first), for
    tests that run the CLI as a user does."""
    beside = Path(sys.executable).with_name("replaystore")
    found = str(beside) if beside.exists() else shutil.which("replaystore")
    if found is None:
        pytest.fail("the replaystore entry point is not installed; pip install the package")
    return found
