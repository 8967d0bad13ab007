"""The HTTP edge through create_app: every rejection, acceptance, and the read API."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import (
    BASIC_PASSWORD,
    MAX_BODY,
    OTHER_TOKEN,
    PD_SECRET,
    ROUTING_KEY,
    SECRETS,
    TOKEN,
    basic,
    bearer,
    flat_settings,
    full_settings,
    pd_signature,
    wait_for_decisions,
)
from prometheus_client.parser import text_string_to_metric_families

AM = "/webhooks/alertmanager"
PD = "/webhooks/pagerduty"
ENQUEUE = "/v2/enqueue"
JSON = {"Content-Type": "application/json"}
PROBLEM = "application/problem+json"


def am_alert(fingerprint: str = "fp-1", **labels: str) -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": {
            "alertname": "KubePodCrashLooping",
            "namespace": "prod-eu",
            "deployment": "api",
            **labels,
        },
        "annotations": {"summary": "api is crash looping"},
        "startsAt": "2024-05-06T07:00:00.123Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.test/graph",
        "fingerprint": fingerprint,
    }


def am_payload(*alerts: dict[str, Any]) -> dict[str, Any]:
    alerts = alerts or (am_alert(),)
    return {
        "version": "4",
        "groupKey": '{}:{alertname="KubePodCrashLooping"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "receiver",
        "groupLabels": {"alertname": "KubePodCrashLooping"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.test:9093",
        "alerts": list(alerts),
    }


def enqueue_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": "disk-full-db-1",
        "payload": {
            "summary": "Disk full on db-1",
            "source": "db-1",
            "severity": "critical",
            "class": "DiskFull",
            "custom_details": {"namespace": "prod"},
        },
    }
    body.update(overrides)
    return body


def pd_body(event_type: str = "incident.triggered") -> bytes:
    return json.dumps(
        {
            "event": {
                "id": "01EVENT",
                "event_type": event_type,
                "resource_type": "incident",
                "occurred_at": "2024-05-06T07:05:00.000Z",
                "data": {
                    "id": "PINC123",
                    "type": "incident",
                    "number": 42,
                    "status": "triggered",
                    "title": "API down",
                    "urgency": "high",
                    "service": {"id": "PSVC1", "summary": "api"},
                },
            }
        }
    ).encode()


def assert_problem(resp: Any, body: dict[str, Any], status: int) -> None:
    assert resp.status == status
    assert resp.content_type == PROBLEM
    assert body["status"] == status
    assert body["type"].startswith("urn:receiver:problem:")
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]


async def events_problem(resp: Any, status: int) -> dict[str, Any]:
    """Assert PagerDuty's Events API error shape; return it with a joined detail."""
    assert resp.status == status
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"status", "message", "errors"}
    if status == 400:
        assert body["status"] == "invalid event"
        assert body["message"] == "Event object is invalid"
    assert isinstance(body["errors"], list)
    assert body["errors"]
    assert all(isinstance(e, str) and e for e in body["errors"])
    return {**body, "detail": " ".join([body["message"], *body["errors"]])}


async def stored_payloads(client: Any) -> list[dict[str, Any]]:
    resp = await client.get("/api/v1/payloads", headers=bearer())
    assert resp.status == 200
    return (await resp.json())["payloads"]


# ---------------------------------------------------------------- rejections

BIG = b'{"pad": "' + b"x" * (MAX_BODY + 10) + b'"}'


async def _chunks(data: bytes, size: int = 512):
    for i in range(0, len(data), size):
        yield data[i : i + size]


REJECTIONS = [
    # (id, path, headers, body, status, detail fragment)
    ("json-syntax", AM, {**JSON, **bearer()}, b'{"alerts": [', 400, "not valid JSON"),
    ("json-not-utf8", AM, {**JSON, **bearer()}, b'{"a": "\xff"}', 400, "not UTF-8"),
    ("empty-body", AM, {**JSON, **bearer()}, b"", 400, "empty body"),
    ("schema", AM, {**JSON, **bearer()}, b'{"alerts": []}', 400, "/status"),
    ("no-auth", AM, JSON, json.dumps(am_payload()).encode(), 401, "Authorization"),
    ("bad-scheme", AM, {**JSON, "Authorization": "Token abc"}, b"{}", 401, "Bearer"),
    ("wrong-token", AM, {**JSON, **bearer("nope")}, b"{}", 403, "not accepted"),
    ("wrong-basic", AM, {**JSON, **basic(password="nope")}, b"{}", 403, "not accepted"),
    (
        "malformed-basic",
        AM,
        {**JSON, "Authorization": "Basic !!!"},
        b"{}",
        401,
        "malformed basic",
    ),
    ("too-large", AM, {**JSON, **bearer()}, BIG, 413, "cap"),
    (
        "text-plain",
        AM,
        {"Content-Type": "text/plain", **bearer()},
        b"{}",
        415,
        "application/json",
    ),
    ("form", AM, {"Content-Type": "application/x-www-form-urlencoded"}, b"a", 401, ""),
    ("pd-unsigned", PD, JSON, pd_body(), 400, "X-PagerDuty-Signature"),
    (
        "pd-bad-sig",
        PD,
        {**JSON, "X-PagerDuty-Signature": pd_signature(b"other", PD_SECRET)},
        pd_body(),
        403,
        "does not match",
    ),
    (
        "pd-text",
        PD,
        {
            "Content-Type": "text/plain",
            "X-PagerDuty-Signature": pd_signature(pd_body(), PD_SECRET),
        },
        pd_body(),
        415,
        "Content-Type",
    ),
    ("decisions-no-auth", "/api/v1/decisions", {}, None, 401, "Authorization"),
    ("payloads-no-auth", "/api/v1/payloads", {}, None, 401, "Authorization"),
    ("payload-no-auth", "/api/v1/payloads/x", {}, None, 401, "Authorization"),
    ("replay-no-auth", "/api/v1/replay", JSON, b"{}", 401, "Authorization"),
    ("unknown-path", "/nope", {}, None, 404, "/openapi.json"),
    ("wrong-method", "/healthz", JSON, b"{}", 405, "POST"),
    ("unknown-payload", "/api/v1/payloads/none", bearer(), None, 404, "none"),
    ("bad-limit", "/api/v1/decisions?limit=0", bearer(), None, 400, "limit"),
    ("bad-limit-int", "/api/v1/decisions?limit=x", bearer(), None, 400, "limit"),
    # A misspelt filter was ignored: the whole list, as if it were the filtered one.
    (
        "decisions-unknown-param",
        "/api/v1/decisions?alertname=SarkDatabaseDown",
        bearer(),
        None,
        400,
        (
            "unknown query parameter 'alertname'; /api/v1/decisions takes: cursor, "
            "decision, fingerprint, limit, payload_id, playbook, rule, since"
        ),
    ),
    (
        "decisions-bad-decision",
        "/api/v1/decisions?decision=dry-run",
        bearer(),
        None,
        400,
        (
            "decision must be one of dry_run, executed, failed, skipped, "
            "awaiting_approval (got 'dry-run')"
        ),
    ),
    (
        "payloads-unknown-param",
        "/api/v1/payloads?source=pagerduty&since=yesterday",
        bearer(),
        None,
        400,
        (
            "unknown query parameters 'since', 'source'; /api/v1/payloads takes: "
            "cursor, limit"
        ),
    ),
    (
        "incidents-unknown-param",
        "/api/v1/incidents?status=open",
        bearer(),
        None,
        400,
        "takes: cursor, limit, severity, since, state",
    ),
    (
        "approvals-unknown-param",
        "/api/v1/approvals?state=x",
        bearer(),
        None,
        400,
        "'state'",
    ),
    (
        "parked-unknown-param",
        "/api/v1/parked?cursor=x",
        bearer(),
        None,
        400,
        "takes: limit",
    ),
]


LISTS = (
    "/api/v1/decisions",
    "/api/v1/payloads",
    "/api/v1/approvals",
    "/api/v1/incidents",
    "/api/v1/parked",
    "/api/v1/sinks/parked",
)


@pytest.mark.parametrize("path", LISTS)
async def test_a_list_takes_exactly_the_parameters_its_spec_documents(
    make_client, path
):
    """The parameters a list accepts are those /openapi.json documents for it.

    Each handler names the ones it takes; the spec is written apart. Held
    equal, a filter documented but refused (or taken but undocumented) is a
    failure here, not a client's surprise.
    """
    client = await make_client()
    spec = await (await client.get("/openapi.json")).json()
    documented = sorted(
        p["name"] for p in spec["paths"][path]["get"].get("parameters", [])
    )
    resp = await client.get(path, params={"zz-not-a-parameter": "1"}, headers=bearer())
    problem = await resp.json(content_type=PROBLEM)
    assert resp.status == 400, problem
    takes = problem["detail"].rpartition(" takes: ")[2]
    assert takes.split(", ") == documented


@pytest.mark.parametrize(
    "case", [pytest.param(case[1:], id=case[0]) for case in REJECTIONS]
)
async def test_rejections_are_problem_json(make_client, case):
    """Every rejection is application/problem+json with type/title/status/detail."""
    path, headers, body, status, fragment = case
    client = await make_client()
    if body is None:
        resp = await client.get(path, headers=headers)
    else:
        resp = await client.post(path, data=body, headers=headers)
    problem = await resp.json(content_type=PROBLEM)
    assert_problem(resp, problem, status)
    assert fragment in problem["detail"]
    assert resp.headers["X-Request-Id"]
    if status == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    for secret in SECRETS:
        assert secret not in json.dumps(problem)
    assert await stored_payloads(client) == []


EVENTS_REJECTIONS = [
    (
        "enqueue-key",
        ENQUEUE,
        JSON,
        json.dumps(enqueue_body(routing_key="unknown")).encode(),
        403,
        "routing_key",
    ),
    (
        "enqueue-schema",
        ENQUEUE,
        JSON,
        json.dumps(enqueue_body(event_action="explode")).encode(),
        400,
        "/event_action",
    ),
    ("enqueue-json", ENQUEUE, JSON, b"[1, 2", 400, "not valid JSON"),
    ("enqueue-not-json", ENQUEUE, {"Content-Type": "text/plain"}, b"{}", 415, "json"),
    ("enqueue-too-big", ENQUEUE, JSON, BIG, 413, "cap"),
    (
        "change-key",
        "/v2/change/enqueue",
        JSON,
        json.dumps(
            {"routing_key": "unknown", "payload": {"summary": "deploy"}}
        ).encode(),
        403,
        "routing_key",
    ),
    (
        "change-schema",
        "/v2/change/enqueue",
        JSON,
        json.dumps({"routing_key": ROUTING_KEY, "payload": {}}).encode(),
        400,
        "/payload/summary",
    ),
]


@pytest.mark.parametrize(
    "case", [pytest.param(case[1:], id=case[0]) for case in EVENTS_REJECTIONS]
)
async def test_events_api_rejections_are_pagerduty_shaped(make_client, case):
    """Events API rejections use PagerDuty's {status, message, errors} shape."""
    path, headers, body, status, fragment = case
    client = await make_client()
    resp = await client.post(path, data=body, headers=headers)
    problem = await events_problem(resp, status)
    assert fragment in problem["detail"]
    assert resp.headers["X-Request-Id"]
    for secret in SECRETS:
        assert secret not in json.dumps(problem)
    assert await stored_payloads(client) == []


@pytest.mark.parametrize(
    ("mutate", "pointer"),
    [
        (lambda p: p["alerts"][0].pop("fingerprint"), "/alerts/0/fingerprint"),
        (lambda p: p["alerts"][0].update(status="burning"), "/alerts/0/status"),
        (lambda p: p["alerts"][0].update(startsAt="yesterday"), "/alerts/0/startsAt"),
        (lambda p: p["alerts"][0]["labels"].update(n=1), "/alerts/0/labels/n"),
        (lambda p: p.update(alerts={"a": 1}), "/alerts"),
        (lambda p: p.pop("status"), "/status"),
    ],
)
async def test_schema_error_names_field(make_client, mutate, pointer):
    """A schema error is 400 with the failing field as a JSON pointer in errors[]."""
    client = await make_client()
    payload = am_payload()
    mutate(payload)
    resp = await client.post(AM, json=payload, headers=bearer())
    problem = await resp.json(content_type=PROBLEM)
    assert_problem(resp, problem, 400)
    assert problem["type"].endswith("invalid-schema")
    assert pointer in [e["pointer"] for e in problem["errors"]]
    assert all(e["detail"] for e in problem["errors"])
    assert pointer in problem["detail"]


async def test_schema_error_lists_every_field(make_client):
    """Several bad fields are all listed, and the detail says how many more."""
    client = await make_client()
    payload = am_payload(am_alert("a"), am_alert("b"))
    del payload["alerts"][0]["fingerprint"]
    del payload["alerts"][1]["labels"]
    resp = await client.post(AM, json=payload, headers=bearer())
    problem = await resp.json(content_type=PROBLEM)
    pointers = {e["pointer"] for e in problem["errors"]}
    assert {"/alerts/0/fingerprint", "/alerts/1/labels"} <= pointers
    assert "more" in problem["detail"]


async def test_too_large_by_content_length_is_not_read(make_client):
    """A declared Content-Length over the cap is refused with 413 up front."""
    client = await make_client()
    resp = await client.post(AM, data=BIG, headers={**JSON, **bearer()})
    problem = await resp.json(content_type=PROBLEM)
    assert_problem(resp, problem, 413)
    assert f"{len(BIG)} bytes" in problem["detail"]
    assert str(MAX_BODY) in problem["detail"]


async def test_too_large_chunked(make_client):
    """A chunked body without Content-Length is cut off at the cap with 413."""
    client = await make_client()
    resp = await client.post(AM, data=_chunks(BIG), headers={**JSON, **bearer()})
    assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in resp.request_info.headers
    problem = await resp.json(content_type=PROBLEM)
    assert_problem(resp, problem, 413)
    assert str(MAX_BODY) in problem["detail"]
    assert await stored_payloads(client) == []


async def test_chunked_under_cap_is_accepted(make_client):
    """A chunked body under the cap is read whole and accepted."""
    client = await make_client()
    body = json.dumps(am_payload()).encode()
    resp = await client.post(AM, data=_chunks(body, 64), headers={**JSON, **bearer()})
    assert resp.status == 202, await resp.text()


async def test_body_exactly_at_cap_is_accepted(make_client):
    """The cap is inclusive: a body of exactly max_body_bytes passes the size check."""
    client = await make_client()
    body = json.dumps(am_payload()).encode()
    body = body[:-1] + b" " * (MAX_BODY - len(body)) + b"}"
    assert len(body) == MAX_BODY
    resp = await client.post(AM, data=body, headers={**JSON, **bearer()})
    assert resp.status == 202, await resp.text()


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "application/vnd.x+json"],
)
async def test_json_content_types_accepted(make_client, content_type):
    """application/json (with parameters) and any +json type are accepted."""
    client = await make_client()
    resp = await client.post(
        AM,
        data=json.dumps(am_payload()),
        headers={"Content-Type": content_type, **bearer()},
    )
    assert resp.status == 202, await resp.text()


# ---------------------------------------------------------------- auth


@pytest.mark.parametrize(
    "headers",
    [
        bearer(TOKEN),
        bearer(OTHER_TOKEN),
        {"Authorization": f"bearer {TOKEN}"},
        basic(),
    ],
    ids=["token", "second-token", "lowercase-scheme", "basic"],
)
async def test_credentials_accepted(make_client, headers):
    """Any configured bearer token, or the basic credentials, is accepted."""
    client = await make_client()
    resp = await client.post(AM, json=am_payload(), headers=headers)
    assert resp.status == 202, await resp.text()


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (basic(user="other"), 403),
        (basic(password=BASIC_PASSWORD + "x"), 403),
        (bearer(TOKEN + "x"), 403),
        (bearer(TOKEN[:-1]), 403),
        (bearer(""), 403),
        ({"Authorization": f"Basic {TOKEN}"}, 401),
        ({"Authorization": ""}, 401),
    ],
    ids=[
        "basic-user",
        "basic-password",
        "token-longer",
        "token-prefix",
        "empty",
        "x",
        "y",
    ],
)
async def test_credentials_rejected(make_client, headers, status):
    """Near-miss credentials are refused: 403 when wrong, 401 when unreadable."""
    client = await make_client()
    resp = await client.post(AM, json=am_payload(), headers=headers)
    assert_problem(resp, await resp.json(content_type=PROBLEM), status)


async def test_basic_not_configured_takes_only_a_token_as_password(make_client):
    """Without basic_auth, basic credentials count only with a token as password."""
    client = await make_client(full_settings(basic_auth=None))
    resp = await client.post(AM, json=am_payload(), headers=basic())
    problem = await resp.json(content_type=PROBLEM)
    assert_problem(resp, problem, 403)
    resp = await client.post(AM, json=am_payload(), headers=basic("am", TOKEN))
    assert resp.status == 202


async def test_auth_checked_before_body(make_client):
    """An unauthenticated request is refused before its body is judged."""
    client = await make_client()
    resp = await client.post(AM, data=BIG, headers={"Content-Type": "text/plain"})
    assert resp.status == 401


# ---------------------------------------------------------------- acceptance


async def test_accepted_with_id_and_journaled(make_client):
    """A good webhook answers 202 with the journal id, and the journal holds it."""
    client = await make_client()
    resp = await client.post(
        AM, json=am_payload(am_alert("a"), am_alert("b")), headers=bearer()
    )
    assert resp.status == 202
    body = await resp.json()
    assert body["status"] == "accepted"
    assert body["alerts"] == 2
    resp = await client.get(f"/api/v1/payloads/{body['id']}", headers=bearer())
    assert resp.status == 200
    stored = await resp.json()
    assert stored["source"] == "alertmanager"
    assert stored["payload"] == am_payload(am_alert("a"), am_alert("b"))


async def test_unknown_fields_tolerated(make_client):
    """Fields newer Alertmanagers add (notification_reason, routeLabels) are fine."""
    client = await make_client()
    alert = {**am_alert(), "notification_reason": "repeat", "silencedBy": []}
    payload = {
        **am_payload(alert),
        "notification_reason": "new_alert",
        "routeLabels": {"team": "sre"},
        "somethingFromTheFuture": {"nested": [1, 2, 3]},
    }
    resp = await client.post(AM, json=payload, headers=bearer())
    assert resp.status == 202, await resp.text()


@pytest.mark.parametrize("digits", range(10))
async def test_timestamps_with_any_fraction(make_client, digits):
    """A startsAt with 0..9 fractional digits is accepted and kept to the ms."""
    client = await make_client()
    fraction = "." + "123456789"[:digits] if digits else ""
    alert = {
        **am_alert(f"ts-{digits}"),
        "startsAt": f"2024-05-06T07:00:01{fraction}Z",
    }
    resp = await client.post(AM, json=am_payload(alert), headers=bearer())
    assert resp.status == 202, await resp.text()
    [record] = await wait_for_decisions(client, {"fingerprint": f"ts-{digits}"})
    millis = ("123456789"[:digits] + "000")[:3]
    assert record["startsAt"] == f"2024-05-06T07:00:01.{millis}Z"


async def test_timestamp_offsets_normalised(make_client):
    """A startsAt with a UTC offset is stored as the same instant in UTC."""
    client = await make_client()
    alert = {**am_alert("tz"), "startsAt": "2024-05-06T09:00:00.5+02:00"}
    resp = await client.post(AM, json=am_payload(alert), headers=bearer())
    assert resp.status == 202
    [record] = await wait_for_decisions(client, {"fingerprint": "tz"})
    assert record["startsAt"] == "2024-05-06T07:00:00.500Z"


# ---------------------------------------------------------------- Events API v2


async def test_enqueue_accepted(make_client):
    """A known routing key is accepted with PagerDuty's success shape."""
    client = await make_client()
    resp = await client.post(ENQUEUE, json=enqueue_body())
    assert resp.status == 202
    body = await resp.json()
    assert body["status"] == "success"
    assert body["dedup_key"] == "disk-full-db-1"
    assert body["id"]
    [record] = await wait_for_decisions(client, {"rule": "enqueue"})
    assert record["labels"]["alertname"] == "DiskFull"
    assert record["labels"]["namespace"] == "prod"
    assert record["labels"]["dedup_key"] == "disk-full-db-1"


async def test_enqueue_generates_stable_dedup_key(make_client):
    """Without a dedup_key the receiver derives the same one for the same body."""
    client = await make_client()
    body = enqueue_body()
    del body["dedup_key"]
    first = await (await client.post(ENQUEUE, json=body)).json()
    second = await (await client.post(ENQUEUE, json=body)).json()
    assert first["status"] == "success"
    assert first["dedup_key"]
    assert first["dedup_key"] == second["dedup_key"]
    assert first["id"]
    assert "id" not in second  # folded into the open alert: nothing journaled


@pytest.mark.parametrize("action", ["acknowledge", "resolve"])
async def test_enqueue_ack_resolve_need_dedup_key(make_client, action):
    """Events v2 acknowledge and resolve without a dedup_key are 400 and say why."""
    client = await make_client()
    body = {"routing_key": ROUTING_KEY, "event_action": action}
    resp = await client.post(ENQUEUE, json=body)
    problem = await events_problem(resp, 400)
    assert f"dedup_key is required for event_action {action}" in problem["detail"]


@pytest.mark.parametrize("action", ["acknowledge", "resolve"])
async def test_enqueue_ack_resolve_with_dedup_key(make_client, action):
    """Events v2 acknowledge and resolve with a dedup_key are accepted and echo it."""
    client = await make_client()
    body = {"routing_key": ROUTING_KEY, "event_action": action, "dedup_key": "k1"}
    resp = await client.post(ENQUEUE, json=body)
    assert resp.status == 202
    assert (await resp.json())["dedup_key"] == "k1"


async def test_enqueue_trigger_needs_payload(make_client):
    """A trigger without payload is a schema error naming the rule it broke."""
    client = await make_client()
    resp = await client.post(ENQUEUE, json=enqueue_body(payload=None))
    problem = await events_problem(resp, 400)
    assert "payload is required" in problem["detail"]


@pytest.mark.parametrize(
    ("field", "value", "pointer"),
    [
        ("severity", "fatal", "/payload/severity"),
        ("summary", "", "/payload/summary"),
        ("source", None, "/payload/source"),
    ],
)
async def test_enqueue_payload_schema(make_client, field, value, pointer):
    """Bad Events v2 payload fields are 400 with their pointer."""
    client = await make_client()
    body = enqueue_body()
    body["payload"][field] = value
    resp = await client.post(ENQUEUE, json=body)
    problem = await events_problem(resp, 400)
    assert any(e.startswith(f"{pointer}: ") for e in problem["errors"])


async def test_enqueue_missing_routing_key(make_client):
    """A request without routing_key is a 400 schema error, not an open door."""
    client = await make_client()
    body = enqueue_body()
    del body["routing_key"]
    resp = await client.post(ENQUEUE, json=body)
    problem = await events_problem(resp, 400)
    assert any(e.startswith("/routing_key: ") for e in problem["errors"])


# ---------------------------------------------------------------- no credentials


async def test_loopback_without_credentials_is_open(make_client):
    """On loopback with no credentials every webhook and the API are open."""
    client = await make_client(flat_settings(host="127.0.0.1", max_body_bytes=MAX_BODY))
    resp = await client.post(AM, json=am_payload())
    assert resp.status == 202, await resp.text()
    resp = await client.post(ENQUEUE, json=enqueue_body(routing_key="anything"))
    assert resp.status == 202, await resp.text()
    resp = await client.post(PD, data=pd_body(), headers=JSON)
    assert resp.status == 202, await resp.text()
    resp = await client.get("/api/v1/decisions")
    assert resp.status == 200


@pytest.mark.parametrize("host", ["localhost", "::1", "127.0.0.2"])
async def test_other_loopback_names_are_open(make_client, host):
    """The name localhost and every loopback address count as loopback."""
    client = await make_client(flat_settings(host=host))
    resp = await client.post(AM, json=am_payload())
    assert resp.status == 202


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        (AM, json.dumps(am_payload()).encode(), JSON),
        (PD, pd_body(), JSON),
        (ENQUEUE, json.dumps(enqueue_body()).encode(), JSON),
        ("/api/v1/decisions", None, {}),
    ],
    ids=["alertmanager", "pagerduty", "events_v2", "api"],
)
async def test_not_loopback_without_credentials_is_disabled(
    make_client, path, body, headers
):
    """Beyond loopback with no credentials each endpoint refuses with 403."""
    client = await make_client(flat_settings(host="0.0.0.0"))  # noqa: S104
    if body is None:
        resp = await client.get(path, headers=headers)
    else:
        resp = await client.post(path, data=body, headers=headers)
    if path == ENQUEUE:
        problem = await events_problem(resp, 403)
    else:
        problem = await resp.json(content_type=PROBLEM)
        assert_problem(resp, problem, 403)
    assert "disabled" in problem["detail"] or "none is configured" in problem["detail"]
    assert "RECEIVER_" in problem["detail"]


def test_check_safe_refuses_open_non_loopback():
    """Settings.check_safe refuses to listen beyond loopback without credentials."""
    from receiver.errors import ConfigError  # noqa: PLC0415

    with pytest.raises(ConfigError, match="without credentials"):
        flat_settings(host="0.0.0.0").check_safe()  # noqa: S104
    flat_settings(host="127.0.0.1").check_safe()
    full_settings().check_safe()


# ---------------------------------------------------------------- operations


async def test_healthz(make_client):
    """/healthz answers 200 ok without credentials."""
    client = await make_client()
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


async def test_readyz(make_client):
    """/readyz reports rules loaded and the store reachable."""
    client = await make_client()
    resp = await client.get("/readyz")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ready"
    assert body["rules"] == 4
    assert body["store"] == "ok"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_metrics(make_client):
    """/metrics is Prometheus text: receiver_, process_, python_; webhooks counted."""
    client = await make_client()
    assert (await client.post(AM, json=am_payload(), headers=bearer())).status == 202
    assert (await client.post(AM, json=am_payload(), headers=bearer())).status == 202
    assert (await client.post(AM, json=am_payload())).status == 401
    assert (await client.post(ENQUEUE, json=enqueue_body())).status == 202
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    text = await resp.text()
    families = list(text_string_to_metric_families(text))
    assert families
    prefixes = ("receiver_", "process_", "python_")
    assert all(f.name.startswith(prefixes) for f in families), [
        f.name for f in families if not f.name.startswith(prefixes)
    ]
    samples = _samples(text)
    webhooks = "receiver_webhooks_total"
    assert (
        samples[(webhooks, (("outcome", "accepted"), ("source", "alertmanager")))] == 2
    )
    assert (
        samples[(webhooks, (("outcome", "unauthorized"), ("source", "alertmanager")))]
        == 1
    )
    assert samples[(webhooks, (("outcome", "accepted"), ("source", "events_v2")))] == 1
    assert samples[("receiver_rules_loaded", ())] == 4


async def test_metrics_count_each_outcome(make_client):
    """Each rejection increments the webhooks counter under its own outcome."""
    client = await make_client()
    await client.post(AM, data=b"{", headers={**JSON, **bearer()})
    await client.post(
        AM, data=b"{}", headers={"Content-Type": "text/plain", **bearer()}
    )
    await client.post(AM, data=BIG, headers={**JSON, **bearer()})
    await client.post(AM, json=am_payload(), headers=bearer("wrong"))
    await client.post(PD, data=pd_body(), headers=JSON)
    samples = _samples(await (await client.get("/metrics")).text())
    name = "receiver_webhooks_total"
    for source, outcome in [
        ("alertmanager", "bad_request"),
        ("alertmanager", "unsupported_media"),
        ("alertmanager", "too_large"),
        ("alertmanager", "forbidden"),
        ("pagerduty", "bad_request"),
    ]:
        key = (name, (("outcome", outcome), ("source", source)))
        assert samples.get(key) == 1, (source, outcome)


async def test_openapi_lists_every_route(make_client):
    """/openapi.json documents every path the app serves."""
    client = await make_client()
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    spec = await resp.json()
    assert spec["openapi"].startswith("3.")
    routes = {
        r.resource.canonical
        for r in client.app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    # /-/reload is served when the app knows its rule paths (receiver serve).
    assert routes == set(spec["paths"]) - {"/-/reload"}
    problem = spec["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail"}


# ---------------------------------------------------------------- read API


async def test_decisions_newest_first_with_filters(make_client):
    """Decisions are listed newest first and filter by fingerprint and rule."""
    client = await make_client()
    first = am_payload(am_alert("fp-old"))
    resp = await client.post(AM, json=first, headers=bearer())
    assert resp.status == 202
    await wait_for_decisions(client, {"fingerprint": "fp-old"})
    second = am_payload(am_alert("fp-new", namespace="dev"))
    resp = await client.post(AM, json=second, headers=bearer())
    new_id = (await resp.json())["id"]
    await wait_for_decisions(client, {"fingerprint": "fp-new"})

    everything = await wait_for_decisions(client, {}, count=2)
    assert [d["fingerprint"] for d in everything] == ["fp-new", "fp-old"]

    matched = await wait_for_decisions(client, {"rule": "crashloop"})
    assert [d["fingerprint"] for d in matched] == ["fp-old"]
    [match] = matched[0]["matches"]
    assert match["rule"] == "crashloop"
    assert match["severity"] == "P1"
    assert match["playbook"] == "pods"
    [step] = match["steps"]
    assert step["kind"] == "diagnostic"
    assert step["decision"] == "dry_run"

    [unmatched] = await wait_for_decisions(client, {"fingerprint": "fp-new"})
    assert unmatched["matches"] == []
    assert unmatched["payload_id"] == new_id
    assert await wait_for_decisions(client, {"payload_id": new_id}) == [unmatched]

    resp = await client.get(
        "/api/v1/decisions", params={"rule": "no-such-rule"}, headers=bearer()
    )
    assert (await resp.json()) == {"decisions": [], "count": 0, "next_cursor": None}
    resp = await client.get(
        "/api/v1/decisions", params={"limit": "1"}, headers=bearer()
    )
    assert [d["fingerprint"] for d in (await resp.json())["decisions"]] == ["fp-new"]


@pytest.mark.parametrize(
    ("since", "count"),
    [
        ("2024-05-06T07:08:08Z", 1),
        ("2024-05-06T07:08:09Z", 1),
        ("2024-05-06T07:08:10Z", 0),
        ("2024-05-06T09:08:08+02:00", 1),  # same instants with an offset
        ("2024-05-06T09:08:10+02:00", 0),
        ("2024-05-06T03:08:10-04:00", 0),
    ],
)
async def test_decisions_since_filter(make_client, since, count):
    """The since filter compares instants, whatever offset the query uses."""
    client = await make_client()
    resp = await client.post(AM, json=am_payload(), headers=bearer())
    assert resp.status == 202
    await wait_for_decisions(client, {"fingerprint": "fp-1"})
    resp = await client.get(
        "/api/v1/decisions", params={"since": since}, headers=bearer()
    )
    assert resp.status == 200
    assert (await resp.json())["count"] == count


async def test_decisions_playbook_and_decision_filters(make_client):
    """Decisions filter by playbook and by step decision."""
    client = await make_client()
    await client.post(AM, json=am_payload(am_alert("m")), headers=bearer())
    await client.post(
        AM, json=am_payload(am_alert("u", alertname="Other")), headers=bearer()
    )
    await wait_for_decisions(client, {}, count=2)
    by_playbook = await wait_for_decisions(client, {"playbook": "pods"})
    assert [d["fingerprint"] for d in by_playbook] == ["m"]
    by_decision = await wait_for_decisions(client, {"decision": "dry_run"})
    assert [d["fingerprint"] for d in by_decision] == ["m"]
    resp = await client.get(
        "/api/v1/decisions", params={"since": "yesterday"}, headers=bearer()
    )
    problem = await resp.json(content_type=PROBLEM)
    assert_problem(resp, problem, 400)
    assert "since" in problem["detail"]


async def test_decisions_accept_basic_auth(make_client):
    """The read API takes the same basic credentials as the webhooks."""
    client = await make_client()
    resp = await client.get("/api/v1/decisions", headers=basic())
    assert resp.status == 200
    resp = await client.get("/api/v1/decisions", headers=bearer("wrong"))
    assert resp.status == 403


async def test_stored_payload_drops_secrets(make_client):
    """Authorization and X-PagerDuty-Signature never reach the stored payload."""
    client = await make_client()
    resp = await client.post(
        AM,
        json=am_payload(),
        headers={
            **bearer(),
            "X-Request-Id": "req-1",
            "User-Agent": "Alertmanager/0.25",
        },
    )
    am_id = (await resp.json())["id"]
    body = pd_body()
    resp = await client.post(
        PD,
        data=body,
        headers={**JSON, "X-PagerDuty-Signature": pd_signature(body, PD_SECRET)},
    )
    assert resp.status == 202, await resp.text()
    pd_id = (await resp.json())["id"]
    resp = await client.post(
        AM, json=am_payload(am_alert("basic")), headers={**basic(), "Cookie": "s=1"}
    )
    basic_id = (await resp.json())["id"]

    for payload_id in (am_id, pd_id, basic_id):
        resp = await client.get(f"/api/v1/payloads/{payload_id}", headers=bearer())
        assert resp.status == 200
        stored = await resp.json()
        assert stored["id"] == payload_id
        headers = {k.lower() for k in stored["headers"]}
        assert "authorization" not in headers
        assert "x-pagerduty-signature" not in headers
        assert "cookie" not in headers
        assert "content-type" in headers
        text = json.dumps(stored)
        for secret in SECRETS:
            assert secret not in text
    resp = await client.get(f"/api/v1/payloads/{am_id}", headers=bearer())
    stored = await resp.json()
    assert stored["headers"]["x-request-id"] == "req-1"
    assert stored["headers"]["user-agent"] == "Alertmanager/0.25"
    assert stored["payload"] == am_payload()

    resp = await client.get("/api/v1/payloads", headers=bearer())
    listed = (await resp.json())["payloads"]
    # Ids order by millisecond, then at random: payloads accepted within the same
    # millisecond may list in either order, so only the set is compared here.
    assert {p["id"] for p in listed} == {basic_id, pd_id, am_id}
    assert all("payload" not in p for p in listed)
    for p in listed:
        assert "authorization" not in {k.lower() for k in p["headers"]}


async def test_request_id_echoed(make_client):
    """A caller's X-Request-Id comes back on the response."""
    client = await make_client()
    resp = await client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert resp.headers["X-Request-Id"] == "abc-123"


async def test_replay_inline_payload_is_dry_run(make_client):
    """POST /api/v1/replay decides an inline payload without journaling it."""
    client = await make_client()
    resp = await client.post(
        "/api/v1/replay", json={"payload": am_payload()}, headers=bearer()
    )
    assert resp.status == 200, await resp.text()
    [alert] = (await resp.json())["alerts"]
    assert [m["rule"] for m in alert["matches"]] == ["crashloop"]
    assert alert["mode"] == "dry-run"
    assert await stored_payloads(client) == []
