"""The API's read paths in both stores.

Decision pages on indexes and cursors, paginated approvals that expire, and
SQLite reads beside writes.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from test_store_contract import MakeStore, make_store, redis_url  # noqa: F401 (fixtures)

from receiver.errors import InputError
from receiver.model import iso
from receiver.store.base import (
    AlertState,
    Approval,
    DecisionQuery,
    JournalEntry,
    Store,
)
from receiver.store.sqlite import SqliteStore

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def store(make_store: MakeStore) -> Store:  # noqa: F811 (the fixture's name)
    return make_store()


def record(
    n: int, *, rule: str, fingerprint: str = "fp", decision: str = "run"
) -> dict[str, Any]:
    return {
        "n": n,
        "fingerprint": fingerprint,
        "payload_id": f"p{n % 2}",
        "decided_at": iso(T0 + timedelta(seconds=n)),
        "matches": [
            {
                "rule": rule,
                "playbook": f"pb-{rule}",
                "steps": [{"decision": "dry_run"}, {"decision": decision}],
            }
        ],
    }


async def all_pages(store: Store, query: DecisionQuery) -> list[int]:
    seen: list[int] = []
    cursor = query.cursor
    for _ in range(100):
        page = await store.decision_page(
            DecisionQuery(**{**query.__dict__, "cursor": cursor})
        )
        seen += [json.loads(r)["n"] for r in page.records]
        cursor = page.next_cursor
        if cursor is None:
            return seen
    pytest.fail("pagination did not end")


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"rule": "r0"},
        {"playbook": "pb-r1"},
        {"decision": "executed"},
        {"rule": "r0", "decision": "executed"},
        {"fingerprint": "fp-odd"},
        {"payload_id": "p1"},
        {"since": T0 + timedelta(seconds=5)},
    ],
)
async def test_pages_cover_every_match_once_newest_first(store: Store, filters):
    """Paging with next_cursor yields each matching record once, newest first."""
    records = [
        record(
            n,
            rule=f"r{n % 2}",
            fingerprint="fp-odd" if n % 2 else "fp-even",
            decision="executed" if n % 3 == 0 else "skipped",
        )
        for n in range(11)
    ]
    await store.record(records)
    query = DecisionQuery(limit=3, **filters)
    expected = [
        r["n"]
        for r in reversed(records)
        if all(
            (
                not filters.get("rule") or r["matches"][0]["rule"] == filters["rule"],
                not filters.get("playbook")
                or r["matches"][0]["playbook"] == filters["playbook"],
                not filters.get("decision")
                or filters["decision"]
                in [s["decision"] for s in r["matches"][0]["steps"]],
                not filters.get("fingerprint")
                or r["fingerprint"] == filters["fingerprint"],
                not filters.get("payload_id")
                or r["payload_id"] == filters["payload_id"],
                not filters.get("since") or r["decided_at"] >= iso(filters["since"]),
            )
        )
    ]
    assert expected
    assert await all_pages(store, query) == expected


async def test_records_arriving_between_pages_do_not_shift_them(store: Store):
    """New records land before the cursor: the next page neither repeats nor skips."""
    await store.record([record(n, rule="r") for n in range(6)])
    first = await store.decision_page(DecisionQuery(limit=2))
    await store.record([record(n, rule="r") for n in range(6, 9)])
    rest = await all_pages(store, DecisionQuery(limit=2, cursor=first.next_cursor))
    assert [json.loads(r)["n"] for r in first.records] == [5, 4]
    assert rest == [3, 2, 1, 0]


@pytest.mark.parametrize("cursor", ["nope", "-1", "1" * 40, "zz" * 16])
async def test_foreign_cursor_is_an_input_error(store: Store, cursor):
    """A cursor this store never issued is an InputError, not a crash."""
    await store.record([record(0, rule="r")])
    with pytest.raises(InputError, match="cursor"):
        await store.decision_page(DecisionQuery(cursor=cursor))


def approval(n: int, *, ttl: timedelta = timedelta(hours=1)) -> Approval:
    created = T0 + timedelta(minutes=n)
    return Approval(
        id=f"a{n:03d}-{uuid.uuid4().hex[:6]}",
        key=f"k{n}",
        created_at=created,
        expires_at=created + ttl,
        request={"n": n},
    )


async def test_approvals_paginate_with_status(store: Store):
    """Approvals page newest first by cursor, with or without a status filter."""
    items = [await store.put_approval(approval(n)) for n in range(7)]
    await store.decide_approval(items[2].id, "rejected", "bob", T0 + timedelta(hours=2))
    pages, cursor = [], None
    while True:
        page = await store.approvals(limit=3, before=cursor)
        pages.append([a.id for a in page])
        if len(page) < 3:
            break
        cursor = page[-1].id
    assert [i for p in pages for i in p] == [a.id for a in reversed(items)]
    pending = await store.approvals("pending", limit=2)
    rest = await store.approvals("pending", limit=10, before=pending[-1].id)
    assert [a.id for a in pending + rest] == [
        a.id for a in reversed(items) if a.id != items[2].id
    ]


async def test_expire_approvals_marks_only_due_pending(store: Store):
    """The expiry sweep marks pending approvals past expiry, and nothing else."""
    due = await store.put_approval(approval(0, ttl=timedelta(minutes=5)))
    later = await store.put_approval(approval(1, ttl=timedelta(hours=5)))
    decided = await store.put_approval(approval(2, ttl=timedelta(minutes=1)))
    await store.decide_approval(
        decided.id, "approved", "amy", T0 + timedelta(minutes=2)
    )
    now = T0 + timedelta(minutes=30)
    assert await store.expire_approvals(now) == 1
    assert await store.expire_approvals(now) == 0
    statuses = {a.id: a.status for a in await store.approvals()}
    assert statuses == {due.id: "expired", later.id: "pending", decided.id: "approved"}
    (expired,) = await store.approvals("expired")
    assert expired.decided_by == "receiver"


async def test_payloads_paginate_by_cursor(store: Store):
    """Stored payloads page newest first with before=<last id>."""
    ids = []
    for n in range(5):
        entry = JournalEntry(
            id=f"e{n:03d}-{uuid.uuid4().hex[:6]}",
            source="alertmanager",
            received_at=T0 + timedelta(seconds=n),
            body=b"{}",
        )
        await store.append(entry, [AlertState("fp", "firing", T0, T0)])
        ids.append(entry.id)
    first = await store.payloads(limit=2)
    second = await store.payloads(limit=2, before=first[-1].id)
    third = await store.payloads(limit=2, before=second[-1].id)
    assert [e.id for e in first + second + third] == list(reversed(ids))


async def test_sqlite_reads_never_wait_for_the_journal(tmp_path):
    """With the read connection busy, appends (the 202 path) still complete."""
    store = SqliteStore(str(tmp_path / "s.db"))
    release = threading.Event()
    assert store._log._read_thread is not None
    blocker = asyncio.get_running_loop().run_in_executor(
        store._log._read_thread, release.wait, 30
    )
    reading = asyncio.create_task(store.decision_page(DecisionQuery()))
    entry = JournalEntry(id="e1", source="alertmanager", received_at=T0, body=b"{}")
    await asyncio.wait_for(store.append(entry, []), 30)
    assert not reading.done()
    release.set()
    await blocker
    assert (await reading).records == []
    await store.close()


async def test_sqlite_index_is_filled_for_old_rows(tmp_path):
    """Records written before the index existed are found after reopening."""
    path = str(tmp_path / "s.db")
    store = SqliteStore(path)
    await store.record([record(1, rule="old")])
    store._log._db.execute("DELETE FROM decision_index")
    store._log._db.execute("PRAGMA user_version=0")
    await store.close()
    store = SqliteStore(path)
    assert [r["n"] for r in await store.decisions(DecisionQuery(rule="old"))] == [1]
    await store.close()


async def test_sqlite_bulk_records_do_not_race(tmp_path):
    """Tens of thousands of records in batches land without SQLITE_MISUSE.

    A cursor returned from the transaction thread and let go of on the event
    loop's thread used to reset its cached statement while the next batch ran.
    """
    store = SqliteStore(str(tmp_path / "s.db"))
    for _ in range(50):
        await store.record(
            [
                {"fingerprint": f"f{n}", "decided_at": "x", "matches": []}
                for n in range(1000)
            ]
        )
    page = await store.decision_page(DecisionQuery(fingerprint="f1", limit=100))
    assert len(page.records) == 50
    await store.close()
