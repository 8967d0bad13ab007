"""http.get and http.request steps against real local HTTP servers: what they saw."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from aiohttp import web
from conftest import flat_settings
from pydantic import ValidationError

from receiver.errors import PermanentStepError, TransientStepError
from receiver.model import Alert, freeze
from receiver.rulebook.steps import HttpVerify
from receiver.steps import build_executors
from receiver.steps.http.get import HttpGet
from receiver.steps.http.request import HttpRequest

ALERT = Alert(
    source="alertmanager",
    fingerprint="cafe",
    status="firing",
    labels=freeze({"alertname": "SarkApiDown", "service": "sark", "host": "evil.test"}),
)


Reply = Callable[[], web.Response]


def reply(status: int = 200, text: str = "", **headers: str) -> Reply:
    return lambda: web.Response(status=status, text=text, headers=headers)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Server:
    """A real HTTP server whose answers are scripted per path."""

    url: str = ""
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    script: dict[str, list[Reply]] = field(default_factory=dict)

    def on(self, path: str, *replies: Reply) -> None:
        """Answer ``path`` with these replies in turn, repeating the last."""
        self.script[path] = list(replies)

    def hits(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]


@pytest.fixture
async def server(aiohttp_server):
    state = Server()

    async def handle(request: web.Request) -> web.StreamResponse:
        state.seen.append(
            Seen(
                request.method,
                request.path_qs,
                dict(request.headers),
                await request.read(),
            )
        )
        queue = state.script.get(request.path, [])
        if not queue:
            return web.Response(status=404, text="no script")
        return (queue.pop(0) if len(queue) > 1 else queue[0])()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    srv = await aiohttp_server(app)
    state.port = srv.port
    state.url = f"http://127.0.0.1:{srv.port}"
    return state


@pytest.fixture
async def http(server):
    executors = build_executors(
        flat_settings(http_allowlist=[f"127.0.0.1:{server.port}"])
    )
    yield executors["http"]
    for ex in executors.values():
        await ex.aclose()


def health(*, healthy: bool) -> Reply:
    body = {"overall_healthy": healthy, "checks": {"db": {"ok": healthy}}}
    return lambda: web.json_response(body)


async def test_probe_reports_status_latency_excerpt_and_json_value(server, http):
    """http.get returns status, latency, a capped body and the JSON path's value."""
    server.on("/health/detailed", health(healthy=True))
    step = HttpGet(url=f"{server.url}/health/detailed", json_path="overall_healthy")
    result = await http.run(step, ALERT)
    assert result.ok
    assert result.result["status"] == 200
    assert result.result["value"] is True
    assert result.result["latency_ms"] >= 0
    assert "overall_healthy = True" in result.reason
    (seen,) = server.hits("/health/detailed")
    assert seen.method == "GET"
    assert seen.body == b""


async def test_probe_caps_the_body_excerpt(server, http):
    """Only max_body_bytes of a large body reach the trace."""
    server.on("/big", reply(text="y" * 10_000))
    step = HttpGet(url=f"{server.url}/big", max_body_bytes=100)
    result = await http.run(step, ALERT)
    assert result.result["body"] == "y" * 100


async def test_nested_json_paths_and_missing_paths(server, http):
    """A dotted path reaches nested values; a missing one is reported, not raised."""
    server.on("/h", health(healthy=False))
    nested = await http.run(
        HttpGet(url=f"{server.url}/h", json_path="checks.db.ok"), ALERT
    )
    assert nested.result["value"] is False
    missing = await http.run(HttpGet(url=f"{server.url}/h", json_path="nope.x"), ALERT)
    assert missing.result["value"] is None
    assert "nope.x not found in the body" in missing.reason


async def test_probe_retries_5xx_then_succeeds(server, http):
    """A probe answered 503 twice is retried and succeeds on the third try."""
    server.on(
        "/flaky",
        reply(503),
        reply(503),
        reply(text="ok"),
    )
    result = await http.run(HttpGet(url=f"{server.url}/flaky"), ALERT)
    assert result.ok
    assert len(server.hits("/flaky")) == 3


async def test_probe_gives_up_after_three_5xx(server, http):
    """A probe stuck on 500 stops after three tries with a transient error."""
    server.on("/down", reply(500))
    with pytest.raises(TransientStepError, match="failed after 3 attempts: HTTP 500"):
        await http.run(HttpGet(url=f"{server.url}/down"), ALERT)
    assert len(server.hits("/down")) == 3


async def test_probe_does_not_retry_a_4xx(server, http):
    """A 404 is an answer, not a transient failure: one request, not ok."""
    result = await http.run(HttpGet(url=f"{server.url}/missing"), ALERT)
    assert not result.ok
    assert result.result["status"] == 404
    assert len(server.hits("/missing")) == 1


async def test_remediation_sends_exactly_the_configured_request(server, http):
    """http.request sends its method, JSON body and headers, and nothing else."""
    server.on("/hooks/restart", lambda: web.json_response({"queued": 1}, status=202))
    step = HttpRequest(
        method="PUT",
        url=f"{server.url}/hooks/restart",
        json={"service": "sark", "reason": "SarkApiDown"},
        headers={"X-Runbook": "playbook-1"},
    )
    result = await http.run(step, ALERT)
    assert result.ok
    assert result.result["status"] == 202
    (seen,) = server.hits("/hooks/restart")
    assert seen.method == "PUT"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["X-Runbook"] == "playbook-1"
    assert json.loads(seen.body) == {"service": "sark", "reason": "SarkApiDown"}
    assert "Authorization" not in seen.headers


async def test_remediation_carries_one_idempotency_key_per_occurrence(server, http):
    """Every delivery of one occurrence sends the same Idempotency-Key.

    The key the intent records (and a crash recovery re-checks) is the one
    sent; another occurrence (a new start) or another step gets another key,
    and a key the step sets itself is kept as it is.
    """
    server.on("/hooks/restart", reply(202))
    step = HttpRequest(url=f"{server.url}/hooks/restart", json={"n": 1})
    intent = await http.prepare(step, ALERT)
    assert intent is not None
    await http.apply(step, ALERT, intent)
    await http.run(step, ALERT)  # a resend of the same occurrence
    later = ALERT.__class__(
        **{**ALERT.__dict__, "starts_at": datetime(2026, 1, 2, tzinfo=UTC)}
    )
    await http.run(step, later)
    other = HttpRequest(url=f"{server.url}/hooks/restart", json={"n": 2})
    await http.run(other, ALERT)
    own = HttpRequest(
        url=f"{server.url}/hooks/restart", headers={"idempotency-key": "mine"}
    )
    await http.run(own, ALERT)
    keys = [
        {k.lower(): v for k, v in s.headers.items()}.get("idempotency-key")
        for s in server.hits("/hooks/restart")
    ]
    first, resent, new_start, new_step, kept = keys
    assert first == intent.data["idempotency_key"]
    assert first == resent
    assert first is not None
    assert len(first) == 32
    assert len({first, new_start, new_step}) == 3
    assert kept == "mine"


async def test_remediation_is_not_retried_on_5xx(server, http):
    """A POST answered 500 is sent once: it may have done its work."""
    server.on("/hooks/purge", reply(500, "boom"))
    step = HttpRequest(url=f"{server.url}/hooks/purge", json={"all": False})
    result = await http.run(step, ALERT)
    assert not result.ok
    assert "HTTP 500 (expected one of [200, 201, 202, 204])" in result.reason
    assert len(server.hits("/hooks/purge")) == 1


async def test_remediation_to_a_closed_port_fails_permanently(server):
    """Nothing listening: the connect is retried, then the step fails for good."""
    executors = build_executors(flat_settings(http_allowlist=["127.0.0.1"]))
    try:
        step = HttpRequest(url="http://127.0.0.1:9/hook")
        with pytest.raises(
            PermanentStepError, match="could not connect after 3 attempts"
        ):
            await executors["http"].run(step, ALERT)
    finally:
        await executors["http"].aclose()


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://example.test/health", "not on http_allowlist"),
        ("http://127.0.0.1:1/health", "not on http_allowlist"),
        ("file:///etc/passwd", "only http and https"),
    ],
)
async def test_hosts_off_the_allowlist_are_refused_before_any_request(
    server, http, url, why
):
    """Only allowlisted host:port pairs are called; others fail without a request."""
    # model_construct skips the rule checks: the executor refuses on its own too.
    with pytest.raises(PermanentStepError, match=why):
        await http.run(HttpGet.model_construct(url=url), ALERT)
    with pytest.raises(PermanentStepError, match=why):
        await http.run(HttpRequest.model_construct(url=url), ALERT)
    assert server.seen == []


def test_a_url_that_is_not_http_fails_when_the_rules_load():
    """file:// (or any scheme but http and https) is a rule error, not a request."""
    with pytest.raises(ValidationError, match="must start with http:// or https://"):
        HttpGet(url="file:///etc/passwd")


async def test_an_alert_label_cannot_point_a_step_elsewhere(server, http):
    """A URL templated from labels is checked after rendering (no SSRF)."""
    step = HttpGet(url="http://{labels.host}/health").rendered(ALERT)
    assert step.url == "http://evil.test/health"
    with pytest.raises(PermanentStepError, match=r"evil\.test: host is not on"):
        await http.run(step, ALERT)


async def test_redirects_are_not_followed_off_the_allowlist(server, http):
    """A 302 to another host is reported as is; the target is never fetched."""
    server.on(
        "/moved",
        reply(302, Location="http://example.test/steal"),
    )
    result = await http.run(HttpGet(url=f"{server.url}/moved"), ALERT)
    assert result.result["status"] == 302
    assert not result.ok


async def test_verification_polls_until_healthy(server, http):
    """An http.get verify keeps polling until overall_healthy is true."""
    sick, well = health(healthy=False), health(healthy=True)
    server.on("/health/detailed", sick, sick, well)
    check = HttpVerify(
        url=f"{server.url}/health/detailed",
        json_path="overall_healthy",
        expect_value=True,
        timeout=10,
        interval=0.05,
    )
    result = await http.verify(check, HttpGet(url=server.url), ALERT)
    assert result.ok, result.reason
    assert len(server.hits("/health/detailed")) == 3


async def test_verification_that_never_holds_says_why(server, http):
    """A health endpoint that stays unhealthy ends 'not verified' with the value."""
    server.on("/health/detailed", health(healthy=False))
    check = HttpVerify(
        url=f"{server.url}/health/detailed",
        json_path="overall_healthy",
        expect_value=True,
        timeout=0.3,
        interval=0.05,
    )
    result = await http.verify(check, HttpGet(url=server.url), ALERT)
    assert not result.ok
    assert result.reason.startswith("not verified: GET ")
    assert "overall_healthy = False" in result.reason


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:99999/health", "not a valid URL"),
        ("http://127.0.0.1:1\n/health", "whitespace or control characters"),
        ("http://127.0.0.1/he alth", "whitespace or control characters"),
    ],
)
async def test_a_malformed_url_is_a_step_error_never_a_crash(server, http, url, why):
    """A bad port or a newline that reached the executor is refused, not raised."""
    for model in (HttpGet, HttpRequest):
        with pytest.raises(PermanentStepError, match=why):
            await http.run(model.model_construct(url=url), ALERT)
    assert server.seen == []
