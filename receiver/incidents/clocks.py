"""The runbook's three clocks of an incident: acknowledge, mitigate, resolve.

Acknowledge counts from detection, mitigate from the acknowledgment (detection if
nobody acknowledged), resolve from mitigation; each has a target per severity in
the ``IncidentPolicy``. ``lifecycle`` records breaches from them, ``report`` and
the console show them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from receiver.incidents.model import Incident
    from receiver.incidents.policy import IncidentPolicy

CLOCKS = ("acknowledge", "mitigate", "resolve")


@dataclass(frozen=True)
class Clock:
    """One of the runbook's three clocks for the incident's current severity."""

    name: str
    started: datetime
    target: timedelta
    stopped: datetime | None

    @property
    def deadline(self) -> datetime:
        """When the target passes."""
        return self.started + self.target

    def breached(self, now: datetime) -> bool:
        """Whether the clock passed its target (by when it stopped, or by now)."""
        return (self.stopped or now) > self.deadline

    def elapsed(self, now: datetime) -> timedelta:
        """Time on the clock so far (or until it stopped)."""
        return max((self.stopped or now) - self.started, timedelta(0))


def clocks(incident: Incident, policy: IncidentPolicy) -> tuple[Clock, ...]:
    """The acknowledge, mitigate and resolve clocks, with their current targets."""
    target = policy.of(incident.severity)
    opened, acked = incident.opened_at, incident.acknowledged_at
    mitigated, resolved = incident.mitigated_at, incident.resolved_at
    return (
        Clock(
            "acknowledge", opened, target.acknowledge, acked or mitigated or resolved
        ),
        Clock("mitigate", acked or opened, target.mitigate, mitigated or resolved),
        Clock("resolve", mitigated or acked or opened, target.resolve, resolved),
    )


def describe_age(age: timedelta) -> str:
    """``12m``, ``1h 5m``."""
    minutes = int(age.total_seconds() // 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m" if hours else f"{minutes}m"
