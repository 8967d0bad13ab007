"""An approval that expires while its approver is being checked is not approved.

``ApprovalDesk.decide`` checks the expiry first, then asks PagerDuty who is on
call (an HTTP round trip, seconds when PagerDuty is slow). An approval whose
``expires_at`` passes during that look-up must end ``expired``, never
``approved`` after its time, and the payload is not journalled again.
"""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

from receiver.engine.planner import PlanContext
from receiver.engine.runner import Runner
from receiver.engine.worker import Processor
from receiver.rulebook.loader import load_rulebook
from receiver.steps.catalog import builtin_registry
from receiver.store import MemoryStore
from receiver.store.base import Approval, JournalEntry
from receiver.web.approvals import ApprovalDesk, Approver

T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
RULES = textwrap.dedent(
    """
    playbooks:
      restart:
        approvers: {pagerduty_schedule: P1, schedule_name: primary}
    rules:
      - name: r
        match: ['alertname="X"']
        playbook: restart
    """
)
BODY = (
    b'{"version": "4", "status": "firing", "groupKey": "g", "alerts": [{"status": '
    b'"firing", "labels": {"alertname": "X"}, "startsAt": "2026-12-05T11:00:00Z", '
    b'"fingerprint": "f1"}]}'
)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class SlowOnCall:
    """PagerDuty's answer arrives after the approval's expiry (the clock moves)."""

    def __init__(self, clock: Clock, by: timedelta) -> None:
        self._clock = clock
        self._by = by

    async def people(self, _schedule: str, _now: datetime) -> set[str]:
        self._clock.now += self._by
        return {"alice"}


async def test_an_approval_expiring_during_the_on_call_lookup_is_not_approved(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES, encoding="utf-8")
    clock = Clock()
    store = MemoryStore()
    rulebook = load_rulebook([path], steps=builtin_registry())
    processor = Processor(rulebook, Runner({}, clock), clock, PlanContext())
    desk = ApprovalDesk(
        store=store,
        processor=processor,
        clock=clock,
        on_call=SlowOnCall(clock, timedelta(minutes=2)),  # type: ignore[arg-type]
    )
    await store.append(JournalEntry("p1", "alertmanager", T0, BODY), [])
    await store.put_approval(
        Approval(
            id="a1",
            key="k1",
            created_at=T0 - timedelta(minutes=59),
            expires_at=T0 + timedelta(minutes=1),
            request={
                "playbook": "restart",
                "payload_id": "p1",
                "step": "http.request",
                "target": "t",
            },
        )
    )
    depth = (await store.pending())[0]

    answer = await desk.decide(
        "a1", "approve", Approver("alice", verified=True), via="api"
    )

    assert answer.outcome == "expired", answer
    approval = await store.get_approval("a1")
    assert approval is not None
    assert approval.status == "expired"
    assert (await store.pending())[0] == depth  # nothing journalled again
