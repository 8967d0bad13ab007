"""A corpus of bad input against a running ``receiver serve``, over real sockets.

Every case is a raw HTTP request (so nothing is tidied up by a client library).
Every answer must be a 4xx problem+json; afterwards the log holds no traceback
and no error line, no 5xx was counted, and the service still answers.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from live import RawResponse, http, read_response
from peers import Peer, run_receiver

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "corpus-token-51c0"
APPROVE = "corpus-approve-0b9e"
PD_SECRET = "corpus-pd-secret"
ROUTING_KEY = "corpus-routing-key"
AM, PD, ENQUEUE = "/webhooks/alertmanager", "/webhooks/pagerduty", "/v2/enqueue"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FAR = "9999-12-31T23:59:59-14:00"
PROBLEM = "application/problem+json"


def am(**alert_overrides: Any) -> bytes:
    alert = {
        "status": "firing",
        "labels": {"alertname": "SarkApiDown", "namespace": "sark"},
        "annotations": {},
        "startsAt": "2026-01-01T00:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": "fp-corpus",
        **alert_overrides,
    }
    return json.dumps({"version": "4", "status": "firing", "alerts": [alert]}).encode()


def pd(**data: Any) -> bytes:
    event = {
        "id": "E1",
        "event_type": "incident.triggered",
        "occurred_at": "2026-01-01T00:00:00Z",
        "data": {"id": "P1", "type": "incident", "title": "x", **data},
    }
    return json.dumps({"event": event}).encode()


def signed(body: bytes) -> dict[str, str]:
    sig = hmac.new(PD_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"X-PagerDuty-Signature": f"v1={sig}"}


def enqueue(**payload: Any) -> bytes:
    return json.dumps(
        {
            "routing_key": ROUTING_KEY,
            "event_action": "trigger",
            "payload": {"summary": "s", "source": "db", "severity": "error", **payload},
        }
    ).encode()


DEEP = b"[" * 100_000 + b"]" * 100_000
BIG_INT = b'{"version": "4", "truncatedAlerts": ' + b"9" * 5000 + b"}"
PD_SURROGATE = pd(id="PX").replace(b'"PX"', b'"\\ud800"')
AM_SURROGATE = am().replace(b'"sark"', b'"\\udfff"')
GZIP = {"Content-Encoding": "gzip"}
PD_HUGE_NUMBER = pd(number=1).replace(b'"number": 1', b'"number": ' + b"7" * 4400)

CASES: list[tuple[str, bytes]] = [
    ("am-deep-json", http("POST", AM, DEEP, AUTH)),
    ("pd-deep-json", http("POST", PD, DEEP[:200_000], signed(DEEP[:200_000]))),
    ("enqueue-deep-json", http("POST", ENQUEUE, DEEP[:200_000])),
    ("am-huge-int", http("POST", AM, BIG_INT, AUTH)),
    ("enqueue-huge-int", http("POST", ENQUEUE, BIG_INT)),
    ("am-nan", http("POST", AM, b'{"alerts": NaN}', AUTH)),
    ("am-far-time", http("POST", AM, am(startsAt=FAR), AUTH)),
    ("am-far-end", http("POST", AM, am(endsAt="0001-01-01T00:00:00+14:00"), AUTH)),
    ("enqueue-far-time", http("POST", ENQUEUE, enqueue(timestamp=FAR))),
    ("since-far", http("GET", f"/api/v1/decisions?since={FAR}", headers=AUTH)),
    ("since-garbage", http("GET", "/api/v1/decisions?since=yesterday", headers=AUTH)),
    ("auth-non-ascii", http("POST", AM, am(), {"Authorization": "Bearer t\xe9st"})),
    ("auth-basic-garbage", http("POST", AM, am(), {"Authorization": "Basic %%%"})),
    ("auth-scheme", http("POST", AM, am(), {"Authorization": "Digest x"})),
    ("auth-wrong-token", http("POST", AM, am(), {"Authorization": "Bearer nope"})),
    ("not-gzip", http("POST", AM, am(), {**AUTH, **GZIP})),
    ("pd-lone-surrogate", http("POST", PD, PD_SURROGATE, signed(PD_SURROGATE))),
    ("am-lone-surrogate", http("POST", AM, AM_SURROGATE, AUTH)),
    ("pd-no-signature", http("POST", PD, pd())),
    ("pd-bad-signature", http("POST", PD, pd(), {"X-PagerDuty-Signature": "v1=00"})),
    ("pd-wrong-signature", http("POST", PD, pd(), signed(b"other"))),
    ("enqueue-wrong-key", http("POST", ENQUEUE, enqueue().replace(b"corpus-r", b"x"))),
    ("enqueue-schema", http("POST", ENQUEUE, b'{"routing_key": "k"}')),
    ("top-level-array", http("POST", AM, b"[1, 2]", AUTH)),
    ("top-level-string", http("POST", ENQUEUE, b'"hello"')),
    ("empty-body", http("POST", AM, b"", AUTH)),
    ("not-utf8", http("POST", AM, b'{"a": "\xff\xfe"}', AUTH)),
    ("text-plain", http("POST", AM, am(), {**AUTH, "Content-Type": "text/plain"})),
    ("over-cap", http("POST", AM, b"", AUTH, length=10 * 1024 * 1024)),
    ("enqueue-over-cap", http("POST", ENQUEUE, b"", length=1024 * 1024)),
    (
        "too-many-labels",
        http("POST", AM, am(labels={f"l{i}": "v" for i in range(99)}), AUTH),
    ),
    ("label-too-long", http("POST", AM, am(labels={"a": "v" * 5000}), AUTH)),
    ("limit-too-big", http("GET", "/api/v1/decisions?limit=100000", headers=AUTH)),
    (
        "limit-unicode-digit",
        http("GET", "/api/v1/decisions?limit=%D9%A5", headers=AUTH),
    ),
    ("cursor-garbage", http("GET", "/api/v1/decisions?cursor=%27%3B--", headers=AUTH)),
    ("unknown-payload", http("GET", "/api/v1/payloads/nope", headers=AUTH)),
    ("unknown-path", http("GET", "/../../etc/passwd")),
    ("wrong-method", http("DELETE", "/api/v1/decisions", headers=AUTH)),
    ("unknown-method", b"FOO / HTTP/1.1\r\nHost: r\r\n\r\n"),
    (
        "approve-with-webhook-token",
        http("POST", "/api/v1/approvals/x", b'{"decision": "approve"}', AUTH),
    ),
    (
        "approve-bad-decision",
        http(
            "POST",
            "/api/v1/approvals/x",
            b'{"decision": 1}',
            {"Authorization": f"Bearer {APPROVE}"},
        ),
    ),
    (
        "approve-bad-by",
        http(
            "POST",
            "/api/v1/approvals/x",
            b'{"decision": "approve", "by": []}',
            {"Authorization": f"Bearer {APPROVE}"},
        ),
    ),
    (
        "replay-execute-webhook-token",
        http("POST", "/api/v1/replay", b'{"payload_id": "x", "execute": true}', AUTH),
    ),
    (
        "replay-inline-pd-execute",
        http(
            "POST",
            "/api/v1/replay",
            json.dumps({"payload": json.loads(pd()), "execute": True}).encode(),
            {"Authorization": f"Bearer {APPROVE}"},
        ),
    ),
    (
        "replay-inline-events-v2-execute",
        http(
            "POST",
            "/api/v1/replay",
            json.dumps({"payload": json.loads(enqueue()), "execute": True}).encode(),
            {"Authorization": f"Bearer {APPROVE}"},
        ),
    ),
    (
        "enqueue-details-over-cap",
        http("POST", ENQUEUE, enqueue(custom_details={"team": "t" * 4000})),
    ),
    ("pd-huge-number", http("POST", PD, PD_HUGE_NUMBER, signed(PD_HUGE_NUMBER))),
    (
        "replay-bad-execute",
        http("POST", "/api/v1/replay", b'{"payload_id": "x", "execute": "yes"}', AUTH),
    ),
    ("replay-unknown", http("POST", "/api/v1/replay", b'{"payload_id": "nope"}', AUTH)),
    (
        "replay-undetectable",
        http("POST", "/api/v1/replay", b'{"payload": {"x": 1}}', AUTH),
    ),
    ("approvals-bad-status", http("GET", "/api/v1/approvals?status=%00", headers=AUTH)),
    (
        "bad-content-length",
        (
            b"POST /webhooks/alertmanager HTTP/1.1\r\nHost: r\r\n"
            b"Content-Length: abc\r\n\r\n"
        ),
    ),
    (
        "smuggling-cl-te",
        (
            b"POST /v2/enqueue HTTP/1.1\r\nHost: r\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ),
    ),
    (
        "bad-chunk-size",
        http("POST", ENQUEUE, b"zz\r\n", {"Transfer-Encoding": "chunked"}).replace(
            b"Content-Length: 4\r\n", b""
        ),
    ),
    ("header-too-long", http("GET", "/healthz", headers={"X-Long": "a" * 20_000})),
    ("control-char-in-path", b"GET /he\x01althz HTTP/1.1\r\nHost: r\r\n\r\n"),
    (
        "basic-empty",
        http(
            "GET",
            "/api/v1/decisions",
            headers={"Authorization": "Basic " + base64.b64encode(b":").decode()},
        ),
    ),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    tmp = tmp_path_factory.mktemp("corpus")
    env = {
        "RECEIVER_STORE": f"sqlite:///{tmp}/state.db",
        "RECEIVER_AUTH_TOKENS": TOKEN,
        "RECEIVER_APPROVE_TOKENS": APPROVE,
        "RECEIVER_REPLAY_TOKENS": APPROVE,
        "RECEIVER_BASIC_AUTH": "am:pw",
        "RECEIVER_PAGERDUTY_SECRETS": PD_SECRET,
        "RECEIVER_ROUTING_KEYS": ROUTING_KEY,
        "RECEIVER_BODY_TIMEOUT": "1s",
    }
    with run_receiver(tmp, rules=ROOT / "rules", env=env) as peer:
        yield peer


async def send(peer: Peer, request: bytes) -> RawResponse:
    host, port = peer.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        return await read_response(reader)
    finally:
        writer.close()


@pytest.mark.e2e
@pytest.mark.parametrize("request_bytes", [pytest.param(c[1], id=c[0]) for c in CASES])
async def test_bad_input_is_a_4xx_problem(served: Peer, request_bytes: bytes) -> None:
    """Each bad request gets a 4xx problem+json that says what was wrong."""
    resp = await send(served, request_bytes)
    assert 400 <= resp.status < 500, (resp.status, resp.body[:300])
    answer = resp.json()
    events_api = request_bytes.split(b" ", 2)[1].startswith(b"/v2/")
    if events_api and not resp.headers["content-type"].startswith(PROBLEM):
        # The Events API answers in PagerDuty's own error shape (what never
        # reaches it, a malformed HTTP request, is problem+json like elsewhere).
        assert resp.headers["content-type"].startswith("application/json")
        assert set(answer) == {"status", "message", "errors"}
        assert answer["message"]
        assert answer["errors"]
        return
    assert resp.headers["content-type"].startswith(PROBLEM)
    assert answer["status"] == resp.status
    assert answer["detail"]


@pytest.mark.e2e
async def test_signed_pagerduty_far_time_is_kept(served: Peer) -> None:
    """A signed PagerDuty delivery with a time out of range is kept, not a 5xx."""
    body = pd(created_at=FAR)
    resp = await send(served, http("POST", PD, body, signed(body)))
    assert resp.status == 202


@pytest.mark.e2e
async def test_slow_and_vanishing_clients(served: Peer) -> None:
    """A stalled body gets 408; a client that hangs up mid-body gets nothing."""
    host, port = served.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(http("POST", AM, b'{"ver', AUTH, length=400))
    await writer.drain()
    resp = await read_response(reader)
    writer.close()
    assert resp.status == 408
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(http("POST", ENQUEUE, b'{"rou', length=400))
    await writer.drain()
    writer.close()


@pytest.mark.e2e
def test_service_survived_the_corpus_cleanly(served: Peer) -> None:
    """After the corpus: still answering, no 5xx counted, no traceback logged."""
    assert httpx.get(f"{served.url}/healthz", timeout=10).status_code == 200
    ok = httpx.post(
        f"{served.url}{AM}",
        content=am(),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert ok.status_code == 202
    metrics = httpx.get(f"{served.url}/metrics", timeout=10).text
    # /readyz answers 503 while the worker process starts (the fixture polls
    # it until ready): that is readiness, not a failure.
    served_5xx = [
        line
        for line in metrics.splitlines()
        if 'status="5' in line and 'route="/readyz"' not in line
    ]
    assert served_5xx == []
    assert 'outcome="5' not in metrics
    lines: list[dict[str, Any]] = []
    for _ in range(200):  # the hang-up is logged once the server notices it
        log = served.log.read_text()
        lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        if any(e.get("event") == "client_disconnected" for e in lines):
            break
        time.sleep(0.05)
    gone = [e for e in lines if e.get("event") == "client_disconnected"]
    assert len(gone) == 1
    assert gone[0]["level"] == "info"
    assert "Traceback" not in log
    assert not [e for e in lines if e.get("level") in ("error", "critical")]
