"""The incidents API: list with filters and cursors, read, report, and people's input.

A real app (in-memory store, the test rulebook, a ticking clock, no background
ticker) receives Alertmanager webhooks; the worker's traces open incidents, and
the API is exercised over HTTP like any client would.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
import structlog
from conftest import APPROVE_TOKEN, basic, bearer, full_settings
from incident_helpers import TickingClock
from pydantic import SecretStr, ValidationError
from test_web import AM, am_alert, am_payload

from receiver.app import create_app
from receiver.app_incidents import INCIDENTS, IncidentWiring
from receiver.metrics import Metrics
from receiver.rulebook.loader import load_rulebook
from receiver.runtime import build_runtime
from receiver.settings import Settings, load_settings
from receiver.steps.catalog import builtin_registry
from receiver.store import MemoryStore

API = "/api/v1/incidents"
JANE_TOKEN = "tok-jane-58d1"


@pytest.fixture
async def client(aiohttp_client, web_rules):
    clock = TickingClock()
    app = create_app(
        build_runtime(full_settings(approver_tokens={"jane": SecretStr(JANE_TOKEN)})),
        rulebook=load_rulebook([web_rules], steps=builtin_registry()),
        store=MemoryStore(),
        clock=clock,
        metrics=Metrics(),
        incidents=IncidentWiring(tick_every=None),
    )
    client = await aiohttp_client(app)
    client.clock = clock
    client.service = app[INCIDENTS]
    return client


async def incidents(client, count: int, **params: str) -> list[dict[str, Any]]:
    """Poll the list until ``count`` incidents are there (bounded)."""
    found: list[dict[str, Any]] = []
    for _ in range(300):
        resp = await client.get(API, params=params, headers=bearer())
        assert resp.status == 200, await resp.text()
        found = (await resp.json())["incidents"]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.01)
    pytest.fail(f"only {len(found)} of {count} incidents")


async def fire(client, group: str, fingerprint: str) -> None:
    payload = am_payload(am_alert(fingerprint))
    payload["groupKey"] = group
    resp = await client.post(AM, json=payload, headers=bearer())
    assert resp.status == 202


async def test_a_webhook_opens_an_incident_readable_by_id(client):
    """An Alertmanager alert becomes an incident with its timeline and ledger."""
    await fire(client, "g1", "fp-1")
    [listed] = await incidents(client, 1)
    assert listed["state"] == "triggered"
    assert listed["severity"] == "P1"
    assert "timeline" not in listed
    resp = await client.get(f"{API}/{listed['id']}", headers=bearer())
    body = await resp.json()
    assert body["timeline"][0]["kind"] == "opened"
    assert body["ledger"][0]["type"] == "k8s.pods"
    assert body["alerts"][0]["fingerprint"] == "fp-1"


async def test_report_is_markdown_with_every_template_section(client):
    """The report has the runbook's Incident Report and Post-Mortem sections."""
    await fire(client, "g1", "fp-1")
    [listed] = await incidents(client, 1)
    resp = await client.get(f"{API}/{listed['id']}/report", headers=bearer())
    assert resp.status == 200
    assert resp.content_type == "text/markdown"
    text = await resp.text()
    for heading in (
        "# Incident Report: ",
        "## Executive Summary",
        "## Technical Details",
        "## Impact",
        "## Response",
        "## Follow-up Actions",
        "## Attachments",
        "# Post-Mortem: ",
        "## Summary",
        "## Root Cause",
        "## Timeline",
        "## What Went Well",
        "## What Could Be Improved",
        "## Action Items",
        "## Lessons Learned",
    ):
        assert heading in text, heading
    assert f"**Incident ID:** {listed['id']}" in text


async def test_people_comment_acknowledge_mitigate_and_publish(client):
    """Comments, acknowledgment, mitigation, updates: all under the token's person."""
    await fire(client, "g1", "fp-1")
    [listed] = await incidents(client, 1)
    base = f"{API}/{listed['id']}"
    jane = bearer(JANE_TOKEN)
    resp = await client.post(f"{base}/timeline", json={"text": "looking"}, headers=jane)
    assert resp.status == 200
    resp = await client.post(f"{base}/acknowledge", headers=jane)
    assert (await resp.json())["state"] == "acknowledged"
    resp = await client.post(
        f"{base}/status", json={"text": "Identified"}, headers=jane
    )
    assert resp.status == 200
    resp = await client.post(
        f"{base}/mitigate", json={"text": "failed over"}, headers=jane
    )
    body = await resp.json()
    assert body["state"] == "mitigated"
    kinds = [(e["kind"], e["by"]) for e in body["timeline"]]
    assert ("comment", "jane") in kinds
    assert ("acknowledged", "jane") in kinds
    assert ("status_update", "jane") in kinds
    assert ("mitigated", "jane") in kinds


async def test_a_person_resolves_an_incident(client):
    """Resolved under the token's person, with why; the list shows no fingerprints."""
    await fire(client, "g1", "fp-1")
    [listed] = await incidents(client, 1)
    assert listed["unlisted_count"] == 0
    assert "unlisted" not in listed
    base = f"{API}/{listed['id']}"
    resp = await client.post(
        f"{base}/resolve", json={"text": "storm over"}, headers=bearer(JANE_TOKEN)
    )
    body = await resp.json()
    assert resp.status == 200, body
    assert body["state"] == "resolved"
    [entry] = [e for e in body["timeline"] if e["kind"] == "resolved"]
    assert (entry["by"], entry["text"]) == ("jane", "Resolved: storm over")
    resp = await client.post(f"{base}/resolve", headers=bearer(JANE_TOKEN))
    assert (await resp.json())["state"] == "resolved"  # again: nothing changes


async def test_resolving_a_resolved_incident_says_nothing_changed(client):
    """Resolved again: still a 200, saying it already was; nothing is added to it."""
    await fire(client, "g1", "fp-1")
    [listed] = await incidents(client, 1)
    base = f"{API}/{listed['id']}"
    jane = bearer(JANE_TOKEN)
    resp = await client.post(f"{base}/resolve", json={"text": "over"}, headers=jane)
    first = await resp.json()
    assert resp.status == 200, first
    assert first["already_resolved"] is False
    resp = await client.post(f"{base}/resolve", json={"text": "again"}, headers=jane)
    again = await resp.json()
    assert resp.status == 200, again
    assert again["already_resolved"] is True
    assert again == {**first, "already_resolved": True}
    resp = await client.get(base, headers=bearer())
    assert (await resp.json())["timeline"] == first["timeline"]


async def test_acknowledge_and_mitigate_say_whether_it_already_was(client):
    """A second acknowledge or mitigate is a 200 that says so (mitigate: no change)."""
    await fire(client, "g1", "fp-1")
    [listed] = await incidents(client, 1)
    base = f"{API}/{listed['id']}"
    jane = bearer(JANE_TOKEN)

    async def post(action: str, **body: str) -> dict[str, Any]:
        resp = await client.post(f"{base}/{action}", json=body, headers=jane)
        answer = await resp.json()
        assert resp.status == 200, answer
        return answer

    first = await post("acknowledge")
    assert first["already_acknowledged"] is False
    again = await post("acknowledge")
    assert again["already_acknowledged"] is True
    assert again["acknowledged_at"] == first["acknowledged_at"]
    assert "already_mitigated" not in again

    mitigated = await post("mitigate", text="failed over")
    assert mitigated["already_mitigated"] is False
    assert mitigated["state"] == "mitigated"
    repeat = await post("mitigate", text="again")
    assert repeat["already_mitigated"] is True
    assert repeat["timeline"] == mitigated["timeline"]  # nothing changed
    assert repeat["mitigated_at"] == mitigated["mitigated_at"]


async def test_each_action_through_the_api_is_a_log_line(client):
    """Who did what through the API, as the console's actions are logged."""
    await fire(client, "g1", "fp-1")
    [listed] = await incidents(client, 1)
    base = f"{API}/{listed['id']}"
    jane = bearer(JANE_TOKEN)
    with structlog.testing.capture_logs() as logs:
        for action, body in (
            ("acknowledge", {}),
            ("acknowledge", {}),
            ("timeline", {"text": "looking"}),
            ("mitigate", {"text": "failed over"}),
            ("resolve", {}),
        ):
            resp = await client.post(f"{base}/{action}", json=body, headers=jane)
            assert resp.status == 200, await resp.text()
    lines = [
        (e["event"], e["by"], e.get("changed"))
        for e in logs
        if e["event"].startswith("api_incident_")
    ]
    assert lines == [
        ("api_incident_acknowledged", "jane", True),
        ("api_incident_acknowledged", "jane", False),
        ("api_incident_commented", "jane", None),
        ("api_incident_mitigated", "jane", True),
        ("api_incident_resolved", "jane", True),
    ]


async def test_mitigating_a_resolved_incident_says_it_already_was(client):
    """Resolved, never mitigated nor acknowledged: mitigate and acknowledge say so."""
    await fire(client, "g1", "fp-1")
    [listed] = await incidents(client, 1)
    base = f"{API}/{listed['id']}"
    jane = bearer(JANE_TOKEN)
    resp = await client.post(f"{base}/resolve", json={"text": "over"}, headers=jane)
    resolved = await resp.json()
    resp = await client.post(f"{base}/mitigate", json={"text": "late"}, headers=jane)
    body = await resp.json()
    assert resp.status == 200, body
    assert body["already_mitigated"] is True
    assert body["state"] == "resolved"
    assert body["timeline"] == resolved["timeline"]
    # Acknowledged after the resolution: a line, and said to have been so.
    for _ in range(2):
        resp = await client.post(f"{base}/acknowledge", headers=jane)
        body = await resp.json()
        assert resp.status == 200, body
        assert body["already_acknowledged"] is True
        assert body["acknowledged_at"] is None


@pytest.mark.parametrize(
    "action", ["timeline", "acknowledge", "mitigate", "status", "resolve"]
)
async def test_a_by_field_is_refused_and_nothing_is_added(client, action):
    """Nobody can write someone else's name: a "by" field is a 400 naming it."""
    await fire(client, "g1", "fp-1")
    [listed] = await incidents(client, 1)
    base = f"{API}/{listed['id']}"
    before = await (await client.get(base, headers=bearer())).json()
    resp = await client.post(
        f"{base}/{action}",
        json={"by": "the-ceo", "text": "all fine"},
        headers=bearer(JANE_TOKEN),
    )
    assert resp.status == 400
    problem = await resp.json()
    assert '"by" is not accepted' in problem["detail"]
    assert problem["errors"] == [{"pointer": "/by", "detail": "remove it"}]
    after = await (await client.get(base, headers=bearer())).json()
    people = {"comment", "acknowledged", "mitigated", "status_update", "resolved"}
    assert not [e for e in after["timeline"] if e["kind"] in people]
    assert len(after["timeline"]) >= len(before["timeline"])
    assert after["state"] == "triggered"


@pytest.mark.parametrize(
    ("headers", "actor"),
    [
        (bearer(APPROVE_TOKEN), "api"),
        (bearer(JANE_TOKEN), "jane"),
    ],
)
async def test_the_actor_is_the_credentials_identity(client, headers, actor):
    """A shared token acts as "api"; a personal token as its person."""
    await fire(client, "g1", "fp-1")
    [listed] = await incidents(client, 1)
    resp = await client.post(f"{API}/{listed['id']}/acknowledge", headers=headers)
    assert resp.status == 200
    timeline = (await resp.json())["timeline"]
    [acked] = [e for e in timeline if e["kind"] == "acknowledged"]
    assert acked["by"] == actor


async def test_without_the_approve_scope_nothing_is_added(client):
    """A read-only credential (basic auth here) is refused: 403, timeline unchanged."""
    await fire(client, "g1", "fp-1")
    [listed] = await incidents(client, 1)
    base = f"{API}/{listed['id']}"
    resp = await client.post(f"{base}/timeline", json={"text": "hi"}, headers=basic())
    assert resp.status == 403
    after = await (await client.get(base, headers=bearer())).json()
    assert "comment" not in [e["kind"] for e in after["timeline"]]


async def test_list_filters_and_cursor_pages(client):
    """State and severity filter; a cursor walks every incident exactly once."""
    for n in range(5):
        await fire(client, f"group-{n}", f"fp-{n}")
    everything = await incidents(client, 5)
    await client.post(
        f"{API}/{everything[0]['id']}/acknowledge",
        json={},
        headers=bearer(APPROVE_TOKEN),
    )
    resp = await client.get(API, params={"state": "acknowledged"}, headers=bearer())
    assert [i["id"] for i in (await resp.json())["incidents"]] == [everything[0]["id"]]
    resp = await client.get(API, params={"severity": "P0"}, headers=bearer())
    assert (await resp.json())["incidents"] == []
    seen: list[str] = []
    params = {"limit": "2"}
    for _ in range(5):
        page = await (await client.get(API, params=params, headers=bearer())).json()
        seen += [i["id"] for i in page["incidents"]]
        if page["next_cursor"] is None:
            break
        params = {"limit": "2", "cursor": page["next_cursor"]}
    assert seen == [i["id"] for i in everything]
    assert len(set(seen)) == 5


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"state": "open"}, "state must be one of"),
        ({"severity": "P9"}, "severity must be one of"),
        ({"limit": "0"}, "limit must be between"),
        ({"since": "yesterday"}, "since an ISO 8601 time"),
        ({"cursor": "abc"}, "cursor are integers"),
    ],
)
async def test_bad_filters_are_400_saying_what_to_fix(client, params, words):
    """A bad query parameter is a problem+json 400 naming the fix."""
    resp = await client.get(API, params=params, headers=bearer())
    assert resp.status == 400
    assert resp.content_type == "application/problem+json"
    assert words in (await resp.json())["detail"]


async def test_bad_bodies_unknown_ids_and_missing_auth(client):
    """Garbage bodies are 400, unknown ids 404, no credentials 401: never a 5xx."""
    await fire(client, "g1", "fp-1")
    [listed] = await incidents(client, 1)
    base = f"{API}/{listed['id']}"
    resp = await client.post(
        f"{base}/timeline",
        data=b"{not json",
        headers={**bearer(APPROVE_TOKEN), "Content-Type": "application/json"},
    )
    assert resp.status == 400
    assert "not JSON" in (await resp.json())["detail"]
    resp = await client.post(
        f"{base}/timeline", json={"text": " "}, headers=bearer(APPROVE_TOKEN)
    )
    assert resp.status == 400
    assert '"text" is required' in (await resp.json())["detail"]
    resp = await client.post(
        f"{base}/timeline", json={"text": "x" * 4050}, headers=bearer(APPROVE_TOKEN)
    )
    assert resp.status == 400
    assert "text" in (await resp.json())["detail"]
    resp = await client.post(
        f"{base}/timeline", json=["x"], headers=bearer(APPROVE_TOKEN)
    )
    assert resp.status == 400
    resp = await client.post(
        f"{base}/timeline",
        json={"text": "x", "color": "red"},
        headers=bearer(APPROVE_TOKEN),
    )
    assert resp.status == 400
    assert "color" in (await resp.json())["detail"]
    resp = await client.post(
        f"{base}/timeline",
        data="text",
        headers={**bearer(APPROVE_TOKEN), "Content-Type": "text/plain"},
    )
    assert resp.status == 415
    for path in ("/INC-none", "/INC-none/report"):
        resp = await client.get(API + path, headers=bearer())
        assert resp.status == 404
        assert "GET /api/v1/incidents lists them" in (await resp.json())["detail"]
    resp = await client.post(
        f"{API}/INC-none/acknowledge", json={}, headers=bearer(APPROVE_TOKEN)
    )
    assert resp.status == 404
    resp = await client.get(API)
    assert resp.status == 401
    resp = await client.get(f"{base}/report")
    assert resp.status == 401


async def test_breach_metric_is_exposed(client):
    """A clock breach shows up as receiver_incident_clock_breaches_total."""
    await fire(client, "g1", "fp-1")
    await incidents(client, 1)
    client.clock.jump(minutes=20)
    await client.service.tick()
    text = await (await client.get("/metrics")).text()
    assert (
        'receiver_incident_clock_breaches_total{clock="acknowledge",severity="P1"} 1.0'
        in text
    )


async def test_a_comment_cannot_break_the_reports_markdown(client):
    """Backticks and newlines in a comment stay inside the report's timeline block."""
    await fire(client, "g1", "fp-1")
    [listed] = await incidents(client, 1)
    base = f"{API}/{listed['id']}"
    nasty = "done\n```\n# Injected heading\n"
    await client.post(
        f"{base}/timeline", json={"text": nasty}, headers=bearer(APPROVE_TOKEN)
    )
    text = await (await client.get(f"{base}/report", headers=bearer())).text()
    assert "\n# Injected heading" not in text
    assert "done ''' # Injected heading (api)" in text


async def test_the_ticker_runs_at_the_configured_interval(aiohttp_client, web_rules):
    """``incident_tick_interval`` is what the ticker waits between ticks."""
    waits: list[float] = []
    asked = asyncio.Event()
    hold = asyncio.Event()  # never set: the ticker stays parked after one tick

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        asked.set()
        await hold.wait()

    app = create_app(
        build_runtime(full_settings(incident_tick_interval="42s")),
        rulebook=load_rulebook([web_rules], steps=builtin_registry()),
        store=MemoryStore(),
        clock=TickingClock(),
        metrics=Metrics(),
        incidents=IncidentWiring(sleep=sleep),
    )
    await aiohttp_client(app)
    await asked.wait()
    assert waits == [42.0]


@pytest.mark.parametrize("value", ["0s", "500ms", "6m"])
def test_the_tick_interval_is_bounded(value):
    """Outside 1s..5m the setting is refused, naming the field."""
    with pytest.raises(ValidationError, match="tick_interval"):
        Settings(incidents={"tick_interval": value})


def test_the_tick_interval_is_read_from_the_environment():
    """RECEIVER_INCIDENT_TICK_INTERVAL sets it, like every other setting."""
    settings = load_settings(environ={"RECEIVER_INCIDENT_TICK_INTERVAL": "1m"})
    assert settings.incidents.tick_interval == timedelta(minutes=1)
