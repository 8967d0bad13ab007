"""What an incident change asks to be done, and how it is carried out.

The pure transitions in ``lifecycle`` return ``Effect`` values; ``EffectRunner``
carries each one out through injected ports (an ``Announcer`` for the sinks, an
``Escalator`` for PagerDuty's REST API) and returns a line for the incident's
timeline. In dry-run nothing is contacted: the line says what would have been done.
``service`` builds one runner and calls it after each write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import structlog

if TYPE_CHECKING:
    from collections.abc import Callable

    from receiver.incidents.model import Incident
    from receiver.model import Severity

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

    async def carry_out(self, incident: Incident, effect: Effect) -> str:
        """Carry out one effect; return a line for the timeline ("" for none)."""
        if isinstance(effect, CountBreach):
            log.info(
                "incident_clock_breached",
                incident=incident.id,
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

    async def _announce(self, incident: Incident, effect: Announce) -> str:
        if not self.deliver:
            log.info(
                "incident_announcement_dry_run",
                incident=incident.id,
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
            incident.id,
            incident.pagerduty_id,
            incident.severity.value,
        )
        outcomes = await self.announcer.announce(message)
        log.info(
            "incident_announced",
            incident=incident.id,
            kind=effect.kind,
            outcomes=outcomes,
        )
        if not outcomes:
            return ""
        return f"Message ({effect.kind}) {effect.title!r}: " + "; ".join(outcomes)

    async def _pagerduty_status(
        self, incident: Incident, effect: PagerDutyStatus
    ) -> str:
        if not self.deliver:
            return self._withheld(
                incident, effect.incident_id, f"PagerDuty {effect.status}"
            )
        outcome = "no PagerDuty API token configured"
        if self.escalator is not None:
            outcome = await self.escalator.set_status(effect.incident_id, effect.status)
        log.info(
            "incident_pagerduty_updated",
            incident=incident.id,
            pagerduty_id=effect.incident_id,
            status=effect.status,
            outcome=outcome,
        )
        return f"PagerDuty {effect.status}: {outcome}" if self.escalator else ""

    async def _escalate(self, incident: Incident, effect: PagerDutyEscalate) -> str:
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
            incident=incident.id,
            pagerduty_id=effect.incident_id,
            outcome=outcome,
        )
        return f"PagerDuty escalation: {outcome}" if self.escalator else ""

    def _withheld(self, incident: Incident, pagerduty_id: str, what: str) -> str:
        """A PagerDuty REST call dry-run does not make: logged and on the timeline."""
        log.info(
            "incident_pagerduty_dry_run",
            incident=incident.id,
            pagerduty_id=pagerduty_id,
            action=what,
            mode="dry-run",
            detail=_DRY_RUN,
        )
        if self.escalator is None:
            return ""
        return f"{what}: not called (dry-run; would have called the REST API)"
