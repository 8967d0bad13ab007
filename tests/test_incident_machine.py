"""The incident lifecycle against a reference model (a Hypothesis state machine).

Random sequences of alerts firing and resolving, acknowledgments, mitigations,
comments, published status updates and clock jumps with ticks run against
``IncidentService`` (SQLite incident store, a clock advancing a second on every
read). A small model of the runbook's rules says what must hold after each step:
the state, the acknowledge time (the first one counts), breaches exactly when a
clock passed its target (away from the boundary, where the ticking clock's
seconds could go either way; each clock stopped at the first of what stops it,
so an acknowledgment after the mitigation moves nothing), drafts on the hourly
P1 cadence restarted by published updates, one post-mortem reminder 48 h after
resolution, and a timeline that only grows and is in time order.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from incident_helpers import TickingClock

from receiver.engine.planner import PlanContext
from receiver.engine.runner import Runner
from receiver.engine.worker import Processor
from receiver.incidents.model import Incident
from receiver.incidents.service import IncidentService
from receiver.rulebook.loader import Rulebook, load_rulebook
from receiver.steps.catalog import builtin_registry
from receiver.store.incidents_sqlite import SqliteIncidentStore

RULES = """
playbooks:
  noop: {}
rules:
  - name: p1
    match: ['team="sre"']
    status: any
    severity: P1
    playbook: noop
"""
TARGETS = {"acknowledge": 15, "mitigate": 120, "resolve": 480}  # P1, minutes
MARGIN = timedelta(minutes=1)
NEAR = [2, 5, 10, 12, 13, 14, 16, 17, 30, 55, 58, 62, 65, 115, 118, 122, 470, 478, 482]
NEAR += [2870, 2878, 2882]


def body(fp: str, status: str) -> dict:
    return {
        "version": "4",
        "groupKey": "g",
        "status": status,
        "receiver": "r",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://am.test",
        "alerts": [
            {
                "status": status,
                "labels": {"alertname": "X", "team": "sre", "pod": fp},
                "annotations": {},
                "startsAt": "2026-11-26T10:00:00Z",
                "endsAt": "2026-11-26T10:00:01Z"
                if status == "resolved"
                else "0001-01-01T00:00:00Z",
                "fingerprint": fp,
            }
        ],
    }


@dataclass
class Ref:
    opened: datetime
    alerts: dict[str, str] = field(default_factory=dict)
    ack: datetime | None = None
    mitigated: datetime | None = None
    resolved: datetime | None = None
    must_breach: set[str] = field(default_factory=set)
    may_breach: set[str] = field(default_factory=set)
    cadence_from: datetime | None = None
    drafts_min: int = 0
    drafts_max: int = 0
    reminded: bool = False

    def starts(self) -> dict[str, tuple[datetime, datetime | None]]:
        # A clock stops at the first of what stops it: an acknowledgment after
        # the mitigation neither stops the acknowledge clock nor starts the
        # mitigate clock.
        stop_ack = first(self.ack, self.mitigated, self.resolved)
        stop_mitigate = first(self.mitigated, self.resolved)
        acked = self.ack if self.ack is not None and self.ack == stop_ack else None
        mitigated = self.mitigated if self.mitigated == stop_mitigate else None
        return {
            "acknowledge": (self.opened, stop_ack),
            "mitigate": (acked or self.opened, stop_mitigate),
            "resolve": (mitigated or acked or self.opened, self.resolved),
        }


def first(*times: datetime | None) -> datetime | None:
    return min((t for t in times if t is not None), default=None)


class IncidentMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = TickingClock()
        self.book: Rulebook = load_rulebook_text()
        self.service = IncidentService(
            SqliteIncidentStore(":memory:"),
            clock=self.clock,
            rulebook=lambda: self.book,
        )
        self.processor = Processor(
            self.book,
            Runner({}, self.clock, mode="dry-run"),
            self.clock,
            PlanContext(),
        )
        self.ref: Ref | None = None
        self.incident: Incident | None = None
        self.seen_entries = 0
        self.ids: set[str] = set()

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.service.aclose())
        self.loop.close()

    def refresh(self) -> None:
        if self.incident is not None:
            self.incident = self.run(self.service.get(self.incident.id))

    def send(self, fp: str, status: str) -> None:
        import json  # noqa: PLC0415

        alerts = self.processor.alerts(
            "alertmanager", json.dumps(body(fp, status)).encode(), self.clock.now
        )
        before = self.clock.now
        touched = self.run(
            self.service.observe(self.run(self.processor.decide(alerts)))
        )
        after = self.clock.now
        ref = self.ref
        if ref is None or ref.resolved is not None:
            if status != "firing":
                assert touched == []
                return
            [incident] = touched
            assert incident.id not in self.ids, "a new incident gets a new id"
            self.ids.add(incident.id)
            self.incident = incident
            self.seen_entries = 0
            self.ref = Ref(opened=incident.opened_at, cadence_from=incident.opened_at)
            assert before <= incident.opened_at <= after
            ref = self.ref
        ref.alerts[fp] = status
        if all(s == "resolved" for s in ref.alerts.values()) and ref.resolved is None:
            ref.resolved = after
        self.refresh()

    @rule(fp=st.sampled_from(["a", "b"]))
    def fire(self, fp: str) -> None:
        self.send(fp, "firing")

    @precondition(lambda self: self.ref is not None and self.ref.resolved is None)
    @rule(fp=st.sampled_from(["a", "b"]))
    def resolve(self, fp: str) -> None:
        self.send(fp, "resolved")

    @precondition(lambda self: self.incident is not None)
    @rule()
    def acknowledge(self) -> None:
        assert self.ref is not None
        assert self.incident is not None
        after = self.run(self.service.acknowledge(self.incident.id, by="jane"))
        if self.ref.resolved is None and self.ref.ack is None:
            self.ref.ack = after.acknowledged_at
        self.refresh()

    @precondition(lambda self: self.incident is not None)
    @rule()
    def mitigate(self) -> None:
        assert self.ref is not None
        assert self.incident is not None
        after = self.run(self.service.mitigate(self.incident.id, by="jane", text="x"))
        if self.ref.resolved is None and self.ref.mitigated is None:
            self.ref.mitigated = after.mitigated_at
        self.refresh()

    @precondition(lambda self: self.incident is not None)
    @rule(text=st.text(min_size=1, max_size=20))
    def comment(self, text: str) -> None:
        assert self.incident is not None
        self.run(self.service.comment(self.incident.id, by="jane", text=text))
        self.refresh()

    @precondition(lambda self: self.incident is not None)
    @rule()
    def publish(self) -> None:
        assert self.ref is not None
        assert self.incident is not None
        after = self.run(self.service.status_update(self.incident.id, by="j", text="u"))
        self.ref.cadence_from = after.cadence_from
        self.refresh()

    # Jumps near the targets (15m, 1h cadence, 2h, 8h, 48h) find boundary bugs.
    @rule(minutes=st.sampled_from(NEAR) | st.integers(1, 600))
    def tick(self, minutes: int) -> None:
        self.clock.jump(minutes=minutes)
        before = self.clock.now
        self.run(self.service.tick())
        after = self.clock.now
        ref = self.ref
        self.refresh()
        if ref is None:
            return
        if ref.resolved is None:
            for name, (start, stop) in ref.starts().items():
                deadline = start + timedelta(minutes=TARGETS[name])
                if (stop or before) > deadline + MARGIN:
                    ref.must_breach.add(f"{name}@P1")
                if (stop or after) > deadline - MARGIN:
                    ref.may_breach.add(f"{name}@P1")
            assert ref.cadence_from is not None
            if before >= ref.cadence_from + timedelta(hours=1) + MARGIN:
                ref.drafts_min += 1
                ref.drafts_max += 1
                assert self.incident is not None
                ref.cadence_from = self.incident.cadence_from
            elif after >= ref.cadence_from + timedelta(hours=1) - MARGIN:
                ref.drafts_max += 1
                assert self.incident is not None
                ref.cadence_from = self.incident.cadence_from
        elif before >= ref.resolved + timedelta(hours=48) + MARGIN:
            ref.reminded = True

    @invariant()
    def agrees_with_the_model(self) -> None:
        ref, incident = self.ref, self.incident
        if ref is None or incident is None:
            return
        expected = (
            "resolved"
            if ref.resolved
            else "mitigated"
            if ref.mitigated
            else "acknowledged"
            if ref.ack
            else "triggered"
        )
        assert incident.state.value == expected
        assert incident.acknowledged_at == ref.ack
        assert incident.mitigated_at == ref.mitigated
        clocks = set(incident.breaches)
        assert ref.must_breach <= clocks <= ref.may_breach, (clocks, ref)
        assert ref.drafts_min <= incident.drafts <= ref.drafts_max
        if ref.reminded:
            assert incident.post_mortem_reminded
        reminders = [e for e in incident.timeline if e.kind == "post_mortem_due"]
        assert len(reminders) <= 1
        assert len(incident.timeline) >= self.seen_entries
        self.seen_entries = len(incident.timeline)
        times = [e.at for e in incident.timeline]
        assert times == sorted(times)


def load_rulebook_text() -> Rulebook:
    import tempfile  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rules.yaml"
        path.write_text(RULES)
        return load_rulebook([path], steps=builtin_registry())


def test_incident_lifecycle_agrees_with_the_model():
    """Every random sequence keeps the runbook's rules as the model states them."""
    case = IncidentMachine.TestCase
    case.settings = settings(
        max_examples=80,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    case().runTest()
