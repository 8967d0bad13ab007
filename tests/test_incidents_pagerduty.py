"""PagerDuty and incidents: webhooks acknowledge, escalation uses the REST API.

Signed ``incident.acknowledged`` stops the acknowledge clock and
``incident.status_update_published`` restarts the update cadence; a breach raises
the PagerDuty incident's escalation level; announcements reach Slack, the webhook
and the PagerDuty incident as a note.

The app runs in-process with a ticking clock; PagerDuty's REST API, Slack and the
webhook are a local recording HTTP server (``tests/fakes.py``), so the test
asserts exactly the requests that arrived.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import timedelta

import httpx
import pytest
from conftest import PD_SECRET, bearer, full_settings, journal_drained, pd_signature
from fakes import RecordingServer, Reply, pagerduty_api
from incident_helpers import TickingClock
from pydantic import SecretStr
from structlog.testing import capture_logs
from test_web import AM, am_alert, am_payload

from receiver.app import create_app
from receiver.app_incidents import INCIDENTS, IncidentWiring
from receiver.metrics import Metrics
from receiver.rulebook.loader import load_rulebook
from receiver.runtime import build_runtime
from receiver.sinks.announce import PagerDutyEscalator, build_announcer
from receiver.sinks.delivery import Deliverer
from receiver.steps.catalog import builtin_registry
from receiver.store import MemoryStore
from receiver.store.incidents_base import IncidentQuery

GROUP = '{}:{alertname="KubePodCrashLooping"}'
PD_ID = "Q3VHZ4K2N8WX1R"
API_TOKEN = "pd-api-token-5c1d"


def pd_event(event_type: str, **data: object) -> dict[str, object]:
    return {
        "event": {
            "id": f"evt-{event_type}-{len(data)}",
            "event_type": event_type,
            "resource_type": "incident",
            "occurred_at": "2026-11-26T10:03:12.502Z",
            "agent": {
                "id": "PJD0E01",
                "summary": "Jane Smith",
                "type": "user_reference",
            },
            "data": {
                "id": PD_ID,
                "type": "incident",
                "number": 4127,
                "status": "triggered",
                "incident_key": hashlib.sha256(GROUP.encode()).hexdigest(),
                "title": "api is crash looping",
                **data,
            },
        }
    }


async def post_pd(client, body: dict[str, object], secret: str = PD_SECRET):
    raw = json.dumps(body).encode()
    return await client.post(
        "/webhooks/pagerduty",
        data=raw,
        headers={
            "Content-Type": "application/json",
            "X-PagerDuty-Signature": pd_signature(raw, secret),
        },
    )


@pytest.fixture
def server():
    with RecordingServer() as srv:
        pagerduty_api(srv, {})
        srv.script(
            "GET",
            "/priorities",
            Reply(
                200,
                {
                    "priorities": [
                        {"id": f"PPRIO{n}", "name": f"P{n}"} for n in range(4)
                    ]
                },
            ),
        )
        srv.script("PUT", r"/incidents/[A-Z0-9]+", Reply(200, {"incident": {}}))
        srv.script("POST", "/slack", Reply(200, b"ok"))
        srv.script("POST", "/hook", Reply(200, b""))
        yield srv


async def make_client(aiohttp_client, web_rules, server, mode: str):
    settings = full_settings(
        mode=mode,
        pagerduty_api_url=server.url,
        pagerduty_api_token=SecretStr(API_TOKEN),
        pagerduty_from="receiver@example.com",
        slack_webhook_url=SecretStr(f"{server.url}/slack"),
        webhook_urls=[SecretStr(f"{server.url}/hook")],
        sinks=["slack", "webhook", "pagerduty_note"],
    )
    clock = TickingClock()
    store = MemoryStore()
    app = create_app(
        build_runtime(settings),
        rulebook=load_rulebook([web_rules], steps=builtin_registry()),
        store=store,
        clock=clock,
        metrics=Metrics(),
        incidents=IncidentWiring(tick_every=None),
    )
    client = await aiohttp_client(app)
    client.clock = clock
    client.store = store
    client.service = app[INCIDENTS]
    return client


@pytest.fixture
async def client(aiohttp_client, web_rules, server):
    """The app in diagnose mode: sinks post, PagerDuty's REST API is called."""
    return await make_client(aiohttp_client, web_rules, server, "diagnose")


@pytest.fixture
async def dry_client(aiohttp_client, web_rules, server):
    """The same app in dry-run mode: nothing is contacted."""
    return await make_client(aiohttp_client, web_rules, server, "dry-run")


async def settle(client, check, attempts: int = 300):
    """Poll the incident list until ``check(incident)`` holds (bounded)."""
    found = None
    for _ in range(attempts):
        await client.service.drain()
        page, _ = await client.service.page(IncidentQuery())
        found = page[0] if page else None
        if found is not None and check(found):
            return found
        await asyncio.sleep(0.01)
    pytest.fail(f"incident never reached the expected state: {found}")


async def test_signed_acknowledged_webhook_stops_the_ack_clock(client, server):
    """incident.acknowledged (signed) links the PagerDuty incident and acknowledges."""
    payload = am_payload(am_alert("fp-1"))
    payload["groupKey"] = GROUP
    assert (await client.post(AM, json=payload, headers=bearer())).status == 202
    await settle(client, lambda i: True)
    resp = await post_pd(
        client, pd_event("incident.acknowledged", status="acknowledged")
    )
    assert resp.status == 202
    incident = await settle(client, lambda i: i.acknowledged_at is not None)
    assert incident.state.value == "acknowledged"
    assert incident.pagerduty_id == PD_ID
    entry = next(e for e in incident.timeline if e.kind == "acknowledged")
    assert entry.by == "Jane Smith"
    assert "PagerDuty" in entry.text
    # Twenty minutes on, the P1 acknowledge target (15m) has not been breached.
    client.clock.jump(minutes=20)
    await client.service.tick()
    got = await client.service.get(incident.id)
    assert "acknowledge@P1" not in got.breaches


async def test_bad_signature_changes_nothing(client):
    """A webhook with a wrong signature is refused and acknowledges nothing."""
    payload = am_payload(am_alert("fp-1"))
    payload["groupKey"] = GROUP
    await client.post(AM, json=payload, headers=bearer())
    incident = await settle(client, lambda i: True)
    resp = await post_pd(client, pd_event("incident.acknowledged"), secret="wrong")
    assert resp.status in (401, 403)
    await client.service.drain()
    assert (await client.service.get(incident.id)).acknowledged_at is None


async def test_status_update_published_resets_the_cadence(client, server):
    """incident.status_update_published restarts the update cadence from then."""
    payload = am_payload(am_alert("fp-1"))
    payload["groupKey"] = GROUP
    await client.post(AM, json=payload, headers=bearer())
    incident = await settle(client, lambda i: True)
    await post_pd(client, pd_event("incident.acknowledged"))
    await settle(client, lambda i: i.pagerduty_id == PD_ID)
    # The incident can show the event before the worker marks its payload done:
    # fifty minutes on, a payload still waiting would make the edge shed the
    # next webhook (journal age bound) instead of accepting it.
    await journal_drained(client.store)
    client.clock.jump(minutes=50)
    body = pd_event("incident.status_update_published")
    body["event"]["id"] = "evt-status-1"  # type: ignore[index]
    body["event"]["data"] = {  # type: ignore[index]
        "id": "PSTATUS1",
        "type": "status_update",
        "message": "We are investigating",
        "incident": {"id": PD_ID, "summary": "api is crash looping"},
    }
    assert (await post_pd(client, body)).status == 202
    updated = await settle(
        client, lambda i: any(e.kind == "status_update" for e in i.timeline)
    )
    assert updated.cadence_from > incident.cadence_from + timedelta(minutes=49)
    client.clock.jump(minutes=30)  # 80 min after opening, 30 after the update
    await client.service.tick()
    assert (await client.service.get(incident.id)).drafts == 0
    client.clock.jump(minutes=31)
    await client.service.tick()
    assert (await client.service.get(incident.id)).drafts == 1


async def test_breach_escalates_the_pagerduty_incident_and_announces(client, server):
    """A breach sends PUT /incidents/{id} (level 2, priority) and posts to the sinks."""
    payload = am_payload(am_alert("fp-1"))
    payload["groupKey"] = GROUP
    await client.post(AM, json=payload, headers=bearer())
    await settle(client, lambda i: True)
    trig = pd_event("incident.triggered")
    assert (await post_pd(client, trig)).status == 202
    await settle(client, lambda i: i.pagerduty_id == PD_ID)
    client.clock.jump(minutes=16)
    await client.service.tick()
    [put] = server.seen("PUT", f"/incidents/{PD_ID}")
    assert put.json() == {
        "incident": {
            "type": "incident_reference",
            "escalation_level": 2,
            "priority": {"id": "PPRIO1", "type": "priority_reference"},
        }
    }
    assert put.headers["Authorization"] == f"Token token={API_TOKEN}"
    assert put.headers["From"] == "receiver@example.com"
    [incident], _ = await client.service.page(IncidentQuery())
    sent = [e.text for e in incident.timeline if e.kind == "message_sent"]
    assert any(t.startswith("PagerDuty escalation: escalation level 2") for t in sent)
    assert any("(escalation)" in t and "slack: sent" in t for t in sent)
    slack = [r.json()["text"] for r in server.seen("POST", "/slack")]
    assert any("escalated to Engineering Manager" in t for t in slack)
    hooks = [h for r in server.seen("POST", "/hook") if "kind" in (h := r.json())]
    assert {h["kind"] for h in hooks} >= {"opened", "escalation"}
    notes = [
        r.json()["note"]["content"] for r in server.seen("POST", r"/incidents/.*/notes")
    ]
    assert any(
        n.startswith("[alert-receiver]") and "breach: acknowledge target 15m" in n
        for n in notes
    )


async def test_dry_run_contacts_nothing_and_says_what_it_would_have_sent(
    dry_client, server
):
    """Dry-run: no sink post, no PagerDuty call; the timeline says what would have."""
    payload = am_payload(am_alert("fp-1"))
    payload["groupKey"] = GROUP
    with capture_logs() as logs:
        assert (await dry_client.post(AM, json=payload, headers=bearer())).status == 202
        await settle(dry_client, lambda i: True)
        trig = pd_event("incident.triggered")
        assert (await post_pd(dry_client, trig)).status == 202
        await settle(dry_client, lambda i: i.pagerduty_id == PD_ID)
        dry_client.clock.jump(minutes=16)  # past the P1 acknowledge target
        await dry_client.service.tick()
        dry_client.clock.jump(hours=1, minutes=1)  # past the P1 update cadence
        await dry_client.service.tick()
        await dry_client.service.drain()
    contacted = [(r.method, r.path) for r in server.requests]
    assert contacted == [], f"dry-run contacted {contacted}"
    [incident], _ = await dry_client.service.page(IncidentQuery())
    assert "acknowledge@P1" in incident.breaches
    assert incident.drafts == 1
    sent = [e.text for e in incident.timeline if e.kind == "message_sent"]
    withheld = [t for t in sent if "not delivered (dry-run" in t]
    assert any("(escalation)" in t for t in withheld), sent
    assert any("(status_draft)" in t for t in withheld), sent
    assert any(
        t.startswith("PagerDuty escalation (level 2, priority P1): not called (dry-run")
        for t in sent
    ), sent
    assert not any(": sent" in t or "sent:" in t for t in sent), sent
    events = [e["event"] for e in logs]
    assert "incident_announced" not in events
    assert "sink_finished" not in events
    assert "incident_announcement_dry_run" in events
    assert "incident_pagerduty_dry_run" in events


async def test_escalator_reports_pagerduty_errors_without_raising(server):
    """A 403 from PagerDuty is an outcome line, not an exception."""
    server.script("PUT", r"/incidents/P403", Reply(403, {"error": {"message": "no"}}))
    escalator = PagerDutyEscalator(
        Deliverer(httpx.AsyncClient()),
        api_url=server.url,
        token=API_TOKEN,
        from_email="r@example.com",
    )
    try:
        outcome = await escalator.escalate("P403", 2, "P0")
    finally:
        await escalator.aclose()
    assert outcome.startswith("failed: PagerDuty answered HTTP 403")
    assert API_TOKEN not in outcome


async def test_escalator_status_changes_report_failures_as_lines(server):
    """Acknowledge/resolve: a refusal or no answer at all is a `failed:` line."""
    server.script("PUT", r"/incidents/P403", Reply(403, {"error": {"message": "no"}}))
    server.script("PUT", r"/incidents/POK", Reply(200, {"incident": {}}))
    reachable = PagerDutyEscalator(
        Deliverer(httpx.AsyncClient()),
        api_url=server.url,
        token=API_TOKEN,
        from_email="r@example.com",
    )
    nobody = PagerDutyEscalator(
        Deliverer(httpx.AsyncClient()),
        api_url="http://127.0.0.1:1",
        token=API_TOKEN,
        from_email="r@example.com",
    )
    try:
        refused = await reachable.set_status("P403", "resolved")
        taken = await reachable.set_status("POK", "acknowledged")
        unreachable = await nobody.set_status("P1", "resolved")
        not_escalated = await nobody.escalate("P1", 2, "P0")
    finally:
        await reachable.aclose()
        await nobody.aclose()
    assert refused.startswith("failed: PagerDuty answered HTTP 403")
    assert taken == "POK acknowledged"
    assert [p.body for p in server.seen("PUT", "/incidents/POK")] == [
        b'{"incident":{"type":"incident_reference","status":"acknowledged"}}'
    ]
    for line in (unreachable, not_escalated):
        assert line.startswith("failed: "), line
        assert API_TOKEN not in line


def test_no_announcer_without_configured_text_sinks():
    """With no Slack, webhook or PagerDuty note configured there is no announcer."""
    settings = full_settings()
    assert (
        build_announcer(settings.sinks, settings.pagerduty, settings.slack, secrets=())
        is None
    )


async def test_decision_messages_sent_are_on_the_timeline(client, server):
    """What the sinks posted about a decision is a message_sent timeline entry."""
    payload = am_payload(am_alert("fp-1"))
    payload["groupKey"] = GROUP
    await client.post(AM, json=payload, headers=bearer())
    # Waits for the decision's note, not the incident's announcement (also a
    # message_sent entry, also sent to Slack), which may be folded in first.
    incident = await settle(
        client,
        lambda i: any(
            e.kind == "message_sent" and e.text.startswith("Decision on ")
            for e in i.timeline
        ),
    )
    texts = [e.text for e in incident.timeline if e.kind == "message_sent"]
    assert any(
        t.startswith("Decision on KubePodCrashLooping: slack: sent") for t in texts
    )
    assert any("webhook: sent" in t for t in texts)
