"""The SQLite store's approvals: steps waiting for a person's decision."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import Literal

from receiver.store.base import Approval
from receiver.store.sqlite.connection import SqliteConnection
from receiver.store.sqlite.schema import _ts


class SqliteApprovals(SqliteConnection):
    """Approvals requested, decided and expired."""

    @staticmethod
    def _approval(row: sqlite3.Row) -> Approval:
        return Approval(
            id=row["id"],
            key=row["key"],
            created_at=datetime.fromisoformat(row["created_at"]),
            expires_at=datetime.fromisoformat(row["expires_at"]),
            request=json.loads(row["request"]),
            status=row["status"],
            decided_by=row["decided_by"],
            decided_at=_ts(row["decided_at"]),
        )

    async def put_approval(self, approval: Approval) -> Approval:  # noqa: D102
        def write(db: sqlite3.Connection) -> Approval:
            db.execute(
                "INSERT OR IGNORE INTO approvals (id, key, created_at, expires_at, "
                "request, status) VALUES (?, ?, ?, ?, ?, 'pending')",
                (
                    approval.id,
                    approval.key,
                    approval.created_at.isoformat(),
                    approval.expires_at.isoformat(),
                    json.dumps(dict(approval.request)),
                ),
            )
            row = db.execute(
                "SELECT * FROM approvals WHERE key=?", (approval.key,)
            ).fetchone()
            return self._approval(row)

        return await self._run(write)

    async def get_approval(self, approval_id: str) -> Approval | None:  # noqa: D102
        def read(db: sqlite3.Connection) -> Approval | None:
            row = db.execute(
                "SELECT * FROM approvals WHERE id=?", (approval_id,)
            ).fetchone()
            return self._approval(row) if row else None

        return await self._run(read)

    async def decide_approval(  # noqa: D102
        self,
        approval_id: str,
        status: Literal["approved", "rejected", "expired"],
        by: str,
        now: datetime,
    ) -> Approval | None:
        def write(db: sqlite3.Connection) -> Approval | None:
            row = db.execute(
                "UPDATE approvals SET status=?, decided_by=?, decided_at=? "
                "WHERE id=? AND status='pending' RETURNING *",
                (status, by, now.isoformat(), approval_id),
            ).fetchone()
            return self._approval(row) if row else None

        return await self._run(write)

    async def approvals(  # noqa: D102
        self,
        status: str | None = None,
        *,
        limit: int = 100,
        before: str | None = None,
    ) -> list[Approval]:
        where, args = ["1=1"], []
        if status:
            where.append("status=?")
            args.append(status)
        if before is not None:
            where.append(
                "(created_at, id) < (SELECT created_at, id FROM approvals WHERE id=?)"
            )
            args.append(before)
        sql = (
            f"SELECT * FROM approvals WHERE {' AND '.join(where)} "  # noqa: S608 (fixed fragments)
            "ORDER BY created_at DESC, id DESC LIMIT ?"
        )

        def read(db: sqlite3.Connection) -> list[Approval]:
            rows = db.execute(sql, (*args, limit)).fetchall()
            return [self._approval(r) for r in rows]

        return await self._read(read)

    async def expire_approvals(self, now: datetime) -> int:  # noqa: D102
        def write(db: sqlite3.Connection) -> int:
            return int(
                db.execute(
                    "UPDATE approvals SET status='expired', decided_by='receiver', "
                    "decided_at=? WHERE status='pending' AND expires_at <= ?",
                    (now.isoformat(), now.isoformat()),
                ).rowcount
            )

        return await self._run(write)
