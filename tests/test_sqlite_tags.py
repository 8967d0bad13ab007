"""The SQLite store files each decision record as it writes it, as SQL would.

The writer files a record under its rules, playbooks and step decisions from
the record it already holds; the SQL that fills the index for rows written
before it existed (``_tag_inserts``) reads the stored text. Both must agree on
every shape a record can take, or a filter finds different rows depending on
when a record was written.
"""

from __future__ import annotations

import sqlite3

import pytest

from receiver.store.sqlite.schema import (
    DECISION_SCHEMA,
    _tag_inserts,
    insert_decisions,
)

RECORDS = [
    {"matches": [{"rule": "r", "playbook": "p", "steps": [{"decision": "ran"}]}]},
    {"matches": [{"rule": "r", "steps": [{"decision": "ran"}, {"decision": "ran"}]}]},
    {"matches": {"a": {"rule": "r1", "steps": {"s": {"decision": "held"}}}}},
    {"matches": [{"rule": 1, "playbook": None, "steps": [{"decision": ["x"]}]}]},
    {"matches": [3, None, [{"rule": "nested"}]]},
    {"matches": [{"rule": "ü-rule", "steps": [{"decision": "dry_run"}]}]},
    {},
]
# Strings where objects belong: the SQL cannot read them (malformed JSON), the
# writer files the rest and keeps the record.
ODD = {"matches": ["r", {"rule": "ok", "steps": ["dry_run", {"decision": "held"}]}]}


def _index(db: sqlite3.Connection) -> set[tuple[str, str, int]]:
    return set(db.execute("SELECT kind, value, seq FROM decision_index"))


@pytest.mark.parametrize("record", RECORDS)
def test_a_record_is_filed_as_the_sql_backfill_files_it(record):
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.executescript(DECISION_SCHEMA)
    insert_decisions(db, [("p1", record)])
    written = _index(db)
    db.execute("DELETE FROM decision_index")
    for stmt in _tag_inserts("d.record", "d.seq").split("\n"):
        db.execute(stmt.replace(" FROM json_each(", " FROM decisions AS d, json_each("))
    assert written == _index(db)
    if record.get("matches") == RECORDS[0]["matches"]:
        assert written == {
            ("rule", "r", 1),
            ("playbook", "p", 1),
            ("decision", "ran", 1),
        }
