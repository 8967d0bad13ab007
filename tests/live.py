"""A receiver app served on a real socket through ``EdgeAppRunner``, and raw HTTP.

For the edge tests that need what only a real server does: aiohttp's own
protocol errors, the connection cap, half-sent bodies, disconnects.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from conftest import Ticking

from receiver.app import create_app
from receiver.metrics import Metrics
from receiver.rulebook.loader import load_rulebook
from receiver.runtime import build_runtime
from receiver.settings import Settings
from receiver.steps.catalog import builtin_registry
from receiver.store import MemoryStore
from receiver.web.server import EdgeAppRunner


@dataclass
class Live:
    """A running server: where it listens and what it was built with."""

    host: str
    port: int
    metrics: Metrics
    store: Any
    runner: EdgeAppRunner


@dataclass
class RawResponse:
    """An HTTP response read off the socket."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@asynccontextmanager
async def live_server(
    settings: Settings, rules: Path, *, store: Any = None
) -> AsyncIterator[Live]:
    store = store if store is not None else MemoryStore()
    metrics = Metrics()
    app = create_app(
        build_runtime(settings),
        rulebook=load_rulebook([rules], steps=builtin_registry()),
        store=store,
        clock=Ticking(),
        metrics=metrics,
    )
    runner = EdgeAppRunner(
        app, max_connections=settings.server.max_connections, access_log=None
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Live("127.0.0.1", port, metrics, store, runner)
    finally:
        await runner.cleanup()


async def read_response(reader: asyncio.StreamReader) -> RawResponse:
    """One HTTP/1.1 response (Content-Length framed, or to EOF)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await asyncio.wait_for(
            reader.readexactly(int(headers["content-length"])), 30
        )
    else:
        body = await asyncio.wait_for(reader.read(), 30)
    return RawResponse(status, headers, body)


async def raw(live: Live, request: bytes) -> RawResponse:
    """Send ``request`` bytes as they are and read the answer."""
    reader, writer = await asyncio.open_connection(live.host, live.port)
    try:
        writer.write(request)
        await writer.drain()
        return await read_response(reader)
    finally:
        writer.close()


def http(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    length: int | None = None,
) -> bytes:
    """A raw HTTP/1.1 request; ``length`` may claim more than ``body`` holds."""
    lines = [f"{method} {path} HTTP/1.1", "Host: receiver.test"]
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if method != "GET" or body:
        all_headers["Content-Length"] = str(len(body) if length is None else length)
    lines += [f"{k}: {v}" for k, v in all_headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
