"""Decided approvals of remediation steps, on the timeline of their alerts' incidents.

``service`` reads the approvals through an injected callable (the store's list),
keeps the decided ones (``decided``) and ``record_approvals`` puts each on the
timeline of the incident holding its alert, once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from receiver.incidents.model import add_entry

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from datetime import datetime

    from receiver.incidents.model import Incident


@dataclass(frozen=True)
class ApprovalDecision:
    """A decided approval, as the approvals API shows it."""

    id: str
    status: str
    by: str
    at: datetime | None
    rule: str
    step: str
    target: str
    fingerprint: str


def record_approvals(
    incident: Incident, decisions: Iterable[ApprovalDecision], now: datetime
) -> Incident:
    """Put each decided approval for one of the incident's alerts on the timeline."""
    fingerprints = {a.fingerprint for a in incident.alerts}
    for decision in decisions:
        key = f"approval:{decision.id}"
        if decision.fingerprint not in fingerprints or key in incident.escalations:
            continue
        incident = replace(incident, escalations=incident.escalations | {key})
        incident = add_entry(
            incident,
            decision.at or now,
            "approval_decided",
            f"Approval {decision.status}: {decision.step} {decision.target} "
            f"(rule {decision.rule})",
            decision.by or "receiver",
            approval=decision.id,
        )
    return incident


class ApprovalView(Protocol):
    """What the incident service reads of an approval (``store.base.Approval``)."""

    @property
    def id(self) -> str: ...  # noqa: D102
    @property
    def status(self) -> str: ...  # noqa: D102
    @property
    def decided_by(self) -> str: ...  # noqa: D102
    @property
    def decided_at(self) -> datetime | None: ...  # noqa: D102
    @property
    def request(self) -> Mapping[str, object]: ...  # noqa: D102


Approvals = Callable[[], Awaitable[Sequence[ApprovalView]]]


def decided(approvals: Sequence[ApprovalView]) -> list[ApprovalDecision]:
    """The decided approvals, in the incident model's terms."""
    return [
        ApprovalDecision(
            a.id,
            a.status,
            a.decided_by,
            a.decided_at,
            str(a.request.get("rule", "")),
            str(a.request.get("step", "")),
            str(a.request.get("target", "")),
            str(a.request.get("fingerprint", "")),
        )
        for a in approvals
        if a.status != "pending"
    ]
