"""The SQLite journal's depth: kept by each write, counted again at open.

``pending()`` reads the count ``journal_depth`` keeps (each write that makes
entries unfinished or finished changes it in its own transaction) and the first
unfinished entry in line, instead of counting the backlog at every look. An
old store file (with the index it used to have and no count) is migrated when
opened; a count a version that did not keep it left wrong is counted again at
open; a process killed with SIGKILL in the middle of appends, claims and
completions leaves the count exact.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

from receiver.store.base import JournalEntry, Retention
from receiver.store.sqlite import SqliteStore

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)

# The journal table and its indexes as the store created them before
# journal_depth existed.
OLD_JOURNAL = """
CREATE TABLE journal (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    received_at TEXT NOT NULL,
    body BLOB NOT NULL,
    headers TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    consumer TEXT,
    claimed_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    done_at TEXT,
    lease_until REAL,
    last_error TEXT NOT NULL DEFAULT '',
    parked_at TEXT
);
CREATE INDEX journal_state ON journal(state, id);
CREATE INDEX journal_queue ON journal(state);
PRAGMA user_version=1;
"""


def entry(n: int) -> JournalEntry:
    return JournalEntry(
        id=f"e{n:03d}",
        source="alertmanager",
        received_at=T0 + timedelta(seconds=n),
        body=b'{"n": %d}' % n,
        headers={"content-type": "application/json"},
    )


def unfinished(path: Path) -> int:
    """The backlog counted the slow way, from another connection."""
    with sqlite3.connect(path) as db:
        row = db.execute(
            "SELECT count(*) FROM journal WHERE state IN ('pending', 'claimed')"
        ).fetchone()
    return int(row[0])


def old_store(path: Path, states: list[str]) -> None:
    """A store file as an older version left it: one row per state given."""
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(OLD_JOURNAL)
    db.executemany(
        "INSERT INTO journal (id, source, received_at, body, headers, state) "
        "VALUES (?, 'alertmanager', ?, ?, '{}', ?)",
        [
            (f"old{n}", (T0 + timedelta(seconds=n)).isoformat(), b"{}", state)
            for n, state in enumerate(states)
        ],
    )
    db.close()


async def test_an_old_store_file_is_migrated(tmp_path: Path) -> None:
    """Its unfinished entries are counted, the unused index dropped, all readable."""
    path = tmp_path / "old.db"
    old_store(path, ["done", "parked", "claimed", "pending", "done", "pending"])
    store = SqliteStore(str(path), retention=Retention(max_payloads=1))
    try:
        # The claimed one is handed back (single instance) and still counts.
        assert await store.pending() == (3, T0 + timedelta(seconds=2))
        indexes = {
            r[0]
            for r in store._db.execute(
                "SELECT name FROM sqlite_master WHERE type='index' "
                "AND tbl_name='journal'"
            )
        }
        assert "journal_state" not in indexes
        assert "journal_queue" in indexes
        payload = await store.payload("old3")
        assert payload is not None
        assert payload.body == b"{}"
        await store.append(entry(9), [])
        assert await store.pending() == (4, T0 + timedelta(seconds=2))
        # The newest finished entry by arrival is the one kept.
        assert await store.prune(T0) == 1
        assert await store.payload("old0") is None
        assert await store.payload("old4") is not None
    finally:
        await store.close()
    assert unfinished(path) == 4


async def test_a_wrong_count_is_counted_again_at_open(tmp_path: Path) -> None:
    """A count left wrong (or lost) by another writer is right once reopened."""
    path = tmp_path / "s.db"
    store = SqliteStore(str(path))
    for n in range(3):
        await store.append(entry(n), [])
    await store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE journal_depth SET unfinished = 99")
    store = SqliteStore(str(path))
    try:
        assert await store.pending() == (3, T0)
        store._db.execute("DELETE FROM journal_depth")
        assert await store.pending() == (3, T0)
    finally:
        await store.close()


async def test_the_count_follows_every_change_of_state(tmp_path: Path) -> None:
    """Appends, claims, releases, parking, retries and completions, counted exactly."""
    path = tmp_path / "s.db"
    store = SqliteStore(str(path))
    try:
        for n in range(6):
            await store.append(entry(n), [])
        leases = await store.claim_batch("c1", 4, 0, T0)
        assert await store.pending() == (6, T0)
        await store.park(leases[0], "bad", T0)
        await store.release(leases[1], T0, "again")
        await store.complete_batch([(leases[2].entry.id, []), ("missing", [])])
        assert await store.pending() == (4, T0 + timedelta(seconds=1))
        assert await store.retry_parked(leases[0].entry.id, T0)
        assert await store.pending() == (5, T0)
        # Completed twice, or parked and then completed: counted once.
        await store.park(leases[3], "bad", T0)
        await store.complete_batch([(leases[3].entry.id, []), (leases[2].entry.id, [])])
        assert await store.pending() == (4, T0)
        assert unfinished(path) == 4
    finally:
        await store.close()


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import UTC, datetime
    from receiver.store.base import JournalEntry
    from receiver.store.sqlite import SqliteStore

    async def main():
        store = SqliteStore(sys.argv[1])
        now = datetime.now(UTC)

        async def append(k):
            for n in range(100000):
                entry_id = f"k{k}-{n}"
                await store.append(
                    JournalEntry(entry_id, "alertmanager", now, b"{}"), []
                )
                print(entry_id, flush=True)

        async def decide():
            while True:
                leases = await store.claim_batch("w", 8, 0.05, now)
                for lease in leases[::3]:
                    await store.park(lease, "bad", now)
                await store.complete_batch([(x.entry.id, []) for x in leases])

        await asyncio.gather(*(append(k) for k in range(8)), decide())

    asyncio.run(main())
    """
)


def test_the_count_stays_exact_when_the_writer_is_killed(tmp_path: Path) -> None:
    """SIGKILL in the middle of appends and completions: the count matches the rows."""
    path = tmp_path / "s.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    assert child.stdout is not None
    acknowledged = [child.stdout.readline().strip() for _ in range(300)]
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stdout.close()
    # The count as the killed process left it (not yet counted again at open).
    with sqlite3.connect(path) as db:
        (kept,) = db.execute("SELECT unfinished FROM journal_depth").fetchone()
    assert kept == unfinished(path)

    async def reopen() -> tuple[int, list[JournalEntry | None]]:
        store = SqliteStore(str(path), reclaim=False)
        try:
            count, _ = await store.pending()
            return count, [await store.payload(i) for i in acknowledged]
        finally:
            await store.close()

    count, payloads = asyncio.run(reopen())
    assert count == kept
    assert None not in payloads  # every append that returned was committed
