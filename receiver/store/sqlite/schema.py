"""The SQLite store's tables, indexes and row conversions."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime

from receiver.model import JSONValue
from receiver.store.records import record_text

SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
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
-- (state, rowid): the next entry to claim, in arrival order, without a sort;
-- the first unfinished entry; the finished ones, newest first, to prune.
CREATE INDEX IF NOT EXISTS journal_queue ON journal(state);
-- (state, id) served only the order of pruning: one index fewer to write per
-- append and per change of state.
DROP INDEX IF EXISTS journal_state;
-- How many entries are unfinished (pending or claimed): kept by each write
-- that changes it, in its transaction, and counted again whenever the store
-- is opened. Counting them at every look read each unfinished row.
CREATE TABLE IF NOT EXISTS journal_depth (
    one INTEGER PRIMARY KEY CHECK (one = 0),
    unfinished INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_state (
    fingerprint TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    starts_at TEXT,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    at TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    expires_at REAL NOT NULL,
    intent TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS claims_owner ON claims(owner, status);
CREATE TABLE IF NOT EXISTS locks (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    token INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS locks_owner ON locks(owner);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS last_run (
    scope TEXT PRIMARY KEY, at TEXT NOT NULL, expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS budget (
    id INTEGER PRIMARY KEY AUTOINCREMENT, scope TEXT NOT NULL, at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS incarnations (
    id TEXT PRIMARY KEY, alive_until REAL NOT NULL, stopped INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS budget_scope ON budget(scope, at);
CREATE TABLE IF NOT EXISTS circuit (
    scope TEXT PRIMARY KEY, failures INTEGER NOT NULL, opened_at TEXT
);
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    request TEXT NOT NULL,
    status TEXT NOT NULL,
    decided_by TEXT NOT NULL DEFAULT '',
    decided_at TEXT
);
CREATE INDEX IF NOT EXISTS approvals_listed ON approvals(created_at, id);
CREATE INDEX IF NOT EXISTS approvals_expiry ON approvals(status, expires_at);
"""
# The decision log: a file of its own (``decisions_path``), so recording a
# worker's decisions never holds the write lock the edge journals under. A file
# of an older version kept these tables in the store's file; opening it moves
# them (``SqliteConnection._move_decisions``).
DECISION_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    payload_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    decided_at TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_fp ON decisions(fingerprint, seq);
CREATE INDEX IF NOT EXISTS decisions_payload ON decisions(payload_id);
CREATE INDEX IF NOT EXISTS decisions_time ON decisions(decided_at);
-- What the API filters on inside a record (rule, playbook, step decision), one
-- row per distinct value, filed as the record is written, dropped by a trigger.
CREATE TABLE IF NOT EXISTS decision_index (
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (kind, value, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS decision_index_seq ON decision_index(seq);
-- Filed by the writer (``insert_encoded``), which holds the record already
-- parsed; a trigger parsing the text again cost 4 JSON parses per record.
DROP TRIGGER IF EXISTS decisions_tag;
CREATE TRIGGER IF NOT EXISTS decisions_untag AFTER DELETE ON decisions BEGIN
    DELETE FROM decision_index WHERE seq = OLD.seq;
END;
"""


def _tag_inserts(record: str, seq: str) -> str:
    """SQL filing a record's rules, playbooks and step decisions under ``seq``."""
    # A record SQLite cannot parse (NaN) is filed under nothing, never refused.
    doc = f"CASE WHEN json_valid({record}) THEN {record} ELSE '{{}}' END"
    matches = f"json_each({doc}, '$.matches') AS m"
    insert = "INSERT OR IGNORE INTO decision_index (kind, value, seq)"
    rule = (
        f"{insert} SELECT 'rule', json_extract(m.value, '$.rule'), {seq} "  # noqa: S608 (fixed fragments)
        f"FROM {matches} WHERE json_type(m.value, '$.rule') = 'text';"
    )
    playbook = (
        f"{insert} SELECT 'playbook', json_extract(m.value, '$.playbook'), {seq} "  # noqa: S608
        f"FROM {matches} WHERE json_type(m.value, '$.playbook') = 'text';"
    )
    decision = (
        f"{insert} SELECT 'decision', json_extract(st.value, '$.decision'), {seq} "  # noqa: S608
        f"FROM {matches}, json_each(m.value, '$.steps') AS st "
        "WHERE json_type(st.value, '$.decision') = 'text';"
    )
    return f"{rule}\n{playbook}\n{decision}"


# Bumped when an index must be filled for rows written before it existed.
SCHEMA_VERSION = 1
TAG_KINDS = ("rule", "playbook", "decision")
# Counts the unfinished entries the slow way, into journal_depth.
COUNT_UNFINISHED = (
    "INSERT OR REPLACE INTO journal_depth (one, unfinished) SELECT 0, count(*) "
    "FROM journal WHERE state IN ('pending', 'claimed')"
)
# Fingerprints per read of alert_state (under SQLite's bound on parameters).
STATE_READ_CHUNK = 500


def rows_in(
    db: sqlite3.Connection,
    query: str,
    values: Sequence[str],
    after: Sequence[object] = (),
) -> Iterator[sqlite3.Row]:
    """The rows of ``query`` for ``values``, ``STATE_READ_CHUNK`` of them a read.

    ``query`` holds ``{marks}`` where the placeholders of a chunk go (as in
    ``WHERE id IN ({marks})``); ``after``: the parameters of placeholders that
    follow it.
    """
    for start in range(0, len(values), STATE_READ_CHUNK):
        chunk = values[start : start + STATE_READ_CHUNK]
        marks = ",".join("?" * len(chunk))
        yield from db.execute(query.format(marks=marks), (*chunk, *after))


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _epoch(value: datetime) -> float:
    return value.timestamp()


def _values(where: JSONValue) -> list[JSONValue]:
    """What SQLite's ``json_each`` walks: an array's items, an object's values."""
    if isinstance(where, list):
        return where
    if isinstance(where, dict):
        return list(where.values())
    return []


def record_tags(record: Mapping[str, JSONValue]) -> set[tuple[str, str]]:
    """The (kind, value) pairs a record is filed under, as ``_tag_inserts`` does."""
    tags: set[tuple[str, str]] = set()
    for match in _values(record.get("matches")):
        if not isinstance(match, dict):
            continue
        for kind in ("rule", "playbook"):
            value = match.get(kind)
            if isinstance(value, str):
                tags.add((kind, value))
        for step in _values(match.get("steps")):
            if isinstance(step, dict) and isinstance(step.get("decision"), str):
                tags.add(("decision", step["decision"]))
    return tags


# A decision row as written: payload id, fingerprint, decided_at, record text,
# and the (kind, value) pairs it is filed under.
EncodedDecision = tuple[str, str, str, str, set[tuple[str, str]]]


def encode_decision(
    payload_id: str, record: Mapping[str, JSONValue]
) -> EncodedDecision:
    """What ``insert_encoded`` writes for one record (the costly part of writing it)."""
    return (
        payload_id,
        str(record.get("fingerprint", "")),
        str(record.get("decided_at", "")),
        record_text(record),
        record_tags(record),
    )


def insert_encoded(db: sqlite3.Connection, rows: Iterable[EncodedDecision]) -> None:
    """Write encoded decision rows and file each under its tags."""
    tags: list[tuple[str, str, int]] = []
    for payload_id, fingerprint, decided_at, text, filed in rows:
        seq = db.execute(
            "INSERT INTO decisions (payload_id, fingerprint, decided_at, record) "
            "VALUES (?, ?, ?, ?)",
            (payload_id, fingerprint, decided_at, text),
        ).lastrowid
        assert seq is not None  # noqa: S101 (an INSERT into a rowid table)
        tags.extend((kind, value, seq) for kind, value in filed)
    db.executemany(
        "INSERT OR IGNORE INTO decision_index (kind, value, seq) VALUES (?, ?, ?)",
        tags,
    )


def insert_decisions(
    db: sqlite3.Connection,
    rows: Iterable[tuple[str, Mapping[str, JSONValue]]],
) -> None:
    """Write ``(payload_id, record)`` rows and file each under its tags.

    Each record is encoded as it is written: a storm's are never all held.
    """
    insert_encoded(db, (encode_decision(i, r) for i, r in rows))
