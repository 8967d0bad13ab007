"""A completion that comes after its entry left the journal records nothing.

Only finished entries leave the journal (retention prunes them with their
records). A worker whose lease lapsed while another finished the entry, and
whose completion comes after the prune, must not write the entry's decisions
again: they would be records of a payload the journal no longer holds.
"""

from __future__ import annotations

from datetime import UTC, datetime

from receiver.store.base import DecisionQuery, JournalEntry
from receiver.store.sqlite import SqliteStore

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def _record(payload_id: str) -> dict[str, object]:
    return {
        "payload_id": payload_id,
        "fingerprint": "fp-1",
        "decided_at": "2026-11-26T10:00:00.000Z",
        "matches": [],
    }


async def test_a_completion_for_an_entry_no_longer_journaled_writes_nothing(tmp_path):
    store = SqliteStore(str(tmp_path / "state.db"))
    try:
        entry = JournalEntry(
            id="kept", source="alertmanager", received_at=NOW, body=b"{}", headers={}
        )
        await store.append(entry, [])
        await store.complete_batch(
            [("kept", [_record("kept")]), ("pruned", [_record("pruned")])]
        )
        kept = await store.decisions(DecisionQuery(payload_id="kept"))
        gone = await store.decisions(DecisionQuery(payload_id="pruned"))
        assert [r["payload_id"] for r in kept] == ["kept"]
        assert gone == []
    finally:
        await store.close()
