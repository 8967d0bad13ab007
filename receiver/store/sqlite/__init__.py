"""SQLite store: the embedded default, durable on disk, for one instance.

Two files: the store's (``PATH``: journal, alert states, guards, claims, ...)
and the decision log beside it (``PATH-decisions``), each with its own write
lock, so recording decisions never delays journaling a payload. An entry's
records are committed before it is marked done; a crash between the two
decides it again and records nothing more.

WAL journal mode with ``synchronous=FULL``: a payload is on disk before the 202.
One connection guarded by a lock and driven through ``asyncio.to_thread``, with
group commit: calls that arrive while a transaction is on its way to disk wait,
then run together in the next one, each in its own savepoint (so each stays
atomic and fails alone), and every caller hears back only after that COMMIT.
Under load one fsync then serves many requests instead of one. Being
single-instance, opening the store hands entries a previous (crashed) process had
claimed back to the queue at once; within a process, claims older than the lease
are reclaimed too. Several replicas need the Redis store.
"""

from receiver.store.sqlite.approvals import SqliteApprovals
from receiver.store.sqlite.connection import decisions_path
from receiver.store.sqlite.decisions import SqliteDecisions
from receiver.store.sqlite.guards import SqliteGuards
from receiver.store.sqlite.journal import SqliteJournal
from receiver.store.sqlite.run_once import SqliteRunOnce
from receiver.store.sqlite.schema import SCHEMA, SCHEMA_VERSION, STATE_READ_CHUNK

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "STATE_READ_CHUNK",
    "SqliteStore",
    "decisions_path",
]


class SqliteStore(
    SqliteJournal, SqliteDecisions, SqliteRunOnce, SqliteGuards, SqliteApprovals
):
    """The SQLite ``Store``."""
