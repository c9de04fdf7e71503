"""replaystore: reinforcement-learning transitions on disk, in chunked, compressed zarr v3 arrays.

>>> import replaystore as rs
>>> store = rs.create("runs/demo", {"obs": ((4,), "float32"), "action": ((), "int64")})  # doctest: +SKIP
>>> store.append(obs=o, action=a, reward=r, terminated=False, truncated=False)  # doctest: +SKIP
>>> store.commit()  # doctest: +SKIP
>>> rs.open("runs/demo").get([0, 1])  # doctest: +SKIP
"""

from __future__ import annotations

from .codecs import Codec
from .errors import (
    ClosedError,
    CorruptChunkError,
    CorruptStoreError,
    FormatVersionError,
    ReadOnlyError,
    ReplayStoreError,
    SchemaError,
    StaleReadError,
    StoreExistsError,
    StoreNotFoundError,
    WriterLockedError,
)
from .layout import FORMAT_VERSION
from .manifest import Manifest
from .priority import PriorityIndex
from .sampling import (
    Batch,
    EpisodeSampler,
    Linear,
    PrioritizedSampler,
    Sampler,
    SequenceSampler,
    UniformSampler,
    nstep,
)
from .schema import Field, Schema
from .store import Store, create, open
from .summary import summarize

__version__ = "0.1.0"

__all__ = [
    "FORMAT_VERSION",
    "Batch",
    "ClosedError",
    "Codec",
    "CorruptChunkError",
    "CorruptStoreError",
    "EpisodeSampler",
    "Field",
    "FormatVersionError",
    "Linear",
    "Manifest",
    "PrioritizedSampler",
    "PriorityIndex",
    "ReadOnlyError",
    "ReplayStoreError",
    "Sampler",
    "Schema",
    "SchemaError",
    "SequenceSampler",
    "StaleReadError",
    "Store",
    "StoreExistsError",
    "StoreNotFoundError",
    "UniformSampler",
    "WriterLockedError",
    "__version__",
    "create",
    "nstep",
    "open",
    "summarize",
]
