"""The incident lifecycle against a reference model (Hypothesis state machines).

Random sequences of alerts firing and resolving, acknowledgments, mitigations,
comments, published status updates and clock jumps with ticks run against
``IncidentService`` (SQLite incident store, a clock advancing a second on every
read). A small model of the runbook's rules says what must hold after each step:
the state, the acknowledge time (the first one counts), breaches exactly when a
clock passed its target (away from the boundary, where the ticking clock's
seconds could go either way; each clock stopped at the first of what stops it,
so an acknowledgment after the mitigation moves nothing), drafts on the
severity's cadence restarted by published updates, one post-mortem reminder 48 h
after resolution, and a timeline that only grows and is in time order.

Two rule sets: a fixed P1 rule, and the runbook's impact x duration matrix
(``impact="multiple_users"``: P2, P1 from 5 minutes, P0 from 30), which promotes
the incident as its alerts age. With it the model also keeps the severity
history it expects (each promotion within the step that made it), each clock's
start, stop, what stopped it and the severity whose target it is judged by (the
current one while it runs, the one in force when it stopped), and says which
breaches must be recorded under which severity; the service's clocks and its
severity history are compared with it after every step.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from incident_helpers import TickingClock

from receiver.engine.planner import PlanContext
from receiver.engine.runner import Runner
from receiver.engine.worker import Processor
from receiver.incidents.clocks import clocks
from receiver.incidents.model import Incident
from receiver.incidents.service import IncidentService
from receiver.model import Severity
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
MATRIX_RULES = """
playbooks:
  noop: {}
rules:
  - name: auth
    match: ['team="sre"']
    status: any
    severity: {matrix: impact_duration, impact_label: impact}
    playbook: noop
"""
P0, P1, P2 = Severity.P0, Severity.P1, Severity.P2
# The runbook's targets in minutes (acknowledge, mitigate, resolve) and status
# update cadence, written out here rather than read from the policy.
TARGETS = {
    P0: {"acknowledge": 5, "mitigate": 30, "resolve": 240},
    P1: {"acknowledge": 15, "mitigate": 120, "resolve": 480},
    P2: {"acknowledge": 60, "mitigate": 480, "resolve": 1440},
}
UPDATE_EVERY = {P0: 30, P1: 60, P2: 240}
MARGIN = timedelta(minutes=1)
NEAR = [2, 5, 10, 12, 13, 14, 16, 17, 30, 55, 58, 62, 65, 115, 118, 122, 470, 478, 482]
NEAR += [2870, 2878, 2882]
# The matrix's bands (5m, 30m) and P0's, P1's and P2's targets and cadences.
NEAR_MATRIX = [1, 3, 4, 6, 8, 10, 14, 16, 24, 26, 29, 31, 35, 55, 58, 62, 65]
NEAR_MATRIX += [118, 122, 235, 245, 470, 482, 1430, 1450, 2882]


def body(fp: str, status: str, starts: datetime, labels: dict[str, str]) -> dict:
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
                "labels": {"alertname": "X", "team": "sre", "pod": fp, **labels},
                "annotations": {},
                "startsAt": starts.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "endsAt": "2026-11-26T10:00:01Z"
                if status == "resolved"
                else "0001-01-01T00:00:00Z",
                "fingerprint": fp,
            }
        ],
    }


def rank(severity: Severity) -> int:
    """P0 is 0: a lower rank is more severe."""
    return int(severity.value[1])


def worse(a: Severity, b: Severity) -> Severity:
    return a if rank(a) <= rank(b) else b


@dataclass
class Ref:
    opened: datetime
    # The severity from the opening on: (earliest, latest, severity), each
    # promotion somewhere within the step that made it.
    severities: list[tuple[datetime, datetime, Severity]]
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

    @property
    def severity(self) -> Severity:
        return self.severities[-1][2]

    def severity_at(self, at: datetime) -> Severity:
        # Stops never fall within a promotion's step: the order is plain.
        return [s for lo, _, s in self.severities if lo <= at][-1]

    def clocks(self) -> dict[str, tuple[datetime, datetime | None, str]]:
        """Each clock's start, stop and what stopped it."""
        # A clock stops at the first of what stops it: an acknowledgment after
        # the mitigation neither stops the acknowledge clock nor starts the
        # mitigate clock.
        ack_stop, ack_by = first(
            (self.ack, "acknowledgment"),
            (self.mitigated, "mitigation"),
            (self.resolved, "resolution"),
        )
        mit_stop, mit_by = first(
            (self.mitigated, "mitigation"), (self.resolved, "resolution")
        )
        acked = self.ack if ack_by == "acknowledgment" else None
        mitigated = self.mitigated if mit_by == "mitigation" else None
        return {
            "acknowledge": (self.opened, ack_stop, ack_by),
            "mitigate": (acked or self.opened, mit_stop, mit_by),
            "resolve": (
                mitigated or acked or self.opened,
                self.resolved,
                "resolution" if self.resolved else "",
            ),
        }

    def judged_by(self, stop: datetime | None) -> Severity:
        """A running clock: the current severity; a stopped one: at its stop."""
        return self.severity if stop is None else self.severity_at(stop)


def first(*stops: tuple[datetime | None, str]) -> tuple[datetime | None, str]:
    happened = [(at, by) for at, by in stops if at is not None]
    return min(happened, key=lambda s: s[0]) if happened else (None, "")


def judge(ref: Ref, before: datetime, after: datetime) -> None:
    """The breaches a tick read between ``before`` and ``after`` must, may record."""
    for name, (start, stop, _) in ref.clocks().items():
        severity = ref.judged_by(stop)
        key = f"{name}@{severity}"
        deadline = start + timedelta(minutes=TARGETS[severity][name])
        if stop is not None:
            # Its stop and start are exact: no margin either way.
            if stop > deadline:
                ref.must_breach.add(key)
                ref.may_breach.add(key)
            continue
        # A running clock: away from the boundary, where the ticking clock's
        # seconds could go either way.
        if before > deadline + MARGIN:
            ref.must_breach.add(key)
        if after > deadline - MARGIN:
            ref.may_breach.add(key)


class IncidentMachine(RuleBasedStateMachine):
    """The fixed-P1 rule: no promotions."""

    rules_text = RULES
    labels: dict[str, str] = {}  # noqa: RUF012

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = TickingClock()
        self.book: Rulebook = load_rulebook_text(self.rules_text)
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
        self.starts = self.clock.now

    def expected(self, at: datetime) -> Severity:
        """The severity the rule gives the incident's alerts at ``at``."""
        return P1

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.service.aclose())
        self.loop.close()

    def refresh(self) -> None:
        if self.incident is not None:
            self.incident = self.run(self.service.get(self.incident.id))

    def promoted(self, before: datetime, after: datetime) -> None:
        """Check the severity after a step that may promote; note a promotion."""
        ref, incident = self.ref, self.incident
        assert ref is not None
        assert incident is not None
        low = worse(ref.severity, self.expected(before))
        high = worse(ref.severity, self.expected(after))
        assert rank(high) <= rank(incident.severity) <= rank(low), (
            incident.severity,
            low,
            high,
        )
        if incident.severity != ref.severity:
            ref.severities.append((before, after, incident.severity))

    def send(self, fp: str, status: str) -> None:
        ref = self.ref
        opening = ref is None or ref.resolved is not None
        if opening:
            self.starts = self.clock.now
        before = self.clock.now
        alerts = self.processor.alerts(
            "alertmanager",
            json.dumps(body(fp, status, self.starts, self.labels)).encode(),
            self.clock.now,
        )
        touched = self.run(
            self.service.observe(self.run(self.processor.decide(alerts)))
        )
        after = self.clock.now
        if opening:
            if status != "firing":
                assert touched == []
                return
            [incident] = touched
            assert incident.id not in self.ids, "a new incident gets a new id"
            self.ids.add(incident.id)
            self.incident = incident
            self.seen_entries = 0
            assert before <= incident.opened_at <= after
            opened = incident.opened_at
            severity = self.expected(before)
            assert self.expected(after) == severity
            self.ref = Ref(opened, [(opened, opened, severity)], cadence_from=opened)
            ref = self.ref
        assert ref is not None
        ref.alerts[fp] = status
        self.refresh()
        if status == "firing" and not opening:
            self.promoted(before, after)
        if all(s == "resolved" for s in ref.alerts.values()) and ref.resolved is None:
            assert self.incident is not None
            resolved = self.incident.resolved_at
            assert resolved is not None
            assert before <= resolved <= after
            ref.resolved = resolved

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
        self.advance(minutes)

    def advance(self, minutes: float) -> None:
        self.clock.jump(minutes=minutes)
        before = self.clock.now
        self.run(self.service.tick())
        after = self.clock.now
        ref = self.ref
        self.refresh()
        if ref is None:
            return
        if ref.resolved is None:
            # The tick promotes first, then judges the clocks at the severity
            # it left the incident at.
            self.promoted(before, after)
            judge(ref, before, after)
            self.count_drafts(ref, before, after)
        elif before >= ref.resolved + timedelta(hours=48) + MARGIN:
            ref.reminded = True

    def count_drafts(self, ref: Ref, before: datetime, after: datetime) -> None:
        assert ref.cadence_from is not None
        due = ref.cadence_from + timedelta(minutes=UPDATE_EVERY[ref.severity])
        if before >= due + MARGIN:
            ref.drafts_min += 1
            ref.drafts_max += 1
            assert self.incident is not None
            ref.cadence_from = self.incident.cadence_from
        elif after >= due - MARGIN:
            ref.drafts_max += 1
            assert self.incident is not None
            ref.cadence_from = self.incident.cadence_from

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
        breaches = set(incident.breaches)
        assert ref.must_breach <= breaches <= ref.may_breach, (breaches, ref)
        assert ref.drafts_min <= incident.drafts <= ref.drafts_max
        if ref.reminded:
            assert incident.post_mortem_reminded
        reminders = [e for e in incident.timeline if e.kind == "post_mortem_due"]
        assert len(reminders) <= 1
        assert len(incident.timeline) >= self.seen_entries
        self.seen_entries = len(incident.timeline)
        times = [e.at for e in incident.timeline]
        assert times == sorted(times)

    @invariant()
    def clocks_agree_with_the_model(self) -> None:
        ref, incident = self.ref, self.incident
        if ref is None or incident is None:
            return
        assert incident.severity == ref.severity
        kept = [(c.at, c.severity) for c in incident.severities]
        assert [s for _, s in kept] == [s for _, _, s in ref.severities], kept
        for (at, _), (lo, hi, _) in zip(kept, ref.severities, strict=True):
            assert lo <= at <= hi
        model = ref.clocks()
        for clock in clocks(incident, self.service.policy):
            start, stop, by = model[clock.name]
            severity = ref.judged_by(stop)
            seen = (clock.started, clock.stopped, clock.stopped_by, clock.severity)
            assert seen == (start, stop, by, severity), (clock, model)
            assert clock.target == timedelta(minutes=TARGETS[severity][clock.name])


class PromotionMachine(IncidentMachine):
    """The matrix rule: P2, P1 from 5 minutes of firing, P0 from 30."""

    rules_text = MATRIX_RULES
    labels = {"impact": "multiple_users"}  # noqa: RUF012

    @initialize()
    def opened(self) -> None:
        self.send("a", "firing")

    def expected(self, at: datetime) -> Severity:
        firing = at - self.starts
        if firing < timedelta(minutes=5):
            return P2
        return P1 if firing < timedelta(minutes=30) else P0

    # Jumps near the bands (5m, 30m) and P0's to P2's targets and cadences.
    @rule(minutes=st.sampled_from(NEAR_MATRIX) | st.integers(1, 600))
    def tick(self, minutes: int) -> None:
        self.advance(minutes)

    # Ticks at an age of the alerts, in each band and about its ends, so a
    # clock often stops at P1 before the promotion to P0.
    @precondition(lambda self: self.ref is not None and self.ref.resolved is None)
    @rule(age=st.sampled_from([3, 6, 10, 14, 20, 29, 31, 36, 45]))
    def tick_at_age(self, age: int) -> None:
        ahead = self.starts + timedelta(minutes=age) - self.clock.now
        self.advance(max(ahead / timedelta(minutes=1), 1))


def load_rulebook_text(text: str) -> Rulebook:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rules.yaml"
        path.write_text(text)
        return load_rulebook([path], steps=builtin_registry())


MACHINE_SETTINGS = settings(
    max_examples=80,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_incident_lifecycle_agrees_with_the_model():
    """Every random sequence keeps the runbook's rules as the model states them."""
    case = IncidentMachine.TestCase
    case.settings = MACHINE_SETTINGS
    case().runTest()


def test_promoted_incident_clocks_agree_with_the_model():
    """Promoted by the matrix, every clock and breach is judged as the model says."""
    case = PromotionMachine.TestCase
    # More examples: a clock stopped at P1 and then promoted to P0 takes an
    # opening, a tick into 5-30 minutes, a stop and a tick past 30 in order.
    case.settings = settings(MACHINE_SETTINGS, max_examples=120, stateful_step_count=20)
    case().runTest()
