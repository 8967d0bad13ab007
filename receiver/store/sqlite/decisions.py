"""The SQLite store's decision log and its tag index, in a file of their own."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from receiver.errors import InputError
from receiver.model import iso
from receiver.store.base import DecisionPage, DecisionQuery
from receiver.store.sqlite.connection import SqliteConnection
from receiver.store.sqlite.schema import TAG_KINDS, insert_decisions

if TYPE_CHECKING:
    from receiver.model import JSONObject, JSONValue


def _decision_sql(query: DecisionQuery) -> tuple[str, list[str | int]]:
    """The SQL for one page of ``query``: every filter on an index."""
    joins: list[str] = []
    where: list[str] = []
    args: list[str | int] = []
    order = "d.seq"
    for kind in TAG_KINDS:
        value = getattr(query, kind)
        if value:
            alias = f"t_{kind}"
            joins.append(
                f"JOIN decision_index {alias} ON {alias}.seq = d.seq "
                f"AND {alias}.kind = '{kind}' AND {alias}.value = ?"
            )
            args.append(value)
            if order == "d.seq":
                order = f"{alias}.seq"  # walk the first tag's index, newest first
    if query.fingerprint:
        where.append("d.fingerprint = ?")
        args.append(query.fingerprint)
    if query.payload_id:
        where.append("d.payload_id = ?")
        args.append(query.payload_id)
    if query.since:
        since = iso(query.since) or ""
        # Walk only from the first record decided since then (an index search),
        # not the whole log newest first.
        where.append(
            "d.decided_at >= ? AND d.seq >= "
            "(SELECT coalesce(min(seq), 1 << 62) FROM decisions "
            "INDEXED BY decisions_time WHERE decided_at >= ?)"
        )
        args += [since, since]
    if query.cursor is not None:
        if not query.cursor.isdigit() or len(query.cursor) > 18:
            raise InputError(
                f"cursor {query.cursor[:40]!r} is not one this receiver issued; "
                "pass next_cursor from the previous page"
            )
        where.append(f"{order} < ?")
        args.append(int(query.cursor))
    sql = (
        f"SELECT d.seq, d.record FROM decisions d {' '.join(joins)} "  # noqa: S608 (fixed fragments)
        f"WHERE {' AND '.join(where) or '1=1'} ORDER BY {order} DESC LIMIT ?"
    )
    args.append(query.limit + 1)
    return sql, args


class SqliteDecisions(SqliteConnection):
    """The decision log: records written by the engine, read a page at a time."""

    async def record(self, records: Sequence[Mapping[str, JSONValue]]) -> None:  # noqa: D102
        await self._log.write(
            lambda db: insert_decisions(
                db, ((str(r.get("payload_id", "")), r) for r in records)
            )
        )

    async def decisions(self, query: DecisionQuery) -> list[JSONObject]:  # noqa: D102
        return (await self.decision_page(query)).items()

    async def decision_page(self, query: DecisionQuery) -> DecisionPage:  # noqa: D102
        sql, args = _decision_sql(query)

        def read(db: sqlite3.Connection) -> DecisionPage:
            rows = db.execute(sql, args).fetchall()
            more = len(rows) > query.limit
            rows = rows[: query.limit]
            return DecisionPage(
                [r[1] for r in rows], str(rows[-1][0]) if more and rows else None
            )

        return await self._log.read(read)
