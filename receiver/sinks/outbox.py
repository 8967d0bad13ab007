"""The sink outbox: deliveries kept in the store until they are done.

A delivery is one decision trace bound for its sinks. The worker writes it to the
outbox (``receiver.store.outbox``) before it marks the journal entry complete, so
a crash between the two re-decides the entry and writes the same row again (the
row id is the payload id and the trace's position: a repeat is ignored). The
dispatcher claims rows, delivers them, records each sink's outcome on the row as
it finishes, and deletes the row once the outcomes are in the decision log.

This module holds the protocol the dispatcher needs and the JSON form of a
trace kept in a row; the SQLite and Redis implementations live with the stores.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from pydantic import JsonValue, TypeAdapter

# pydantic validates only this TypedDict before Python 3.12.
from typing_extensions import TypedDict

from receiver.model import (
    Alert,
    AlertTrace,
    Decision,
    MatchTrace,
    Severity,
    Source,
    Status,
    StepKind,
    StepTrace,
    freeze,
)


class OutboxRow(Protocol):
    """One delivery claimed from the outbox."""

    @property
    def id(self) -> str:
        """Payload id and the trace's position in it."""
        ...

    @property
    def owner(self) -> str:
        """Made when the row was written: its duplicate keys are marked as this."""
        ...

    @property
    def trace(self) -> str:
        """The trace's JSON (``encode_trace``)."""
        ...

    @property
    def sinks(self) -> tuple[str, ...]:
        """Where it goes, in order."""
        ...

    @property
    def done(self) -> Mapping[str, str]:
        """Sinks already finished: name -> outcome JSON ("" = a duplicate)."""
        ...

    @property
    def attempts(self) -> int:
        """Claims so far, this one included (a crash mid-delivery counts)."""
        ...

    @property
    def claim(self) -> int:
        """Which claim of the row this is (never reset): the holder's token."""
        ...


class ParkedDelivery(OutboxRow, Protocol):
    """A delivery set aside after too many attempts (kept, never claimed)."""

    @property
    def reason(self) -> str:
        """Why it was parked (the last error)."""
        ...


class Outbox(Protocol):
    """Where deliveries wait (``receiver.store.outbox``).

    Unreachable storage raises ``ReceiverError`` (``StoreUnavailableError``).
    """

    async def put(
        self, rows: Sequence[tuple[str, str, str, Sequence[str]]], now: datetime
    ) -> int:
        """Add ``(id, owner, trace JSON, sinks)`` rows, due now; repeats ignored."""
        ...

    async def claim(self, now: datetime, lease: timedelta) -> OutboxRow | None:
        """The next due row, hidden from other claims for ``lease``."""
        ...

    async def progress(self, row_id: str, sink: str, outcome: str) -> None:
        """Record that ``sink`` finished for the row (outcome JSON or "")."""
        ...

    async def finish(self, row_id: str) -> None:
        """Delete a delivered row."""
        ...

    async def release(
        self, row_id: str, due: datetime, *, claim: int | None = None
    ) -> bool:
        """Hand a claimed row back, to be claimed again from ``due``.

        ``claim`` (``OutboxRow.claim``): only while the row is still that
        claim, not once another holder claimed it after this one's lease
        lapsed. None: regardless (tools, tests). Whether it was handed back.
        """
        ...

    async def extend(
        self, row_id: str, until: datetime, *, claim: int | None = None
    ) -> bool:
        """Keep a claimed row from other claims until ``until`` (renew the claim).

        Nothing happens to a row no longer claimed (finished, handed back,
        parked) or, with ``claim``, claimed by someone else since: False. A
        renewal after the lease lapsed still succeeds while nobody claimed the
        row meanwhile.
        """
        ...

    async def reclaim(self, now: datetime) -> int:
        """Make rows a stopped process had claimed due at ``now``; how many.

        Only where nothing else can be delivering them (one instance, and this
        the process that decides): elsewhere 0, and a dead claim lapses with
        its lease.
        """
        ...

    async def park(self, row_id: str, reason: str, *, claim: int | None = None) -> bool:
        """Set a row aside: kept, counted, never claimed again; whether it was.

        With ``claim``: only while the row is still that claim.
        """
        ...

    async def counts(self) -> tuple[int, int]:
        """Rows waiting or in flight, and rows parked."""
        ...

    async def parked(self, limit: int) -> Sequence[ParkedDelivery]:
        """Up to ``limit`` parked rows, newest payload first."""
        ...

    async def retry_parked(self, row_id: str, now: datetime) -> bool:
        """Make a parked row due at ``now`` with fresh attempts; False if none."""
        ...

    async def mark(self, key: str, owner: str, ttl: timedelta, now: datetime) -> bool:
        """Mark ``key`` for ``owner`` until ``now + ttl``.

        True if it was unmarked, lapsed or already ``owner``'s: a row that
        crashed after marking still counts its keys as its own.
        """
        ...

    async def close(self) -> None:
        """Release the connection."""
        ...


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _plain(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    return str(value)


def encode_trace(trace: AlertTrace) -> str:
    """The JSON a row keeps: every field, so ``decode_trace`` gives it back."""
    alert = trace.alert
    return json.dumps(
        {
            "alert": {
                "source": alert.source,
                "fingerprint": alert.fingerprint,
                "status": alert.status,
                "labels": dict(alert.labels),
                "annotations": dict(alert.annotations),
                "starts_at": alert.starts_at.isoformat() if alert.starts_at else None,
                "ends_at": alert.ends_at.isoformat() if alert.ends_at else None,
                "generator_url": alert.generator_url,
                "refs": dict(alert.refs),
                "actionable": alert.actionable,
            },
            "matches": [
                {
                    "rule": m.rule,
                    "severity": m.severity.value,
                    "playbook": m.playbook,
                    "notes": list(m.notes),
                    "description": m.description,
                    "runbook_url": m.runbook_url,
                    "escalate_to": m.escalate_to,
                    "steps": [
                        {
                            "kind": s.kind.value,
                            "type": s.type,
                            "target": s.target,
                            "decision": s.decision.value,
                            "reason": s.reason,
                            "request": dict(s.request),
                            "result": dict(s.result),
                            "name": s.name,
                            "guard": s.guard,
                        }
                        for s in m.steps
                    ],
                }
                for m in trace.matches
            ],
            "decided_at": trace.decided_at.isoformat(),
            "payload_id": trace.payload_id,
            "mode": trace.mode,
            "notes": list(trace.notes),
        },
        default=_plain,
        sort_keys=True,
    )


class _StepRow(TypedDict):
    kind: StepKind
    type: str
    target: str
    decision: Decision
    reason: str
    request: dict[str, JsonValue]
    result: dict[str, JsonValue]
    name: str
    guard: str


class _MatchRow(TypedDict):
    rule: str
    severity: Severity
    playbook: str
    notes: list[str]
    description: str
    runbook_url: str
    escalate_to: str
    steps: list[_StepRow]


class _AlertRow(TypedDict):
    source: Source
    fingerprint: str
    status: Status
    labels: dict[str, str]
    annotations: dict[str, str]
    # Kept as text and read with ``datetime.fromisoformat``, as written.
    starts_at: str | None
    ends_at: str | None
    generator_url: str
    refs: dict[str, str]
    actionable: bool


class _TraceRow(TypedDict):
    alert: _AlertRow
    matches: list[_MatchRow]
    decided_at: str
    payload_id: str
    mode: str
    notes: list[str]


_TRACE_ROW = TypeAdapter(_TraceRow)


def decode_trace(text: str) -> AlertTrace:
    """The trace ``encode_trace`` wrote; ``ValueError`` if damaged."""
    data = _TRACE_ROW.validate_json(text)
    a = data["alert"]
    alert = Alert(
        source=a["source"],
        fingerprint=a["fingerprint"],
        status=a["status"],
        labels=freeze(a["labels"]),
        annotations=freeze(a["annotations"]),
        starts_at=_when(a["starts_at"]),
        ends_at=_when(a["ends_at"]),
        generator_url=a["generator_url"],
        refs=freeze(a["refs"]),
        actionable=a["actionable"],
    )
    matches = tuple(
        MatchTrace(
            rule=m["rule"],
            severity=m["severity"],
            playbook=m["playbook"],
            notes=tuple(m["notes"]),
            description=m["description"],
            runbook_url=m["runbook_url"],
            escalate_to=m["escalate_to"],
            steps=tuple(
                StepTrace(
                    kind=s["kind"],
                    type=s["type"],
                    target=s["target"],
                    decision=s["decision"],
                    reason=s["reason"],
                    request=freeze(s["request"]),
                    result=freeze(s["result"]),
                    name=s["name"],
                    guard=s["guard"],
                )
                for s in m["steps"]
            ),
        )
        for m in data["matches"]
    )
    return AlertTrace(
        alert=alert,
        matches=matches,
        decided_at=datetime.fromisoformat(data["decided_at"]),
        payload_id=data["payload_id"],
        mode=data["mode"],
        notes=tuple(data["notes"]),
    )
