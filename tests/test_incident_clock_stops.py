"""A clock stops once, at the first thing that stops it; nothing later moves it.

The acknowledge clock stops at the first of acknowledgment, mitigation and
resolution; the mitigate clock at the first of mitigation and resolution. An
acknowledgment that comes after a mitigation (through the API, PagerDuty's
``incident.acknowledged``, again after ``incident.unacknowledged``), a second
acknowledgment, an acknowledgment or a mitigation after the resolution: each is
recorded (or not) as before, and none moves a stop, so none makes the next tick
record a breach or escalate for a target that was met. The report and the
console read the same clocks. Driven through ``IncidentService`` with real
traces and a clock that advances on every read; the first test on both
incident stores, read again from a reopened store.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from conftest import APPROVE_TOKEN, bearer, full_settings, journal_drained
from incident_helpers import (
    START,
    RecordingAnnouncer,
    RecordingEscalator,
    TickingClock,
    example,
    rulebook,
    traces,
)
from test_web import AM, am_alert, am_payload

from receiver.app import create_app
from receiver.app_incidents import INCIDENTS, IncidentWiring
from receiver.incidents.clocks import clocks
from receiver.incidents.model import Incident, State
from receiver.incidents.policy import DEFAULT_POLICY
from receiver.incidents.service import IncidentService
from receiver.metrics import Metrics
from receiver.model import (
    AlertTrace,
    Decision,
    MatchTrace,
    Severity,
    StepKind,
    StepTrace,
    freeze,
)
from receiver.rulebook.loader import load_rulebook
from receiver.runtime import build_runtime
from receiver.steps.catalog import builtin_registry
from receiver.store import MemoryStore
from receiver.store.incidents_base import IncidentQuery
from receiver.store.incidents_sqlite import SqliteIncidentStore

SIEM = "alertmanager/sark-siem-forwarding-down.firing.json"  # P1: acknowledge 15m
PD_TRIGGERED = "pagerduty/sark-api-down.triggered.json"  # P0: acknowledge 5m
PD_ACKNOWLEDGED = "pagerduty/sark-api-down.acknowledged.json"
EV2_TRIGGER = "events-v2/synthetic-sark-api-down.trigger.json"


class Env:
    """A service on ``store``, recording breaches, messages and PagerDuty calls."""

    def __init__(self, store, clock: TickingClock) -> None:
        self.clock = clock
        self.book = rulebook()
        self.announcer = RecordingAnnouncer()
        self.escalator = RecordingEscalator()
        self.breaches: list[tuple[str, str]] = []
        self.service = IncidentService(
            store,
            clock=clock,
            rulebook=lambda: self.book,
            announcer=self.announcer,
            escalator=self.escalator,
            on_breach=lambda severity, name: self.breaches.append((severity, name)),
            mode="diagnose",
        )

    async def feed(self, source: str, payload: dict) -> list[Incident]:
        return await self.service.observe(
            await traces(self.book, source, payload, self.clock())
        )

    async def get(self, incident_id: str) -> Incident:
        found = await self.service.get(incident_id)
        assert found is not None
        return found

    def escalations(self) -> int:
        """Escalations sent to people and to PagerDuty (level 2)."""
        return self.announcer.kinds().count("escalation") + sum(
            1 for call in self.escalator.calls if call[1] == 2
        )


@pytest.fixture
async def env():
    made = Env(SqliteIncidentStore(":memory:"), TickingClock())
    yield made
    await made.service.aclose()


def at(minutes: float) -> datetime:
    return START + timedelta(minutes=minutes)


def since(incident: Incident, minutes: float) -> datetime:
    """``minutes`` after the incident opened (the first reading after it)."""
    return incident.opened_at + timedelta(minutes=minutes)


def stops(incident: Incident) -> dict[str, tuple[datetime, datetime | None]]:
    """Each clock's start and stop, as everything that shows clocks reads them."""
    return {c.name: (c.started, c.stopped) for c in clocks(incident, DEFAULT_POLICY)}


def entries(incident: Incident, kind: str) -> list[str]:
    return [e.text for e in incident.timeline if e.kind == kind]


def pd_event(event_type: str, event_id: str) -> dict:
    """PagerDuty's webhook about the example incident, as ``event_type``."""
    out = copy.deepcopy(example(PD_ACKNOWLEDGED))
    out["event"]["event_type"] = event_type
    out["event"]["id"] = event_id
    return out


def verified_remediation(opened: AlertTrace, now: datetime) -> AlertTrace:
    """The PagerDuty alert again, with a remediation that ran and verified."""
    step = StepTrace(
        StepKind.REMEDIATION,
        "k8s.rollout_undo",
        "deployment/sark -n production",
        Decision.EXECUTED,
        "rolled back; rollout complete",
        result=freeze({"verification": {"ok": True, "reason": "healthy"}}),
    )
    match = MatchTrace(opened.matches[0].rule, Severity.P0, "fix", (step,))
    return replace(opened, matches=(match,), decided_at=now, mode="execute")


async def test_a_late_api_acknowledgment_after_mitigation_breaches_nothing(
    reopen_incidents,
):
    """Mitigated at 4m, acknowledged at 40m: the clock stays stopped at 4m."""
    clock = TickingClock()
    env = Env(reopen_incidents(), clock)
    try:
        [opened] = await env.feed("alertmanager", example(SIEM))
        assert opened.severity is Severity.P1
        clock.to(since(opened, 4))
        mitigated = await env.service.mitigate(opened.id, by="jane", text="failover")
        clock.to(since(opened, 10))
        await env.service.tick()
        clock.to(since(opened, 40))
        acked = await env.service.acknowledge(opened.id, by="bob")
        clock.to(since(opened, 41))
        await env.service.tick()
        clock.to(since(opened, 90))
        await env.service.tick()
        final = await env.get(opened.id)
    finally:
        await env.service.aclose()
    assert env.breaches == []
    assert final.breaches == frozenset()
    assert env.escalations() == 0
    assert "breach" not in [e.kind for e in final.timeline]
    # The acknowledgment is recorded; the clocks do not read it.
    assert acked.acknowledged_at is not None
    assert acked.acknowledged_at > acked.mitigated_at
    assert final.state is State.MITIGATED
    assert stops(final) == {
        "acknowledge": (final.opened_at, mitigated.mitigated_at),
        "mitigate": (final.opened_at, mitigated.mitigated_at),
        "resolve": (mitigated.mitigated_at, None),
    }
    [late] = [e for e in final.timeline if e.kind == "acknowledged"]
    assert late.by == "bob"
    assert late.text == (
        "Acknowledged via the API (the acknowledge clock had already stopped at "
        "mitigation, 2026-11-26 10:04 UTC)"
    )
    # Read again by a restarted receiver: the same clocks.
    again = Env(reopen_incidents(), TickingClock(since(opened, 91)))
    try:
        reread = await again.get(opened.id)
        assert stops(reread) == stops(final)
        report = await again.service.report(opened.id)
    finally:
        await again.service.aclose()
    assert "| acknowledge | 15m | 4 minutes | yes |" in report
    assert "1. Acknowledge within target (4 minutes of 15m)" in report
    [response] = [x for x in report.splitlines() if x.startswith("**Response Time:**")]
    assert response == (
        "**Response Time:** 40 minutes (to acknowledgment; the mitigation had "
        "stopped the acknowledge clock after 4 minutes)"
    )


async def test_a_late_pagerduty_acknowledgment_after_a_verified_remediation(env):
    """A remediation mitigated in time; PagerDuty's later acknowledgment pages none."""
    [trace] = await traces(env.book, "pagerduty", example(PD_TRIGGERED), env.clock())
    [opened] = await env.service.observe([trace])
    assert opened.severity is Severity.P0
    await env.service.tick()  # P0 escalates at once (the matrix): that one is due
    assert env.escalations() == 2
    env.clock.to(since(opened, 4))
    [mitigated] = await env.service.observe([verified_remediation(trace, env.clock())])
    assert mitigated.state is State.MITIGATED
    assert mitigated.acknowledged_at is None
    env.clock.to(since(opened, 40))
    await env.feed("pagerduty", example(PD_ACKNOWLEDGED))
    await env.service.tick()
    final = await env.get(opened.id)
    assert final.acknowledged_at is not None
    assert final.acknowledged_at > final.mitigated_at
    assert env.breaches == []
    assert final.breaches == frozenset()
    assert env.escalations() == 2
    assert stops(final)["acknowledge"] == (final.opened_at, mitigated.mitigated_at)
    assert stops(final)["mitigate"] == (final.opened_at, mitigated.mitigated_at)
    [late] = entries(final, "acknowledged")
    assert late.startswith("Acknowledged via PagerDuty incident.acknowledged (the ")
    assert "already stopped at mitigation, 2026-11-26 10:04 UTC)" in late


async def test_pagerduty_acknowledging_again_after_unacknowledging_moves_nothing(env):
    """acknowledged, unacknowledged, acknowledged again: the first one stopped it."""
    [opened] = await env.feed("pagerduty", example(PD_TRIGGERED))
    env.clock.to(at(3))
    [first] = await env.feed("pagerduty", pd_event("incident.acknowledged", "e1"))
    env.clock.to(at(10))
    await env.feed("pagerduty", pd_event("incident.unacknowledged", "e2"))
    env.clock.to(at(40))
    await env.feed("pagerduty", pd_event("incident.acknowledged", "e3"))
    await env.service.tick()
    final = await env.get(opened.id)
    assert final.acknowledged_at == first.acknowledged_at
    assert stops(final)["acknowledge"] == (final.opened_at, first.acknowledged_at)
    assert stops(final)["mitigate"] == (first.acknowledged_at, None)
    assert "acknowledge@P0" not in final.breaches
    assert ("P0", "acknowledge") not in env.breaches
    assert entries(final, "acknowledged") == [
        "Acknowledged via PagerDuty incident.acknowledged",
        "Acknowledged again via PagerDuty incident.acknowledged",
    ]


async def test_an_events_v2_acknowledge_changes_no_incident(env):
    """Events API v2 ``acknowledge`` is recorded by the worker, not by incidents."""
    [opened] = await env.feed("events_v2", example(EV2_TRIGGER))
    env.clock.to(at(4))
    mitigated = await env.service.mitigate(opened.id, by="jane", text="failover")
    env.clock.to(at(40))
    ack = {
        "routing_key": "0123456789abcdef0123456789abcdef",
        "dedup_key": "sark-api-down",
        "event_action": "acknowledge",
    }
    assert await env.feed("events_v2", ack) == []
    await env.service.tick()
    final = await env.get(opened.id)
    assert final.acknowledged_at is None
    assert entries(final, "acknowledged") == []
    assert stops(final)["acknowledge"] == (final.opened_at, mitigated.mitigated_at)
    assert final.breaches == frozenset()


async def test_a_repeated_acknowledgment_keeps_the_first(env):
    """Acknowledged at 3m and again at 30m: both recorded, the clock at the first."""
    [opened] = await env.feed("alertmanager", example(SIEM))
    env.clock.to(at(3))
    first = await env.service.acknowledge(opened.id, by="jane")
    env.clock.to(at(30))
    again = await env.service.acknowledge(opened.id, by="bob")
    env.clock.to(at(40))
    await env.service.tick()
    final = await env.get(opened.id)
    assert again.acknowledged_at == first.acknowledged_at
    assert final.acknowledged_at == first.acknowledged_at
    assert stops(final)["acknowledge"] == (final.opened_at, first.acknowledged_at)
    assert final.breaches == frozenset()
    assert env.breaches == []
    assert [(e.text, e.by) for e in final.timeline if e.kind == "acknowledged"] == [
        ("Acknowledged via the API", "jane"),
        ("Acknowledged again via the API", "bob"),
    ]


async def test_an_acknowledgment_after_the_resolution_moves_no_clock(env):
    """Resolved at 5m unacknowledged; acknowledged at 40m: said so, nothing moved."""
    [opened] = await env.feed("alertmanager", example(SIEM))
    env.clock.to(since(opened, 5))
    resolved = await env.service.resolve(opened.id, by="jane", text="over")
    env.clock.to(since(opened, 40))
    await env.service.acknowledge(opened.id, by="bob")
    env.clock.to(at(41))
    await env.service.tick()
    final = await env.get(opened.id)
    assert final.state is State.RESOLVED
    assert final.acknowledged_at is None
    assert stops(final) == {
        "acknowledge": (final.opened_at, resolved.resolved_at),
        "mitigate": (final.opened_at, resolved.resolved_at),
        "resolve": (final.opened_at, resolved.resolved_at),
    }
    assert final.breaches == frozenset()
    [late] = entries(final, "acknowledged")
    assert late == (
        "Acknowledged via the API (the acknowledge clock had already stopped at "
        "resolution, 2026-11-26 10:05 UTC)"
    )


async def test_a_mitigation_after_the_resolution_moves_no_clock(env):
    """Acknowledged, resolved, then marked mitigated hours later: nothing moves."""
    [opened] = await env.feed("alertmanager", example(SIEM))
    env.clock.to(at(3))
    await env.service.acknowledge(opened.id, by="jane")
    env.clock.to(at(20))
    resolved = await env.service.resolve(opened.id, by="jane", text="over")
    env.clock.to(at(200))
    before = await env.get(opened.id)
    after = await env.service.mitigate(opened.id, by="bob", text="late")
    assert after.version == before.version
    assert after.mitigated_at is None
    assert stops(after)["mitigate"] == (after.acknowledged_at, resolved.resolved_at)
    assert after.breaches == frozenset()


@pytest.mark.parametrize(
    ("acknowledged", "mitigated", "resolved", "expected"),
    [
        # in order
        (3, 30, 60, {"acknowledge": (0, 3), "mitigate": (3, 30), "resolve": (30, 60)}),
        # mitigated, then acknowledged late (as older receivers wrote it)
        (
            40,
            4,
            None,
            {"acknowledge": (0, 4), "mitigate": (0, 4), "resolve": (4, None)},
        ),
        (40, 4, 50, {"acknowledge": (0, 4), "mitigate": (0, 4), "resolve": (4, 50)}),
        # resolved with nothing before
        (None, None, 5, {"acknowledge": (0, 5), "mitigate": (0, 5), "resolve": (0, 5)}),
        # acknowledged, resolved without a mitigation
        (3, None, 40, {"acknowledge": (0, 3), "mitigate": (3, 40), "resolve": (3, 40)}),
        # nothing yet
        (
            None,
            None,
            None,
            {"acknowledge": (0, None), "mitigate": (0, None), "resolve": (0, None)},
        ),
    ],
)
def test_each_clock_stops_at_the_first_of_what_stops_it(
    acknowledged, mitigated, resolved, expected
):
    """Whatever order the stamps were written in, each clock's first stop counts."""

    def stamp(minutes: float | None) -> datetime | None:
        return None if minutes is None else at(minutes)

    incident = Incident(
        id="INC-2026-11-26-001",
        keys=("k",),
        title="t",
        severity=Severity.P1,
        state=State.RESOLVED if resolved is not None else State.MITIGATED,
        opened_at=START,
        cadence_from=START,
        acknowledged_at=stamp(acknowledged),
        mitigated_at=stamp(mitigated),
        resolved_at=stamp(resolved),
    )
    assert stops(incident) == {
        name: (stamp(start), stamp(stop)) for name, (start, stop) in expected.items()
    }


async def test_the_api_console_and_report_read_the_same_stopped_clock(
    aiohttp_client, web_rules
):
    """Over HTTP: mitigated, acknowledged late by the API; every view says in time."""
    clock = TickingClock()
    store = MemoryStore()
    app = create_app(
        build_runtime(full_settings()),
        rulebook=load_rulebook([web_rules], steps=builtin_registry()),
        store=store,
        clock=clock,
        metrics=Metrics(),
        incidents=IncidentWiring(tick_every=None),
    )
    client = await aiohttp_client(app)
    service = app[INCIDENTS]
    resp = await client.post(AM, json=am_payload(am_alert("fp-1")), headers=bearer())
    assert resp.status == 202
    await journal_drained(store)
    await service.drain()
    [[incident], _] = await service.page(IncidentQuery())
    clock.to(incident.opened_at + timedelta(minutes=4))
    await service.mitigate(incident.id, by="receiver", text="restarted")
    clock.to(incident.opened_at + timedelta(minutes=40))
    path = f"/api/v1/incidents/{incident.id}"
    resp = await client.post(f"{path}/acknowledge", headers=bearer(APPROVE_TOKEN))
    assert resp.status == 200, await resp.text()
    await service.tick()
    body = await (await client.get(path, headers=bearer())).json()
    assert body["breaches"] == []
    assert body["state"] == "mitigated"
    assert body["acknowledged_at"] > body["mitigated_at"]
    report = await (await client.get(f"{path}/report", headers=bearer())).text()
    assert "| acknowledge | 15m | 4 minutes | yes |" in report
    console = await (
        await client.get(f"/ui/incidents/{incident.id}", headers=bearer())
    ).text()
    mitigated = datetime.fromisoformat(body["mitigated_at"]).astimezone(UTC)
    stopped = mitigated.strftime("%Y-%m-%d %H:%M UTC")
    assert f"acknowledge: stopped at {stopped} by the mitigation, in time" in console
    assert "BREACHED" not in console
