"""State: the payload journal and the decision log, behind the ``Store`` protocol.

``memory`` is the in-process implementation; durable implementations plug in
behind the same protocol. ``open_store`` picks one from a URL in settings.
"""

from __future__ import annotations

from receiver.errors import ConfigError
from receiver.store.base import DecisionQuery, JournalEntry, Store, new_id
from receiver.store.memory import MemoryStore


def open_store(url: str) -> Store:
    """Build the store named by ``url`` (``memory://``)."""
    if url.startswith("memory:"):
        return MemoryStore()
    raise ConfigError(
        f"unsupported store URL {url.split('://', 1)[0]!r}://...; this version "
        "supports memory://"
    )


__all__ = [
    "DecisionQuery",
    "JournalEntry",
    "MemoryStore",
    "Store",
    "new_id",
    "open_store",
]
