"""A body that arrived whole with its headers is taken at once, within the same caps.

The edge reads most webhook bodies without a timer: when the request's stream
already holds the whole body, it is taken as it is. The caps still hold on that
path: a chunked body (no Content-Length to refuse up front) that came whole but
is over the cap is 413, and nothing of it is journaled.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import StreamReader
from conftest import MAX_BODY, TOKEN

EXAMPLE = (
    Path(__file__).parent.parent / "examples/alertmanager/sark-high-latency.firing.json"
)


@pytest.fixture(autouse=True)
def no_chunked_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading the body chunk by chunk fails these tests: the whole is taken."""

    def refuse(*_args: object) -> None:
        raise AssertionError("the body was read chunk by chunk")

    monkeypatch.setattr(StreamReader, "iter_chunked", refuse)


async def raw_post(client, body: bytes) -> tuple[int, bytes]:
    """POST a chunked body in one write (headers, one chunk, the end) and read back."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    head = (
        "POST /webhooks/alertmanager HTTP/1.1\r\n"
        f"Host: {client.host}\r\n"
        f"Authorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    writer.write(head + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    status = int(answer.split(b" ", 2)[1])
    return status, answer.partition(b"\r\n\r\n")[2]


async def test_a_whole_chunked_body_within_the_cap_is_accepted(make_client):
    """Sent in one write with its headers, the body is journaled byte for byte."""
    client = await make_client()
    body = json.dumps(json.loads(EXAMPLE.read_text(encoding="utf-8"))).encode()
    status, _ = await raw_post(client, body)
    assert status == 202
    (entry,) = await client.store.payloads()
    assert entry.body == body


async def test_a_whole_chunked_body_over_the_cap_is_413(make_client):
    """Over the cap though it came whole: 413 naming the cap, nothing journaled."""
    client = await make_client()
    status, answer = await raw_post(client, b'{"pad": "' + b"x" * MAX_BODY + b'"}')
    assert status == 413
    assert str(MAX_BODY) in answer.decode()
    assert await client.store.payloads() == []
