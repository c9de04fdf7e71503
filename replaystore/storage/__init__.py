"""Where a replay store keeps its bytes: one small protocol, several implementations.

:class:`Storage` (in :mod:`.base`) is the protocol every layer above writes against;
:class:`MemoryStorage` keeps values in RAM and tracks what is durable; :class:`RecordingStorage`
wraps it for tests that must see every durability step and simulate power cuts and errors.
The conformance tests every implementation passes are in :mod:`replaystore.storage.testing`
(not imported here: it needs pytest and hypothesis).
"""

from __future__ import annotations

import os

from .base import TEMPORARY_MARK, BytesLike, Capabilities, Storage, check_key, check_new_key
from .local import LocalStorage
from .memory import POWER_LOSS_MODES, Change, MemoryStorage, PowerLossMode
from .recording import VERBS, Event, Fault, RecordingStorage

Location = str | os.PathLike[str]


def open_storage(location: Location) -> LocalStorage:
    """The storage a user's ``location`` names: a folder path (or a ``file://`` URL) today.

    The one place that turns what users pass into storage; nothing else constructs one. URLs
    of other schemes (``s3://bucket/prefix``) are refused with a ValueError that says so, until
    object storage lands.
    """
    text = os.fspath(location)
    if not isinstance(text, str):
        text = os.fsdecode(text)
    scheme, sep, rest = text.partition("://")
    if sep and scheme.isalnum():
        if scheme.lower() != "file":
            raise ValueError(f"replaystore cannot open {text!r}: {scheme}:// storage is not "
                             "supported yet (stores live in local folders)")
        text = rest
    return LocalStorage(text)

__all__ = [
    "POWER_LOSS_MODES",
    "TEMPORARY_MARK",
    "VERBS",
    "BytesLike",
    "Capabilities",
    "Change",
    "Event",
    "Fault",
    "LocalStorage",
    "Location",
    "MemoryStorage",
    "PowerLossMode",
    "RecordingStorage",
    "Storage",
    "check_key",
    "check_new_key",
    "open_storage",
]
