"""Approval decisions against a reference model (Hypothesis state machine).

Random presses (approve / reject, by listed, unlisted and unmapped people; in
Slack, the console or the API, all one policy) on one destructive approval and
one ordinary approval, applied to the real decision logic over an in-memory
store, must give what a plain model says: who
may decide, two different approvers for the destructive step, decided at most
once, and the payload journalled again exactly once per approval decided.
"""

from __future__ import annotations

import asyncio
import itertools
import tempfile
import textwrap
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from pydantic import SecretStr

from receiver.engine.planner import PlanContext
from receiver.engine.runner import Runner
from receiver.engine.worker import Processor
from receiver.rulebook.loader import load_rulebook
from receiver.settings import SlackSettings
from receiver.steps.catalog import builtin_registry
from receiver.store import MemoryStore
from receiver.store.base import Approval, JournalEntry
from receiver.web.approvals import ApprovalDesk, Approver
from receiver.web.slack import Press, SlackInteractions

T = TypeVar("T")
T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
USERS = {"UA": "alice", "UB": "bob", "UC": "carol", "UM": "mallory"}
RULES = textwrap.dedent(
    """
    playbooks:
      wipe:
        approvers: {people: [alice], groups: {sre: [bob, carol]}}
      restart:
        approvers: {people: [alice, bob]}
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


@dataclass
class Model:
    """What should happen to one approval."""

    allowed: set[str]
    two: bool
    status: str = "pending"
    approved_by: list[str] = field(default_factory=list)

    def press(self, person: str | None, action: str) -> bool:
        """Apply a press; whether it decided the approval."""
        if person is None or self.status != "pending" or person not in self.allowed:
            return False
        if action == "reject":
            self.status = "rejected"
            return True
        if not self.two:
            self.status = "approved"
            self.approved_by = [person]
            return True
        if person in self.approved_by:
            return False
        self.approved_by.append(person)
        if len(self.approved_by) == 2:
            self.status = "approved"
            return True
        return False


class ApprovalMachine(RuleBasedStateMachine):
    """Presses on two approvals vs two models."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        path = self.path = _rules_file()
        self.store = MemoryStore()
        ticks = itertools.count()

        def clock() -> datetime:
            return T0 + timedelta(milliseconds=next(ticks))

        rulebook = load_rulebook([path], steps=builtin_registry())
        processor = Processor(rulebook, Runner({}, clock), clock, PlanContext())
        self.client = httpx.AsyncClient()
        self.desk = ApprovalDesk(store=self.store, processor=processor, clock=clock)
        self.slack = SlackInteractions(
            slack=SlackSettings(signing_secret=SecretStr("s"), approvers=USERS),
            store=self.store,
            desk=self.desk,
            clock=clock,
            client=self.client,
        )
        self.run(self.store.append(JournalEntry("p1", "alertmanager", T0, BODY), []))
        self.models: dict[str, Model] = {}
        for playbook, allowed, two in (
            ("wipe", {"alice", "bob", "carol"}, True),
            ("restart", {"alice", "bob"}, False),
        ):
            approval = self.run(
                self.store.put_approval(
                    Approval(
                        id=f"a-{playbook}",
                        key=f"k-{playbook}",
                        created_at=T0,
                        expires_at=T0 + timedelta(hours=1),
                        request={
                            "playbook": playbook,
                            "payload_id": "p1",
                            "destructive": two,
                            "step": "http.request",
                            "target": "t",
                        },
                    )
                )
            )
            self.models[approval.id] = Model(allowed, two)
        self.decided = 0

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.store.close())
        self.run(self.client.aclose())
        self.loop.close()
        self.path.unlink()

    @rule(
        approval=st.sampled_from(["a-wipe", "a-restart"]),
        user=st.sampled_from([*USERS, "UNKNOWN"]),
        action=st.sampled_from(["approve", "approve", "reject"]),
        via=st.sampled_from(["slack", "console", "api"]),
    )
    def press(self, approval: str, user: str, action: str, via: str) -> None:
        """One press in Slack, or the same person in the console or the API.

        Outside Slack an unknown user stands for a shared token: no verified
        person, so never admitted by a playbook that names its approvers.
        """
        if via == "slack":
            press = Press(action, approval, user, user.lower(), "", {})
            answer = self.run(self.slack._decide(press))
        else:
            person = USERS.get(user)
            who = Approver(person or "api", verified=person is not None)
            decision: Literal["approve", "reject"] = (
                "approve" if action == "approve" else "reject"
            )
            answer = self.run(
                self.desk.decide(
                    approval,
                    decision,
                    who,
                    via="console" if via == "console" else "api",
                )
            )
        expected = self.models[approval].press(USERS.get(user), action)
        assert answer.final == expected, answer.text
        self.decided += answer.final

    @invariant()
    def matches_the_model(self) -> None:
        """Status and approvers agree; one re-journal per approval approved."""
        approved = 0
        for approval_id, model in self.models.items():
            stored = self.run(self.store.get_approval(approval_id))
            assert stored is not None
            assert stored.status == model.status
            if model.status == "approved":
                approved += 1
                assert stored.decided_by == " and ".join(model.approved_by)
        entries = self.run(self.store.payloads(100))
        assert len(entries) == 1 + approved


def _rules_file() -> Path:
    """The rules, written once per machine run to a temporary file."""
    with tempfile.NamedTemporaryFile(
        "w", suffix=".yaml", delete=False, encoding="utf-8"
    ) as handle:
        handle.write(RULES)
    return Path(handle.name)


TestApprovals = ApprovalMachine.TestCase
TestApprovals.settings = hsettings(
    max_examples=40, stateful_step_count=12, deadline=None
)
