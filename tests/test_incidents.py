"""Incident clocks, promotion, escalation, cadence and reminders, on a ticking clock.

Every test drives ``IncidentService`` with real traces (the rule pack deciding
the shipped examples in dry-run), an in-memory SQLite incident store and a clock
that advances on every read; ``tick`` is called after moving the clock, so nothing
waits in real time.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from incident_helpers import (
    ROOT,
    START,
    RecordingAnnouncer,
    RecordingEscalator,
    TickingClock,
    example,
    resolved,
    rulebook,
    traces,
)

from receiver.incidents.clocks import clocks
from receiver.incidents.model import State
from receiver.incidents.policy import DEFAULT_POLICY
from receiver.incidents.service import IncidentService, NotFoundError
from receiver.model import Severity
from receiver.steps.catalog import builtin_registry
from receiver.store.incidents_base import IncidentQuery
from receiver.store.incidents_sqlite import SqliteIncidentStore

AUTH = "alertmanager/sark-auth-failures.firing.json"
SIEM = "alertmanager/sark-siem-forwarding-down.firing.json"
API_DOWN = "alertmanager/sark-api-down.firing.json"


@pytest.fixture
def clock():
    return TickingClock()


@pytest.fixture
def book():
    return rulebook()


@pytest.fixture
async def env(clock, book):
    announcer = RecordingAnnouncer()
    escalator = RecordingEscalator()
    breaches: list[tuple[str, str]] = []
    service = IncidentService(
        SqliteIncidentStore(":memory:"),
        clock=clock,
        rulebook=lambda: book,
        announcer=announcer,
        escalator=escalator,
        on_breach=lambda sev, name: breaches.append((sev, name)),
        mode="diagnose",
    )
    yield service, announcer, escalator, breaches
    await service.aclose()


async def open_from(service, book, clock, name):
    [incident] = await service.observe(
        await traces(book, "alertmanager", example(name), clock())
    )
    return incident


async def test_matrix_promotes_p2_p1_p0_at_the_boundaries(env, clock, book):
    """multiple_users goes P2 → P1 at 5 min → P0 at 30 min with no new payload."""
    service, announcer, _, _ = env
    incident = await open_from(service, book, clock, AUTH)
    assert incident.severity is Severity.P2
    assert incident.id == "INC-2026-11-26-001"
    clock.to(START + timedelta(minutes=4, seconds=50))
    await service.tick()
    assert (await service.get(incident.id)).severity is Severity.P2
    clock.to(START + timedelta(minutes=5))
    await service.tick()
    assert (await service.get(incident.id)).severity is Severity.P1
    clock.to(START + timedelta(minutes=29, seconds=50))
    await service.tick()
    assert (await service.get(incident.id)).severity is Severity.P1
    clock.to(START + timedelta(minutes=30))
    await service.tick()
    final = await service.get(incident.id)
    assert final.severity is Severity.P0
    changes = [e for e in final.timeline if e.kind == "severity_changed"]
    assert [(e.data["before"], e.data["after"]) for e in changes] == [
        ("P2", "P1"),
        ("P1", "P0"),
    ]
    assert announcer.kinds().count("promoted") == 2


async def test_unacknowledged_incident_breaches_once_and_escalates(env, clock, book):
    """P1 not acknowledged in 15 min: one breach entry, one metric, an escalation."""
    service, announcer, _, breaches = env
    incident = await open_from(service, book, clock, SIEM)
    assert incident.severity is Severity.P1
    clock.jump(minutes=14)
    await service.tick()
    assert breaches == []
    clock.jump(minutes=2)
    await service.tick()
    await service.tick()
    assert breaches == [("P1", "acknowledge")]
    got = await service.get(incident.id)
    assert "acknowledge@P1" in got.breaches
    assert [e.kind for e in got.timeline].count("breach") == 1
    assert "escalation" in announcer.kinds()
    escalation = next(m for m in announcer.messages if m.kind == "escalation")
    assert escalation.contact == "Engineering Manager"
    # A late acknowledgment stops the clock but does not undo the breach.
    await service.acknowledge(incident.id, by="jane")
    clock.jump(hours=1)
    await service.tick()
    assert breaches == [("P1", "acknowledge")]


async def test_acknowledgment_in_time_stops_the_ack_clock(env, clock, book):
    """Acknowledged within target: the acknowledge clock never breaches later."""
    service, _, _, breaches = env
    incident = await open_from(service, book, clock, SIEM)
    clock.jump(minutes=3)
    acked = await service.acknowledge(incident.id, by="jane")
    assert acked.state is State.ACKNOWLEDGED
    ack_clock = clocks(acked, DEFAULT_POLICY)[0]
    assert ack_clock.stopped == acked.acknowledged_at
    clock.jump(hours=1)
    await service.tick()
    assert ("P1", "acknowledge") not in breaches
    # The mitigate clock runs from the acknowledgment: 2 h for P1.
    clock.jump(hours=1, minutes=10)
    await service.tick()
    assert ("P1", "mitigate") in breaches


async def test_status_update_drafts_follow_the_cadence(env, clock, book):
    """P1 drafts hourly; a published human update restarts the cadence."""
    service, announcer, _, _ = env
    incident = await open_from(service, book, clock, SIEM)
    opened = incident.opened_at
    clock.to(opened + timedelta(minutes=59))
    await service.tick()
    assert announcer.kinds().count("status_draft") == 0
    clock.to(opened + timedelta(hours=1, seconds=1))
    await service.tick()
    drafts = [m for m in announcer.messages if m.kind == "status_draft"]
    assert len(drafts) == 1
    text = drafts[0].text
    assert text.startswith("**Investigating** (Initial)")
    assert "Next update: 2026-11-26 11:00 UTC" in text or "Next update:" in text
    assert "Posted: 2026-11-26 11:00 UTC" in text
    clock.to(opened + timedelta(hours=1, minutes=30))
    await service.status_update(incident.id, by="jane", text="We are on it")
    clock.to(opened + timedelta(hours=2, minutes=10))
    await service.tick()
    assert announcer.kinds().count("status_draft") == 1, "the human update reset it"
    clock.to(opened + timedelta(hours=2, minutes=31))
    await service.tick()
    assert announcer.kinds().count("status_draft") == 2
    got = await service.get(incident.id)
    assert got.drafts == 2


async def test_p3_cadence_is_at_shift_change(clock):
    """P3 updates are due at the next shift change (09:00 or 21:00 UTC)."""
    due = DEFAULT_POLICY.next_update(Severity.P3, START)
    assert due == START.replace(hour=21)
    assert DEFAULT_POLICY.next_update(Severity.P3, START.replace(hour=22)) == (
        START.replace(hour=9) + timedelta(days=1)
    )


async def test_escalation_matrix_p0_immediately_p1_after_2h(env, clock, book):
    """P0 escalates at once to EM and VP Eng; P1 only after 2 hours."""
    service, announcer, _, _ = env
    p0 = await open_from(service, book, clock, API_DOWN)
    p1 = await open_from(service, book, clock, SIEM)
    assert (p0.severity, p1.severity) == (Severity.P0, Severity.P1)
    await service.acknowledge(p1.id, by="jane")
    await service.tick()
    escalations = [m for m in announcer.messages if m.kind == "escalation"]
    assert [(m.incident_id, m.contact) for m in escalations] == [
        (p0.id, "Engineering Manager, VP Eng")
    ]
    clock.jump(hours=2)
    await service.tick()
    escalations = [m for m in announcer.messages if m.kind == "escalation"]
    assert (p1.id, "Engineering Manager") in [
        (m.incident_id, m.contact) for m in escalations
    ]


async def test_pagerduty_incident_is_escalated_through_the_api(env, clock, book):
    """With a PagerDuty incident linked, a breach raises its escalation level."""
    service, _, escalator, _ = env
    [incident] = await service.observe(
        await traces(
            book,
            "pagerduty",
            example("pagerduty/sark-api-down.triggered.json"),
            clock(),
        )
    )
    assert incident.pagerduty_id == "Q3VHZ4K2N8WX1R"
    await service.tick()
    assert escalator.calls[0] == ("Q3VHZ4K2N8WX1R", 2, "P0")


async def test_resolution_then_post_mortem_reminder_after_48h(env, clock, book):
    """All alerts resolved resolves the incident; 48 h later one reminder goes out."""
    service, announcer, _, _ = env
    incident = await open_from(service, book, clock, SIEM)
    clock.jump(minutes=40)
    payload = resolved(example(SIEM), clock.now)
    [done] = await service.observe(await traces(book, "alertmanager", payload, clock()))
    assert done.state is State.RESOLVED
    assert done.resolved_at is not None
    # As stored: the resolution's status update follows on the timeline.
    kinds = [e.kind for e in done.timeline]
    assert kinds[-3:] == ["alert_resolved", "resolved", "message_sent"]
    clock.jump(hours=47)
    await service.tick()
    assert "post_mortem_due" not in announcer.kinds()
    clock.jump(hours=2)
    await service.tick()
    await service.tick()
    assert announcer.kinds().count("post_mortem_due") == 1
    assert await service.store.watched() == []
    del incident


async def test_resends_do_not_grow_the_incident(env, clock, book):
    """The same alert resent adds no timeline entry; the ledger counts repeats."""
    service, _, _, _ = env
    incident = await open_from(service, book, clock, SIEM)
    again = await open_from(service, book, clock, SIEM)
    assert again.id == incident.id
    assert len(again.timeline) == len(incident.timeline)
    assert {item.times for item in again.ledger} == {2}


async def test_a_new_firing_after_resolution_opens_a_new_incident(env, clock, book):
    """A group that fires again after resolving is a new incident with a new id."""
    service, _, _, _ = env
    first = await open_from(service, book, clock, SIEM)
    await service.observe(
        await traces(book, "alertmanager", resolved(example(SIEM), clock.now), clock())
    )
    second = await open_from(service, book, clock, SIEM)
    assert second.id != first.id
    assert second.id.endswith("-002")


async def test_unknown_incident_is_a_typed_error(env):
    """Acting on an id that does not exist raises NotFoundError."""
    service, _, _, _ = env
    with pytest.raises(NotFoundError):
        await service.acknowledge("INC-nope", by="x")


async def test_human_mitigation_stops_the_mitigate_clock(env, clock, book):
    """A person's mark is mitigation: state, time and a Monitoring draft."""
    service, announcer, _, _ = env
    incident = await open_from(service, book, clock, SIEM)
    clock.jump(minutes=10)
    done = await service.mitigate(incident.id, by="jane", text="failover")
    assert done.state is State.MITIGATED
    assert done.mitigated_at is not None
    assert announcer.messages[-1].text.startswith("**Monitoring** (Fix deployed)")


CONFIGURED = """
incidents:
  severities:
    P1:
      acknowledge: 2m
      update_every: 10m
      escalate_to: Duty Manager
      escalate_after: 0s
  post_mortem_due: 1h
playbooks:
  noop: {}
rules:
  - name: by-namespace
    match: ['team="sre"']
    severity: P1
    playbook: noop
    group_by: [namespace]
"""


def am_body(name: str, group: str) -> dict:
    return {
        "version": "4",
        "groupKey": group,
        "status": "firing",
        "receiver": "r",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://am.test",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": name, "team": "sre", "namespace": "prod"},
                "annotations": {},
                "startsAt": "2026-11-26T10:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": f"fp-{name}",
            }
        ],
    }


async def test_rule_files_override_targets_and_group_by_labels(tmp_path, clock):
    """incidents: overrides P1's targets; group_by puts two groups in one incident."""
    from receiver.rulebook.loader import load_rulebook  # noqa: PLC0415

    path = tmp_path / "rules.yaml"
    path.write_text(CONFIGURED)
    book = load_rulebook([path], steps=builtin_registry())
    announcer = RecordingAnnouncer()
    service = IncidentService(
        SqliteIncidentStore(":memory:"),
        clock=clock,
        rulebook=lambda: book,
        announcer=announcer,
        mode="diagnose",
    )
    try:
        assert service.policy.of(Severity.P1).acknowledge == timedelta(minutes=2)
        [first] = await service.observe(
            await traces(book, "alertmanager", am_body("A", "g-a"), clock())
        )
        [second] = await service.observe(
            await traces(book, "alertmanager", am_body("B", "g-b"), clock())
        )
        assert second.id == first.id
        assert {a.fingerprint for a in second.alerts} == {"fp-A", "fp-B"}
        await service.tick()
        contacts = [m.contact for m in announcer.messages if m.kind == "escalation"]
        assert contacts == ["Duty Manager"]
        clock.jump(minutes=3)
        await service.tick()
        assert "acknowledge@P1" in (await service.get(first.id)).breaches
        clock.jump(minutes=8)
        await service.tick()
        assert announcer.kinds().count("status_draft") == 1
    finally:
        await service.aclose()


def test_two_rule_files_with_incidents_sections_is_an_error(tmp_path):
    """Only one rule file may carry the incidents section; the error names both."""
    from receiver.errors import RuleError  # noqa: PLC0415
    from receiver.rulebook.loader import load_rulebook  # noqa: PLC0415

    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text("incidents: {post_mortem_due: 24h}\n")
    with pytest.raises(RuleError) as caught:
        load_rulebook([tmp_path], steps=builtin_registry())
    assert "incidents is already set in" in str(caught.value)
    assert "a.yaml" in str(caught.value)


FOLLOWS = """
playbooks:
  fix:
    pagerduty_follows_outcomes: true
  plain: {}
rules:
  - name: followed
    match: ['alertname="Followed"']
    status: any
    severity: P1
    playbook: fix
  - name: unfollowed
    match: ['alertname="Plain"']
    status: any
    severity: P1
    playbook: plain
"""


def remediated(name: str, rule: str, status: str, now, *, ok: bool):
    from receiver.model import (  # noqa: PLC0415
        Alert,
        AlertTrace,
        Decision,
        MatchTrace,
        StepKind,
        StepTrace,
        freeze,
    )

    step = StepTrace(
        StepKind.REMEDIATION,
        "k8s.rollout_restart",
        "deployment/sark -n production",
        Decision.EXECUTED if ok else Decision.FAILED,
        "restarted; rollout complete" if ok else "verification failed",
        result=freeze({"verification": {"ok": ok, "reason": "x"}}),
    )
    alert = Alert(
        source="pagerduty",
        fingerprint=f"pd-{name}",
        status=status,
        labels=freeze({"alertname": name, "event_type": "incident.triggered"}),
        starts_at=START,
        refs=freeze({"incident_id": f"P{name.upper()}"}),
    )
    match = MatchTrace(rule, Severity.P1, "fix", (step,) if status == "firing" else ())
    return AlertTrace(alert, (match,), now, mode="execute")


async def test_verified_outcomes_drive_pagerduty_when_the_playbook_opts_in(
    tmp_path, clock
):
    """Opted in: acknowledge when it ran, resolve once verified and resolved."""
    from receiver.rulebook.loader import load_rulebook  # noqa: PLC0415

    path = tmp_path / "rules.yaml"
    path.write_text(FOLLOWS)
    book = load_rulebook([path], steps=builtin_registry())
    escalator = RecordingEscalator()
    service = IncidentService(
        SqliteIncidentStore(":memory:"),
        clock=clock,
        rulebook=lambda: book,
        escalator=escalator,
        mode="diagnose",
    )
    try:
        [incident] = await service.observe(
            [remediated("Followed", "followed", "firing", clock(), ok=True)]
        )
        assert incident.state is State.MITIGATED
        assert escalator.calls == [("PFOLLOWED", 0, "acknowledged")]
        await service.observe(
            [remediated("Followed", "followed", "resolved", clock(), ok=True)]
        )
        assert escalator.calls[-1] == ("PFOLLOWED", 0, "resolved")
        # Not opted in: PagerDuty is left to people.
        await service.observe(
            [remediated("Plain", "unfollowed", "firing", clock(), ok=True)]
        )
        await service.observe(
            [remediated("Plain", "unfollowed", "resolved", clock(), ok=True)]
        )
        assert all(call[0] != "PPLAIN" for call in escalator.calls)
    finally:
        await service.aclose()


async def test_failed_verification_escalates_the_pagerduty_incident(tmp_path, clock):
    """A remediation whose verification failed escalates, once."""
    from receiver.rulebook.loader import load_rulebook  # noqa: PLC0415

    path = tmp_path / "rules.yaml"
    path.write_text(FOLLOWS)
    book = load_rulebook([path], steps=builtin_registry())
    escalator = RecordingEscalator()
    service = IncidentService(
        SqliteIncidentStore(":memory:"),
        clock=clock,
        rulebook=lambda: book,
        escalator=escalator,
        mode="diagnose",
    )
    try:
        [incident] = await service.observe(
            [remediated("Followed", "followed", "firing", clock(), ok=False)]
        )
        assert incident.state is State.TRIGGERED
        assert escalator.calls == [("PFOLLOWED", 2, "P1")]
        failed = [e for e in incident.timeline if e.kind == "remediation"]
        assert failed[0].text.startswith("Remediation failed")
    finally:
        await service.aclose()


STORM_RULES = """
playbooks:
  noop: {}
rules:
  - name: storm
    match: ['team="sre"']
    status: any
    severity: P1
    playbook: noop
"""


class CountingStore(SqliteIncidentStore):
    def __init__(self) -> None:
        super().__init__(":memory:")
        self.updates = 0

    async def update(self, record, folded=(), *, done=()):
        self.updates += 1
        return await super().update(record, folded, done=done)


def storm(n: int, status: str = "firing") -> dict:
    body = am_body("Storm", "g-storm")
    template = body["alerts"][0]
    body["alerts"] = [
        {
            **template,
            "status": status,
            "fingerprint": f"fp-{i}",
            "labels": {**template["labels"], "pod": f"p{i}"},
        }
        for i in range(n)
    ]
    return body


async def test_an_alert_storm_is_written_once_per_batch(tmp_path, clock):
    """Two hundred alerts of one group queued together cost one incident write."""
    from receiver.rulebook.loader import load_rulebook  # noqa: PLC0415

    path = tmp_path / "rules.yaml"
    path.write_text(STORM_RULES)
    book = load_rulebook([path], steps=builtin_registry())
    store = CountingStore()
    service = IncidentService(store, clock=clock, rulebook=lambda: book)
    try:
        batch = await traces(book, "alertmanager", storm(200), clock())
        for trace in batch:
            await service.put([trace])
        await service.drain()
        page, _ = await service.page(IncidentQuery())
        [incident] = page
        assert len(incident.alerts) == 200
        assert store.updates <= 2
    finally:
        await service.aclose()


async def test_resolve_then_fire_in_one_batch_opens_a_new_incident(tmp_path, clock):
    """A group resolving and firing again within one batch gets a second incident."""
    from receiver.rulebook.loader import load_rulebook  # noqa: PLC0415

    path = tmp_path / "rules.yaml"
    path.write_text(STORM_RULES)
    book = load_rulebook([path], steps=builtin_registry())
    service = IncidentService(
        SqliteIncidentStore(":memory:"), clock=clock, rulebook=lambda: book
    )
    try:
        now = clock()
        fired = await traces(book, "alertmanager", storm(1), now)
        gone = await traces(book, "alertmanager", storm(1, "resolved"), now)
        again = await traces(book, "alertmanager", storm(1), now)
        touched = await service.observe([*fired, *gone, *again])
        states = sorted((i.id, i.state.value) for i in touched)
        assert [s for _, s in states] == ["resolved", "triggered"]
    finally:
        await service.aclose()


async def test_decided_approvals_land_on_the_timeline_with_who(env, clock, book):
    """An approval decided through the API appears once, with who decided it."""
    from dataclasses import dataclass as _dc  # noqa: PLC0415
    from datetime import datetime as _dt  # noqa: PLC0415

    @_dc(frozen=True)
    class FakeApproval:
        id: str
        status: str
        decided_by: str
        decided_at: _dt | None
        request: dict

    service, _, _, _ = env
    incident = await open_from(service, book, clock, API_DOWN)
    fingerprint = incident.alerts[0].fingerprint
    approvals = [
        FakeApproval("a-1", "pending", "", None, {"fingerprint": fingerprint}),
        FakeApproval(
            "a-2",
            "approved",
            "jane",
            clock.now,
            {
                "fingerprint": fingerprint,
                "rule": "sark-api-down",
                "step": "k8s.rollout_undo",
                "target": "deployment/sark -n production",
            },
        ),
        FakeApproval("a-3", "rejected", "bob", clock.now, {"fingerprint": "other"}),
    ]

    async def listing():
        return approvals

    service._approvals = listing
    await service.tick()
    await service.tick()
    got = await service.get(incident.id)
    decided = [e for e in got.timeline if e.kind == "approval_decided"]
    assert [(e.by, e.text) for e in decided] == [
        (
            "jane",
            (
                "Approval approved: k8s.rollout_undo deployment/sark -n production "
                "(rule sark-api-down)"
            ),
        )
    ]


class LookingExecutor:
    async def run(self, step, alert):
        from receiver.model import StepResult, freeze  # noqa: PLC0415

        return StepResult(
            ok=True, reason="read", result=freeze({"lines": ["401 for 10.0.0.7"]})
        )

    async def verify(self, check, step, alert):
        raise AssertionError


async def test_security_diagnostics_are_kept_as_hashed_evidence(env, clock, book):
    """The security playbook's diagnostics are kept, sha256 on the timeline, once."""
    import hashlib  # noqa: PLC0415
    import json as _json  # noqa: PLC0415

    from receiver.engine.planner import PlanContext  # noqa: PLC0415
    from receiver.engine.runner import Runner  # noqa: PLC0415
    from receiver.engine.worker import Processor  # noqa: PLC0415
    from receiver.incidents.report import render_report  # noqa: PLC0415

    service, _, _, _ = env
    executor = LookingExecutor()
    processor = Processor(
        book,
        Runner(
            dict.fromkeys(("k8s", "http", "prometheus", "redis"), executor),
            clock,
            mode="diagnose",
        ),
        clock,
        PlanContext(diagnose=True),
    )
    body = _json.dumps(example("alertmanager/sark-failed-login-spike.firing.json"))
    alerts = processor.alerts("alertmanager", body.encode(), clock())
    [incident] = await service.observe(await processor.decide(alerts))
    assert incident.evidence
    for kept in incident.evidence:
        assert hashlib.sha256(kept.content.encode()).hexdigest() == kept.sha256
        assert "401 for 10.0.0.7" in kept.content
    entries = [e for e in incident.timeline if e.kind == "evidence"]
    assert len(entries) == len(incident.evidence)
    assert entries[0].data["sha256"] == incident.evidence[0].sha256
    [again] = await service.observe(await processor.decide(alerts))
    assert len(again.evidence) == len(incident.evidence)
    report = render_report(again, service.policy, clock())
    assert f"sha256 `{incident.evidence[0].sha256}`" in report
    # Other playbooks keep nothing.
    other = await open_from(service, book, clock, SIEM)
    assert other.evidence == ()


async def test_playbook_contacts_join_the_escalation(env, clock, book):
    """The security playbook's escalate_to (security-team) is escalated to as well."""
    service, announcer, _, _ = env
    await open_from(
        service, book, clock, "alertmanager/sark-failed-login-spike.firing.json"
    )
    await service.tick()
    [escalation] = [m for m in announcer.messages if m.kind == "escalation"]
    assert escalation.contact == "Engineering Manager, VP Eng, security-team"


class GatedStore(SqliteIncidentStore):
    """Holds every lookup by key until the gate opens: the folding task is stuck."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def find_first(self, keys):
        self.entered.set()
        await self.gate.wait()
        return await super().find_first(keys)


async def yielded_until(check, rounds: int = 100) -> None:
    """Let other tasks run (no time passes) until ``check()`` holds."""
    for _ in range(rounds):
        if check():
            return
        await asyncio.sleep(0)
    pytest.fail("the condition never held")


async def test_a_full_queue_makes_the_worker_wait_and_drops_nothing(tmp_path, clock):
    """Past ``max_pending`` a put waits for room; every trace put is folded."""
    from receiver.rulebook.loader import load_rulebook  # noqa: PLC0415

    path = tmp_path / "rules.yaml"
    path.write_text(STORM_RULES)
    book = load_rulebook([path], steps=builtin_registry())
    store = GatedStore()
    service = IncidentService(store, clock=clock, rulebook=lambda: book, max_pending=2)
    try:
        batch = await traces(book, "alertmanager", storm(6), clock())
        await service.put(batch[0:1])
        await service.put(batch[1:2])
        await store.entered.wait()  # the folder took both and is stuck
        await service.put(batch[2:3])
        await service.put(batch[3:4])  # two queued: full
        waiting = asyncio.create_task(service.put(batch[4:5]))
        await yielded_until(lambda: service.waits == 1)
        assert not waiting.done(), "a put past the bound must wait, not drop"
        # Shutdown cancels a waiting worker: its traces are not queued (its
        # payload is not recorded, so the next worker decides it again).
        cancelled = asyncio.create_task(service.put(batch[5:6]))
        await yielded_until(lambda: service.waits == 2)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        store.gate.set()
        await (await waiting)  # queued, then folded
        await service.drain()
        page, _ = await service.page(IncidentQuery())
        [incident] = page
        assert len(incident.alerts) == 5
        assert "fp-5" not in {a.fingerprint for a in incident.alerts}
    finally:
        await service.aclose()


RUNBOOK_TABLES = ROOT / "tests" / "golden" / "runbook-tables.md"
UNITS = {"minute": 1, "hour": 60, "week": 7 * 24 * 60}


def runbook_duration(text: str) -> timedelta | None:
    """'5 minutes', '2 hours', 'Every hour', 'Immediate'; None: at shift change."""
    text = text.lower().removeprefix("every ").strip()
    if text == "immediate":
        return timedelta(0)
    if text == "at shift change":
        return None
    number, _, unit = text.partition(" ") if text[0].isdigit() else ("1", "", text)
    return timedelta(minutes=int(number) * UNITS[unit.rstrip("s")])


def runbook_rows() -> dict[Severity, dict[str, str]]:
    """Per severity: the three response times and the two tables' columns."""
    rows: dict[Severity, dict[str, str]] = {s: {} for s in Severity}
    current = None
    for line in RUNBOOK_TABLES.read_text().splitlines():
        if line.startswith("#### P"):
            current = Severity(line[5:7])
        elif line.startswith("- **") and current is not None:
            name, value = line[4:].split(":** ")
            rows[current][name] = value
        elif line.startswith("| **P"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            row = rows[Severity(cells[0].strip("*"))]
            if len(cells) == 4:
                row["first"], row["after"], row["to"] = cells[1:]
            else:
                row["updates"] = cells[1]
    return rows


@pytest.mark.parametrize("severity", list(Severity))
def test_shipped_policy_is_the_runbooks_tables(severity):
    """Response times, escalation matrix and update cadence are the runbook's."""
    row = runbook_rows()[severity]
    got = DEFAULT_POLICY.of(severity)
    assert got.acknowledge == runbook_duration(row["Detection to Acknowledgment"])
    assert got.mitigate == runbook_duration(row["Acknowledgment to Mitigation"])
    assert got.resolve == runbook_duration(row["Mitigation to Resolution"])
    assert got.first_contact == row["first"]
    assert got.escalate_after == runbook_duration(row["after"])
    assert got.escalate_to == row["to"]
    assert got.update_every == runbook_duration(row["updates"])


@pytest.mark.parametrize(
    ("mode", "delivered"), [("dry-run", False), ("diagnose", True), ("execute", True)]
)
async def test_only_dry_run_withholds_messages_and_pagerduty_calls(
    clock, book, mode, delivered
):
    """Diagnose and execute announce and call PagerDuty; dry-run records only."""
    announcer = RecordingAnnouncer()
    escalator = RecordingEscalator()
    service = IncidentService(
        SqliteIncidentStore(":memory:"),
        clock=clock,
        rulebook=lambda: book,
        announcer=announcer,
        escalator=escalator,
        mode=mode,
    )
    try:
        [incident] = await service.observe(
            await traces(
                book,
                "pagerduty",
                example("pagerduty/sark-api-down.triggered.json"),
                clock(),
            )
        )
        await service.tick()  # P0: escalates at once, to the sinks and PagerDuty
        got = await service.get(incident.id)
    finally:
        await service.aclose()
    assert "escalated" in [e.kind for e in got.timeline]
    sent = [e.text for e in got.timeline if e.kind == "message_sent"]
    if delivered:
        assert "escalation" in announcer.kinds()
        assert escalator.calls
        assert not any("dry-run" in t for t in sent), sent
    else:
        assert announcer.messages == []
        assert escalator.calls == []
        assert any("(escalation)" in t and "not delivered (dry-run" in t for t in sent)
        assert any(t.startswith("PagerDuty escalation (level 2") for t in sent), sent
