"""Where a replay store keeps its bytes: one small protocol, several implementations.

:class:`Storage` (in :mod:`.base`) is the protocol every layer above writes against;
:class:`MemoryStorage` keeps values in RAM and tracks what is durable; :class:`RecordingStorage`
wraps it for tests that must see every durability step and simulate power cuts and errors.
The conformance tests every implementation passes are in :mod:`replaystore.storage.testing`
(not imported here: it needs pytest and hypothesis).
"""

from __future__ import annotations

from .base import TEMPORARY_MARK, BytesLike, Capabilities, Storage, check_key, check_new_key
from .memory import POWER_LOSS_MODES, Change, MemoryStorage, PowerLossMode
from .recording import VERBS, Event, Fault, RecordingStorage

__all__ = [
    "POWER_LOSS_MODES",
    "TEMPORARY_MARK",
    "VERBS",
    "BytesLike",
    "Capabilities",
    "Change",
    "Event",
    "Fault",
    "MemoryStorage",
    "PowerLossMode",
    "RecordingStorage",
    "Storage",
    "check_key",
    "check_new_key",
]
