"""The SQLite store's run-once keys: a step's side effect claimed before it acts."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Literal

from receiver.store.base import Claim, ClaimOutcome, KeyStatus
from receiver.store.sqlite.incarnations import SqliteIncarnations
from receiver.store.sqlite.schema import _epoch


class SqliteRunOnce(SqliteIncarnations):
    """Run-once keys, claimed, marked sending, finished or released."""

    @staticmethod
    def _claim(row: sqlite3.Row) -> Claim:
        return Claim(
            row["key"],
            row["owner"],
            row["status"],
            datetime.fromisoformat(row["at"]),
            row["detail"],
            datetime.fromtimestamp(row["expires_at"], UTC),
            row["intent"],
        )

    async def claim_key(  # noqa: D102
        self, key: str, owner: str, now: datetime, ttl: timedelta
    ) -> ClaimOutcome:
        at = _epoch(now)

        def write(db: sqlite3.Connection) -> ClaimOutcome:
            row = db.execute("SELECT * FROM claims WHERE key=?", (key,)).fetchone()
            recovered = None
            if row is not None:
                existing = self._claim(row)
                # Our own incarnation is alive (it is asking): a claim it holds
                # is another task's in flight, never an orphan, even if its
                # heartbeat lapsed under load.
                orphan = (
                    existing.owner != owner
                    and existing.status in ("running", "sending")
                    and self._dead(db, existing.owner, at)
                )
                if row["expires_at"] >= at and not orphan:
                    return ClaimOutcome(won=False, holder=existing)
                recovered = existing if orphan else None
            # A taken-over "sending" mark stays (with its intent): should this
            # holder die too before it settles it, the next one re-checks it
            # again instead of reading "nothing was sent" and sending twice.
            sent = recovered is not None and recovered.status == "sending"
            status: KeyStatus = "sending" if sent else "running"
            intent = recovered.intent if recovered is not None and sent else ""
            mine = Claim(key, owner, status, now, "", now + ttl, intent)
            db.execute(
                "INSERT OR REPLACE INTO claims (key, owner, status, at, detail, "
                "expires_at, intent) VALUES (?, ?, ?, ?, '', ?, ?)",
                (key, owner, status, now.isoformat(), _epoch(now + ttl), intent),
            )
            stopped = recovered is not None and self._stopped(db, recovered.owner)
            return ClaimOutcome(
                won=True, holder=mine, recovered=recovered, stopped=stopped
            )

        return await self._run(write)

    async def mark_sending(  # noqa: D102
        self, key: str, owner: str, now: datetime, intent: str = ""
    ) -> bool:
        cur = await self._run(
            lambda db: db.execute(
                "UPDATE claims SET status='sending', at=?, intent=? WHERE key=? "
                "AND owner=? AND status IN ('running', 'sending')",
                (now.isoformat(), intent, key, owner),
            )
        )
        return bool(cur.rowcount == 1)

    async def finish_key(  # noqa: D102
        self,
        key: str,
        owner: str,
        status: Literal["done", "failed"],
        detail: str,
        now: datetime,
    ) -> bool:
        cur = await self._run(
            lambda db: db.execute(
                "UPDATE claims SET status=?, detail=?, at=? WHERE key=? AND owner=? "
                "AND status IN ('running', 'sending')",
                (status, detail[:500], now.isoformat(), key, owner),
            )
        )
        return bool(cur.rowcount == 1)

    async def release_key(self, key: str, owner: str) -> None:  # noqa: D102
        await self._run(
            lambda db: db.execute(
                "DELETE FROM claims WHERE key=? AND owner=? AND status='running'",
                (key, owner),
            )
        )
