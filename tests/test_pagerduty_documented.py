"""Every documented PagerDuty V3 event type, signed, through the HTTP edge.

The fixtures are PagerDuty's own published payload shapes (see
tests/fixtures/pagerduty_v3/SOURCE.md). A correctly signed delivery is always
accepted; incident events are alerts of their incident, everything else is a
recorded event that is never decided nor counted as an alert.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    PD_SECRET,
    bearer,
    journal_drained,
    pd_signature,
    wait_for_decisions,
)
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from receiver.sources import pagerduty

FIXTURES = Path(__file__).parent / "fixtures" / "pagerduty_v3"
DOCUMENTED = sorted(p.name.removesuffix(".json") for p in FIXTURES.glob("*.json"))
JSON = {"Content-Type": "application/json"}
FIRING = {
    "incident.triggered",
    "incident.reopened",
    "incident.escalated",
    "incident.priority_updated",
}


def _incident_id(payload: dict[str, Any]) -> str:
    data = payload["event"]["data"]
    if data.get("type") == "incident":
        return str(data["id"])
    if "incident" in data:
        return str(data["incident"]["id"])
    return str(data["incident_role_assignments"][0]["incident"]["id"])


async def _post(client: Any, body: bytes) -> Any:
    headers = {**JSON, "X-PagerDuty-Signature": pd_signature(body, PD_SECRET)}
    return await client.post("/webhooks/pagerduty", data=body, headers=headers)


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name
    }


def test_every_documented_type_has_a_fixture():
    """The fixtures cover the 30 documented event types and pagey.ping."""
    assert len(DOCUMENTED) == 31
    assert "incident.custom_field_values.updated" in DOCUMENTED
    assert "service.custom_field_values.updated" in DOCUMENTED
    assert "pagey.ping" in DOCUMENTED


@pytest.mark.parametrize("event_type", DOCUMENTED)
async def test_documented_event_accepted(make_client, event_type):
    """Each documented payload, correctly signed, is answered 202 and stored."""
    client = await make_client()
    body = (FIXTURES / f"{event_type}.json").read_bytes()
    payload = json.loads(body)
    resp = await _post(client, body)
    assert resp.status == 202, await resp.text()
    answer = await resp.json()
    assert answer["event_type"] == event_type
    stored = await client.get(f"/api/v1/payloads/{answer['id']}", headers=bearer())
    assert (await stored.json())["payload"] == payload
    await journal_drained(client.store)
    metrics = await (await client.get("/metrics")).text()
    alerts = _samples(metrics, "receiver_alerts_total")
    unmatched = _samples(metrics, "receiver_alerts_unmatched_total")
    if not event_type.startswith("incident."):
        assert answer["recorded_as"] == "event"
        assert answer["alerts"] == 0
        records = await (await client.get("/api/v1/decisions", headers=bearer())).json()
        assert records["decisions"] == []
        assert all(v == 0 for v in alerts.values())
        assert all(v == 0 for v in unmatched.values())
        events = _samples(metrics, "receiver_events_recorded_total")
        assert events[(("source", "pagerduty"),)] == 1
        return
    assert answer["recorded_as"] == "alert"
    fingerprint = f"pd-{_incident_id(payload)}"
    [record] = await wait_for_decisions(client, {"fingerprint": fingerprint})
    assert record["labels"]["event_type"] == event_type
    firing = alerts.get((("source", "pagerduty"), ("status", "firing")), 0)
    if event_type in FIRING:
        assert record["status"] == "firing"
        assert record["actionable"] is True
        assert firing == 1
    elif event_type == "incident.resolved":
        assert record["status"] == "resolved"
        assert record["actionable"] is True
    else:
        assert record["actionable"] is False
        assert record["matches"] == []
        assert firing == 0
        assert all(v == 0 for v in unmatched.values())
    if event_type == "incident.acknowledged":
        assert record["status"] == "acknowledged"
        acked = alerts[(("source", "pagerduty"), ("status", "acknowledged"))]
        assert acked == 1


async def test_null_summary_reference_keeps_incident(make_client):
    """A reference with "summary": null still ties the event to its incident."""
    client = await make_client()
    body = (FIXTURES / "incident.task.created.json").read_bytes()
    assert (await _post(client, body)).status == 202
    [record] = await wait_for_decisions(client, {"fingerprint": "pd-Q0SDD3HB6SGFTI"})
    assert record["labels"]["incident_id"] == "Q0SDD3HB6SGFTI"
    assert "alertname" not in record["labels"] or record["labels"]["alertname"]


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        "text",
        {"id": 7, "title": {"nested": True}, "service": "not-a-reference"},
        {"incident": {"id": None, "summary": None}, "number": "two"},
    ],
)
async def test_unexpected_data_shapes_accepted(make_client, data):
    """Unknown or mistyped fields in a signed incident event never cause a 4xx."""
    client = await make_client()
    payload = json.loads((FIXTURES / "incident.triggered.json").read_bytes())
    payload["event"]["data"] = data
    payload["event"]["brand_new_field"] = {"x": 1}
    body = json.dumps(payload).encode()
    resp = await _post(client, body)
    assert resp.status == 202, await resp.text()


async def test_unknown_event_type_recorded(make_client):
    """An event type PagerDuty adds later is stored and recorded, not refused."""
    client = await make_client()
    payload = {
        "event": {
            "id": "01FUTURE",
            "event_type": "team.renamed",
            "resource_type": "team",
            "occurred_at": "2026-01-01T00:00:00Z",
            "data": {"whatever": [1, 2, 3]},
        }
    }
    resp = await _post(client, json.dumps(payload).encode())
    assert resp.status == 202
    assert (await resp.json())["recorded_as"] == "event"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = st.sampled_from(
    [
        "id",
        "type",
        "number",
        "status",
        "incident_key",
        "created_at",
        "title",
        "html_url",
        "urgency",
        "service",
        "priority",
        "escalation_policy",
        "incident",
        "content",
        "incident_role_assignments",
    ]
)


@given(
    event_type=st.sampled_from(DOCUMENTED) | st.text(min_size=1, max_size=40),
    data=JSON_VALUES | st.dictionaries(FIELDS, JSON_VALUES, max_size=8),
    occurred_at=JSON_VALUES,
    agent=JSON_VALUES,
)
def test_any_data_of_a_valid_envelope_is_accepted(event_type, data, occurred_at, agent):
    """Whatever ``data``, ``occurred_at`` and ``agent`` hold, parsing never refuses."""
    body = {
        "event": {
            "id": "01PROPERTY",
            "event_type": event_type,
            "occurred_at": occurred_at,
            "agent": agent,
            "data": data,
        }
    }
    alerts = pagerduty.to_alerts(body, datetime(2026, 1, 1, tzinfo=UTC))
    if event_type.startswith("incident."):
        [alert] = alerts
        assert alert.fingerprint.startswith("pd-")
        assert all(isinstance(v, str) and v for v in alert.labels.values())
    else:
        assert alerts == []


def test_replay_says_an_event_is_not_an_alert(capsys):
    """Replaying a non-incident event says it is recorded as an event."""
    from receiver.cli import main  # noqa: PLC0415

    assert main(["replay", str(FIXTURES / "pagey.ping.json")]) == 0
    assert "pagey.ping: recorded as an event, not an alert" in capsys.readouterr().out
