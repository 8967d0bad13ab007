"""What an incident change asks to be done, and how it is carried out.

The pure transitions in ``lifecycle`` return ``Effect`` values; ``EffectRunner``
carries each one out through injected ports (an ``Announcer`` for the sinks, an
``Escalator`` for PagerDuty's REST API) and returns a line for the incident's
timeline. In dry-run nothing is contacted: the line says what would have been done.
``service`` builds one runner and calls it after each write.

Effects that contact someone (``EffectRunner.durable``) are written with the
incident change that asks for them (``encode_effect``: the effect and what it
says of its incident, ``About``, as JSON) and read back by whoever carries them
out after a crash (``decode_effect``); a metric count (``CountBreach``) is not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

import structlog

from receiver.model import Severity

if TYPE_CHECKING:
    from collections.abc import Callable

    from receiver.incidents.model import Incident

log = structlog.get_logger("receiver.incidents")


@dataclass(frozen=True)
class Announce:
    """A message for people, delivered through the configured sinks."""

    kind: str
    title: str
    text: str
    contact: str = ""


@dataclass(frozen=True)
class PagerDutyEscalate:
    """Raise the PagerDuty incident's escalation level and set its priority."""

    incident_id: str
    level: int
    priority: Severity
    reason: str


@dataclass(frozen=True)
class CountBreach:
    """A clock passed its target (``receiver_incident_clock_breaches_total``)."""

    severity: Severity
    clock: str


@dataclass(frozen=True)
class PagerDutyStatus:
    """Acknowledge or resolve the PagerDuty incident (verified outcomes)."""

    incident_id: str
    status: str  # "acknowledged" | "resolved"
    reason: str


Effect = Announce | PagerDutyEscalate | CountBreach | PagerDutyStatus


@dataclass(frozen=True)
class About:
    """What an effect says of its incident, as it was when the effect was asked.

    ``asked_at``: when (the change's time, ISO 8601 in full precision; "" in
    effects written before it was kept): an effect still pending when the
    incident resolved after that is not carried out (``stale``).
    """

    incident_id: str
    pagerduty_id: str
    severity: str
    asked_at: str = ""

    @classmethod
    def of(cls, incident: Incident, at: datetime | None = None) -> About:
        """The incident's id, linked PagerDuty incident and severity; ``at``: asked."""
        return cls(
            incident.id,
            incident.pagerduty_id,
            incident.severity.value,
            # Full precision: an effect asked by the resolving change itself
            # (its announcement) is never before the resolution.
            at.astimezone(UTC).isoformat() if at is not None else "",
        )

    def asked(self) -> datetime | None:
        """``asked_at`` as a time (None: not kept, or not a time with a zone)."""
        try:
            at = datetime.fromisoformat(self.asked_at)
        except (TypeError, ValueError):  # damaged: as if it was not kept
            return None
        return at if at.tzinfo is not None else None

    def stale(self, incident: Incident) -> datetime | None:
        """When the incident resolved, if it did after this effect was asked.

        A message or PagerDuty call asked while the incident was open (an
        escalation, a breach, a status draft) and not carried out before it
        resolved (a sink that failed and is retried, a receiver that crashed
        first) would reach people about an incident already over. Those asked
        at or after the resolution (its announcement, the post-mortem's) are
        not stale; nor is an effect that does not say when it was asked.
        """
        resolved = incident.resolved_at
        if incident.active or resolved is None:
            return None
        asked = self.asked()
        return resolved if asked is not None and asked < resolved else None


def encode_effect(about: About, effect: Effect) -> str:
    """The effect and its incident as JSON text (kept until it is carried out)."""
    body: dict[str, object] = {
        "about": {
            "incident_id": about.incident_id,
            "pagerduty_id": about.pagerduty_id,
            "severity": about.severity,
        },
        # Beside "about", not in it: a receiver of the version before reads
        # "about" field by field and refused a key it did not know (the
        # effect dropped as unreadable during a rolling upgrade or rollback).
        "asked_at": about.asked_at,
    }
    if isinstance(effect, Announce):
        body["announce"] = {
            "kind": effect.kind,
            "title": effect.title,
            "text": effect.text,
            "contact": effect.contact,
        }
    elif isinstance(effect, PagerDutyEscalate):
        body["escalate"] = {
            "incident_id": effect.incident_id,
            "level": effect.level,
            "priority": effect.priority.value,
            "reason": effect.reason,
        }
    elif isinstance(effect, PagerDutyStatus):
        body["status"] = {
            "incident_id": effect.incident_id,
            "status": effect.status,
            "reason": effect.reason,
        }
    else:
        body["breach"] = {
            "severity": effect.severity.value,
            "clock": effect.clock,
        }
    return json.dumps(body, separators=(",", ":"))


def decode_effect(text: str) -> tuple[About, Effect]:
    """What ``encode_effect`` wrote.

    Raises:
        ValueError: not an effect this receiver knows (written by a newer one,
            or damaged).
    """
    try:
        body = json.loads(text)
        fields = body["about"]
        about = About(
            fields["incident_id"],
            fields["pagerduty_id"],
            fields["severity"],
            str(body.get("asked_at") or ""),
        )
        if "announce" in body:
            return about, Announce(**body["announce"])
        if "escalate" in body:
            fields = body["escalate"]
            return about, PagerDutyEscalate(
                fields["incident_id"],
                int(fields["level"]),
                Severity(fields["priority"]),
                fields["reason"],
            )
        if "status" in body:
            return about, PagerDutyStatus(**body["status"])
        fields = body["breach"]
        return about, CountBreach(Severity(fields["severity"]), fields["clock"])
    except (TypeError, KeyError, AttributeError) as exc:
        msg = f"not an incident effect: {exc.__class__.__name__}: {exc}"
        raise ValueError(msg) from exc


@dataclass(frozen=True)
class Message:
    """An announcement for the sinks: what the runbook asks to tell people."""

    kind: str
    title: str
    text: str
    contact: str
    incident_id: str
    pagerduty_id: str
    severity: str


class Announcer(Protocol):
    """Delivers messages through the configured sinks (``sinks.announce``)."""

    async def announce(self, message: Message) -> list[str]:
        """Deliver; return one outcome line per sink. Never raises."""
        ...


class Escalator(Protocol):
    """Escalates a PagerDuty incident (``sinks.pagerduty_escalation``)."""

    async def escalate(self, incident_id: str, level: int, priority: str) -> str:
        """Raise the escalation level and set the priority; return the outcome."""
        ...

    async def set_status(self, incident_id: str, status: str) -> str:
        """Acknowledge or resolve the PagerDuty incident; return the outcome."""
        ...


# What the log says of an announcement or a PagerDuty call dry-run does not make.
_DRY_RUN = "dry-run: described on the incident timeline, nothing is contacted"


@dataclass(frozen=True)
class EffectRunner:
    """Carries out effects through the injected ports.

    ``deliver`` is false in dry-run: nothing is contacted, and messages and
    PagerDuty calls are only recorded on the timeline as what would have been done.
    """

    deliver: bool
    announcer: Announcer | None = None
    escalator: Escalator | None = None
    on_breach: Callable[[str, str], None] | None = None

    def durable(self, effect: Effect) -> bool:
        """Whether the effect contacts someone.

        Such an effect is written with the change that asks for it, so that a
        crash before it is carried out does not lose it. A metric count, a
        message with nowhere to go, or anything in dry-run (only a line saying
        what would have been done) contacts nobody: carried out at once. Kept
        pending, a dry-run's message would be sent by a receiver restarted to
        execute.
        """
        if not self.deliver or isinstance(effect, CountBreach):
            return False
        if isinstance(effect, Announce):
            return self.announcer is not None
        return self.escalator is not None

    @staticmethod
    def describe(effect: Effect) -> str:
        """What the effect is, as the timeline names it."""
        if isinstance(effect, Announce):
            return f"Message ({effect.kind}) {effect.title!r}"
        if isinstance(effect, PagerDutyStatus):
            return f"PagerDuty {effect.status}"
        if isinstance(effect, PagerDutyEscalate):
            return (
                f"PagerDuty escalation (level {effect.level}, "
                f"priority {effect.priority.value})"
            )
        return f"Clock breach ({effect.clock})"

    async def carry_out(self, incident: About, effect: Effect) -> str:
        """Carry out one effect; return a line for the timeline ("" for none)."""
        if isinstance(effect, CountBreach):
            log.info(
                "incident_clock_breached",
                incident=incident.incident_id,
                severity=effect.severity.value,
                clock=effect.clock,
            )
            if self.on_breach is not None:
                self.on_breach(effect.severity.value, effect.clock)
            return ""
        if isinstance(effect, Announce):
            return await self._announce(incident, effect)
        if isinstance(effect, PagerDutyStatus):
            return await self._pagerduty_status(incident, effect)
        return await self._escalate(incident, effect)

    async def _announce(self, incident: About, effect: Announce) -> str:
        if not self.deliver:
            log.info(
                "incident_announcement_dry_run",
                incident=incident.incident_id,
                kind=effect.kind,
                mode="dry-run",
                detail=_DRY_RUN,
            )
            if self.announcer is None:
                return ""
            return (
                f"Message ({effect.kind}) {effect.title!r}: not delivered "
                "(dry-run; would have posted to the configured sinks)"
            )
        if self.announcer is None:
            return ""
        message = Message(
            effect.kind,
            effect.title,
            effect.text,
            effect.contact,
            incident.incident_id,
            incident.pagerduty_id,
            incident.severity,
        )
        outcomes = await self.announcer.announce(message)
        log.info(
            "incident_announced",
            incident=incident.incident_id,
            kind=effect.kind,
            outcomes=outcomes,
        )
        if not outcomes:
            return ""
        return f"Message ({effect.kind}) {effect.title!r}: " + "; ".join(outcomes)

    async def _pagerduty_status(self, incident: About, effect: PagerDutyStatus) -> str:
        if not self.deliver:
            return self._withheld(
                incident, effect.incident_id, f"PagerDuty {effect.status}"
            )
        outcome = "no PagerDuty API token configured"
        if self.escalator is not None:
            outcome = await self.escalator.set_status(effect.incident_id, effect.status)
        log.info(
            "incident_pagerduty_updated",
            incident=incident.incident_id,
            pagerduty_id=effect.incident_id,
            status=effect.status,
            outcome=outcome,
        )
        return f"PagerDuty {effect.status}: {outcome}" if self.escalator else ""

    async def _escalate(self, incident: About, effect: PagerDutyEscalate) -> str:
        if not self.deliver:
            return self._withheld(
                incident,
                effect.incident_id,
                f"PagerDuty escalation (level {effect.level}, "
                f"priority {effect.priority.value})",
            )
        outcome = "no PagerDuty API token configured"
        if self.escalator is not None:
            outcome = await self.escalator.escalate(
                effect.incident_id, effect.level, effect.priority.value
            )
        log.info(
            "incident_escalated",
            incident=incident.incident_id,
            pagerduty_id=effect.incident_id,
            outcome=outcome,
        )
        return f"PagerDuty escalation: {outcome}" if self.escalator else ""

    def _withheld(self, incident: About, pagerduty_id: str, what: str) -> str:
        """A PagerDuty REST call dry-run does not make: logged and on the timeline."""
        log.info(
            "incident_pagerduty_dry_run",
            incident=incident.incident_id,
            pagerduty_id=pagerduty_id,
            action=what,
            mode="dry-run",
            detail=_DRY_RUN,
        )
        if self.escalator is None:
            return ""
        return f"{what}: not called (dry-run; would have called the REST API)"
