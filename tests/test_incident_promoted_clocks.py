"""A stopped clock keeps the target it stopped under; a running one takes the new.

The impact x duration matrix promotes ``SarkAuthFailures`` (impact
``multiple_users``) from P2 to P1 at 5 minutes and to P0 at 30 minutes. An
acknowledgment at 10 minutes met P1's 15 minutes: the promotion to P0 must not
judge it by P0's 5 minutes, record a breach or escalate. A clock still running
when the incident is promoted takes the new target (and may breach at once); a
clock that stops after a promotion is judged by the new target. Driven through
``IncidentService`` with the real rules and an SQLite store, read again from a
reopened store; a record written before severities were kept reads as before.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from incident_helpers import START, TickingClock, example
from test_incident_clock_stops import Env

from receiver.incidents.clocks import clocks
from receiver.incidents.model import Incident, SeverityChange, State
from receiver.incidents.policy import DEFAULT_POLICY
from receiver.incidents.records import to_record
from receiver.model import Severity
from receiver.store.incidents_sqlite import SqliteIncidentStore

AUTH = "alertmanager/sark-auth-failures.firing.json"  # P2, P1 at 5m, P0 at 30m


def at(minutes: float):
    return START + timedelta(minutes=minutes)


def breach_escalations(env: Env) -> list[str]:
    """Escalations the breach of a clock sent (the matrix's own are apart)."""
    return [
        m.text
        for m in env.announcer.messages
        if m.kind == "escalation" and "breach:" in m.text
    ]


def targets(incident: Incident) -> dict[str, tuple[Severity, timedelta]]:
    return {c.name: (c.severity, c.target) for c in clocks(incident, DEFAULT_POLICY)}


async def promoted(env: Env, *, through: float) -> Incident:
    """The auth incident opened at 0, ticked at 5m (P1) and at ``through``."""
    [opened] = await env.feed("alertmanager", example(AUTH))
    assert opened.severity is Severity.P2
    env.clock.to(at(5))
    await env.service.tick()
    assert (await env.get(opened.id)).severity is Severity.P1
    if through > 5:
        env.clock.to(at(through))
        await env.service.tick()
    return await env.get(opened.id)


@pytest.fixture
async def env():
    made = Env(SqliteIncidentStore(":memory:"), TickingClock())
    yield made
    await made.service.aclose()


@pytest.fixture
def path(tmp_path) -> str:
    return str(tmp_path / "incidents.db")


async def test_an_acknowledgment_in_time_at_p1_is_no_breach_once_promoted_to_p0(path):
    """Acknowledged at 10m (P1: 15m), promoted to P0 at 30m: no breach, no page."""
    env = Env(SqliteIncidentStore(path), TickingClock())
    try:
        incident = await promoted(env, through=5)
        env.clock.to(at(10))
        await env.service.acknowledge(incident.id, by="jane")
        env.clock.to(at(30))
        await env.service.tick()
        env.clock.to(at(31))
        await env.service.tick()
        final = await env.get(incident.id)
    finally:
        await env.service.aclose()
    assert final.severity is Severity.P0
    assert final.breaches == frozenset()
    assert env.breaches == []
    assert [e for e in final.timeline if e.kind == "breach"] == []
    assert breach_escalations(env) == []
    assert [c.severity for c in final.severities] == [
        Severity.P2,
        Severity.P1,
        Severity.P0,
    ]
    # The acknowledge clock stopped at P1; the mitigate clock runs, at P0.
    assert targets(final)["acknowledge"] == (Severity.P1, timedelta(minutes=15))
    assert targets(final)["mitigate"] == (Severity.P0, timedelta(minutes=30))
    again = Env(SqliteIncidentStore(path), TickingClock(at(32)))
    try:
        reread = await again.get(incident.id)
        await again.service.tick()
        report = await again.service.report(incident.id)
        after = await again.get(incident.id)
    finally:
        await again.service.aclose()
    assert reread.severities == final.severities
    assert after.breaches == frozenset()
    [row] = [x for x in report.splitlines() if x.startswith("| acknowledge |")]
    assert row == "| acknowledge | 15m (P1) | 9 minutes | yes |"


async def test_a_running_clock_promoted_past_its_new_target_breaches_at_once(env):
    """Nobody acknowledged by 30m: P0's 5m has passed; the promoting tick says so."""
    incident = await promoted(env, through=30)
    assert incident.severity is Severity.P0
    assert "acknowledge@P0" in incident.breaches
    assert ("P0", "acknowledge") in env.breaches
    [text] = [
        e.text
        for e in incident.timeline
        if e.kind == "breach" and e.data["clock"] == "acknowledge"
    ]
    assert text.startswith("Breach: acknowledge target 5m for P0 passed at ")
    assert any("acknowledge target 5m for P0" in t for t in breach_escalations(env))


async def test_the_running_mitigate_clock_takes_p0s_target(env):
    """Acknowledged at 10m, unmitigated at 41m: P0's 30m passed (P1's 2h would not)."""
    incident = await promoted(env, through=5)
    env.clock.to(at(10))
    await env.service.acknowledge(incident.id, by="jane")
    env.clock.to(at(30))
    await env.service.tick()
    env.clock.to(at(41))
    await env.service.tick()
    final = await env.get(incident.id)
    assert final.breaches == frozenset({"mitigate@P0"})
    assert env.breaches == [("P0", "mitigate")]


async def test_a_clock_stopped_after_a_promotion_is_judged_by_the_new_target(env):
    """Promoted to P1 at 5m, acknowledged at 20m: P1's 15m passed (P2's 1h not)."""
    incident = await promoted(env, through=5)
    env.clock.to(at(20))
    await env.service.acknowledge(incident.id, by="jane")
    env.clock.to(at(21))
    await env.service.tick()
    final = await env.get(incident.id)
    assert final.severity is Severity.P1
    assert final.breaches == frozenset({"acknowledge@P1"})
    assert env.breaches == [("P1", "acknowledge")]


async def test_a_mitigation_after_the_promotion_to_p0_is_judged_by_p0(env):
    """Acknowledged at 2m (P2), mitigated at 40m (P0): 38m is past P0's 30m."""
    [opened] = await env.feed("alertmanager", example(AUTH))
    env.clock.to(at(2))
    await env.service.acknowledge(opened.id, by="jane")
    env.clock.to(at(5))
    await env.service.tick()
    env.clock.to(at(30))
    await env.service.tick()
    env.clock.to(at(40))
    await env.service.mitigate(opened.id, by="jane", text="restarted")
    env.clock.to(at(41))
    await env.service.tick()
    final = await env.get(opened.id)
    assert final.severity is Severity.P0
    assert final.breaches == frozenset({"mitigate@P0"})
    assert targets(final)["acknowledge"] == (Severity.P2, timedelta(hours=1))


def history(*changes: tuple[float, Severity]) -> tuple[SeverityChange, ...]:
    return tuple(SeverityChange(at(m), s) for m, s in changes)


PROMOTED = history((0, Severity.P3), (60, Severity.P2), (600, Severity.P0))


@pytest.mark.parametrize(
    ("acknowledged", "mitigated", "resolved", "expected"),
    [
        # stopped before the promotions: the opening's targets
        (30, 50, 59, ("P3", "P3", "P3")),
        # acknowledged at P3, mitigated at P2, resolved at P0
        (30, 300, 700, ("P3", "P2", "P0")),
        # still running: the current severity's
        (None, None, None, ("P0", "P0", "P0")),
        # stopped at the very time of a promotion: the new severity's
        (60, None, None, ("P2", "P0", "P0")),
    ],
)
def test_each_stopped_clock_keeps_the_severity_it_stopped_under(
    acknowledged, mitigated, resolved, expected
):
    """Every clock reads the severity in force when it stopped; a running one, now."""

    def stamp(minutes: float | None):
        return None if minutes is None else at(minutes)

    incident = Incident(
        id="INC-2026-11-26-001",
        keys=("k",),
        title="t",
        severity=Severity.P0,
        state=State.RESOLVED if resolved is not None else State.ACKNOWLEDGED,
        opened_at=START,
        cadence_from=START,
        acknowledged_at=stamp(acknowledged),
        mitigated_at=stamp(mitigated),
        resolved_at=stamp(resolved),
        severities=PROMOTED,
    )
    found = clocks(incident, DEFAULT_POLICY)
    assert tuple(c.severity.value for c in found) == expected
    for c in found:
        assert c.target == getattr(DEFAULT_POLICY.of(c.severity), c.name)


async def test_a_record_written_before_severities_were_kept_reads_as_before(path):
    """No ``severities`` in the stored JSON: it loads, every clock at the current."""
    old = Incident(
        id="INC-2026-11-26-001",
        keys=("k",),
        title="t",
        severity=Severity.P1,
        state=State.ACKNOWLEDGED,
        opened_at=START,
        cadence_from=START,
        acknowledged_at=at(20),
    )
    record = to_record(old)
    body = {k: v for k, v in record.body.items() if k != "severities"}
    store = SqliteIncidentStore(path)
    await store.create(replace(record, body=body))
    env = Env(store, TickingClock(at(21)))
    try:
        loaded = await env.get(old.id)
        await env.service.tick()
        final = await env.get(old.id)
    finally:
        await env.service.aclose()
    assert loaded.severities == ()
    assert clocks(loaded, DEFAULT_POLICY) == clocks(
        replace(loaded, severities=history((0, Severity.P1))), DEFAULT_POLICY
    )
    # As before: the acknowledgment at 20m is judged by P1's 15m.
    assert targets(loaded)["acknowledge"] == (Severity.P1, timedelta(minutes=15))
    assert final.breaches == frozenset({"acknowledge@P1"})
    assert Incident.from_json(final.to_json()) == final
