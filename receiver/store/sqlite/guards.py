"""The SQLite store's guards: locks, cooldowns, budgets, circuits and the pause."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime, timedelta

from receiver.store.base import BudgetSlot, Circuit, Lock, Pause
from receiver.store.sqlite.incarnations import SqliteIncarnations
from receiver.store.sqlite.schema import _epoch, _ts, rows_in


class SqliteGuards(SqliteIncarnations):
    """The state the engine's guards read and write."""

    async def acquire_lock(  # noqa: D102
        self, name: str, owner: str, now: datetime, ttl: timedelta
    ) -> Lock | None:
        at = _epoch(now)

        def write(db: sqlite3.Connection) -> Lock | None:
            row = db.execute(
                "SELECT owner, expires_at FROM locks WHERE name=?", (name,)
            ).fetchone()
            # Never dead to itself: a lock of the asking incarnation is held by
            # another of its tasks, even if its heartbeat lapsed under load.
            dead = row is not None and row[0] != owner and self._dead(db, row[0], at)
            if row is not None and row[1] >= at and not dead:
                return None
            db.execute("DELETE FROM locks WHERE name=?", (name,))
            token = db.execute(
                "INSERT INTO counters VALUES ('fence', 1) ON CONFLICT(name) DO UPDATE "
                "SET value=value+1 RETURNING value"
            ).fetchone()[0]
            db.execute(
                "INSERT INTO locks VALUES (?, ?, ?, ?)",
                (name, owner, token, _epoch(now + ttl)),
            )
            return Lock(name, owner, int(token), now + ttl)

        return await self._run(write)

    async def renew_lock(  # noqa: D102
        self, lock: Lock, now: datetime, ttl: timedelta
    ) -> Lock | None:
        cur = await self._run(
            lambda db: db.execute(
                "UPDATE locks SET expires_at=? WHERE name=? AND token=?",
                (_epoch(now + ttl), lock.name, lock.token),
            )
        )
        if cur.rowcount != 1:
            return None
        return Lock(lock.name, lock.owner, lock.token, now + ttl)

    async def lock_holder(self, name: str, now: datetime) -> str | None:  # noqa: D102
        def read(db: sqlite3.Connection) -> str | None:
            row = db.execute(
                "SELECT owner FROM locks WHERE name=? AND expires_at >= ?",
                (name, _epoch(now)),
            ).fetchone()
            return str(row[0]) if row else None

        return await self._run(read)

    async def release_lock(self, lock: Lock) -> None:  # noqa: D102
        await self._run(
            lambda db: db.execute(
                "DELETE FROM locks WHERE name=? AND token=?", (lock.name, lock.token)
            )
        )

    async def last_run(self, scope: str, now: datetime) -> datetime | None:  # noqa: D102
        def read(db: sqlite3.Connection) -> datetime | None:
            row = db.execute(
                "SELECT at FROM last_run WHERE scope=? AND expires_at >= ?",
                (scope, _epoch(now)),
            ).fetchone()
            return _ts(row[0]) if row else None

        return await self._run(read)

    async def last_runs(  # noqa: D102
        self, scopes: Sequence[str], now: datetime
    ) -> dict[str, datetime | None]:
        wanted = list(dict.fromkeys(scopes))
        at = _epoch(now)

        def read(db: sqlite3.Connection) -> dict[str, datetime | None]:
            found: dict[str, datetime | None] = dict.fromkeys(wanted)
            query = (
                "SELECT scope, at FROM last_run WHERE scope IN ({marks}) "
                "AND expires_at >= ?"
            )
            for row in rows_in(db, query, wanted, (at,)):
                found[row[0]] = _ts(row[1])
            return found

        if not wanted:
            return {}
        # A read: through the read connection, never holding the write lock
        # the edge's appends need (every write it could miss is committed
        # before its caller goes on).
        return await self._read(read)

    async def set_last_run(  # noqa: D102
        self, scope: str, at: datetime, ttl: timedelta
    ) -> None:
        await self._run(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO last_run VALUES (?, ?, ?)",
                (scope, at.isoformat(), _epoch(at + ttl)),
            )
        )

    async def reserve_budget(  # noqa: D102
        self, scope: str, limit: int, window: timedelta, now: datetime
    ) -> BudgetSlot | None:
        def write(db: sqlite3.Connection) -> BudgetSlot | None:
            start = _epoch(now - window)
            # Slots taken at a later reading count too: a caller whose reading
            # is older (its pass began first) must not overspend the budget.
            used = db.execute(
                "SELECT count(*) FROM budget WHERE scope=? AND at > ?",
                (scope, start),
            ).fetchone()[0]
            if used >= limit:
                return None
            slot = db.execute(
                "INSERT INTO budget (scope, at) VALUES (?, ?) RETURNING id",
                (scope, _epoch(now)),
            ).fetchone()[0]
            return BudgetSlot(scope, str(slot), now, int(used) + 1)

        return await self._run(write)

    async def release_budget(self, slot: BudgetSlot) -> None:  # noqa: D102
        await self._run(
            lambda db: db.execute(
                "DELETE FROM budget WHERE id=? AND scope=?",
                (int(slot.slot), slot.scope),
            )
        )

    async def circuit(self, scope: str) -> Circuit:  # noqa: D102
        def read(db: sqlite3.Connection) -> Circuit:
            row = db.execute("SELECT * FROM circuit WHERE scope=?", (scope,)).fetchone()
            if row is None:
                return Circuit()
            return Circuit(row["failures"], _ts(row["opened_at"]))

        return await self._run(read)

    async def record_outcome(  # noqa: D102
        self, scope: str, ok: bool, threshold: int, now: datetime
    ) -> Circuit:
        def write(db: sqlite3.Connection) -> Circuit:
            if ok:
                db.execute(
                    "INSERT OR REPLACE INTO circuit VALUES (?, 0, NULL)", (scope,)
                )
                return Circuit()
            row = db.execute("SELECT * FROM circuit WHERE scope=?", (scope,)).fetchone()
            failures = (row["failures"] if row else 0) + 1
            opened = _ts(row["opened_at"]) if row else None
            if opened is None and failures >= threshold:
                opened = now
            db.execute(
                "INSERT OR REPLACE INTO circuit VALUES (?, ?, ?)",
                (scope, failures, opened.isoformat() if opened else None),
            )
            return Circuit(failures, opened)

        return await self._run(write)

    async def reset_circuit(self, scope: str) -> None:  # noqa: D102
        await self._run(
            lambda db: db.execute("DELETE FROM circuit WHERE scope=?", (scope,))
        )

    async def pause(self) -> Pause | None:  # noqa: D102
        def read(db: sqlite3.Connection) -> Pause | None:
            row = db.execute("SELECT value FROM settings WHERE name='pause'").fetchone()
            if row is None:
                return None
            data = json.loads(row[0])
            return Pause(data["by"], datetime.fromisoformat(data["at"]), data["reason"])

        return await self._run(read)

    async def set_pause(self, pause: Pause | None) -> None:  # noqa: D102
        if pause is None:
            await self._run(
                lambda db: db.execute("DELETE FROM settings WHERE name='pause'")
            )
            return
        value = json.dumps(
            {"by": pause.by, "at": pause.at.isoformat(), "reason": pause.reason}
        )
        await self._run(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO settings VALUES ('pause', ?)", (value,)
            )
        )
