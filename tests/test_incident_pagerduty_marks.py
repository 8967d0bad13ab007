"""A PagerDuty trace folded as "already linked" is marked like every other.

``_link_pagerduty`` returns the tracked incident for a PagerDuty event about
the PagerDuty incident already linked to it (``tracked.pagerduty_id ==
pd_id``): nothing written, and no ``mark_folded`` either. Every other path
that folds a trace without a write marks it alone, because a trace that
changed nothing now may change something when decided again later (the quiet
path's own comment). Here: decided again after the incident resolved, the
same ``incident.escalated`` opens a new incident.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from incident_helpers import TickingClock, example, resolved, traces

from receiver.incidents.grouping import pagerduty_key
from receiver.incidents.service import IncidentService
from receiver.model import AlertTrace
from receiver.rulebook.loader import Rulebook, load_rulebook
from receiver.steps.catalog import builtin_registry
from receiver.store.incidents_base import IncidentQuery

RULES = """
playbooks:
  noop: {}
rules:
  - name: api-down
    sources: [alertmanager]
    match: ['alertname="SarkApiDown"']
    status: any
    severity: P1
    playbook: noop
  - name: api-pages
    sources: [pagerduty]
    match: ['service="SARK API"']
    status: any
    severity: P1
    playbook: noop
"""

AM = "alertmanager/sark-api-down.firing.json"
PD_ID = "PLINKED1"


@pytest.fixture
def book(tmp_path: Path) -> Rulebook:
    (tmp_path / "rules.yaml").write_text(RULES)
    return load_rulebook([tmp_path / "rules.yaml"], steps=builtin_registry())


def page(event_type: str) -> dict[str, Any]:
    """A PagerDuty webhook about the incident Alertmanager's group paged."""
    out = copy.deepcopy(example("pagerduty/sark-api-down.triggered.json"))
    out["event"]["event_type"] = event_type
    out["event"]["id"] = f"{out['event']['id']}-{event_type}"
    data = out["event"]["data"]
    data["id"] = PD_ID
    # Alertmanager's pagerduty_configs page with sha256(group key).
    data["incident_key"] = pagerduty_key(example(AM)["groupKey"])
    return out


async def decided(
    book: Rulebook, source: str, payload: dict, payload_id: str, clock: TickingClock
) -> list[AlertTrace]:
    found = await traces(book, source, payload, clock())
    return [replace(t, payload_id=payload_id) for t in found]


async def test_an_already_linked_pagerduty_event_decided_again_opens_nothing(
    reopen_incidents, book
) -> None:
    clock = TickingClock()
    service = IncidentService(reopen_incidents(), clock=clock, rulebook=lambda: book)
    try:
        [opened] = await service.observe(
            await decided(book, "alertmanager", example(AM), "p-am-1", clock)
        )
        [linked] = await service.observe(
            await decided(
                book, "pagerduty", page("incident.triggered"), "p-pd-1", clock
            )
        )
        assert linked.id == opened.id
        assert linked.pagerduty_id == PD_ID
        # PagerDuty escalates its incident: already linked, nothing changes.
        escalated = await decided(
            book, "pagerduty", page("incident.escalated"), "p-pd-2", clock
        )
        [same] = await service.observe(escalated)
        assert same.id == opened.id
        # The group resolves: so does the incident.
        [done] = await service.observe(
            await decided(
                book, "alertmanager", resolved(example(AM), clock.now), "p-am-2", clock
            )
        )
        assert done.state.value == "resolved"
    finally:
        await service.aclose()
    # A crash before p-pd-2 was recorded: it is decided again, same payload id.
    service = IncidentService(reopen_incidents(), clock=clock, rulebook=lambda: book)
    try:
        await service.observe(
            await decided(
                book, "pagerduty", page("incident.escalated"), "p-pd-2", clock
            )
        )
        page_, _ = await service.page(IncidentQuery(limit=10))
        assert [i.id for i in page_] == [opened.id], (
            "the escalation, folded once already, opened an incident when decided again"
        )
    finally:
        await service.aclose()
