"""The incident value objects: ``Incident``, its ``TimelineEntry`` list and ledger.

Frozen; every change is a new object built by ``receiver.incidents.lifecycle``.
``to_json`` / ``from_json`` are the stored and API form (the store keeps the JSON
with a few indexed columns; it never imports this module).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from receiver.model import Severity, freeze, iso

if TYPE_CHECKING:
    from receiver.model import JSONObject

ACTIVE = ("triggered", "acknowledged", "mitigated")
MAX_TIMELINE = 2000  # a flapping alert must not grow an incident without bound
MAX_LEDGER = 500


class State(enum.StrEnum):
    """Where an incident stands: triggered → acknowledged → mitigated → resolved."""

    TRIGGERED = "triggered"
    ACKNOWLEDGED = "acknowledged"
    MITIGATED = "mitigated"
    RESOLVED = "resolved"


# What may follow what; a later state may be reached directly (an alert can
# resolve before anyone acknowledged), never an earlier one.
STATE_RANK = {s: i for i, s in enumerate(State)}


Stamp = Callable[[datetime | None], str | None]


def _stamps() -> Stamp:
    """``iso``, remembering what it wrote (for one ``Incident.to_json``)."""
    seen: dict[datetime | None, str | None] = {}

    def stamp(ts: datetime | None) -> str | None:
        try:
            return seen[ts]
        except KeyError:
            out = seen[ts] = iso(ts)
            return out

    return stamp


def _ts(value: object) -> datetime | None:
    return datetime.fromisoformat(str(value)) if value else None


def _seq(value: object) -> Sequence[object]:
    """A stored list (``ValueError`` for anything else).

    An empty object is an empty list: the Redis incident store's scripts once
    re-encoded records with cjson, which writes ``[]`` as ``{}``.
    """
    if isinstance(value, list | tuple):
        return value
    if isinstance(value, Mapping) and not value:
        return ()
    raise ValueError(f"expected a list, found {type(value).__name__}")


def _map(value: object) -> Mapping[str, object]:
    """A stored object (``ValueError`` for anything else)."""
    if isinstance(value, Mapping):
        return value
    raise ValueError(f"expected an object, found {type(value).__name__}")


def _objects(value: object) -> list[Mapping[str, object]]:
    """A stored list of objects (``ValueError`` for anything else)."""
    return [_map(item) for item in _seq(value)]


def _int(value: object) -> int:
    """A stored count (``ValueError`` for anything else)."""
    if isinstance(value, int | float | str):
        return int(value)
    raise ValueError(f"expected a number, found {type(value).__name__}")


def _req_ts(value: object) -> datetime:
    ts = _ts(value)
    if ts is None:
        raise ValueError("missing timestamp")
    return ts


@dataclass(frozen=True)
class TimelineEntry:
    """One thing that happened, when, and who did it (``receiver`` for us)."""

    at: datetime
    kind: str
    text: str
    by: str = "receiver"
    data: Mapping[str, str] = field(default_factory=lambda: freeze({}))

    def to_json(self, stamp: Stamp = iso) -> JSONObject:
        """Plain JSON form (``stamp`` writes the times)."""
        out: JSONObject = {
            "at": stamp(self.at),
            "kind": self.kind,
            "text": self.text,
            "by": self.by,
        }
        if self.data:
            out["data"] = dict(self.data)
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, object]) -> TimelineEntry:
        """Inverse of ``to_json``."""
        return cls(
            _req_ts(raw["at"]),
            str(raw["kind"]),
            str(raw["text"]),
            str(raw.get("by", "receiver")),
            freeze({str(k): str(v) for k, v in _map(raw.get("data") or {}).items()}),
        )


@dataclass(frozen=True)
class AlertRef:
    """One alert occurrence grouped into the incident, as last seen."""

    fingerprint: str
    source: str
    rule: str
    status: str
    severity: Severity
    labels: Mapping[str, str]
    starts_at: datetime | None
    ends_at: datetime | None = None
    summary: str = ""
    link: str = ""  # the generator URL: the graph that fired

    def to_json(self, stamp: Stamp = iso) -> JSONObject:
        """Plain JSON form (``stamp`` writes the times)."""
        return {
            "fingerprint": self.fingerprint,
            "source": self.source,
            "rule": self.rule,
            "status": self.status,
            "severity": self.severity.value,
            "labels": dict(self.labels),
            "startsAt": stamp(self.starts_at),
            "endsAt": stamp(self.ends_at),
            "summary": self.summary,
            "link": self.link,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, object]) -> AlertRef:
        """Inverse of ``to_json``."""
        return cls(
            str(raw["fingerprint"]),
            str(raw["source"]),
            str(raw["rule"]),
            str(raw["status"]),
            Severity(str(raw["severity"])),
            freeze({str(k): str(v) for k, v in _map(raw["labels"]).items()}),
            _ts(raw.get("startsAt")),
            _ts(raw.get("endsAt")),
            str(raw.get("summary", "")),
            str(raw.get("link", "")),
        )


@dataclass(frozen=True)
class LedgerItem:
    """One step the automation did, refused, or would have done (dry-run)."""

    at: datetime
    rule: str
    kind: str
    type: str
    target: str
    decision: str
    reason: str
    mode: str
    times: int = 1
    fingerprint: str = ""
    index: int = 0  # the step's position in its playbook

    def key(self) -> tuple[str, str, int, str]:
        """What makes two decisions the same line (resends repeat them)."""
        return (self.fingerprint, self.rule, self.index, self.decision)

    def again(self, times: int = 1) -> LedgerItem:
        """The same line, decided ``times`` more times."""
        new = object.__new__(LedgerItem)
        new.__dict__.update(self.__dict__)
        new.__dict__["times"] = self.times + times
        return new

    def to_json(self, stamp: Stamp = iso) -> JSONObject:
        """Plain JSON form (``stamp`` writes the times)."""
        return {
            "at": stamp(self.at),
            "rule": self.rule,
            "kind": self.kind,
            "type": self.type,
            "target": self.target,
            "decision": self.decision,
            "reason": self.reason,
            "mode": self.mode,
            "times": self.times,
            "fingerprint": self.fingerprint,
            "index": self.index,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, object]) -> LedgerItem:
        """Inverse of ``to_json``."""
        return cls(
            _req_ts(raw["at"]),
            str(raw["rule"]),
            str(raw["kind"]),
            str(raw["type"]),
            str(raw["target"]),
            str(raw["decision"]),
            str(raw["reason"]),
            str(raw["mode"]),
            _int(raw.get("times", 1)),
            str(raw.get("fingerprint", "")),
            _int(raw.get("index", 0)),
        )


@dataclass(frozen=True)
class Evidence:
    """What a diagnostic found, kept with the incident and hashed."""

    at: datetime
    rule: str
    type: str
    target: str
    sha256: str
    content: str  # canonical JSON of the step's result, capped

    def to_json(self, stamp: Stamp = iso) -> JSONObject:
        """Plain JSON form (``stamp`` writes the times)."""
        return {
            "at": stamp(self.at),
            "rule": self.rule,
            "type": self.type,
            "target": self.target,
            "sha256": self.sha256,
            "content": self.content,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, object]) -> Evidence:
        """Inverse of ``to_json``."""
        return cls(
            _req_ts(raw["at"]),
            str(raw["rule"]),
            str(raw["type"]),
            str(raw["target"]),
            str(raw["sha256"]),
            str(raw["content"]),
        )


@dataclass(frozen=True)
class SeverityChange:
    """From ``at`` on, the incident was at ``severity`` (its opening, a promotion)."""

    at: datetime
    severity: Severity

    def to_json(self, stamp: Stamp = iso) -> JSONObject:
        """Plain JSON form (``stamp`` writes the times)."""
        return {"at": stamp(self.at), "severity": self.severity.value}

    @classmethod
    def from_json(cls, raw: Mapping[str, object]) -> SeverityChange:
        """Inverse of ``to_json``."""
        return cls(_req_ts(raw["at"]), Severity(str(raw["severity"])))


@dataclass(frozen=True)
class Incident:
    """Alerts grouped under one key, with state, severity, clocks and timeline."""

    id: str
    keys: tuple[str, ...]
    title: str
    severity: Severity
    state: State
    opened_at: datetime
    cadence_from: datetime
    # The first acknowledgment while open, even after a mitigation; when each
    # clock stopped is for ``clocks.clocks`` to say (the first of its stops).
    acknowledged_at: datetime | None = None
    mitigated_at: datetime | None = None
    resolved_at: datetime | None = None
    alerts: tuple[AlertRef, ...] = ()
    timeline: tuple[TimelineEntry, ...] = ()
    ledger: tuple[LedgerItem, ...] = ()
    # Things done once: "acknowledge@P1" breaches, "P0" escalations.
    breaches: frozenset[str] = frozenset()
    escalations: frozenset[str] = frozenset()
    drafts: int = 0
    pagerduty_id: str = ""
    post_mortem_reminded: bool = False
    evidence: tuple[Evidence, ...] = ()
    # Whom the matched playbooks name (``escalate_to``), beside the matrix's.
    contacts: tuple[str, ...] = ()
    version: int = 0
    # Firing alerts dropped from ``alerts`` past its cap, by fingerprint: the
    # incident does not resolve by itself while one is here.
    unlisted: frozenset[str] = frozenset()
    # More firing alerts than ``alerts`` and ``unlisted`` hold together were
    # dropped: the incident never resolves by itself.
    lost_track: bool = False
    # The severity from opening on, then each promotion, in time order (at
    # most one per level): a stopped clock keeps the target in force when it
    # stopped. Empty in a record written before it was kept: then every clock
    # reads the current severity's target.
    severities: tuple[SeverityChange, ...] = ()

    @property
    def active(self) -> bool:
        """Not resolved yet."""
        return self.state is not State.RESOLVED

    @property
    def awaiting_acknowledgment(self) -> bool:
        """Nothing stopped the acknowledge clock: acknowledged, mitigated, resolved."""
        return (
            self.active and self.acknowledged_at is None and self.mitigated_at is None
        )

    def severity_at(self, at: datetime) -> Severity:
        """The severity in force at ``at`` (the current one if nothing was kept)."""
        if not self.severities:
            return self.severity
        since = [c.severity for c in self.severities if c.at <= at]
        return since[-1] if since else self.severities[0].severity

    def duration(self, now: datetime) -> timedelta:
        """Open until resolved (or until ``now``)."""
        return (self.resolved_at or now) - self.opened_at

    def to_json(self) -> JSONObject:
        """The stored and API form."""
        # Most entries of a fold share their time: each is written once.
        stamp = _stamps()
        return {
            "id": self.id,
            "keys": list(self.keys),
            "title": self.title,
            "severity": self.severity.value,
            "state": self.state.value,
            "opened_at": iso(self.opened_at),
            "cadence_from": iso(self.cadence_from),
            "acknowledged_at": iso(self.acknowledged_at),
            "mitigated_at": iso(self.mitigated_at),
            "resolved_at": iso(self.resolved_at),
            "alerts": [a.to_json(stamp) for a in self.alerts],
            "timeline": [e.to_json(stamp) for e in self.timeline],
            "ledger": [item.to_json(stamp) for item in self.ledger],
            "breaches": sorted(self.breaches),
            "escalations": sorted(self.escalations),
            "drafts": self.drafts,
            "pagerduty_id": self.pagerduty_id,
            "post_mortem_reminded": self.post_mortem_reminded,
            "evidence": [e.to_json(stamp) for e in self.evidence],
            "contacts": list(self.contacts),
            "version": self.version,
            "unlisted": sorted(self.unlisted),
            "lost_track": self.lost_track,
            "severities": [c.to_json(stamp) for c in self.severities],
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, object]) -> Incident:
        """Inverse of ``to_json``."""
        return cls(
            id=str(raw["id"]),
            keys=tuple(str(k) for k in _seq(raw["keys"])),
            title=str(raw["title"]),
            severity=Severity(str(raw["severity"])),
            state=State(str(raw["state"])),
            opened_at=_req_ts(raw["opened_at"]),
            cadence_from=_req_ts(raw["cadence_from"]),
            acknowledged_at=_ts(raw.get("acknowledged_at")),
            mitigated_at=_ts(raw.get("mitigated_at")),
            resolved_at=_ts(raw.get("resolved_at")),
            alerts=tuple(
                AlertRef.from_json(a) for a in _objects(raw.get("alerts", ()))
            ),
            timeline=tuple(
                TimelineEntry.from_json(e) for e in _objects(raw.get("timeline", ()))
            ),
            ledger=tuple(
                LedgerItem.from_json(i) for i in _objects(raw.get("ledger", ()))
            ),
            breaches=frozenset(str(b) for b in _seq(raw.get("breaches", ()))),
            escalations=frozenset(str(e) for e in _seq(raw.get("escalations", ()))),
            drafts=_int(raw.get("drafts", 0)),
            pagerduty_id=str(raw.get("pagerduty_id", "")),
            post_mortem_reminded=bool(raw.get("post_mortem_reminded", False)),
            evidence=tuple(
                Evidence.from_json(e) for e in _objects(raw.get("evidence", ()))
            ),
            contacts=tuple(str(c) for c in _seq(raw.get("contacts", ()))),
            version=_int(raw.get("version", 0)),
            unlisted=frozenset(str(f) for f in _seq(raw.get("unlisted", ()))),
            lost_track=bool(raw.get("lost_track", False)),
            severities=tuple(
                SeverityChange.from_json(c) for c in _objects(raw.get("severities", ()))
            ),
        )


_FIELDS = frozenset(Incident.__dataclass_fields__)


def evolve(incident: Incident, **changes: object) -> Incident:
    """``dataclasses.replace`` for an incident, without its walk over every field.

    Folding one alert in replaces its incident several times (the alert, the
    ledger, each timeline entry); this costs a fraction of ``replace``. A name
    that is not a field raises, as with ``replace``.
    """
    fields = incident.__dict__
    unknown = changes.keys() - _FIELDS
    if unknown:
        msg = f"Incident has no field {sorted(unknown)}"
        raise TypeError(msg)
    new = object.__new__(Incident)
    new.__dict__.update(fields)
    new.__dict__.update(changes)
    return new


LedgerKey = tuple[str, str, int, str]
# Where an incident keeps the index of its ledger by ``LedgerItem.key`` (not a
# field: equality, the stored form and ``replace`` ignore it).
_INDEX = "_ledger_index"


def ledger_index(incident: Incident) -> dict[LedgerKey, LedgerItem]:
    """The incident's ledger by ``LedgerItem.key``, in ledger order (a new dict).

    Folding an alert looks each of its steps up here; the index is kept with
    the incident ``with_ledger`` built, not rebuilt from the ledger per alert.
    """
    kept = incident.__dict__.get(_INDEX)
    if kept is not None and kept[0] is incident.ledger:
        return dict(kept[1])
    return {item.key(): item for item in incident.ledger}


def with_ledger(incident: Incident, ledger: dict[LedgerKey, LedgerItem]) -> Incident:
    """The incident with this ledger (the oldest lines dropped past the cap)."""
    items = tuple(ledger.values())
    if len(items) > MAX_LEDGER:
        items = items[-MAX_LEDGER:]
        ledger = {item.key(): item for item in items}
    new = evolve(incident, ledger=items)
    # ``evolve`` copied the old index along; this one is checked by identity.
    new.__dict__[_INDEX] = (items, ledger)
    return new


def add_entry(
    incident: Incident,
    at: datetime,
    kind: str,
    text: str,
    by: str = "receiver",
    **data: str,
) -> Incident:
    """The incident with one more timeline entry (the oldest dropped past the cap)."""
    entry = TimelineEntry(at, kind, text, by, freeze(data))
    timeline = (*incident.timeline, entry)[-MAX_TIMELINE:]
    return evolve(incident, timeline=timeline)
