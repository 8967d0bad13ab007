"""The runbook's response targets, update cadence and escalation matrix, per severity.

``DEFAULT_POLICY`` is the runbook as shipped: acknowledge / mitigate / resolve
targets (P0 5m / 30m / 4h ... P3 4h / 48h / 1w), status updates every 30m / 1h /
4h / at shift change, first contact and who to escalate to after how long. A rule
file's ``incidents:`` section may override any of it (``IncidentPolicy.merged``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time, timedelta
from types import MappingProxyType

from receiver.model import Severity
from receiver.rulebook.incidents import IncidentConfig

# Severity order, most severe first: a lower index wins.
ORDER: tuple[Severity, ...] = (Severity.P0, Severity.P1, Severity.P2, Severity.P3)


def worse(a: Severity, b: Severity) -> Severity:
    """The more severe of two levels (P0 beats P1)."""
    return a if ORDER.index(a) <= ORDER.index(b) else b


@dataclass(frozen=True)
class SeverityPolicy:
    """One row of the runbook's tables for a severity.

    ``mitigate`` runs from acknowledgment (or detection, if nobody acknowledged),
    ``resolve`` from mitigation (or the acknowledgment, or detection): the runbook's
    "Acknowledgment to Mitigation" and "Mitigation to Resolution". ``update_every``
    ``None`` means "at shift change". ``escalate_after`` zero means immediately.
    """

    acknowledge: timedelta
    mitigate: timedelta
    resolve: timedelta
    update_every: timedelta | None
    first_contact: str
    escalate_after: timedelta
    escalate_to: str


def _h(hours: float) -> timedelta:
    return timedelta(hours=hours)


def _m(minutes: float) -> timedelta:
    return timedelta(minutes=minutes)


RUNBOOK: Mapping[Severity, SeverityPolicy] = MappingProxyType(
    {
        Severity.P0: SeverityPolicy(
            _m(5), _m(30), _h(4), _m(30), "On-Call SRE", _m(0),
            "Engineering Manager, VP Eng",
        ),
        Severity.P1: SeverityPolicy(
            _m(15), _h(2), _h(8), _h(1), "On-Call SRE", _h(2), "Engineering Manager"
        ),
        Severity.P2: SeverityPolicy(
            _h(1), _h(8), _h(24), _h(4), "On-Call SRE", _h(8), "Engineering Manager"
        ),
        Severity.P3: SeverityPolicy(
            _h(4), _h(48), timedelta(weeks=1), None, "Developer", _h(48), "Team Lead"
        ),
    }
)  # fmt: skip


@dataclass(frozen=True)
class IncidentPolicy:
    """Targets per severity, the shift changes (UTC) and the post-mortem deadline."""

    severities: Mapping[Severity, SeverityPolicy] = field(
        default_factory=lambda: RUNBOOK
    )
    shift_changes: tuple[time, ...] = (time(9, 0), time(21, 0))
    post_mortem_due: timedelta = timedelta(hours=48)
    # Said after an escalation's timeline line when nobody is contacted (a
    # dry-run receiver): "Escalated to VP Eng" alone read as if someone was.
    nobody_contacted: str = ""

    def of(self, severity: Severity) -> SeverityPolicy:
        """The targets for ``severity``."""
        return self.severities[severity]

    def next_update(self, severity: Severity, after: datetime) -> datetime:
        """When the next status update is due, counting from ``after``."""
        every = self.of(severity).update_every
        if every is not None:
            return after + every
        candidates = []
        for day in (0, 1):
            base = after.date() + timedelta(days=day)
            for at in self.shift_changes:
                moment = datetime.combine(base, at.replace(tzinfo=None), tzinfo=UTC)
                if moment > after:
                    candidates.append(moment)
        return min(candidates)

    def merged(
        self, overrides: Mapping[Severity, Mapping[str, object]]
    ) -> IncidentPolicy:
        """A copy with some fields of some severities replaced (rule files)."""
        table = dict(self.severities)
        for severity, fields in overrides.items():
            table[severity] = replace(table[severity], **fields)  # type: ignore[arg-type]
        return replace(self, severities=MappingProxyType(table))


DEFAULT_POLICY = IncidentPolicy()


def describe(delta: timedelta | None) -> str:
    """``30m``, ``2h``, ``1w``, ``immediately``, ``at shift change``."""
    if delta is None:
        return "at shift change"
    seconds = int(delta.total_seconds())
    if seconds == 0:
        return "immediately"
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def policy_from(config: IncidentConfig | None) -> IncidentPolicy:
    """The runbook's policy with a rule file's ``incidents:`` overrides applied."""
    if config is None:
        return DEFAULT_POLICY
    overrides: dict[Severity, dict[str, object]] = {}
    for severity, targets in config.severities.items():
        fields = targets.model_dump(exclude_none=True)
        if fields.get("update_every") == "shift_change":
            fields["update_every"] = None
        overrides[severity] = fields
    policy = DEFAULT_POLICY.merged(overrides)
    if config.shift_changes is not None:
        policy = replace(
            policy,
            shift_changes=tuple(
                time(int(t[:2]), int(t[3:]), tzinfo=UTC) for t in config.shift_changes
            ),
        )
    if config.post_mortem_due is not None:
        policy = replace(policy, post_mortem_due=config.post_mortem_due)
    return policy
