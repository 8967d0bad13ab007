"""The tests' ``journal_drained``: woken by journal writes, failing at its deadline."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import journal_drained
from test_store_contract import T0, journal_entry

from receiver.store import MemoryStore


async def test_a_completion_made_while_waiting_ends_the_wait() -> None:
    """Woken by the completion itself: no poll, no sleep on either side."""
    store = MemoryStore()
    entry = journal_entry(0)
    await store.append(entry, [])
    [lease] = await store.claim_batch("c1", 1, 0.0, T0)
    # Its first look at the journal, seen as it happens (not a sleep).
    looked = asyncio.Event()
    pending = store.pending

    async def watched() -> tuple[int, Any]:
        found = await pending()
        looked.set()
        return found

    store.pending = watched  # type: ignore[method-assign]
    waiting = asyncio.create_task(journal_drained(store, timeout=30.0))
    await asyncio.wait_for(looked.wait(), 5.0)
    assert not waiting.done()
    await store.complete(lease.entry.id, [])
    await asyncio.wait_for(waiting, 5.0)
    assert await store.pending() == (0, None)


async def test_a_journal_that_never_drains_fails_at_the_deadline() -> None:
    """An entry nobody decides: the helper fails, naming what is still pending."""
    store = MemoryStore()
    await store.append(journal_entry(0), [])
    with pytest.raises(pytest.fail.Exception, match="journal not drained"):
        await journal_drained(store, timeout=0.05)
