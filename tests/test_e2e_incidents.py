"""End to end with the real Alertmanager: an incident from first alert to report.

``SarkAuthFailures`` with ``impact="multiple_users"`` fires through a real
Alertmanager into the receiver (in-process, on a loopback port, with the shipped
rule pack and a simulated clock). On the simulated clock the incident is promoted
P2 → P1 at 5 minutes and P1 → P0 at 30 minutes, a status-update draft goes out at
each cadence, a signed PagerDuty ``incident.acknowledged`` stops the acknowledge
clock, the alert resolves through Alertmanager, and the report is generated.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from conftest import PD_SECRET, TOKEN, bearer, full_settings, pd_signature
from incident_helpers import RecordingAnnouncer, TickingClock
from peers import run_alertmanager

from receiver.app import create_app
from receiver.app_incidents import INCIDENTS, IncidentWiring
from receiver.incidents.model import Incident
from receiver.metrics import Metrics
from receiver.model import Severity
from receiver.rulebook.loader import load_rulebook
from receiver.runtime import build_runtime
from receiver.steps.catalog import builtin_registry
from receiver.store import MemoryStore
from receiver.store.incidents_base import IncidentQuery

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]


def am_config(url: str) -> str:
    return textwrap.dedent(
        f"""
        route:
          receiver: receiver
          group_by: [alertname]
          group_wait: 1s
          group_interval: 1s
          repeat_interval: 1h
        receivers:
          - name: receiver
            webhook_configs:
              - url: {url}/webhooks/alertmanager
                send_resolved: true
                http_config:
                  authorization:
                    type: Bearer
                    credentials: {TOKEN}
        """
    )


async def eventually(service, check, what: str, timeout: float = 30.0) -> Incident:
    """Poll the service until an incident passes ``check`` (bounded, not timed)."""
    deadline = asyncio.get_running_loop().time() + timeout
    found = None
    while asyncio.get_running_loop().time() < deadline:
        await service.drain()
        page, _ = await service.page(IncidentQuery())
        found = page[0] if page else None
        if found is not None and check(found):
            return found
        await asyncio.sleep(0.05)
    pytest.fail(f"{what}: never happened; last seen {found}")


async def post_alert(am_url: str, alert: dict[str, object]) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{am_url}/api/v2/alerts", json=[alert], timeout=5)
        response.raise_for_status()


async def test_auth_failures_incident_from_alertmanager_to_report(  # noqa: PLR0915 (one story, told in order)
    aiohttp_server, tmp_path
):
    """Fires, promotes P2→P1→P0, drafts on cadence, acked via PagerDuty, resolves."""
    real_start = datetime.now(UTC).replace(microsecond=0)
    clock = TickingClock(real_start, step=timedelta(milliseconds=1))
    announcer = RecordingAnnouncer()
    app = create_app(
        build_runtime(full_settings(host="127.0.0.1", workers=1, mode="diagnose")),
        rulebook=load_rulebook([ROOT / "rules"], steps=builtin_registry()),
        store=MemoryStore(),
        clock=clock,
        metrics=Metrics(),
        incidents=IncidentWiring(announcer=announcer, tick_every=None),
    )
    server = await aiohttp_server(app, host="127.0.0.1")
    service = app[INCIDENTS]
    base = str(server.make_url("")).rstrip("/")
    with run_alertmanager(tmp_path, am_config(base)) as am:
        alert = {
            "labels": {
                "alertname": "SarkAuthFailures",
                "impact": "multiple_users",
                "namespace": "production",
                "deployment": "sark",
            },
            "annotations": {"summary": "SARK logins failing for 62% of attempts"},
            "startsAt": (real_start - timedelta(seconds=2)).isoformat(),
            "generatorURL": "http://prometheus.test/graph",
        }
        await post_alert(am.url, alert)
        opened = await eventually(service, lambda i: True, "incident opened")
        assert opened.severity is Severity.P2
        started = opened.alerts[0].starts_at
        assert started is not None
        group_key = next(k for k in opened.keys if k.startswith("am:"))[3:]

        # 3 minutes in: PagerDuty (opened by Alertmanager's pagerduty_configs,
        # incident key = sha256(group key)) says someone acknowledged.
        clock.to(started + timedelta(minutes=3))
        ack = {
            "event": {
                "id": "evt-ack-e2e",
                "event_type": "incident.acknowledged",
                "resource_type": "incident",
                "occurred_at": clock.now.isoformat(),
                "agent": {"id": "PJD0E01", "summary": "Jane Smith"},
                "data": {
                    "id": "QE2EINC0001",
                    "type": "incident",
                    "number": 7,
                    "status": "acknowledged",
                    "incident_key": hashlib.sha256(group_key.encode()).hexdigest(),
                    "title": "SARK logins failing",
                },
            }
        }
        raw = json.dumps(ack).encode()
        async with httpx.AsyncClient() as http:
            response = await http.post(
                f"{base}/webhooks/pagerduty",
                content=raw,
                headers={
                    "Content-Type": "application/json",
                    "X-PagerDuty-Signature": pd_signature(raw, PD_SECRET),
                },
            )
        assert response.status_code == 202, response.text
        acked = await eventually(
            service, lambda i: i.acknowledged_at is not None, "acknowledged"
        )
        assert acked.pagerduty_id == "QE2EINC0001"

        # The matrix boundaries, on the simulated clock, with no new payload.
        clock.to(started + timedelta(minutes=4, seconds=59))
        await service.tick()
        assert (await service.get(opened.id)).severity is Severity.P2
        clock.to(started + timedelta(minutes=5, seconds=1))
        await service.tick()
        assert (await service.get(opened.id)).severity is Severity.P1
        clock.to(started + timedelta(minutes=29, seconds=59))
        await service.tick()
        assert (await service.get(opened.id)).severity is Severity.P1
        clock.to(started + timedelta(minutes=30, seconds=1))
        await service.tick()
        now_p0 = await service.get(opened.id)
        assert now_p0.severity is Severity.P0
        promotions = [m for m in announcer.messages if m.kind == "promoted"]
        assert [m.title.split("]")[0] for m in promotions] == ["[P1", "[P0"]

        # P0 cadence: a draft every 30 minutes from the last one.
        drafts_before = announcer.kinds().count("status_draft")
        for minutes in (61, 92):
            clock.to(started + timedelta(minutes=minutes))
            await service.tick()
        drafts = [m for m in announcer.messages if m.kind == "status_draft"]
        assert len(drafts) == drafts_before + 2
        assert all(d.text.startswith("**Identified** (Cause found)") for d in drafts)
        assert all("Next update: " in d.text and "Posted: " in d.text for d in drafts)

        # The acknowledge clock stopped at 3 minutes, while P2 (1h): no breach
        # once promoted (P0's 5m is for clocks still running).
        got = await service.get(opened.id)
        assert not any(b.startswith("acknowledge@") for b in got.breaches)
        assert "mitigate@P0" in got.breaches  # 30m after acknowledgment passed

        # The alert resolves in Alertmanager.
        alert["endsAt"] = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
        await post_alert(am.url, alert)
        done = await eventually(
            service, lambda i: i.resolved_at is not None, "resolved", timeout=45
        )
        assert done.state.value == "resolved"

    async with httpx.AsyncClient() as http:
        response = await http.get(
            f"{base}/api/v1/incidents/{opened.id}/report", headers=bearer()
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/markdown")
    report = response.text
    assert f"**Incident ID:** {opened.id}" in report
    assert "**Severity:** P0" in report
    assert "**Status:** Resolved" in report
    assert "Severity P2 → P1" in report
    assert "Severity P1 → P0" in report
    assert "Acknowledged via PagerDuty incident.acknowledged (Jane Smith)" in report
    # Acknowledged at 2m58s, while P2: judged by P2's target, which it met.
    assert "| acknowledge | 1h (P2) | 2 minutes | yes |" in report
    assert "# Post-Mortem: " in report
