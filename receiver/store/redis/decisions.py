"""The Redis store's decision log."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from receiver.errors import InputError
from receiver.store.base import (
    DecisionPage,
    DecisionQuery,
    decision_matches,
)
from receiver.store.redis.codec import (
    _digest,
    _record_time,
    _ttl_ms,
)
from receiver.store.redis.core import RedisCore

if TYPE_CHECKING:
    from receiver.model import JSONObject, JSONValue

# How many decision records one ``decisions`` call reads at most, and per round
# trip: a filter that matches nothing must not read the whole log.
DECISION_SCAN = 20_000
DECISION_CHUNK = 1_000
_CURSOR = re.compile(r"[0-9a-f]{32}")


def _unfiltered(query: DecisionQuery) -> bool:
    return not (
        query.fingerprint
        or query.payload_id
        or query.since
        or query.rule
        or query.playbook
        or query.decision
    )


class _Picker:
    """Which stored decision lines a page takes: after the cursor, filtered."""

    def __init__(self, query: DecisionQuery) -> None:
        self.query = query
        self.seeking = query.cursor
        self.plain = _unfiltered(query)
        self.needles = _needles(query)
        self.last = b""

    def __call__(self, raw: bytes) -> str | None:
        """The record's JSON text if the page takes it, else None."""
        if self.seeking is not None:
            if _digest(raw) == self.seeking:
                self.seeking = None
            return None
        # Decode only lines holding every filtered value: a read must not spend
        # the event loop decoding the whole list.
        if not all(n in raw for n in self.needles):
            return None
        text = raw[14:].decode()
        if not self.plain and not decision_matches(json.loads(text), self.query):
            return None
        return text


def _needles(query: DecisionQuery) -> list[bytes]:
    """Bytes a stored line must contain to pass ``query``.

    Records are compact, ASCII-escaped JSON, as ``complete`` and ``record`` write
    them, so a filtered value appears exactly like this in a matching line.
    """
    fields = (
        ("fingerprint", query.fingerprint),
        ("payload_id", query.payload_id),
        ("rule", query.rule),
        ("playbook", query.playbook),
        ("decision", query.decision),
    )
    return [f'"{name}":{json.dumps(value)}'.encode() for name, value in fields if value]


class DecisionOps(RedisCore):
    """The decision log: records written, pages read."""

    async def record(self, records: Sequence[Mapping[str, JSONValue]]) -> None:  # noqa: D102
        if not records:
            return
        lines = [
            f"{_record_time(r):013d} {json.dumps(r, separators=(',', ':'))}"
            for r in records
        ]
        with self._reachable("record decisions"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.lpush(self._decisions, *lines)
                pipe.ltrim(self._decisions, 0, self.retention.max_decisions - 1)
                pipe.pexpire(self._decisions, _ttl_ms(self.retention.max_age))
                await pipe.execute()

    async def decisions(self, query: DecisionQuery) -> list[JSONObject]:  # noqa: D102
        return (await self.decision_page(query)).items()

    async def decision_page(self, query: DecisionQuery) -> DecisionPage:
        """Scan the newest ``DECISION_SCAN`` records in chunks (each one command).

        The cursor is a digest of the last record returned: new records arrive
        at the head, so the next page starts just after that record wherever
        it now is. A cursor whose record was pruned ends the listing.
        """
        if query.cursor is not None and not _CURSOR.fullmatch(query.cursor):
            raise InputError(
                f"cursor {query.cursor[:40]!r} is not one this receiver issued; "
                "pass next_cursor from the previous page"
            )
        out: list[str] = []
        if query.limit <= 0:
            return DecisionPage(out)
        pick = _Picker(query)
        with self._reachable("read decisions"):
            for start in range(0, DECISION_SCAN, DECISION_CHUNK):
                chunk = await self._redis.lrange(
                    self._decisions, start, start + DECISION_CHUNK - 1
                )
                for item in chunk:
                    raw = item.encode() if isinstance(item, str) else item
                    text = pick(raw)
                    if text is None:
                        continue
                    if len(out) == query.limit:
                        return DecisionPage(out, _digest(pick.last))
                    out.append(text)
                    pick.last = raw
                if len(chunk) < DECISION_CHUNK:
                    break
        return DecisionPage(out)
