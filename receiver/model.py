"""Frozen value objects that flow through the core: alerts, severities, decisions.

Sources build ``Alert``; the rulebook produces matches; the planner and runner
produce ``StepTrace``; the store and sinks read ``AlertTrace``. Nothing here does I/O.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Literal, TypeAlias, TypeVar

Status = Literal["firing", "resolved"]
Source = Literal["alertmanager", "pagerduty", "events_v2"]
SOURCES: tuple[Source, ...] = ("alertmanager", "pagerduty", "events_v2")

# A JSON document as read (covariant, so ``dict[str, str]`` is one): payload
# bodies, OpenAPI documents, sink messages. ``JSONObject`` is one being built.
JSONValue: TypeAlias = (
    "str | int | float | bool | Sequence[JSONValue] | Mapping[str, JSONValue] | None"
)
JSONObject: TypeAlias = "dict[str, JSONValue]"


def json_object(value: JSONValue | None) -> Mapping[str, JSONValue]:
    """``value`` if it is a JSON object, else an empty one (reading records back)."""
    # ``type() is dict`` first: the usual case, where an ABC check costs more
    # than what the caller then does with the object (records written).
    return value if type(value) is dict or isinstance(value, Mapping) else {}


def json_objects(value: JSONValue | None) -> list[Mapping[str, JSONValue]]:
    """The objects in a JSON array; none when ``value`` is not an array."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def json_strings(value: JSONValue | None) -> dict[str, str]:
    """The string members of a JSON object (labels, annotations, refs)."""
    return {k: v for k, v in json_object(value).items() if isinstance(v, str)}


V = TypeVar("V")


def freeze(labels: Mapping[str, V] | None) -> Mapping[str, V]:
    """Return an immutable copy of a mapping (labels, requests, results)."""
    return MappingProxyType(dict(labels or {}))


def thaw(mapping: Mapping[str, V]) -> dict[str, V]:
    """A dict copy of a mapping, as ``dict(mapping)`` makes it.

    What ``freeze`` made is copied through the dict it wraps: ``dict()`` of
    a mapping proxy reads it key by key, six times slower, and every record
    written copies a dozen of them (labels, annotations, refs, requests).
    """
    if isinstance(mapping, MappingProxyType):
        copied = mapping.copy()
        if type(copied) is dict:
            return copied
    return dict(mapping)


@dataclass(frozen=True)
class Alert:
    """One alert occurrence, whatever wire format it came in."""

    source: Source
    fingerprint: str
    status: Status
    labels: Mapping[str, str]
    annotations: Mapping[str, str] = field(default_factory=lambda: freeze({}))
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    generator_url: str = ""
    # Things only some sources know: PagerDuty incident id, Events v2 dedup key.
    refs: Mapping[str, str] = field(default_factory=lambda: freeze({}))
    # False for events that are recorded but never run playbooks
    # (PagerDuty acknowledged/annotated, Events v2 acknowledge).
    actionable: bool = True

    @property
    def state(self) -> str:
        """``firing`` or ``resolved``; ``acknowledged`` for a recorded acknowledge."""
        return self.refs.get("state") or self.status

    def firing_for(self, now: datetime) -> timedelta:
        """How long the alert fired by ``now`` (until it ended; zero when unknown)."""
        if self.starts_at is None:
            return timedelta(0)
        end = min(now, self.ends_at) if self.ends_at is not None else now
        return max(end - self.starts_at, timedelta(0))

    def to_json(self) -> JSONObject:
        """Plain JSON form used in traces, the API and replay output."""
        return {
            "source": self.source,
            "fingerprint": self.fingerprint,
            "status": self.state,
            "labels": thaw(self.labels),
            "annotations": thaw(self.annotations),
            "startsAt": iso(self.starts_at),
            "endsAt": iso(self.ends_at),
            "generatorURL": self.generator_url,
            "refs": thaw(self.refs),
            "actionable": self.actionable,
        }


def iso(ts: datetime | None) -> str | None:
    """RFC 3339 in UTC with millisecond precision, or None."""
    if ts is None:
        return None
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Severity(enum.StrEnum):
    """The runbook's four levels; ``info`` carries what each one means."""

    P0 = "P0"
    P1 = "P1"
    P2 = "P2"
    P3 = "P3"

    @property
    def info(self) -> SeverityInfo:
        """The runbook's response targets for this level."""
        return SEVERITY_INFO[self]


@dataclass(frozen=True)
class SeverityInfo:
    """Response-time targets and communication rules from the runbook."""

    name: str
    definition: str
    acknowledge_within: str
    mitigate_within: str
    resolve_within: str
    update_every: str
    escalate_after: str
    escalate_to: str

    def escalation(self, to: str = "") -> str:
        """``escalate immediately to ...`` or ``escalate after 2h to ...``."""
        after = self.escalate_after
        when = "immediately" if after == "immediately" else f"after {after}"
        return f"escalate {when} to {to or self.escalate_to}"

    def to_json(self) -> dict[str, str]:
        """Plain JSON form for traces and notes."""
        return {
            "name": self.name,
            "definition": self.definition,
            "acknowledge_within": self.acknowledge_within,
            "mitigate_within": self.mitigate_within,
            "resolve_within": self.resolve_within,
            "update_every": self.update_every,
            "escalate_after": self.escalate_after,
            "escalate_to": self.escalate_to,
        }


SEVERITY_INFO: Mapping[Severity, SeverityInfo] = MappingProxyType(
    {
        Severity.P0: SeverityInfo(
            "Critical (SEV-1)",
            "Complete service outage or security breach",
            "5m",
            "30m",
            "4h",
            "30m",
            "immediately",
            "Engineering Manager, VP Eng",
        ),
        Severity.P1: SeverityInfo(
            "High (SEV-2)",
            "Major service degradation affecting multiple users",
            "15m",
            "2h",
            "8h",
            "1h",
            "2h",
            "Engineering Manager",
        ),
        Severity.P2: SeverityInfo(
            "Medium (SEV-3)",
            "Minor service degradation affecting some users",
            "1h",
            "8h",
            "24h",
            "4h",
            "8h",
            "Engineering Manager",
        ),
        Severity.P3: SeverityInfo(
            "Low (SEV-4)",
            "Minor issue with workaround available",
            "4h",
            "48h",
            "1w",
            "at shift change",
            "48h",
            "Team Lead",
        ),
    }
)


class StepKind(enum.StrEnum):
    """Whether a step only looks or also changes something."""

    DIAGNOSTIC = "diagnostic"
    REMEDIATION = "remediation"


class Decision(enum.StrEnum):
    """What happened to one step of one match."""

    DRY_RUN = "dry_run"
    EXECUTED = "executed"
    FAILED = "failed"
    SKIPPED = "skipped"
    AWAITING_APPROVAL = "awaiting_approval"


@dataclass(frozen=True)
class StepResult:
    """What a step executor reports back to the runner."""

    ok: bool
    reason: str
    result: Mapping[str, JSONValue] = field(default_factory=lambda: freeze({}))
    # False when a remediation found nothing to do (rollout too old, template
    # already right): recorded as skipped, verified never, and it spends no
    # budget or cooldown.
    changed: bool = True


@dataclass(frozen=True)
class Intent:
    """What a remediation is about to do, computed before it is sent.

    An executor's ``prepare`` reads the target and turns the step into absolute
    terms (the replica count, the revision and its template digest, the pod
    uids, the restartedAt stamp, the keys); ``apply`` then does exactly that,
    and the run-once key records it (``data`` must be JSON-serialisable) so a
    crash recovery can ask ``recheck`` whether it took effect.
    """

    summary: str
    data: Mapping[str, JSONValue]

    def number(self, key: str) -> int:
        """``data[key]``, an integer (``ValueError`` naming the key if it is not)."""
        value = self.data.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._damaged(key, "an integer", value)
        return value

    def text(self, key: str) -> str:
        """``data[key]``, a string (``ValueError`` naming the key if it is not)."""
        value = self.data.get(key)
        if not isinstance(value, str):
            raise self._damaged(key, "a string", value)
        return value

    def flag(self, key: str) -> bool:
        """``data[key]``, a boolean (``ValueError`` naming the key if it is not)."""
        value = self.data.get(key)
        if not isinstance(value, bool):
            raise self._damaged(key, "true or false", value)
        return value

    def strings(self, key: str) -> list[str]:
        """``data[key]``, a list of strings; empty when absent."""
        value = self.data.get(key)
        if value is None:
            return []
        if isinstance(value, str | Mapping) or not isinstance(value, Sequence):
            raise self._damaged(key, "a list of strings", value)
        if not all(isinstance(v, str) for v in value):
            raise self._damaged(key, "a list of strings", value)
        return [v for v in value if isinstance(v, str)]

    def objects(self, key: str) -> list[Mapping[str, JSONValue]]:
        """``data[key]``, a list of JSON objects; empty when absent."""
        value = self.data.get(key)
        if value is None:
            return []
        found = json_objects(value)
        if (
            isinstance(value, str | Mapping)
            or not isinstance(value, Sequence)
            or len(found) != len(value)
        ):
            raise self._damaged(key, "a list of objects", value)
        return found

    def _damaged(self, key: str, wanted: str, value: JSONValue | None) -> ValueError:
        shown = json.dumps(value)[:80]
        return ValueError(
            f"the recorded intent of {self.summary!r} holds {shown} at {key!r}, "
            f"not {wanted}"
        )

    def to_json(self) -> str:
        """The JSON text the store keeps with the ``sending`` mark."""
        return json.dumps(
            {"summary": self.summary, "data": dict(self.data)},
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Intent | None:
        """The intent a store kept, or None when none (or garbage) was recorded."""
        try:
            raw = json.loads(text) if text else None
        except ValueError:
            return None
        if (
            not isinstance(raw, dict)
            or not isinstance(raw.get("summary"), str)
            or not isinstance(raw.get("data"), dict)
        ):
            return None
        return cls(raw["summary"], raw["data"])


@dataclass(frozen=True)
class RecheckResult:
    """Whether an interrupted remediation took effect, as its target shows now.

    ``took_effect`` is None when the target cannot tell (someone else changed
    it since, or the action leaves no trace, like a non-idempotent request).
    """

    took_effect: bool | None
    reason: str


@dataclass(frozen=True)
class Silence:
    """A human's "hands off": an Alertmanager silence, with who and why."""

    id: str
    author: str = ""
    comment: str = ""


@dataclass(frozen=True)
class SourceView:
    """What an alert's source says about it right now (the last check).

    ``firing`` is None when the source could not be asked.
    """

    firing: bool | None
    silences: tuple[Silence, ...] = ()
    inhibited_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class StepTrace:
    """The decision for one step, with a reason a person can read."""

    kind: StepKind
    type: str
    target: str
    decision: Decision
    reason: str
    # The exact request that ran or would run (verb, object, body), and results.
    request: Mapping[str, JSONValue] = field(default_factory=lambda: freeze({}))
    result: Mapping[str, JSONValue] = field(default_factory=lambda: freeze({}))
    name: str = ""
    # The guard that skipped or held the step (``cooldown``, ``lock``, ...).
    guard: str = ""

    def to_json(self) -> JSONObject:
        """Plain JSON form; the replay ``--json`` contract keys come first."""
        # A StrEnum's str() is its value, at a quarter of ``.value``'s cost
        # (a descriptor): paid for every step of every alert recorded.
        out: JSONObject = {
            "kind": str(self.kind),
            "type": self.type,
            "target": self.target,
            "decision": str(self.decision),
            "reason": self.reason,
        }
        if self.guard:
            out["guard"] = self.guard
        if self.name:
            out["name"] = self.name
        if self.request:
            out["request"] = thaw(self.request)
        if self.result:
            out["result"] = thaw(self.result)
        return out


@dataclass(frozen=True)
class MatchTrace:
    """One rule that matched an alert, and what its playbook decided."""

    rule: str
    severity: Severity
    playbook: str
    steps: tuple[StepTrace, ...] = ()
    notes: tuple[str, ...] = ()
    description: str = ""
    runbook_url: str = ""
    escalate_to: str = ""

    def to_json(self) -> JSONObject:
        """Plain JSON form."""
        return {
            "rule": self.rule,
            "severity": str(self.severity),
            "playbook": self.playbook,
            "steps": [s.to_json() for s in self.steps],
            "severity_info": self.severity.info.to_json(),
            "description": self.description,
            "runbook_url": self.runbook_url,
            "escalate_to": self.escalate_to,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class AlertTrace:
    """Everything decided about one alert of one payload."""

    alert: Alert
    matches: tuple[MatchTrace, ...]
    decided_at: datetime
    payload_id: str = ""
    mode: str = "dry-run"
    notes: tuple[str, ...] = ()

    def to_json(self) -> JSONObject:
        """The replay/API JSON form of one alert's decisions."""
        return {
            "fingerprint": self.alert.fingerprint,
            "status": self.alert.state,
            "labels": thaw(self.alert.labels),
            "source": self.alert.source,
            "startsAt": iso(self.alert.starts_at),
            "annotations": thaw(self.alert.annotations),
            "refs": thaw(self.alert.refs),
            "actionable": self.alert.actionable,
            "payload_id": self.payload_id,
            "decided_at": iso(self.decided_at),
            "mode": self.mode,
            "notes": list(self.notes),
            "matches": [m.to_json() for m in self.matches],
        }
