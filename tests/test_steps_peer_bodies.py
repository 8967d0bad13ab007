"""Answers of HTTP and Prometheus peers are read only as far as a step keeps them.

A peer (or a compression bomb) answering with a huge or endless body must not
be buffered whole: the excerpt and the JSON a step keeps come from a bounded
read, and the rest of the body is never read at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from receiver.errors import PermanentStepError
from receiver.model import Alert, freeze
from receiver.steps.http import HttpExecutor
from receiver.steps.http.get import HttpGet
from receiver.steps.http.request import HttpRequest
from receiver.steps.prometheus import PrometheusExecutor
from receiver.steps.prometheus.query import PrometheusQuery

ALERT = Alert(
    source="alertmanager",
    fingerprint="f00d",
    status="firing",
    labels=freeze({"alertname": "X"}),
)
CHUNK = 64 * 1024
HUGE = 64 * 1024 * 1024  # what the peer would send if it were read to the end
READ_AT_MOST = 16 * 1024 * 1024


class Endless(httpx.AsyncByteStream):
    """A body of ``total`` bytes, counting how much of it was read."""

    def __init__(self, head: bytes, total: int = HUGE) -> None:
        self.head = head
        self.total = total
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.head:
            self.sent += len(self.head)
            yield self.head
        while self.sent < self.total:
            self.sent += CHUNK
            yield b"y" * CHUNK

    async def aclose(self) -> None:
        return None


def _client(stream: Endless, status: int = 200) -> httpx.AsyncClient:
    def answer(request: httpx.Request) -> httpx.Response:
        del request
        return httpx.Response(status, stream=stream)

    return httpx.AsyncClient(transport=httpx.MockTransport(answer))


async def test_a_probe_reads_a_huge_body_only_as_far_as_it_keeps_it():
    """http.get keeps max_body_bytes and never reads a 64 MiB body to its end."""
    stream = Endless(b'{"ok": true, "pad": "')
    http = HttpExecutor(_client(stream), ["peer.test"])
    try:
        step = HttpGet(url="http://peer.test/big", max_body_bytes=100)
        result = await http.run(step, ALERT)
        with_path = await http.run(
            HttpGet(url="http://peer.test/big", json_path="ok"), ALERT
        )
    finally:
        await http.aclose()
    assert result.result["status"] == 200
    assert len(str(result.result["body"])) == 100
    assert stream.sent < READ_AT_MOST
    assert with_path.result["value"] is None
    assert "ok not read" in with_path.reason


async def test_a_webhook_answer_is_read_only_as_far_as_it_is_kept():
    """http.request keeps 1024 characters and never reads a 64 MiB answer whole."""
    stream = Endless(b"")
    http = HttpExecutor(_client(stream), ["peer.test"])
    try:
        result = await http.run(HttpRequest(url="http://peer.test/hook"), ALERT)
    finally:
        await http.aclose()
    assert result.ok
    assert len(str(result.result["body"])) == 1024
    assert stream.sent < READ_AT_MOST


async def test_a_prometheus_answer_too_large_is_a_step_error_not_a_buffer():
    """A 64 MiB answer is refused after a bounded read, saying why."""
    stream = Endless(b'{"status": "success", "data": {"resultType": "vector", "x": "')
    prometheus = PrometheusExecutor(_client(stream), {"default": "http://prom.test"})
    try:
        with pytest.raises(PermanentStepError, match="more than"):
            await prometheus.run(PrometheusQuery(query="up"), ALERT)
    finally:
        await prometheus.aclose()
    assert stream.sent < READ_AT_MOST


def _json_client(body: bytes) -> httpx.AsyncClient:
    def answer(request: httpx.Request) -> httpx.Response:
        del request
        return httpx.Response(200, content=body)

    return httpx.AsyncClient(transport=httpx.MockTransport(answer))


async def test_a_huge_json_value_is_not_copied_into_the_reason():
    """The reason is a line for people: a peer's 500 KB value is cut there."""
    big = "v" * 500_000
    http = HttpExecutor(_json_client(b'{"ok": "' + big.encode() + b'"}'), ["peer.test"])
    try:
        result = await http.run(
            HttpGet(url="http://peer.test/h", json_path="ok"), ALERT
        )
    finally:
        await http.aclose()
    assert result.result["value"] == big  # kept whole for expect_value
    assert len(result.reason) < 1000
    assert "ok = 'vvv" in result.reason


async def test_huge_series_labels_are_not_copied_into_the_reason():
    """Labels a peer answers with are cut in the reason line."""
    body = (
        b'{"status": "success", "data": {"resultType": "vector", "result": ['
        b'{"metric": {"job": "' + b"j" * 500_000 + b'"}, "value": [1, "1"]}]}}'
    )
    prometheus = PrometheusExecutor(_json_client(body), {"default": "http://p.test"})
    try:
        result = await prometheus.run(PrometheusQuery(query="up"), ALERT)
    finally:
        await prometheus.aclose()
    assert result.result["total_series"] == 1
    assert len(result.reason) < 1000
    assert result.reason.startswith('1 series: {job="jjj')
