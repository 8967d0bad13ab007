"""The SQLite store's incarnations: which worker processes are alive."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta

from receiver.store.sqlite.connection import SqliteConnection
from receiver.store.sqlite.schema import _epoch


class SqliteIncarnations(SqliteConnection):
    """Registered worker incarnations, their liveness and recovery."""

    @staticmethod
    def _dead(db: sqlite3.Connection, owner: str, now: float) -> bool:
        """Whether ``owner`` is an incarnation that was not alive at ``now``."""
        row = db.execute(
            "SELECT alive_until FROM incarnations WHERE id=?", (owner,)
        ).fetchone()
        return row is not None and row[0] < now

    @staticmethod
    def _stopped(db: sqlite3.Connection, owner: str) -> bool:
        """Whether ``owner`` said it stopped, or a new incarnation declared it."""
        row = db.execute(
            "SELECT stopped FROM incarnations WHERE id=?", (owner,)
        ).fetchone()
        return row is not None and bool(row[0])

    async def register(  # noqa: D102
        self, incarnation: str, now: datetime, ttl: timedelta
    ) -> None:
        await self._run(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO incarnations (id, alive_until, stopped) "
                "VALUES (?, ?, 0)",
                (incarnation, _epoch(now + ttl)),
            )
        )

    async def retire(self, incarnation: str, now: datetime) -> None:  # noqa: D102
        await self._run(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO incarnations (id, alive_until, stopped) "
                "VALUES (?, ?, 1)",
                (incarnation, _epoch(now) - 1),
            )
        )

    async def recover(self, incarnation: str, now: datetime) -> list[str]:  # noqa: D102
        dead_at = _epoch(now) - 1

        def write(db: sqlite3.Connection) -> list[str]:
            # One instance: every other owner of a lock or an unfinished claim
            # is a previous (crashed or stopped) incarnation.
            db.execute(
                "INSERT OR REPLACE INTO incarnations (id, alive_until, stopped) "
                "SELECT DISTINCT owner, ?, 1 FROM (SELECT owner FROM locks UNION "
                "SELECT owner FROM claims WHERE status IN ('running', 'sending')) "
                "WHERE owner != ?",
                (dead_at, incarnation),
            )
            db.execute(
                "UPDATE incarnations SET alive_until=MIN(alive_until, ?), stopped=1 "
                "WHERE id != ?",
                (dead_at, incarnation),
            )
            rows = db.execute(
                "DELETE FROM locks WHERE owner != ? RETURNING name", (incarnation,)
            ).fetchall()
            return sorted(str(r[0]) for r in rows)

        return await self._run(write)
