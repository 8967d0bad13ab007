"""Change events in (``POST /v2/change/enqueue``) and ``changes.recent`` out.

The step reads this receiver's own store: the change events of the alert's
service and namespace within the window, newest first, capped.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import NOW, ROUTING_KEY, bearer, full_settings, wait_for_decisions

from receiver.model import iso
from receiver.rulebook.loader import load_rulebook
from receiver.steps.catalog import builtin_registry

RULES = """
playbooks:
  deploy-broken:
    diagnostics:
      - type: changes.recent
        service: "{labels.deployment}"
        namespace: "{labels.namespace}"
        window: 2h
        limit: 2
      - type: changes.recent
        name: anything in the namespace
        namespace: "{labels.namespace}"
rules:
  - name: deploy-broken
    match: ['alertname="DeployBroken"']
    playbook: deploy-broken
"""


@pytest.fixture
def web_rules(tmp_path: Path) -> Path:
    """This module's rules replace the shared test rules."""
    path = tmp_path / "rules.yaml"
    path.write_text(RULES, encoding="utf-8")
    return path


async def change(client: Any, summary: str, ago: timedelta, **details: str) -> None:
    body = {
        "routing_key": ROUTING_KEY,
        "payload": {
            "summary": summary,
            "source": "ci",
            "timestamp": iso(NOW - ago),
            "custom_details": details,
        },
    }
    resp = await client.post("/v2/change/enqueue", json=body)
    assert resp.status == 202, await resp.text()


def alert() -> dict[str, Any]:
    return {
        "version": "4",
        "status": "firing",
        "receiver": "r",
        "groupKey": "g",
        "alerts": [
            {
                "status": "firing",
                "labels": {
                    "alertname": "DeployBroken",
                    "namespace": "production",
                    "deployment": "api",
                },
                "startsAt": iso(NOW - timedelta(minutes=3)),
                "fingerprint": "fp-deploy",
            }
        ],
    }


async def test_changes_recent_lists_the_alerts_service_changes(make_client):
    """Only the alert's service and namespace changes, in the window, newest first."""
    client = await make_client(full_settings(mode="execute"))
    m = timedelta(minutes=1)
    await change(client, "api v3", 10 * m, service="api", namespace="production")
    await change(client, "api v2", 50 * m, app="api", namespace="production")
    await change(client, "api v1", 90 * m, service="api", namespace="production")
    await change(client, "web v9", 5 * m, service="web", namespace="production")
    await change(client, "api staging", 5 * m, service="api", namespace="staging")
    await change(client, "api old", 3 * 60 * m, service="api", namespace="production")
    resp = await client.post("/webhooks/alertmanager", json=alert(), headers=bearer())
    assert resp.status == 202
    [record] = await wait_for_decisions(client, {"rule": "deploy-broken"})
    service, namespace = record["matches"][0]["steps"]
    assert service["decision"] == "executed", service
    assert service["result"]["total"] == 3
    assert [c["summary"] for c in service["result"]["changes"]] == ["api v3", "api v2"]
    assert service["reason"].startswith(
        "3 change events for service api in namespace production in the last 2h"
    )
    assert "api v3 (ci)" in service["reason"]
    assert namespace["decision"] == "executed"
    assert [c["summary"] for c in namespace["result"]["changes"]] == [
        "web v9",
        "api v3",
        "api v2",
        "api v1",
    ]


async def test_changes_recent_with_no_changes(make_client):
    """No stored change events is an executed step saying so, not a failure."""
    client = await make_client(full_settings(mode="execute"))
    resp = await client.post("/webhooks/alertmanager", json=alert(), headers=bearer())
    assert resp.status == 202
    [record] = await wait_for_decisions(client, {"rule": "deploy-broken"})
    step = record["matches"][0]["steps"][0]
    assert step["decision"] == "executed"
    assert step["result"] == {"changes": [], "total": 0}
    assert step["reason"].startswith("0 change events")


def test_changes_recent_needs_valid_slots(tmp_path):
    """A namespace template value that is not a DNS-1123 label skips the step."""
    from receiver.engine.planner import PlanContext, plan  # noqa: PLC0415
    from receiver.model import Alert, freeze  # noqa: PLC0415

    path = tmp_path / "r.yaml"
    path.write_text(RULES, encoding="utf-8")
    book = load_rulebook([path], steps=builtin_registry())
    bad = Alert(
        source="alertmanager",
        fingerprint="x",
        status="firing",
        labels=freeze(
            {"alertname": "DeployBroken", "namespace": "Prod!", "deployment": "a"}
        ),
    )
    planned = plan(bad, book, NOW, PlanContext(execute=True))
    step = planned.matches[0].steps[0]
    assert step.trace.decision == "skipped"
    assert "cannot fill in the step" in step.trace.reason
