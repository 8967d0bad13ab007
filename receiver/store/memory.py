"""In-process store: a bounded journal and decision log in memory.

Nothing survives a restart; fine for development, replay and tests. Bounded by
``max_entries`` (oldest finished entries and decisions are dropped first).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from typing import Any

from receiver.store.base import DecisionQuery, JournalEntry, decision_matches


class MemoryStore:
    """The in-memory ``Store``."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._max = max_entries
        self._entries: OrderedDict[str, JournalEntry] = OrderedDict()
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._unfinished: set[str] = set()
        self._decisions: deque[dict[str, Any]] = deque(maxlen=max_entries * 4)

    async def append(self, entry: JournalEntry) -> None:  # noqa: D102
        self._entries[entry.id] = entry
        self._unfinished.add(entry.id)
        self._queue.put_nowait(entry.id)
        while len(self._entries) > self._max:
            oldest = next(iter(self._entries))
            if oldest in self._unfinished:
                break
            del self._entries[oldest]

    async def claim(self, timeout: float) -> JournalEntry | None:  # noqa: D102
        try:
            entry_id = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None
        return self._entries.get(entry_id)

    async def complete(  # noqa: D102
        self, entry_id: str, traces: Sequence[Mapping[str, Any]]
    ) -> None:
        self._decisions.extend(dict(t) for t in traces)
        self._unfinished.discard(entry_id)

    async def payload(self, entry_id: str) -> JournalEntry | None:  # noqa: D102
        return self._entries.get(entry_id)

    async def payloads(self, limit: int = 100) -> list[JournalEntry]:  # noqa: D102
        return list(reversed(self._entries.values()))[:limit]

    async def decisions(self, query: DecisionQuery) -> list[dict[str, Any]]:  # noqa: D102
        out = []
        for record in reversed(self._decisions):
            if decision_matches(record, query):
                out.append(record)
                if len(out) >= query.limit:
                    break
        return out

    async def pending(self) -> int:  # noqa: D102
        return len(self._unfinished)

    async def ping(self) -> bool:  # noqa: D102
        return True

    async def close(self) -> None:  # noqa: D102
        return None
