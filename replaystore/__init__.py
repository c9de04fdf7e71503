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
    StoreReplacedError,
    SyncError,
    WriterFailedError,
    WriterLockedError,
)
from .layout import FORMAT_VERSION
from .manifest import Manifest
from .optional import MissingDependencyError
from .plotting import plot_store
from .priority import PriorityIndex
from .prune import Selection, prune
from .recording import RecordResult, record
from .rewrite import RewriteReport, compact, rewrite
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
from .transfer import export_store, import_store, merge_stores
from .verify import Problem, RepairReport, VerifyReport, repair, verify

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
    "MissingDependencyError",
    "PrioritizedSampler",
    "PriorityIndex",
    "Problem",
    "ReadOnlyError",
    "RecordResult",
    "RepairReport",
    "ReplayStoreError",
    "RewriteReport",
    "Sampler",
    "Schema",
    "SchemaError",
    "Selection",
    "SequenceSampler",
    "StaleReadError",
    "Store",
    "StoreExistsError",
    "StoreNotFoundError",
    "StoreReplacedError",
    "SyncError",
    "UniformSampler",
    "VerifyReport",
    "WriterFailedError",
    "WriterLockedError",
    "__version__",
    "compact",
    "create",
    "export_store",
    "import_store",
    "merge_stores",
    "nstep",
    "open",
    "plot_store",
    "prune",
    "record",
    "repair",
    "rewrite",
    "summarize",
    "verify",
]
