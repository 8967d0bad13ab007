"""The edge under hostile clients.

Credentials before bodies, bounded reads, parsing that cannot 5xx, scoped
credentials, and empty credentials refused.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import json
import logging
from typing import Any

import pytest
import structlog
from conftest import (
    ADMIN_TOKEN,
    PD_SECRET,
    ROUTING_KEY,
    TOKEN,
    bearer,
    flat_settings,
    full_settings,
    pd_signature,
)
from live import http, live_server, raw, read_response
from pydantic import SecretStr
from test_web import AM, ENQUEUE, PD, PROBLEM, am_alert, am_payload, enqueue_body

from receiver.errors import ConfigError
from receiver.settings import Settings, load_settings

APPROVE_TOKEN = "tok-approve-5e1c"
REPLAY_TOKEN = "tok-replay-0a7d"
SCOPED_ADMIN_TOKEN = "tok-admin-77f0"
READ_TOKEN = "tok-read-19b2"


def scoped_settings(**overrides: Any) -> Settings:
    return full_settings(
        approve_tokens=[SecretStr(APPROVE_TOKEN)],
        replay_tokens=[SecretStr(REPLAY_TOKEN)],
        admin_tokens=[SecretStr(SCOPED_ADMIN_TOKEN)],
        read_tokens=[SecretStr(READ_TOKEN)],
        **overrides,
    )


def assert_raw_problem(
    resp: Any, status: int, fragment: str = "", *, events: bool = False
) -> dict[str, Any]:
    """A problem+json rejection, or PagerDuty's shape on the Events API."""
    assert resp.status == status, resp.body
    body = resp.json()
    if events:
        assert resp.headers["content-type"].startswith("application/json")
        assert set(body) == {"status", "message", "errors"}
        detail = " ".join([body["message"], *body["errors"]])
    else:
        assert resp.headers["content-type"].startswith(PROBLEM)
        assert body["status"] == status
        detail = body["detail"]
    assert fragment in detail, body
    return body


async def rejection(resp: Any, path: str) -> tuple[int, str]:
    """Status and detail of a rejection in whichever shape its endpoint uses."""
    if path.startswith("/v2/"):
        body = await resp.json()
        assert set(body) == {"status", "message", "errors"}
        return resp.status, " ".join([body["message"], *body["errors"]])
    problem = await resp.json(content_type=PROBLEM)
    return resp.status, problem["detail"] + json.dumps(problem.get("errors", []))


def pd_event(**data: Any) -> bytes:
    event = {
        "id": "01EVENT",
        "event_type": "incident.triggered",
        "resource_type": "incident",
        "occurred_at": "2024-05-06T07:05:00.000Z",
        "data": {"id": "PINC1", "type": "incident", "title": "API down", **data},
    }
    return json.dumps({"event": event}).encode()


# ---------------------------------------------------------------- credentials first


@pytest.mark.parametrize(
    ("path", "headers", "status", "fragment"),
    [
        (AM, {}, 401, "Authorization"),
        (PD, {}, 400, "X-PagerDuty-Signature"),
        (PD, {"X-PagerDuty-Signature": "v1=nothex"}, 400, "malformed"),
    ],
)
async def test_header_credentials_refused_before_any_body(
    web_rules, path, headers, status, fragment
):
    """A request whose header credentials fail is answered without its body."""
    async with live_server(full_settings(), web_rules) as live:
        # Claims a megabyte and sends none of it: only an answer that does not
        # wait for the body can arrive.
        resp = await raw(live, http("POST", path, b"", headers, length=1_000_000))
        assert_raw_problem(resp, status, fragment)


async def test_events_v2_disabled_refused_before_body(web_rules):
    """With no routing key configured beyond loopback, /v2/enqueue reads nothing."""
    settings = full_settings(routing_keys=[])
    async with live_server(settings, web_rules) as live:
        resp = await raw(live, http("POST", ENQUEUE, b"", length=1_000_000))
        assert_raw_problem(resp, 403, "RECEIVER_ROUTING_KEYS", events=True)


async def test_unauthenticated_bodies_have_a_tight_cap(make_client):
    """Events v2 and PagerDuty bodies over the unauthenticated cap are 413."""
    client = await make_client(
        full_settings(max_body_bytes=1 << 20, max_unauthenticated_body_bytes=2048)
    )
    body = json.dumps(enqueue_body(client="x" * 4000)).encode()
    resp = await client.post(
        ENQUEUE, data=body, headers={"Content-Type": "application/json"}
    )
    status, detail = await rejection(resp, ENQUEUE)
    assert status == 413
    assert "MAX_UNAUTHENTICATED_BODY_BYTES" in detail


async def test_slow_body_times_out_with_408(web_rules):
    """A body that stops arriving is answered 408 problem+json."""
    settings = full_settings(body_timeout="200ms")
    async with live_server(settings, web_rules) as live:
        resp = await raw(live, http("POST", AM, b'{"ver', bearer(), length=500))
        assert_raw_problem(resp, 408, "did not arrive")


async def test_unauthenticated_reads_are_capped(web_rules):
    """Past the cap of concurrent unauthenticated body reads, senders get 429."""
    settings = full_settings(unauthenticated_body_reads=2, body_timeout="30s")
    async with live_server(settings, web_rules) as live:
        held = []
        for _ in range(2):
            reader, writer = await asyncio.open_connection(live.host, live.port)
            writer.write(http("POST", ENQUEUE, b'{"rou', length=400))
            await writer.drain()
            held.append((reader, writer))
        status = None
        for _ in range(500):  # until both held reads are in their handlers
            resp = await raw(live, http("POST", ENQUEUE, b"{}"))
            status = resp.status
            if status == 429:
                assert_raw_problem(resp, 429, "UNAUTHENTICATED_BODY_READS", events=True)
                assert resp.headers["retry-after"] == "1"
                break
            await asyncio.sleep(0.01)
        assert status == 429
        for _, writer in held:
            writer.close()


async def test_connection_cap_answers_503_and_logs_once(web_rules, caplog):
    """Past max_connections a connection gets 503 problem+json; one warning line.

    Then, with the held connections gone, new ones are served again; nothing
    is logged at error level (no handler task dies on a refused connection).
    """
    settings = full_settings(max_connections=2)
    with structlog.testing.capture_logs() as logs:
        async with live_server(settings, web_rules) as live:
            held = [
                await asyncio.open_connection(live.host, live.port) for _ in range(2)
            ]
            answers = []
            for _ in range(3):
                reader, writer = await asyncio.open_connection(live.host, live.port)
                answers.append(await read_response(reader))
                writer.close()
            for _, writer in held:
                writer.close()
            again = None
            for _ in range(500):  # until the server has seen the closes
                again = await raw(live, http("GET", "/healthz"))
                if again.status == 200:
                    break
                await asyncio.sleep(0.01)
            assert again is not None
            assert again.status == 200
    gc.collect()
    for resp in answers:
        assert_raw_problem(resp, 503, "maximum of 2 connections")
    reached = [e for e in logs if e["event"] == "connection_cap_reached"]
    assert len(reached) == 1
    assert [e for e in logs if e["event"] == "connection_cap_cleared"]
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# ---------------------------------------------------------------- parsing cannot 5xx

DEEP = b"[" * 100_000 + b"]" * 100_000
BIG_INT = b'{"version": "4", "truncatedAlerts": ' + b"9" * 5000 + b"}"
FAR = "9999-12-31T23:59:59-14:00"


def _am_far() -> bytes:
    alert = am_alert()
    alert["startsAt"] = FAR
    return json.dumps(am_payload(alert)).encode()


def _enqueue_far() -> bytes:
    body = enqueue_body()
    body["payload"]["timestamp"] = FAR
    return json.dumps(body).encode()


def _pd_far() -> bytes:
    return pd_event().replace(b"2024-05-06T07:05:00.000Z", FAR.encode())


def _signed(body: bytes) -> dict[str, str]:
    return {"X-PagerDuty-Signature": pd_signature(body, PD_SECRET)}


CORPUS = [
    ("am-deep", AM, DEEP, bearer(), 400, "deeper than 200"),
    ("pd-deep", PD, DEEP, _signed(DEEP), 400, "deeper than 200"),
    ("enqueue-deep", ENQUEUE, DEEP[:4000], {}, 400, ""),
    ("am-big-int", AM, BIG_INT, bearer(), 400, "number too large"),
    ("enqueue-big-int", ENQUEUE, BIG_INT, {}, 400, "number too large"),
    ("am-far-time", AM, _am_far(), bearer(), 400, "/alerts/0/startsAt"),
    ("enqueue-far-time", ENQUEUE, _enqueue_far(), {}, 400, "/payload/timestamp"),
    (
        "pd-lone-surrogate",
        PD,
        pd_event(id="\ud800x").replace(b"\\ud800", b"\\ud800"),
        None,
        400,
        "/event/data/id",
    ),
    (
        "am-lone-surrogate",
        AM,
        json.dumps(am_payload(am_alert(team="\udc00"))).encode(),
        bearer(),
        400,
        "/alerts/0/labels/team",
    ),
    ("am-nan", AM, b'{"alerts": NaN}', bearer(), 400, "not valid JSON"),
]


@pytest.mark.parametrize("case", [pytest.param(c[1:], id=c[0]) for c in CORPUS])
async def test_hostile_bodies_are_400(make_client, case):
    """Deep JSON, huge numbers, far timestamps, lone surrogates: 400, never 5xx."""
    path, body, headers, status, fragment = case
    if headers is None:
        headers = _signed(body)
    big = 1 << 20
    client = await make_client(
        full_settings(max_body_bytes=big, max_unauthenticated_body_bytes=big)
    )
    resp = await client.post(
        path, data=body, headers={"Content-Type": "application/json", **headers}
    )
    got, detail = await rejection(resp, path)
    assert got == status, detail
    assert fragment in detail


async def test_signed_pagerduty_time_out_of_range_reads_as_absent(make_client):
    """A signed PagerDuty delivery is kept; a time out of range is taken as absent."""
    client = await make_client()
    body = _pd_far()
    resp = await client.post(
        PD, data=body, headers={"Content-Type": "application/json", **_signed(body)}
    )
    assert resp.status == 202
    assert (await resp.json())["id"]


async def test_far_since_is_400(make_client):
    """?since= with an offset that overflows is 400, not 500."""
    client = await make_client()
    resp = await client.get(
        "/api/v1/decisions", params={"since": FAR}, headers=bearer()
    )
    assert resp.status == 400
    assert "since" in (await resp.json(content_type=PROBLEM))["detail"]


async def test_non_ascii_authorization_is_401(web_rules):
    """A non-ASCII byte in Authorization is a 401, not a 500."""
    async with live_server(full_settings(), web_rules) as live:
        resp = await raw(
            live,
            http("POST", AM, b"{}", {"Authorization": "Bearer tok-\xe9"}),
        )
        assert_raw_problem(resp, 401, "non-ASCII")


async def test_non_gzip_under_gzip_encoding_is_400(web_rules):
    """A body that is not gzip under Content-Encoding: gzip is 400 problem+json."""
    body = json.dumps(am_payload()).encode()
    async with live_server(full_settings(max_body_bytes=1 << 20), web_rules) as live:
        resp = await raw(
            live, http("POST", AM, body, {**bearer(), "Content-Encoding": "gzip"})
        )
        assert 400 <= resp.status < 500
        assert resp.headers["content-type"].startswith(PROBLEM)
        good = gzip.compress(body)
        resp = await raw(
            live, http("POST", AM, good, {**bearer(), "Content-Encoding": "gzip"})
        )
        assert resp.status == 202


async def test_malformed_request_line_is_problem_json(web_rules):
    """Parse errors aiohttp answers itself come back as problem+json too."""
    async with live_server(full_settings(), web_rules) as live:
        resp = await raw(live, b"POST /x HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
        assert_raw_problem(resp, 400, "malformed HTTP request")


async def test_disconnect_mid_body_is_info_not_500(web_rules):
    """A client hanging up mid-body is logged once at info and never counted 500."""
    with structlog.testing.capture_logs() as logs:
        async with live_server(full_settings(), web_rules) as live:
            _, writer = await asyncio.open_connection(live.host, live.port)
            writer.write(http("POST", AM, b'{"ver', bearer(), length=500))
            await writer.drain()
            writer.close()
            counter = live.metrics.webhooks.labels(
                "alertmanager", "client_disconnected"
            )
            for _ in range(500):
                if counter._value.get() == 1:
                    break
                await asyncio.sleep(0.01)
            assert counter._value.get() == 1
            assert live.metrics.webhooks.labels("alertmanager", "500")._value.get() == 0
    gone = [e for e in logs if e["event"] == "client_disconnected"]
    assert len(gone) == 1
    assert gone[0]["log_level"] == "info"
    assert not [e for e in logs if e["log_level"] in ("error", "critical")]


async def test_wrong_method_has_allow_header(make_client):
    """405 is problem+json and names the allowed methods in Allow."""
    client = await make_client()
    resp = await client.delete("/api/v1/decisions", headers=bearer())
    assert resp.status == 405
    assert resp.content_type == PROBLEM
    assert "GET" in resp.headers["Allow"]


async def test_unknown_payload_is_no_such_payload(make_client):
    """An unknown payload id is 404 'no such payload', not 'no such endpoint'."""
    client = await make_client()
    resp = await client.get("/api/v1/payloads/nope", headers=bearer())
    assert resp.status == 404
    assert "no such payload" in (await resp.json(content_type=PROBLEM))["detail"]


# ---------------------------------------------------------------- scopes


async def test_alertmanager_token_cannot_approve_or_execute(make_client):
    """The webhook token reads, but approving and executing replays need scopes."""
    client = await make_client(scoped_settings(mode="execute"))
    resp = await client.post(
        "/api/v1/approvals/x", json={"decision": "approve"}, headers=bearer()
    )
    assert resp.status == 403
    assert "'approve' scope" in (await resp.json(content_type=PROBLEM))["detail"]
    resp = await client.post(
        "/api/v1/replay",
        json={"payload": am_payload(), "execute": True},
        headers=bearer(),
    )
    assert resp.status == 403
    assert "'replay' scope" in (await resp.json(content_type=PROBLEM))["detail"]
    resp = await client.get("/api/v1/decisions", headers=bearer())
    assert resp.status == 200


async def test_scoped_tokens_do_what_their_scope_says(make_client):
    """approve_tokens approve, replay_tokens execute, read_tokens only read."""
    client = await make_client(scoped_settings(mode="execute"))
    resp = await client.post(
        "/api/v1/approvals/x",
        json={"decision": "approve"},
        headers=bearer(APPROVE_TOKEN),
    )
    assert resp.status == 404  # past authorization: the approval does not exist
    resp = await client.post(
        "/api/v1/replay",
        json={"payload": am_payload(), "execute": True},
        headers=bearer(REPLAY_TOKEN),
    )
    assert resp.status == 202
    assert (await resp.json())["id"]
    resp = await client.post(AM, json=am_payload(), headers=bearer(READ_TOKEN))
    assert resp.status == 403
    resp = await client.get("/api/v1/approvals", headers=bearer(READ_TOKEN))
    assert resp.status == 200


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(json.loads(pd_event()), id="pagerduty"),
        pytest.param(enqueue_body(), id="events_v2"),
    ],
)
async def test_inline_execute_refused_for_proven_sources(make_client, payload):
    """Inline PagerDuty and Events v2 payloads never run with execute."""
    client = await make_client(scoped_settings(mode="execute"))
    resp = await client.post(
        "/api/v1/replay",
        json={"payload": payload, "execute": True},
        headers=bearer(REPLAY_TOKEN),
    )
    assert resp.status == 403
    assert "payload_id" in (await resp.json(content_type=PROBLEM))["detail"]
    assert await client.store.payloads() == []


async def test_stored_events_v2_replay_keeps_key_redacted(make_client):
    """Replaying a stored Events v2 payload with execute journals no routing key."""
    client = await make_client(scoped_settings(mode="execute"))
    resp = await client.post(ENQUEUE, json=enqueue_body())
    first = (await resp.json())["id"]
    resp = await client.post(
        "/api/v1/replay",
        json={"payload_id": first, "execute": True},
        headers=bearer(REPLAY_TOKEN),
    )
    assert resp.status == 202
    for entry in await client.store.payloads():
        assert ROUTING_KEY.encode() not in entry.body


async def test_require_scope_guards_admin_routes(make_client):
    """require_scope(request, "admin") admits only admin tokens."""
    from aiohttp import web  # noqa: PLC0415

    from receiver.web.auth import require_scope  # noqa: PLC0415

    async def pause(request: web.Request) -> web.Response:
        require_scope(request, "admin")
        return web.json_response({"paused": True})

    settings = scoped_settings()
    client = await make_client(settings, extra_routes=[("POST", "/admin/pause", pause)])
    assert (await client.post("/admin/pause", headers=bearer(TOKEN))).status == 403
    assert (
        await client.post("/admin/pause", headers=bearer(APPROVE_TOKEN))
    ).status == 403
    assert (await client.post("/admin/pause")).status == 401
    assert (
        await client.post("/admin/pause", headers=bearer(SCOPED_ADMIN_TOKEN))
    ).status == 200


async def test_privileged_scopes_closed_on_loopback_once_configured(make_client):
    """On loopback with only a webhook token, approving is closed, not open."""
    client = await make_client(
        flat_settings(host="127.0.0.1", auth_tokens=[SecretStr(TOKEN)])
    )
    resp = await client.post("/api/v1/approvals/x", json={"decision": "approve"})
    assert resp.status == 403
    assert (
        "RECEIVER_APPROVE_TOKENS" in (await resp.json(content_type=PROBLEM))["detail"]
    )


# ---------------------------------------------------------------- empty credentials


@pytest.mark.parametrize(
    "yaml_text",
    [
        'auth: {tokens: [""]}',
        "auth: {tokens: ['  ']}",
        'auth: {pagerduty_secrets: [""]}',
        "auth: {routing_keys: ['ok', ' ']}",
        'auth: {approve_tokens: [""]}',
        'auth: {basic: ":"}',
        'auth: {basic: ""}',
    ],
)
def test_empty_credentials_in_yaml_are_config_errors(tmp_path, yaml_text):
    """An empty or whitespace credential in the YAML file refuses to load."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml_text, encoding="utf-8")
    with pytest.raises(ConfigError):
        load_settings(path, environ={})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RECEIVER_AUTH_TOKENS", ""),
        ("RECEIVER_AUTH_TOKENS", " , "),
        ("RECEIVER_AUTH_TOKENS", "good,"),
        ("RECEIVER_PAGERDUTY_SECRETS", "  "),
        ("RECEIVER_ADMIN_TOKENS", ""),
        ("RECEIVER_BASIC_AUTH", ""),
    ],
)
def test_empty_credentials_in_env_are_config_errors(name, value):
    """An empty or whitespace credential in the environment refuses to load."""
    with pytest.raises(ConfigError, match=name):
        load_settings(environ={name: value})


@pytest.mark.parametrize("given", ["a b", "x" * 200, "id\u00e9", "<script>"])
async def test_request_id_that_is_not_a_token_is_replaced(make_client, given):
    """Only a plain-token X-Request-Id is echoed and logged; others are replaced."""
    client = await make_client()
    resp = await client.get("/healthz", headers={"X-Request-Id": given})
    assert resp.status == 200
    echoed = resp.headers["X-Request-Id"]
    assert echoed != given
    assert len(echoed) == 16


@pytest.mark.parametrize("name", ["RECEIVER_BODY_TIMEOUT", "RECEIVER_APPROVAL_SWEEP"])
def test_zero_timers_are_config_errors(name):
    """A zero body timeout or approval sweep interval refuses to load."""
    with pytest.raises(ConfigError, match=name.removeprefix("RECEIVER_").lower()):
        load_settings(environ={name: "0s"})


async def test_a_handlers_own_404_keeps_its_detail(make_client):
    """A 404 raised by a handler names what is missing, not 'no such endpoint'."""
    client = await make_client()
    resp = await client.post("/api/v1/parked/nope/retry", headers=bearer(ADMIN_TOKEN))
    assert resp.status == 404
    detail = (await resp.json(content_type=PROBLEM))["detail"]
    assert "nope" in detail
    assert "no such endpoint" not in detail
