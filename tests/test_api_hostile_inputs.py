"""Inputs that used to answer 500: each is now a 4xx problem saying what to fix.

Query parameters of the incident list, Slack's timestamp and signature headers,
bodies that cannot be decoded (a bad gzip stream) on every small-body endpoint,
console forms that do not parse, and rule files the loader did not expect on
``POST /-/reload`` (the current rules stay) and in the console's backtest.
"""

from __future__ import annotations

import asyncio
import base64
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    ADMIN_TOKEN,
    APPROVE_TOKEN,
    NOW,
    WEB_RULES,
    bearer,
    full_settings,
    refusal,
)
from pydantic import SecretStr
from test_incidents_api import API, fire, incidents
from test_incidents_api import client as client  # noqa: PLC0414 (the fixture)

from receiver.app import create_app
from receiver.metrics import Metrics
from receiver.rulebook.loader import load_rulebook
from receiver.runtime import build_runtime
from receiver.steps.catalog import builtin_registry
from receiver.store import MemoryStore

PROBLEM = "application/problem+json"
GZIP = {"Content-Encoding": "gzip", "Content-Type": "application/json"}


def admin_basic(user: str = "ops") -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{ADMIN_TOKEN}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


async def form_token(client: Any, headers: dict[str, str]) -> str:
    page = await (await client.get("/ui/guards", headers=headers)).text()
    found = re.search(r'name=token value="([0-9a-f]+)"', page)
    assert found is not None
    return found.group(1)


async def assert_problem(resp: Any, status: int, words: str) -> None:
    assert resp.status == status, await resp.text()
    assert resp.content_type == PROBLEM
    assert words in (await resp.json(content_type=PROBLEM))["detail"]


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"since": "0001-01-01T00:00:00+01:00"}, "out of range"),
        ({"since": "9999-12-31T23:59:59-01:00"}, "out of range"),
        ({"since": "1900-01-01T00:00:00Z"}, "between 1970 and 2200"),
        ({"since": "0001-01-01T00:00:00Z"}, "between 1970 and 2200"),
        ({"cursor": "99999999999999999999999"}, "cursor"),
        ({"cursor": "-5"}, "cursor"),
        ({"cursor": "1_0"}, "cursor"),
    ],
)
async def test_incident_list_refuses_times_and_cursors_it_cannot_use(
    client, params, words
):
    """A time past the years 1..9999 with its offset, a cursor never issued: 400."""
    await fire(client, "g1", "fp-1")
    await incidents(client, 1)
    resp = await client.get(API, params=params, headers=bearer())
    await assert_problem(resp, 400, words)


async def test_incident_list_still_takes_a_good_since_and_cursor(client):
    """Valid filters are unchanged: naive times are UTC, issued cursors page."""
    await fire(client, "g1", "fp-1")
    await incidents(client, 1)
    resp = await client.get(
        API, params={"since": "2000-01-01T00:00:00", "cursor": "0"}, headers=bearer()
    )
    assert resp.status == 200, await resp.text()


@pytest.mark.parametrize(
    ("timestamp", "signature"),
    [
        (b"9" * 4000, b"v0=00"),  # int() takes it; a float cannot
        (b"1_700_000_000", b"v0=00"),
        (str(int(NOW.timestamp())).encode(), b"v0=\xff\xfe"),  # not UTF-8
    ],
)
async def test_slack_headers_a_client_controls_are_401(
    make_client, timestamp, signature
):
    """Unauthenticated Slack headers never reach a 500 (sent as raw bytes)."""
    client = await make_client(full_settings(slack_signing_secret=SecretStr("s3")))
    body = b"payload=%7B%7D"
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"POST /slack/interactions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"X-Slack-Request-Timestamp: " + timestamp + b"\r\n"
        b"X-Slack-Signature: " + signature + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:300]
    assert PROBLEM.encode() in answer


@pytest.mark.parametrize(
    ("path", "token"),
    [
        ("/api/v1/approvals/some-id", APPROVE_TOKEN),
        ("/api/v1/pause", ADMIN_TOKEN),
    ],
)
async def test_a_body_that_does_not_decode_is_400(make_client, path, token):
    """Content-Encoding: gzip on a body that is not gzip: 400 naming the encoding."""
    client = await make_client()
    resp = await client.post(
        path, data=b'{"decision": "approve"}', headers={**bearer(token), **GZIP}
    )
    await assert_problem(resp, 400, "Content-Encoding")


async def test_an_incident_body_that_does_not_decode_is_400(client):
    await fire(client, "g1", "fp-1")
    [listed] = await incidents(client, 1)
    resp = await client.post(
        f"{API}/{listed['id']}/timeline",
        data=b'{"text": "x"}',
        headers={**bearer(APPROVE_TOKEN), **GZIP},
    )
    await assert_problem(resp, 400, "Content-Encoding")


async def test_a_slack_body_that_does_not_decode_is_400(make_client):
    client = await make_client(full_settings(slack_signing_secret=SecretStr("s3")))
    resp = await client.post(
        "/slack/interactions",
        data=b"payload=%7B%7D",
        headers={
            **GZIP,
            "X-Slack-Request-Timestamp": "1700000000",
            "X-Slack-Signature": "v0=00",
        },
    )
    await assert_problem(resp, 400, "Content-Encoding")


@pytest.mark.parametrize(
    ("data", "headers"),
    [
        (b"token=1&paused=true", {"Content-Encoding": "gzip"}),
        (
            b"token=%ff&paused=true",
            {"Content-Type": "application/x-www-form-urlencoded; charset=no-such"},
        ),
        (b"token=\xff\xfe&paused=true", {}),
        (b"--zz\r\n", {"Content-Type": "multipart/form-data"}),
        (
            b'--zz\r\nContent-Disposition: form-data; name="token"\r\n\r\nabc',
            {"Content-Type": "multipart/form-data; boundary=zz"},
        ),
    ],
)
async def test_a_console_form_that_does_not_parse_is_400(make_client, data, headers):
    """A form the console cannot read is refused, and nothing changes."""
    client = await make_client()
    base = {"Content-Type": "application/x-www-form-urlencoded", **admin_basic()}
    resp = await client.post("/ui/guards/pause", data=data, headers={**base, **headers})
    assert resp.status == 400, await resp.text()
    # A page a person reads, as every console refusal is.
    assert "the form could not be read" in await refusal(resp)
    assert await client.store.pause() is None


async def test_a_backtest_form_that_does_not_decode_is_400(make_client):
    client = await make_client()
    resp = await client.post(
        "/ui/backtest",
        data=b"token=1",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Content-Encoding": "gzip",
            **admin_basic(),
        },
    )
    assert resp.status == 400, await resp.text()


async def test_a_backtest_candidate_nested_too_deeply_is_refused(make_client):
    """A candidate past the YAML parser's recursion is a 400 page, not a 500."""
    client = await make_client()
    token = await form_token(client, admin_basic())
    resp = await client.post(
        "/ui/backtest",
        data={"token": token, "rules": "[" * 50_000, "since": "7d"},
        headers=admin_basic(),
    )
    assert resp.status == 400, await resp.text()
    assert "nests too deeply" in await resp.text()


@pytest.fixture
async def reloadable(aiohttp_client, tmp_path) -> Any:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "web.yaml").write_text(WEB_RULES, encoding="utf-8")
    metrics = Metrics()
    app = create_app(
        build_runtime(full_settings()),
        rulebook=load_rulebook([rules], steps=builtin_registry()),
        store=MemoryStore(),
        metrics=metrics,
        rule_paths=[rules],
    )
    client = await aiohttp_client(app)
    client.rules = rules
    client.metrics = metrics
    return client


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"\xff\xfe not utf-8", "not UTF-8"),
        (b"[" * 100_000, "nests too deeply"),
    ],
)
async def test_reload_of_a_file_the_loader_chokes_on_keeps_the_rules(
    reloadable, content, words
):
    """422 naming the problem; the rules stay; the failure shows in the metric."""
    client = reloadable
    (Path(client.rules) / "zz.yaml").write_bytes(content)
    resp = await client.post("/-/reload", headers=bearer(ADMIN_TOKEN))
    await assert_problem(resp, 422, words)
    ready = await (await client.get("/readyz")).json()
    assert ready["rules"] == 4
    metrics = await (await client.get("/metrics")).text()
    assert "receiver_config_last_reload_successful 0.0" in metrics
