"""State: the payload journal, the decision log and guard state, behind ``Store``.

``sqlite`` is the embedded default (one instance, durable file); ``redis`` serves
several replicas. ``open_store`` picks one from the ``store`` setting's URL.
"""

from __future__ import annotations

from pathlib import Path

from receiver.errors import ConfigError
from receiver.store.base import (
    AlertState,
    Approval,
    DecisionQuery,
    JournalEntry,
    PayloadReader,
    Retention,
    Store,
    new_id,
)
from receiver.store.sqlite import SqliteStore
from receiver.store.sqlite.reader import SqliteReader


def sqlite_file(url: str) -> Path | None:
    """The file a ``sqlite://`` store URL names; None for ``sqlite://:memory:``.

    Raises:
        ConfigError: the URL names no path.
    """
    path = url.removeprefix("sqlite://")
    if path in (":memory:", "/:memory:"):
        return None
    path = path.removeprefix("/")
    if not path:
        raise ConfigError("sqlite store URL needs a path: sqlite:///receiver.db")
    return Path(path)


def open_store(
    url: str, retention: Retention | None = None, *, reclaim: bool = True
) -> Store:
    """Build the store named by ``url``.

    ``reclaim=False`` opens a SQLite file without handing entries a previous
    process claimed back to the queue: the edge does so, beside its live worker.

    ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``,
    ``sqlite://:memory:`` (nothing survives a restart), ``redis://host:port/db``
    or ``rediss://...``.
    """
    if url.startswith("sqlite://"):
        path = sqlite_file(url)
        if path is None:
            return SqliteStore(":memory:", retention=retention)
        return SqliteStore(str(path), retention=retention, reclaim=reclaim)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from receiver.store.redis import RedisStore  # noqa: PLC0415

        return RedisStore(url, retention=retention or Retention())
    scheme = url.split("://", 1)[0]
    raise ConfigError(
        f"unsupported store URL scheme {scheme!r}; use sqlite:///PATH or redis://HOST"
    )


def open_reader(url: str) -> PayloadReader:
    """Read the payloads of the store ``url`` names, writing nothing to it.

    For ``receiver backtest``, which may be pointed at a live service's store:
    a SQLite file is read by ``SqliteReader`` (never through the store, which
    writes to its file as it opens); the Redis store's ``payloads`` sends read
    commands only. ``sqlite://:memory:`` reads an empty store.

    Raises:
        ConfigError: the URL names no store (``open_store``).
    """
    if url.startswith("sqlite://"):
        path = sqlite_file(url)
        if path is not None:
            return SqliteReader(path)
    return open_store(url)


def MemoryStore() -> SqliteStore:  # noqa: N802 (reads like the class it stands for)
    """An in-memory SQLite store, for tests and tools that need no durability."""
    return SqliteStore(":memory:")


__all__ = [
    "AlertState",
    "Approval",
    "DecisionQuery",
    "JournalEntry",
    "MemoryStore",
    "PayloadReader",
    "Retention",
    "SqliteStore",
    "Store",
    "new_id",
    "open_reader",
    "open_store",
    "sqlite_file",
]
