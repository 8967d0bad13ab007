"""Requests no route takes, on the real server: problem+json like every refusal.

An ``Expect`` other than ``100-continue`` on a path no route serves, or with a
method the path does not allow, was answered by aiohttp's own expect handler,
text/plain ``Unknown Expect: ...``, before any middleware ran; it is a 417
problem+json saying to drop the header, and still a 4xx (Alertmanager does not
retry it). A webhook path with a trailing slash is a 404 that names the path
to use instead. A body compressed with a coding the receiver cannot decode is a
415 saying which codings it takes, not aiohttp's advice to install a package;
one that is not what its coding says is a 400 saying so.
"""

from __future__ import annotations

import json

import pytest
from conftest import bearer, full_settings
from live import http, live_server, raw
from test_web import AM, PROBLEM, am_payload


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/nope"), ("POST", "/nope"), ("PUT", "/healthz"), ("GET", AM)],
    ids=["unknown-get", "unknown-post", "wrong-method", "webhook-get"],
)
async def test_an_unsupported_expect_where_no_route_serves_is_a_417_problem(
    web_rules, method, path
):
    """417 problem+json saying to resend without Expect, with a request id."""
    async with live_server(full_settings(), web_rules) as live:
        resp = await raw(
            live, http(method, path, b"{}", {**bearer(), "Expect": "200-ok"})
        )
    assert resp.status == 417, resp.body
    assert resp.headers["content-type"].startswith(PROBLEM)
    body = resp.json()
    assert body["status"] == 417
    assert body["title"] == "Expectation failed"
    assert "200-ok" in body["detail"]
    assert "without the Expect header" in body["detail"]
    assert resp.headers["x-request-id"]


@pytest.mark.parametrize("path", [f"{AM}/", "/webhooks/pagerduty/", "/v2/enqueue/"])
async def test_a_trailing_slash_on_a_route_names_the_path_to_use(web_rules, path):
    """404 problem+json (a 4xx: resending to the same URL cannot help) naming it."""
    async with live_server(full_settings(), web_rules) as live:
        resp = await raw(live, http("POST", path, b"{}", bearer()))
    assert resp.status == 404
    assert resp.headers["content-type"].startswith(PROBLEM)
    detail = resp.json()["detail"]
    assert f"use {path.rstrip('/')} (without the trailing slash)" in detail


@pytest.mark.parametrize("coding", ["br", "zstd"])
async def test_a_body_in_a_coding_the_receiver_cannot_decode_is_a_415(
    web_rules, coding
):
    """415 problem+json naming the coding and the ones it takes, Accept-Encoding."""
    body = json.dumps(am_payload()).encode()
    async with live_server(full_settings(), web_rules) as live:
        resp = await raw(
            live, http("POST", AM, body, {**bearer(), "Content-Encoding": coding})
        )
    assert resp.status == 415, resp.body
    assert resp.headers["content-type"].startswith(PROBLEM)
    assert resp.headers["accept-encoding"] == "gzip, deflate"
    detail = resp.json()["detail"]
    assert f"Content-Encoding {coding} is not supported" in detail
    assert "install" not in detail


async def test_a_body_that_is_not_deflate_under_deflate_says_so(web_rules):
    """400 problem+json saying the body does not decode as its coding says."""
    async with live_server(full_settings(), web_rules) as live:
        resp = await raw(
            live, http("POST", AM, b"x", {**bearer(), "Content-Encoding": "deflate"})
        )
    assert resp.status == 400, resp.body
    assert resp.headers["content-type"].startswith(PROBLEM)
    detail = resp.json()["detail"]
    assert "does not decode as its Content-Encoding says (deflate)" in detail
