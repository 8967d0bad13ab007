"""A member PagerDuty alert's resolution does not resolve a lost-track incident."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from incident_helpers import TickingClock, example, traces

from receiver.incidents.model import State, evolve
from receiver.incidents.records import to_record
from receiver.incidents.service import IncidentService
from receiver.rulebook.loader import load_rulebook
from receiver.steps.catalog import builtin_registry
from receiver.store.incidents_sqlite import SqliteIncidentStore

RULES = """
playbooks:
  noop: {}
rules:
  - name: sark-pages
    sources: [pagerduty]
    match: ['service="SARK API"']
    status: any
    severity: P1
    group_by: [service]
    playbook: noop
"""


def page(name: str, pd_id: str, key: str, number: int) -> dict[str, Any]:
    out = copy.deepcopy(example(f"pagerduty/sark-api-down.{name}.json"))
    out["event"]["id"] = f"{out['event']['id']}-{pd_id}"
    data = out["event"]["data"]
    data["id"], data["incident_key"], data["number"] = pd_id, key, number
    data["self"] = data["html_url"] = f"https://example.pagerduty.com/incidents/{pd_id}"
    return out


async def test_one_member_pagerduty_resolution_leaves_a_lost_track_group_open(
    tmp_path: Path,
) -> None:
    """Two PagerDuty incidents grouped (group_by: service) into one incident.

    P1 opened it; P2 was folded in as one of its alerts. It loses track of its
    storm. P2 alone resolves in PagerDuty while P1 still fires (listed as
    firing in the incident): the incident stays open. Taking P2 for the
    incident's "own" alert resolved the whole incident, which the lost-track
    rule exists to prevent (the timeline says only a person or the linked
    PagerDuty incident resolves it).
    """
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    book = load_rulebook([rules], steps=builtin_registry())
    clock = TickingClock()
    store = SqliteIncidentStore(":memory:")
    service = IncidentService(store, clock=clock, rulebook=lambda: book)
    try:
        [opened] = await service.observe(
            await traces(
                book, "pagerduty", page("triggered", "P1AAAA", "k1", 1), clock()
            )
        )
        [grouped] = await service.observe(
            await traces(
                book, "pagerduty", page("triggered", "P2BBBB", "k2", 2), clock()
            )
        )
        assert grouped.id == opened.id
        assert {a.fingerprint for a in grouped.alerts} == {"pd-P1AAAA", "pd-P2BBBB"}
        lost = evolve(grouped, lost_track=True, version=grouped.version + 1)
        assert await store.update(to_record(lost)) is not None

        await service.observe(
            await traces(
                book, "pagerduty", page("resolved", "P2BBBB", "k2", 2), clock()
            )
        )
        final = await service.get(opened.id)
        assert final is not None
        # P1 still fires in PagerDuty and in the incident's own list.
        assert final.state is not State.RESOLVED, [e.text for e in final.timeline][-2:]
    finally:
        await service.aclose()
