"""An incident past its alert cap resolves only when every alert it knows resolved.

At most ``MAX_ALERTS`` alerts are listed: past it a resolved one is dropped
first, and a firing one only when every listed alert fires, its fingerprint
kept as unlisted (up to ``MAX_UNLISTED``; past that the incident has lost
track and never resolves by itself). The caps are patched small; alerts are
folded through the service (the batch path, stored in SQLite between
payloads), through ``Folding``, one by one (``observe``), and through the plain
reference (``incident_reference``), which must all agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest
from incident_helpers import START, TickingClock, example, rulebook, traces
from incident_reference import observe_one

from receiver.incidents import lifecycle
from receiver.incidents.lifecycle import Folding, observe, open_incident
from receiver.incidents.model import Incident, State, evolve
from receiver.incidents.policy import DEFAULT_POLICY
from receiver.incidents.records import to_record
from receiver.incidents.service import IncidentService
from receiver.model import Alert, AlertTrace, MatchTrace, Severity, freeze
from receiver.rulebook.loader import load_rulebook
from receiver.steps.catalog import builtin_registry
from receiver.store.incidents_sqlite import SqliteIncidentStore

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


@pytest.fixture
def caps() -> Iterator[None]:
    """Five listed alerts, a hundred unlisted fingerprints."""
    with (
        mock.patch.object(lifecycle, "MAX_ALERTS", 5),
        mock.patch.object(lifecycle, "MAX_UNLISTED", 100),
    ):
        yield


def storm(fingerprints: range, status: str = "firing") -> dict[str, object]:
    """One Alertmanager payload of these alerts, all in group ``g-storm``."""
    return {
        "version": "4",
        "groupKey": "g-storm",
        "status": status,
        "receiver": "r",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://am.test",
        "alerts": [
            {
                "status": status,
                "labels": {"alertname": "Storm", "team": "sre", "pod": f"p{i}"},
                "annotations": {},
                "startsAt": "2026-11-26T10:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": f"fp-{i}",
            }
            for i in fingerprints
        ],
    }


def trace(fingerprint: str, status: str, seconds: int) -> AlertTrace:
    """One alert of a one-rule group, decided ``seconds`` after the start."""
    alert = Alert(
        "alertmanager",
        fingerprint,
        "firing" if status == "firing" else "resolved",
        freeze({"alertname": f"A-{fingerprint}"}),
        starts_at=START,
    )
    match = MatchTrace("r-storm", Severity.P2, "playbook r-storm")
    return AlertTrace(alert, (match,), START + timedelta(seconds=seconds))


def fold_all(sent: list[tuple[str, str]]) -> Incident:
    """``sent`` (fingerprint, status) folded at once, one by one and by the reference.

    All three must agree (incidents and effects); returns the incident.
    """
    run = [trace(f, s, i) for i, (f, s) in enumerate(sent)]
    opened, _ = open_incident("INC-1", ["g"], run[0], START, DEFAULT_POLICY)
    folding = Folding(opened)
    at_once = [folding.observe(t, t.decided_at, DEFAULT_POLICY) for t in run[1:]]
    folded = folding.incident()
    each = reference = opened
    for t, effects in zip(run[1:], at_once, strict=True):
        each, each_effects = observe(each, t, t.decided_at, DEFAULT_POLICY)
        reference, reference_effects = observe_one(
            reference, t, t.decided_at, DEFAULT_POLICY
        )
        assert each_effects == reference_effects == effects
    assert folded == each == reference
    return folded


def listed(incident: Incident) -> list[str]:
    return [a.fingerprint for a in incident.alerts]


@pytest.mark.usefixtures("caps")
@pytest.mark.parametrize("per_payload", [20, 1], ids=["one-batch", "alert-by-alert"])
async def test_a_storm_past_the_cap_stays_open_until_every_alert_resolves(
    per_payload: int, tmp_path: Path
) -> None:
    """20 firing alerts, 5 listed: the 5 resolving leave it open; all 20 resolve it."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(STORM_RULES)
    book = load_rulebook([rules], steps=builtin_registry())
    clock = TickingClock()
    service = IncidentService(
        SqliteIncidentStore(":memory:"), clock=clock, rulebook=lambda: book
    )
    try:
        for lo in range(0, 20, per_payload):
            fired = await traces(
                book, "alertmanager", storm(range(lo, lo + per_payload)), clock()
            )
            touched = await service.observe(fired)
        [incident] = touched
        assert incident.state is State.TRIGGERED
        assert listed(incident) == [f"fp-{i}" for i in range(15, 20)]

        # The listed five resolve: fifteen still fire.
        gone = await traces(
            book, "alertmanager", storm(range(15, 20), "resolved"), clock()
        )
        await service.observe(gone)
        still = await service.get(incident.id)
        assert still is not None
        assert still.state is State.TRIGGERED
        assert still.unlisted == {f"fp-{i}" for i in range(15)}
        assert not still.lost_track

        # The rest resolve (each comes back listed, a resolved one dropped).
        for lo in range(0, 15, per_payload):
            gone = await traces(
                book,
                "alertmanager",
                storm(range(lo, min(lo + per_payload, 15)), "resolved"),
                clock(),
            )
            await service.observe(gone)
        final = await service.get(incident.id)
        assert final is not None
        assert final.state is State.RESOLVED
        assert final.unlisted == frozenset()
        assert [e.text for e in final.timeline if e.kind == "resolved"] == [
            "Resolved: all alerts resolved"
        ]
    finally:
        await service.aclose()


def test_resolved_alerts_are_dropped_before_firing_ones() -> None:
    """Past the cap the oldest resolved alert goes; the firing ones stay listed."""
    with mock.patch.object(lifecycle, "MAX_ALERTS", 3):
        incident = fold_all(
            [("a", "firing"), ("b", "firing"), ("c", "firing"), ("b", "resolved"),
             ("d", "firing")]
        )  # fmt: skip
        assert listed(incident) == ["a", "c", "d"]
        assert incident.unlisted == frozenset()
        # The oldest resolved first; a resend makes an alert the newest.
        incident = fold_all(
            [("a", "firing"), ("b", "firing"), ("c", "firing"), ("a", "resolved"),
             ("b", "resolved"), ("a", "resolved"), ("d", "firing")]
        )  # fmt: skip
        assert listed(incident) == ["c", "a", "d"]
        assert incident.state is State.TRIGGERED


def test_an_unlisted_alert_that_comes_back_is_listed_again() -> None:
    """Back from ``unlisted`` (the oldest firing one unlisted in its place), no news."""
    with mock.patch.object(lifecycle, "MAX_ALERTS", 2):
        incident = fold_all(
            [("a", "firing"), ("b", "firing"), ("c", "firing"), ("d", "firing"),
             ("a", "firing")]
        )  # fmt: skip
    assert listed(incident) == ["d", "a"]
    assert incident.unlisted == {"b", "c"}
    fired = [
        e.data["fingerprint"] for e in incident.timeline if e.kind == "alert_fired"
    ]
    assert fired == ["a", "b", "c", "d"]


def test_losing_track_past_the_unlisted_cap_never_resolves_by_itself() -> None:
    """Past both caps: lost track, said once; every alert resolving leaves it open."""
    fired = [(f"f{i}", "firing") for i in range(8)]
    gone = [(f"f{i}", "resolved") for i in range(8)]
    with (
        mock.patch.object(lifecycle, "MAX_ALERTS", 2),
        mock.patch.object(lifecycle, "MAX_UNLISTED", 3),
    ):
        incident = fold_all([*fired, *gone, *fired, *gone])
        text = lifecycle.lost_track_text(incident.id)
    assert incident.lost_track
    assert incident.state is State.TRIGGERED
    assert incident.unlisted == frozenset()
    assert [e.text for e in incident.timeline if e.kind == "lost_track"] == [text]
    assert "more than 5 of its alerts" in text
    assert "a person or PagerDuty must resolve it" in text
    assert "the Resolve incident button on its console page" in text
    assert f"POST /api/v1/incidents/{incident.id}/resolve" in text


def test_incidents_stored_before_the_cap_rule_still_load() -> None:
    """A stored incident without ``unlisted``/``lost_track`` loads; both round-trip."""
    opened, _ = open_incident(
        "INC-1", ["g"], trace("a", "firing", 0), START, DEFAULT_POLICY
    )
    stored = opened.to_json()
    del stored["unlisted"], stored["lost_track"]
    assert Incident.from_json(stored) == opened
    storm_one = evolve(opened, unlisted=frozenset({"b", "c"}), lost_track=True)
    shown = storm_one.to_json()
    assert shown["unlisted"] == ["b", "c"]
    assert shown["lost_track"] is True
    assert Incident.from_json(shown) == storm_one
    # Redis' cjson once wrote an empty list as an empty object.
    assert Incident.from_json({**stored, "unlisted": {}}) == opened


async def lose_track(store: SqliteIncidentStore, incident: Incident) -> None:
    """Store ``incident`` as one that lost track of its storm."""
    lost = evolve(incident, lost_track=True, version=incident.version + 1)
    assert await store.update(to_record(lost)) is not None


async def pagerduty(service: IncidentService, name: str) -> list[Incident]:
    """Fold the PagerDuty example webhook ``name`` in."""
    book = rulebook()
    return await service.observe(
        await traces(book, "pagerduty", example(f"pagerduty/{name}"), START)
    )


async def test_pagerduty_or_a_person_resolves_an_incident_that_lost_track() -> None:
    """Lost track: resolving its PagerDuty incident resolves it; so can a person."""
    clock = TickingClock()
    book = rulebook()
    store = SqliteIncidentStore(":memory:")
    service = IncidentService(store, clock=clock, rulebook=lambda: book)
    try:
        trigger = example("events-v2/synthetic-sark-api-down.trigger.json")
        [ours] = await service.observe(
            await traces(book, "events_v2", trigger, clock())
        )
        await pagerduty(service, "sark-api-down.triggered.json")
        linked = await service.get(ours.id)
        assert linked is not None
        assert linked.pagerduty_id
        await lose_track(store, linked)
        await pagerduty(service, "sark-api-down.resolved.json")
        final = await service.get(ours.id)
        assert final is not None
        assert final.state is State.RESOLVED
        assert final.timeline[-1].text.startswith("Resolved: resolved in PagerDuty")

        [again] = await service.observe(
            await traces(book, "events_v2", trigger, clock())
        )
        await lose_track(store, again)
        by_hand = await service.resolve(again.id, by="jane", text="storm is over")
        assert by_hand.state is State.RESOLVED
        assert (by_hand.timeline[-1].by, by_hand.timeline[-1].text) == (
            "jane",
            "Resolved: storm is over",
        )
    finally:
        await service.aclose()


async def test_pagerduty_resolves_the_incident_it_opened_that_lost_track() -> None:
    """PagerDuty opened it, a storm made it lose track; PD's resolution resolves it.

    Its resolution was folded like any alert (the alert is the incident's own)
    and ``lost_track`` kept it open for ever, although the timeline says
    resolving it in PagerDuty closes it.
    """
    clock = TickingClock()
    book = rulebook()
    store = SqliteIncidentStore(":memory:")
    service = IncidentService(store, clock=clock, rulebook=lambda: book)
    try:
        [opened] = await pagerduty(service, "sark-api-down.triggered.json")
        assert opened.pagerduty_id
        await lose_track(store, opened)
        await pagerduty(service, "sark-api-down.resolved.json")
        final = await service.get(opened.id)
        assert final is not None
        assert final.state is State.RESOLVED, [e.text for e in final.timeline]
    finally:
        await service.aclose()
