"""PagerDuty V3 webhooks through the HTTP edge: X-PagerDuty-Signature and labels."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import (
    PD_SECRET,
    PD_SECRET_NEW,
    full_settings,
    pd_signature,
    wait_for_decisions,
)
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

PD = "/webhooks/pagerduty"
JSON = {"Content-Type": "application/json"}
PROBLEM = "application/problem+json"
ZEROS = "v1=" + "0" * 64


def incident_event(event_type: str = "incident.triggered") -> dict[str, Any]:
    """A V3 incident webhook as PagerDuty documents it (trimmed of URLs)."""
    return {
        "event": {
            "id": "01DEN9ZRPQ1Y4W6R1K0Q3Z9A7T",
            "event_type": event_type,
            "resource_type": "incident",
            "occurred_at": "2024-05-06T07:05:00.169Z",
            "agent": {"id": "PLH1HKV", "summary": "Tenex Engineer", "type": "user"},
            "client": None,
            "data": {
                "id": "PGR0VU2",
                "type": "incident",
                "html_url": "https://acme.pagerduty.test/incidents/PGR0VU2",
                "number": 2,
                "status": "triggered",
                "incident_key": "d3640fbd41094207a1c11e58e46b1662",
                "created_at": "2024-05-06T07:00:00Z",
                "title": "API down",
                "service": {"id": "PF9KMXH", "summary": "checkout-api"},
                "assignees": [{"id": "PTUXL6G", "summary": "User 123"}],
                "escalation_policy": {"id": "PUS0KTE", "summary": "Default"},
                "teams": [{"id": "PFCVPS0", "summary": "Engineering"}],
                "priority": {"id": "PSO75BM", "summary": "P1"},
                "urgency": "high",
                "conference_bridge": None,
                "resolve_reason": None,
            },
        }
    }


def note_event() -> dict[str, Any]:
    """incident.annotated carries a note whose ``incident`` names the incident."""
    return {
        "event": {
            "id": "01DEN9ZRPQ1Y4W6R1K0Q3Z9NOTE",
            "event_type": "incident.annotated",
            "resource_type": "incident",
            "occurred_at": "2024-05-06T07:06:00Z",
            "agent": {"id": "PLH1HKV", "summary": "Tenex Engineer"},
            "data": {
                "incident": {
                    "id": "PGR0VU2",
                    "summary": "API down",
                    "html_url": "https://acme.pagerduty.test/incidents/PGR0VU2",
                },
                "id": "PNOTE01",
                "content": "Looking into it",
                "trimmed": False,
                "type": "incident_note",
            },
        }
    }


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


async def post(client: Any, body: bytes, signature: str | None) -> Any:
    headers = dict(JSON)
    if signature is not None:
        headers["X-PagerDuty-Signature"] = signature
    return await client.post(PD, data=body, headers=headers)


async def problem_of(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == PROBLEM
    problem = await resp.json(content_type=PROBLEM)
    assert problem["status"] == status
    assert problem["title"]
    assert problem["type"].startswith("urn:receiver:problem:")
    assert problem["detail"]
    return problem


# ---------------------------------------------------------------- signatures

BODY = encode(incident_event())


def _valid_first(body: bytes) -> str:
    return pd_signature(body, PD_SECRET)


def _valid_second(body: bytes) -> str:
    return pd_signature(body, PD_SECRET_NEW)


def _both(body: bytes) -> str:
    return pd_signature(body, PD_SECRET, PD_SECRET_NEW)


def _junk_then_valid(body: bytes) -> str:
    return f"{ZEROS},{pd_signature(body, PD_SECRET_NEW)}"


def _valid_then_junk(body: bytes) -> str:
    return f"{pd_signature(body, PD_SECRET)},{ZEROS},{ZEROS}"


def _unknown_secret_then_valid(body: bytes) -> str:
    return f"{pd_signature(body, 'rotated-out')}, {pd_signature(body, PD_SECRET)}"


def _uppercase(body: bytes) -> str:
    return "v1=" + pd_signature(body, PD_SECRET).removeprefix("v1=").upper()


@pytest.mark.parametrize(
    "sign",
    [
        _valid_first,
        _valid_second,
        _both,
        _junk_then_valid,
        _valid_then_junk,
        _unknown_secret_then_valid,
        _uppercase,
    ],
)
async def test_valid_signatures_accepted(make_client, sign):
    """Any v1= entry matching any configured secret is accepted (rotation)."""
    client = await make_client()
    resp = await post(client, BODY, sign(BODY))
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    assert body["status"] == "accepted"
    assert body["id"]
    assert body["event_type"] == "incident.triggered"


async def test_rotation_with_only_the_new_secret(make_client):
    """After rotation (only the new secret configured) the old one is refused."""
    client = await make_client(
        full_settings(pagerduty_secrets=[SecretStr(PD_SECRET_NEW)])
    )
    assert (await post(client, BODY, _valid_second(BODY))).status == 202
    problem = await problem_of(await post(client, BODY, _valid_first(BODY)), 403)
    assert "does not match" in problem["detail"]


async def test_signature_is_over_raw_bytes(make_client):
    """The HMAC covers the exact bytes sent, whitespace and key order included."""
    client = await make_client()
    raw = json.dumps(incident_event(), indent=3, sort_keys=True).encode() + b"\n"
    assert (await post(client, raw, pd_signature(raw, PD_SECRET))).status == 202
    # The same JSON re-serialised is a different body: its signature does not fit.
    problem = await problem_of(await post(client, raw, _valid_first(BODY)), 403)
    assert "does not match" in problem["detail"]


@pytest.mark.parametrize(
    "tamper",
    [
        lambda b: b.replace(b"API down", b"API fine"),
        lambda b: b + b" ",
        lambda b: b[:-1] + b" }",
        lambda b: b.replace(b"incident.triggered", b"incident.resolved"),
    ],
    ids=["title", "trailing-space", "inner-space", "event-type"],
)
async def test_tampered_body_refused(make_client, tamper):
    """A body changed after signing is refused with 403."""
    client = await make_client()
    problem = await problem_of(await post(client, tamper(BODY), _both(BODY)), 403)
    assert "does not match any configured secret" in problem["detail"]


async def test_wrong_secret_refused(make_client):
    """A signature made with a secret we do not hold is refused with 403."""
    client = await make_client()
    sig = pd_signature(BODY, "not-our-secret")
    problem = await problem_of(await post(client, BODY, sig), 403)
    assert "X-PagerDuty-Signature" in problem["detail"]


@pytest.mark.parametrize("header", [None, ""])
async def test_missing_signature(make_client, header):
    """No (or an empty) X-PagerDuty-Signature header is 400 naming the header."""
    client = await make_client()
    problem = await problem_of(await post(client, BODY, header), 400)
    assert "missing X-PagerDuty-Signature" in problem["detail"]


@pytest.mark.parametrize(
    "header",
    [
        "v1=nothex",
        "v1=" + "g" * 64,
        "v1=" + "a" * 63,
        "v1=" + "a" * 65,
        "v1:" + "a" * 64,
        "a" * 64,
        "v1=",
        ",",
        " , ",
    ],
)
async def test_malformed_signature(make_client, header):
    """A header that is not comma-separated v1=<64 hex> is 400 saying the format."""
    client = await make_client()
    problem = await problem_of(await post(client, BODY, header), 400)
    assert "malformed X-PagerDuty-Signature" in problem["detail"]
    assert "v1=<64 hex digits>" in problem["detail"]


@pytest.mark.parametrize("header", ["v2=" + "a" * 64, "sha256=" + "a" * 64])
async def test_no_v1_entry(make_client, header):
    """A header with only entries of other versions is 400 saying v1 is needed."""
    client = await make_client()
    problem = await problem_of(await post(client, BODY, header), 400)
    assert "no v1=<64 hex digits> entry" in problem["detail"]


@pytest.mark.parametrize("position", ["after", "before"])
async def test_future_version_entry_ignored(make_client, position):
    """A valid v1 entry next to a future v2 entry is accepted: only v1 is used."""
    client = await make_client()
    future = "v2=" + "b" * 86
    sig = _valid_first(BODY)
    header = f"{sig},{future}" if position == "after" else f"{future}, {sig}"
    response = await post(client, BODY, header)
    assert response.status == 202, await response.text()


async def test_malformed_entry_next_to_valid_one(make_client):
    """One malformed entry spoils the header even when another entry is valid."""
    client = await make_client()
    header = f"{_valid_first(BODY)},v1=nothex"
    await problem_of(await post(client, BODY, header), 400)


async def test_signature_checked_before_json(make_client):
    """An unsigned or badly signed body is refused before it is parsed."""
    client = await make_client()
    garbage = b"{not json"
    await problem_of(await post(client, garbage, ZEROS), 403)
    problem = await problem_of(
        await post(client, garbage, pd_signature(garbage, PD_SECRET)), 400
    )
    assert "not valid JSON" in problem["detail"]


async def test_signed_schema_error_has_pointer(make_client):
    """A signed body that misses required fields is 400 with their pointers."""
    client = await make_client()
    body = encode({"event": {"event_type": "incident.triggered"}})
    problem = await problem_of(await post(client, body, _valid_first(body)), 400)
    pointers = {e["pointer"] for e in problem["errors"]}
    assert {"/event/id"} <= pointers


async def test_rejections_counted_as_pagerduty(make_client):
    """Signature failures are counted under source pagerduty and their outcome."""
    client = await make_client()
    await post(client, BODY, None)
    await post(client, BODY, ZEROS)
    await post(client, BODY, _valid_first(BODY))
    text = await (await client.get("/metrics")).text()
    counts = {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "receiver_webhooks_total"
        and sample.labels["source"] == "pagerduty"
        and sample.value
    }
    assert counts == {"bad_request": 1, "forbidden": 1, "accepted": 1}


# ---------------------------------------------------------------- events and labels


async def test_triggered_maps_labels(make_client):
    """incident.triggered becomes a firing alert with the documented labels."""
    client = await make_client()
    resp = await post(client, BODY, _valid_first(BODY))
    assert resp.status == 202
    [record] = await wait_for_decisions(client, {"fingerprint": "pd-PGR0VU2"})
    assert record["source"] == "pagerduty"
    assert record["status"] == "firing"
    assert record["actionable"] is True
    labels = record["labels"]
    assert labels["alertname"] == "API down"
    assert labels["incident_key"] == "d3640fbd41094207a1c11e58e46b1662"
    assert labels["service"] == "checkout-api"
    assert labels["service_id"] == "PF9KMXH"
    assert labels["priority"] == "P1"
    assert labels["urgency"] == "high"
    assert labels["incident_id"] == "PGR0VU2"
    assert labels["incident_number"] == "2"
    assert labels["incident_status"] == "triggered"
    assert labels["event_type"] == "incident.triggered"
    assert labels["escalation_policy"] == "Default"
    assert record["startsAt"] == "2024-05-06T07:00:00.000Z"
    assert record["annotations"] == {"summary": "API down"}
    assert record["refs"]["incident_url"].endswith("/incidents/PGR0VU2")
    assert [m["rule"] for m in record["matches"]] == ["pd-triggered"]
    assert record["matches"][0]["severity"] == "P2"


async def test_alertname_from_setting(make_client):
    """pagerduty_alertname_from picks another mapped label as alertname."""
    client = await make_client(full_settings(pagerduty_alertname_from="service"))
    assert (await post(client, BODY, _valid_first(BODY))).status == 202
    [record] = await wait_for_decisions(client, {"fingerprint": "pd-PGR0VU2"})
    assert record["labels"]["alertname"] == "checkout-api"


async def test_resolved_is_resolved(make_client):
    """incident.resolved is a resolved alert; status-any rules still match it."""
    client = await make_client()
    body = encode(incident_event("incident.resolved"))
    assert (await post(client, body, _valid_first(body))).status == 202
    [record] = await wait_for_decisions(client, {"fingerprint": "pd-PGR0VU2"})
    assert record["status"] == "resolved"
    assert record["actionable"] is True
    assert [m["rule"] for m in record["matches"]] == ["pd-any"]


@pytest.mark.parametrize(
    ("payload", "event_type"),
    [
        (incident_event("incident.acknowledged"), "incident.acknowledged"),
        (note_event(), "incident.annotated"),
        (incident_event("incident.unacknowledged"), "incident.unacknowledged"),
        (incident_event("incident.delegated"), "incident.delegated"),
    ],
)
async def test_recorded_only_events(make_client, payload, event_type):
    """acknowledged/annotated are accepted (202) but match no rule at all."""
    client = await make_client()
    body = encode(payload)
    resp = await post(client, body, _valid_first(body))
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["event_type"] == event_type
    [record] = await wait_for_decisions(client, {"fingerprint": "pd-PGR0VU2"})
    assert record["actionable"] is False
    assert record["labels"]["incident_id"] == "PGR0VU2"
    # The catch-all pd-any rule (status any) would match if this were evaluated.
    assert record["matches"] == []
    assert any("recorded only" in note for note in record["notes"])


async def test_annotated_keeps_the_note(make_client):
    """incident.annotated keeps the note text and the incident it belongs to."""
    client = await make_client()
    body = encode(note_event())
    assert (await post(client, body, _valid_first(body))).status == 202
    [record] = await wait_for_decisions(client, {"fingerprint": "pd-PGR0VU2"})
    assert record["annotations"]["note"] == "Looking into it"
    assert record["refs"]["incident_url"].endswith("/incidents/PGR0VU2")
    assert record["refs"]["agent"] == "Tenex Engineer"
