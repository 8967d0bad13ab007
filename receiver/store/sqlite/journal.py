"""The SQLite store's journal of payloads: append, claim, park, prune; delivery ids."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial

import msgspec

from receiver.model import JSONValue, iso
from receiver.store.base import (
    FORGET_DEAD_AFTER,
    AlertState,
    JournalEntry,
    Lease,
    ParkedEntry,
    newer_state,
)
from receiver.store.sqlite.connection import SqliteConnection
from receiver.store.sqlite.schema import (
    COUNT_UNFINISHED,
    EncodedDecision,
    _epoch,
    _ts,
    encode_decision,
    insert_decisions,
    insert_encoded,
    rows_in,
)

# Decision records a batch may encode before its transaction (see
# ``complete_batch``); a bigger one is encoded as it is written.
ENCODE_AHEAD = 512
# A journal row's headers as JSON text: a tenth of ``json.dumps``'s time.
_HEADERS = msgspec.json.Encoder()
# ... and read back: a quarter of ``json.loads``'s time, for every entry claimed.
_READ_HEADERS = msgspec.json.Decoder()


class SqliteJournal(SqliteConnection):
    """The journal of received payloads and the alert states they carry.

    Appends made while a transaction is on its way to disk join one group,
    written as one call of the next transaction: one statement for all their
    journal rows, one read and one write for all their alert states.
    """

    # The group appends join until the writer takes it.
    _appends: _AppendGroup | None = None
    # Done once the last batch that came to ``complete_batch`` has written its
    # decision records (or failed to): the next one writes after it.
    _recorded: asyncio.Future[None] | None = None

    async def append(  # noqa: D102
        self, entry: JournalEntry, states: Sequence[AlertState]
    ) -> None:
        group = self._appends
        future = None if group is None else group.join(entry, states)
        if future is None:
            group = self._appends = _AppendGroup()
            future = group.join(entry, states)
            assert future is not None  # noqa: S101 (a new group is open)
            group.task = asyncio.create_task(self._write_group(group))
        await future
        self._wakeup.set()

    async def _write_group(self, group: _AppendGroup) -> None:
        """Journal a group of appends as one call of the next transaction."""
        try:
            outcomes = await self._run(lambda db: self._append_group(db, group))
        except Exception as exc:  # noqa: BLE001 (each caller gets the batch's error)
            group.close()  # if BEGIN failed, the writer never took it
            outcomes = [exc] * len(group.taken)
        except BaseException:
            group.close()
            group.cancel_all()
            raise
        finally:
            if self._appends is group:
                self._appends = None
        for index, outcome in zip(group.taken, outcomes, strict=True):
            future = group.futures[index]
            if future.done():
                continue
            if outcome is None:
                future.set_result(None)
            else:
                future.set_exception(outcome)
        group.cancel_all()  # those cancelled before the group was taken

    def _append_group(
        self, db: sqlite3.Connection, group: _AppendGroup
    ) -> list[Exception | None]:
        """Write the group's entries in one go, or one savepoint each if that fails.

        Every entry and every state goes in with one statement each (a
        savepoint around them, one per group, not per entry; none for a group
        of one, which fails as any call does). If that fails,
        it is rolled back and each entry is written in its own savepoint, so a
        failing entry fails alone, as separate calls would.
        """
        entries = group.close()
        if len(entries) == 1:
            self._write_entries(db, entries)  # fails as a call of its own
            return [None]
        db.execute("SAVEPOINT appends")
        try:
            self._write_entries(db, entries)
        except Exception:  # noqa: BLE001 (each entry is tried on its own next)
            db.execute("ROLLBACK TO appends")
        else:
            db.execute("RELEASE appends")
            return [None] * len(entries)
        db.execute("RELEASE appends")
        outcomes: list[Exception | None] = []
        for one in entries:
            db.execute("SAVEPOINT append")
            try:
                self._write_entries(db, [one])
            except Exception as exc:  # noqa: BLE001 (handed to its caller)
                db.execute("ROLLBACK TO append")
                outcomes.append(self._error_of(exc))
            else:
                outcomes.append(None)
            db.execute("RELEASE append")
        return outcomes

    def _write_entries(
        self,
        db: sqlite3.Connection,
        entries: Sequence[tuple[JournalEntry, Sequence[AlertState]]],
    ) -> None:
        db.executemany(
            "INSERT INTO journal (id, source, received_at, body, headers) "
            "VALUES (?, ?, ?, ?, ?)",
            [
                (
                    e.id,
                    e.source,
                    e.received_at.isoformat(),
                    e.body,
                    _HEADERS.encode(
                        e.headers if type(e.headers) is dict else dict(e.headers)
                    ).decode(),
                )
                for e, _ in entries
            ],
        )
        _unfinished(db, len(entries))
        states = [s for _, group in entries for s in group]
        if states:
            self._put_states(db, states)

    @classmethod
    def _put_states(cls, db: sqlite3.Connection, states: Sequence[AlertState]) -> None:
        """Keep each alert's newest state: one read and one write per payload.

        The same outcome as comparing and writing the states one by one, in
        order (a later state of the same alert is compared with the earlier).
        """
        latest: dict[str, AlertState | None] = {}
        fingerprints = list(dict.fromkeys(s.fingerprint for s in states))
        # Rows written together share their times: each text is parsed once.
        parsed: dict[str, datetime] = {}

        def when(text: str) -> datetime:
            found = parsed.get(text)
            if found is None:
                found = parsed[text] = datetime.fromisoformat(text)
            return found

        for fingerprint, status, starts_at, updated_at in rows_in(
            db,
            "SELECT fingerprint, status, starts_at, updated_at FROM alert_state "
            "WHERE fingerprint IN ({marks})",
            fingerprints,
        ):
            latest[fingerprint] = AlertState(
                fingerprint,
                status,
                when(starts_at) if starts_at else None,
                when(updated_at),
            )
        changed = _newest(latest, states)
        # The states of a payload share their times (``updated_at`` always,
        # ``starts_at`` often): each distinct time is written out once.
        texts: dict[tuple[datetime, object], str] = {}

        def text(at: datetime) -> str:
            key = (at, at.tzinfo)  # equal instants in other zones read differently
            found = texts.get(key)
            if found is None:
                found = texts[key] = at.isoformat()
            return found

        # In place (an update of the row): a replace deleted the row and
        # inserted it again under a new rowid, touching twice the pages; 20-30%
        # less CPU for 20 states once the table holds thousands of alerts.
        db.executemany(
            "INSERT INTO alert_state VALUES (?, ?, ?, ?) ON CONFLICT (fingerprint) "
            "DO UPDATE SET status=excluded.status, starts_at=excluded.starts_at, "
            "updated_at=excluded.updated_at",
            [
                (
                    s.fingerprint,
                    s.status,
                    text(s.starts_at) if s.starts_at else None,
                    text(s.updated_at),
                )
                for s in changed.values()
            ],
        )

    @classmethod
    def _state(cls, db: sqlite3.Connection, fingerprint: str) -> AlertState | None:
        row = db.execute(
            "SELECT * FROM alert_state WHERE fingerprint=?", (fingerprint,)
        ).fetchone()
        return None if row is None else cls._state_of(row)

    @staticmethod
    def _state_of(row: sqlite3.Row) -> AlertState:
        return AlertState(
            row["fingerprint"],
            row["status"],
            _ts(row["starts_at"]),
            datetime.fromisoformat(row["updated_at"]),
        )

    async def alert_state(self, fingerprint: str) -> AlertState | None:  # noqa: D102
        return await self._run(lambda db: self._state(db, fingerprint))

    async def claim(  # noqa: D102
        self, consumer: str, wait: float, now: datetime
    ) -> Lease | None:
        leases = await self.claim_batch(consumer, 1, wait, now)
        return leases[0] if leases else None

    async def claim_batch(  # noqa: D102
        self, consumer: str, limit: int, wait: float, now: datetime
    ) -> list[Lease]:
        deadline = time.monotonic() + wait
        until = now + self.retention.lease
        limit = max(limit, 1)

        def take(db: sqlite3.Connection) -> list[JournalEntry]:
            # The earliest of (first pending, first lapsed leases), each one
            # search of journal_queue: an OR here sorted the whole backlog.
            rows = db.execute(
                "UPDATE journal SET state='claimed', consumer=?, claimed_at=?, "
                "lease_until=?, attempts=attempts+1 WHERE rowid IN (SELECT r FROM ("
                "SELECT r FROM (SELECT rowid AS r FROM journal WHERE "
                "state='pending' ORDER BY rowid LIMIT ?) UNION ALL "
                "SELECT r FROM (SELECT rowid AS r FROM journal WHERE "
                "state='claimed' AND lease_until < ? ORDER BY rowid LIMIT ?)"
                ") ORDER BY r LIMIT ?) RETURNING rowid, *",
                (
                    consumer,
                    _epoch(now),
                    _epoch(until),
                    limit,
                    _epoch(now),
                    limit,
                    limit,
                ),
            ).fetchall()
            # RETURNING gives no order: the oldest is decided first.
            return [_entry(r) for r in sorted(rows, key=lambda r: r[0])]

        while True:
            self._wakeup.clear()
            # Not durable: a claim lost to a power cut is a claim opening the
            # store would have handed back anyway.
            entries = await self._run(take, durable=False)
            if entries:
                return [Lease(entry, consumer, until) for entry in entries]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), min(remaining, 0.25))

    async def renew(self, lease: Lease, now: datetime) -> Lease | None:  # noqa: D102
        until = now + self.retention.lease

        def write(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE journal SET lease_until=? WHERE id=? AND state='claimed' "
                "AND consumer=?",
                (_epoch(until), lease.entry.id, lease.consumer),
            )
            return cur.rowcount == 1

        renewed = await self._run(write)
        return Lease(lease.entry, lease.consumer, until) if renewed else None

    async def release(  # noqa: D102
        self, lease: Lease, now: datetime, error: str
    ) -> None:
        del now
        await self._run(
            lambda db: db.execute(
                "UPDATE journal SET state='pending', consumer=NULL, lease_until=NULL, "
                "last_error=? WHERE id=? AND state='claimed' AND consumer=?",
                (error[:2000], lease.entry.id, lease.consumer),
            )
        )
        self._wakeup.set()

    async def park(  # noqa: D102
        self, lease: Lease, reason: str, now: datetime
    ) -> None:
        def write(db: sqlite3.Connection) -> None:
            parked = db.execute(
                "UPDATE journal SET state='parked', consumer=NULL, lease_until=NULL, "
                "last_error=?, parked_at=? WHERE id=? AND state IN "
                "('claimed', 'pending')",
                (reason[:2000], now.isoformat(), lease.entry.id),
            ).rowcount
            _unfinished(db, -parked)

        await self._run(write)

    async def parked(self, limit: int = 100) -> list[ParkedEntry]:  # noqa: D102
        def read(db: sqlite3.Connection) -> list[ParkedEntry]:
            rows = db.execute(
                "SELECT * FROM journal WHERE state='parked' ORDER BY parked_at DESC, "
                "rowid DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [
                ParkedEntry(
                    _entry(r),
                    r["last_error"],
                    datetime.fromisoformat(r["parked_at"]),
                )
                for r in rows
            ]

        return await self._run(read)

    async def parked_count(self) -> int:  # noqa: D102
        return int(
            await self._run(
                lambda db: db.execute(
                    "SELECT count(*) FROM journal WHERE state='parked'"
                ).fetchone()[0]
            )
        )

    async def retry_parked(self, entry_id: str, now: datetime) -> bool:  # noqa: D102
        del now

        def write(db: sqlite3.Connection) -> int:
            retried = int(
                db.execute(
                    "UPDATE journal SET state='pending', attempts=0, parked_at=NULL "
                    "WHERE id=? AND state='parked'",
                    (entry_id,),
                ).rowcount
            )
            _unfinished(db, retried)
            return retried

        retried = await self._run(write)
        self._wakeup.set()
        return retried == 1

    async def complete(  # noqa: D102
        self, entry_id: str, traces: Sequence[Mapping[str, JSONValue]]
    ) -> None:
        await self.complete_batch([(entry_id, traces)])

    async def complete_batch(  # noqa: D102
        self, done: Sequence[tuple[str, Sequence[Mapping[str, JSONValue]]]]
    ) -> None:
        await self._in_turn(done, finish=True)

    async def record_batch(  # noqa: D102
        self, done: Sequence[tuple[str, Sequence[Mapping[str, JSONValue]]]]
    ) -> None:
        await self._in_turn(done, finish=False)

    async def _in_turn(
        self,
        done: Sequence[tuple[str, Sequence[Mapping[str, JSONValue]]]],
        *,
        finish: bool,
    ) -> None:
        if not done:
            return
        if not any(traces for _, traces in done):
            # No record to write (entries whose records ``record_batch``
            # wrote): the decision log is not written at all.
            if finish:
                ids = list(dict.fromkeys(entry_id for entry_id, _ in done))
                await self._run(partial(_mark_done, ids=ids))
            return

        # Batches write their records one after another, in the order they
        # came (the log keeps decisions in the order they were decided); a
        # batch's done-marks, in the other file, go while the next one reads,
        # encodes and writes its records. The turn is taken before any await.
        loop = asyncio.get_running_loop()
        before, mine = self._recorded, loop.create_future()
        self._recorded = mine
        if before is not None and (before.done() or before.get_loop() is not loop):
            before = None
        try:
            await self._complete(done, before, mine, finish=finish)
        finally:
            if not mine.done():
                mine.set_result(None)

    async def _complete(
        self,
        done: Sequence[tuple[str, Sequence[Mapping[str, JSONValue]]]],
        before: asyncio.Future[None] | None,
        mine: asyncio.Future[None],
        *,
        finish: bool,
    ) -> None:
        """Write ``done``'s records (those not written yet); ``finish``: mark done."""
        ids = list(dict.fromkeys(entry_id for entry_id, _ in done))

        # Done before (by another worker whose lease lapsed in between): no
        # records, as it gets no done-mark below. Read beside the writer while
        # the records are encoded; an entry once done stays done, so an older
        # snapshot only skips less.
        def done_before(db: sqlite3.Connection) -> set[str]:
            states = _states(db, ids)
            # Gone from the journal counts as done: only finished entries are
            # pruned (a completion this late: its lease lapsed, another worker
            # finished it, retention pruned it and its records).
            return {i for i in ids if states.get(i, "done") == "done"}

        reading = asyncio.ensure_future(self._read(done_before))
        try:
            # Encoded before the transaction, not inside it: the decision
            # log's write lock is held for the writes alone. Up to
            # ``ENCODE_AHEAD`` records; a bigger batch (a storm) is encoded as
            # it is written, so its records are never all in memory at once.
            encoded: dict[str, list[EncodedDecision]] | None = None
            if sum(len(traces) for _, traces in done) <= ENCODE_AHEAD:
                encoded = {}
                for entry_id, traces in done:
                    if entry_id not in encoded:  # a repeat is skipped below
                        encoded[entry_id] = [
                            encode_decision(entry_id, t) for t in traces
                        ]
        except BaseException:
            reading.cancel()
            raise
        finished = await reading

        def record(db: sqlite3.Connection) -> None:
            _record_once(db, ids, done, encoded, finished)

        # Two files, two commits: the records are on disk before the entry is
        # marked done, so a crash between the two decides the entry again and
        # records nothing more (``record`` above).
        try:
            if before is not None:
                await asyncio.wait([before])  # its outcome is its own batch's
            # Queued behind the batch before's, not after its commit: both may
            # go to disk in one transaction of the log.
            written = self._log.submit(record)
        finally:
            mine.set_result(None)
        await written
        if finish:
            await self._run(partial(_mark_done, ids=ids))

    async def payload(self, entry_id: str) -> JournalEntry | None:  # noqa: D102
        def read(db: sqlite3.Connection) -> JournalEntry | None:
            row = db.execute("SELECT * FROM journal WHERE id=?", (entry_id,)).fetchone()
            return _entry(row) if row is not None else None

        return await self._run(read)

    async def payloads(  # noqa: D102
        self, limit: int = 100, *, before: str | None = None
    ) -> list[JournalEntry]:
        return await self._read(lambda db: read_payloads(db, limit, before))

    async def pending(self) -> tuple[int, datetime | None]:  # noqa: D102
        def read(db: sqlite3.Connection) -> tuple[int, datetime | None]:
            # The count journal_depth keeps; the time of the first unfinished
            # entry in line (the earliest to arrive), one search of
            # journal_queue per state.
            row = db.execute(
                "SELECT (SELECT unfinished FROM journal_depth), (SELECT received_at "
                "FROM journal WHERE rowid = (SELECT min(r) FROM ("
                "SELECT min(rowid) AS r FROM journal WHERE state='pending' UNION ALL "
                "SELECT min(rowid) FROM journal WHERE state='claimed')))"
            ).fetchone()
            if row[0] is None:  # the count was lost (its row deleted): once more
                db.execute(COUNT_UNFINISHED)
                return read(db)
            return int(row[0]), _ts(row[1])

        return await self._run(read)

    async def prune(self, now: datetime) -> int:  # noqa: D102
        keep = self.retention

        def write(db: sqlite3.Connection) -> int:
            cutoff = (now - keep.max_age).isoformat()
            dropped = db.execute(
                "DELETE FROM journal WHERE state='done' AND (received_at < ? OR "
                "rowid IN (SELECT rowid FROM journal WHERE state='done' "
                "ORDER BY rowid DESC LIMIT -1 OFFSET ?))",
                (cutoff, keep.max_payloads),
            ).rowcount
            at = _epoch(now)
            for table in ("claims", "locks", "last_run"):
                db.execute(f"DELETE FROM {table} WHERE expires_at < ?", (at,))  # noqa: S608
            db.execute("DELETE FROM seen WHERE expires_at < ?", (at,))
            db.execute(
                "DELETE FROM incarnations WHERE alive_until < ?",
                (at - int(FORGET_DEAD_AFTER.total_seconds()),),
            )
            db.execute(
                "DELETE FROM budget WHERE at < ?",
                (_epoch(now) - 31 * 86400,),
            )
            db.execute(
                "DELETE FROM approvals WHERE status != 'pending' AND created_at < ?",
                (cutoff,),
            )
            return int(dropped)

        def drop_decisions(db: sqlite3.Connection) -> int:
            return int(
                db.execute(
                    "DELETE FROM decisions WHERE decided_at < ? OR seq IN (SELECT seq "
                    "FROM decisions ORDER BY seq DESC LIMIT -1 OFFSET ?)",
                    (iso(now - keep.max_age), keep.max_decisions),
                ).rowcount
            )

        return await self._run(write) + await self._log.write(drop_decisions)

    # -- delivery ids -------------------------------------------------------

    async def seen(self, key: str, ttl: timedelta, now: datetime) -> bool:  # noqa: D102
        at = _epoch(now)

        def write(db: sqlite3.Connection) -> bool:
            db.execute("DELETE FROM seen WHERE key=? AND expires_at < ?", (key, at))
            cur = db.execute(
                "INSERT OR IGNORE INTO seen VALUES (?, ?)", (key, _epoch(now + ttl))
            )
            return cur.rowcount == 0

        return await self._run(write)


def _states(db: sqlite3.Connection, ids: Sequence[str]) -> dict[str, str]:
    """The journal state of each of ``ids`` it holds.

    By id alone: a query with ``state='done'`` beside the ids walked every
    finished entry of the journal_queue index instead.
    """
    query = "SELECT id, state FROM journal WHERE id IN ({marks})"
    return {row[0]: row[1] for row in rows_in(db, query, ids)}


def _mark_done(db: sqlite3.Connection, ids: Sequence[str]) -> None:
    """Mark entries done (the decision log's records are written before)."""
    at = datetime.now(UTC).isoformat()  # bookkeeping only, never compared
    states = _states(db, ids)
    # Completed by another worker after a lease ran out: skipped.
    todo = [i for i in ids if states.get(i) not in (None, "done")]
    # Parked ones are done too, but were not counted as unfinished.
    _unfinished(db, -sum(states[i] in ("pending", "claimed") for i in todo))
    db.executemany(
        "UPDATE journal SET state='done', done_at=?, lease_until=NULL WHERE id=?",
        [(at, entry_id) for entry_id in todo],
    )


def _record_once(
    db: sqlite3.Connection,
    ids: Sequence[str],
    done: Sequence[tuple[str, Sequence[Mapping[str, JSONValue]]]],
    encoded: Mapping[str, Sequence[EncodedDecision]] | None,
    finished: set[str],
) -> None:
    """Write the decision log's records of entries that have none yet.

    An entry some worker recorded before (then crashed before marking it done,
    or its lease ran out) keeps the records written first: they tell what was
    done. An entry already ``finished`` (done) gets none, even once its records
    are pruned. ``ids``: the distinct entries of ``done``. ``encoded``: the
    records, encoded ahead; None, encode each as written (a storm's are never
    all held at once).
    """
    recorded: set[str] = set(finished)
    query = "SELECT DISTINCT payload_id FROM decisions WHERE payload_id IN ({marks})"
    recorded.update(row[0] for row in rows_in(db, query, ids))
    todo = []
    for entry_id, traces in done:
        if entry_id not in recorded:
            recorded.add(entry_id)  # a repeat in this batch is skipped
            todo.append((entry_id, traces))
    if encoded is not None:
        insert_encoded(db, (row for entry_id, _ in todo for row in encoded[entry_id]))
    else:
        insert_decisions(
            db, ((entry_id, t) for entry_id, traces in todo for t in traces)
        )


def _newest(
    latest: dict[str, AlertState | None], states: Sequence[AlertState]
) -> dict[str, AlertState]:
    """The states that replace ``latest`` (updated), compared one by one in order."""
    changed: dict[str, AlertState] = {}
    for state in states:
        fingerprint = state.fingerprint
        old = latest.get(fingerprint)
        if old is not None and old.starts_at == state.starts_at:
            # ``newer_state`` for its common case, the same occurrence sent
            # again (a group's payloads repeat their alerts): a resolve wins,
            # a firing resend never un-resolves. Once per state of every
            # payload: a call less each.
            if old.status == "resolved" and state.status == "firing":
                continue
        elif old is not None and not newer_state(old, state):
            continue
        latest[fingerprint] = changed[fingerprint] = state
    return changed


def _unfinished(db: sqlite3.Connection, change: int) -> None:
    """Count ``change`` more unfinished entries, in the transaction making them so.

    One statement per write, whatever its number of entries: a trigger per row
    cost 3 us per append.
    """
    if change:
        db.execute(
            "UPDATE journal_depth SET unfinished = unfinished + ? WHERE one = 0",
            (change,),
        )


class _AppendGroup:
    """Appends that go into the same transaction, as one call of it.

    Open (on the event loop) until the writer thread takes it; appends made
    while it is open join it, later ones start the next group. Each append has
    its own future: one cancelled before the group was taken is left out.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self.entries: list[tuple[JournalEntry, Sequence[AlertState]]] = []
        self.futures: list[asyncio.Future[None]] = []
        # Indexes of the entries the writer took (their futures not cancelled).
        self.taken: list[int] = []
        self.task: asyncio.Task[None] | None = None

    def join(
        self, entry: JournalEntry, states: Sequence[AlertState]
    ) -> asyncio.Future[None] | None:
        """Add an append (its future), unless the group is taken or of another loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._open or self._loop not in (None, loop):
                return None
            self._loop = loop
            future: asyncio.Future[None] = loop.create_future()
            self.entries.append((entry, states))
            self.futures.append(future)
            return future

    def cancel_all(self) -> None:
        """Cancel every future not answered yet."""
        for future in self.futures:
            if not future.done():
                future.cancel()

    def close(self) -> list[tuple[JournalEntry, Sequence[AlertState]]]:
        """Take the group (in the writer thread): no append joins it after this."""
        with self._lock:
            if self._open:
                self._open = False
                self.taken = [
                    i for i, f in enumerate(self.futures) if not f.cancelled()
                ]
            return [self.entries[i] for i in self.taken]


def read_payloads(
    db: sqlite3.Connection, limit: int, before: str | None = None
) -> list[JournalEntry]:
    """Stored payloads, newest first; with ``before``, those older than that id.

    ``SqliteJournal.payloads`` on any connection to a store's file whose rows
    are ``sqlite3.Row``: the store's reader, or ``SqliteReader``'s, which
    writes nothing (``receiver backtest``).
    """
    if before is None:
        rows = db.execute(
            "SELECT * FROM journal ORDER BY rowid DESC LIMIT ?", (limit,)
        ).fetchall()
    else:
        rows = db.execute(
            "SELECT * FROM journal WHERE rowid < (SELECT rowid FROM journal "
            "WHERE id=?) ORDER BY rowid DESC LIMIT ?",
            (before, limit),
        ).fetchall()
    return [_entry(r) for r in rows]


def _entry(row: sqlite3.Row) -> JournalEntry:
    """A journal row as the entry it stores."""
    return JournalEntry(
        id=row["id"],
        source=row["source"],
        received_at=datetime.fromisoformat(row["received_at"]),
        body=bytes(row["body"]),
        headers=_headers(row["headers"]),
        attempts=row["attempts"],
    )


def _headers(text: str) -> Mapping[str, str]:
    """A journal row's headers, as ``json.loads`` reads them.

    msgspec reads the same objects from the JSON text the journal writes;
    what it refuses (text ``json`` is more lenient with: a lone surrogate,
    ``NaN``) is read by ``json.loads`` as before, and fails as before.
    """
    headers: Mapping[str, str]
    try:
        headers = _READ_HEADERS.decode(text)
    except msgspec.DecodeError:
        headers = json.loads(text)
    return headers
