"""The runbook's three clocks of an incident: acknowledge, mitigate, resolve.

Acknowledge counts from detection, mitigate from the acknowledgment (detection if
nobody acknowledged), resolve from mitigation; each has a target per severity in
the ``IncidentPolicy``. ``lifecycle`` records breaches from them, ``report`` and
the console show them.

A clock stops once, at the first of what stops it: acknowledge at the first of
acknowledgment, mitigation and resolution; mitigate at the first of mitigation
and resolution; resolve at resolution. ``clocks`` is the one place that says
so: an acknowledgment recorded after a mitigation (a person or PagerDuty,
late) never moves the acknowledge clock's stop, and never starts the mitigate
clock.

A running clock takes the current severity's target, so a promotion may put it
past its target at once; a stopped clock keeps the target of the severity in
force when it stopped (``Incident.severities``), so a later promotion never
turns a target met into a breach.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from receiver.incidents.model import Incident
    from receiver.incidents.policy import IncidentPolicy, SeverityPolicy
    from receiver.model import Severity

CLOCKS = ("acknowledge", "mitigate", "resolve")


@dataclass(frozen=True)
class Clock:
    """One of the runbook's three clocks, with the target it is judged by."""

    name: str
    started: datetime
    target: timedelta
    stopped: datetime | None
    # Whose target ``target`` is: the severity in force when the clock
    # stopped, the current one while it runs.
    severity: Severity
    # What stopped it: "acknowledgment", "mitigation" or "resolution".
    stopped_by: str = ""

    @property
    def deadline(self) -> datetime:
        """When the target passes."""
        return self.started + self.target

    @property
    def stopped_by_another(self) -> str:
        """What stopped it, when not its own action ("" if that or running).

        An acknowledge clock stopped by the mitigation or the resolution: the
        incident was never acknowledged in time, only the clock stopped.
        """
        return "" if self.stopped_by == _OWN_STOP.get(self.name) else self.stopped_by

    def breached(self, now: datetime) -> bool:
        """Whether the clock passed its target (by when it stopped, or by now)."""
        return (self.stopped or now) > self.deadline

    def elapsed(self, now: datetime) -> timedelta:
        """Time on the clock so far (or until it stopped)."""
        return max((self.stopped or now) - self.started, timedelta(0))


# What stops each clock itself (``Clock.stopped_by``).
_OWN_STOP = {
    "acknowledge": "acknowledgment",
    "mitigate": "mitigation",
    "resolve": "resolution",
}


def _first(*stops: tuple[datetime | None, str]) -> tuple[datetime | None, str]:
    """The earliest of ``stops`` that happened (the first listed on a tie)."""
    happened = [(at, by) for at, by in stops if at is not None]
    if not happened:
        return None, ""
    return min(happened, key=lambda stop: stop[0])


def clocks(incident: Incident, policy: IncidentPolicy) -> tuple[Clock, ...]:
    """The acknowledge, mitigate and resolve clocks, with their targets.

    Each stops at the first of what stops it, whatever order the times were
    recorded in; the mitigate clock counts from an acknowledgment only if that
    is what stopped the acknowledge clock, the resolve clock from a mitigation
    only if that is what stopped the mitigate clock. A running clock has the
    current severity's target, a stopped one the target of the severity in
    force when it stopped.
    """

    def clock(
        name: str,
        started: datetime,
        stopped: datetime | None,
        by: str,
        target: Callable[[SeverityPolicy], timedelta],
    ) -> Clock:
        severity = (
            incident.severity if stopped is None else incident.severity_at(stopped)
        )
        return Clock(name, started, target(policy.of(severity)), stopped, severity, by)

    opened, acked = incident.opened_at, incident.acknowledged_at
    mitigated, resolved = incident.mitigated_at, incident.resolved_at
    ack_stop, ack_by = _first(
        (acked, "acknowledgment"), (mitigated, "mitigation"), (resolved, "resolution")
    )
    mit_stop, mit_by = _first((mitigated, "mitigation"), (resolved, "resolution"))
    mit_start = acked if acked is not None and ack_by == "acknowledgment" else opened
    res_start = (
        mitigated if mitigated is not None and mit_by == "mitigation" else mit_start
    )
    res_by = "resolution" if resolved is not None else ""
    return (
        clock("acknowledge", opened, ack_stop, ack_by, lambda t: t.acknowledge),
        clock("mitigate", mit_start, mit_stop, mit_by, lambda t: t.mitigate),
        clock("resolve", res_start, resolved, res_by, lambda t: t.resolve),
    )


def describe_age(age: timedelta) -> str:
    """``12m``, ``1h 5m``."""
    minutes = int(age.total_seconds() // 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m" if hours else f"{minutes}m"
