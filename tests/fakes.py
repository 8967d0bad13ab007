"""A real HTTP server that records every request and answers from a script.

Stands in for the services sinks talk to (PagerDuty's REST and Events APIs, a
Slack incoming webhook, a generic webhook), which cannot run here. It is our
interface to them that is under test: tests assert exactly what arrived. Runs in
a thread, so both sync end-to-end tests and async tests can use it.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Request:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    # Who sent it and when it was read (diagnostics for "arrived twice").
    client: str = ""
    received_at: float = 0.0

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    """An answer: status, headers, body (JSON-encoded unless bytes/str)."""

    status: int = 200
    body: Any = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


Responder = Callable[[Request], Reply]


class RecordingServer:
    """Records requests; answers each (method, path regex) from its responder."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._routes: list[tuple[str, re.Pattern[str], Responder]] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                parts = urlsplit(self.path)
                request = Request(
                    self.command,
                    parts.path,
                    parse_qs(parts.query),
                    dict(self.headers.items()),
                    self.rfile.read(length),
                    f"{self.client_address[0]}:{self.client_address[1]}",
                    time.time(),
                )
                with server._arrived:
                    server.requests.append(request)
                    server._arrived.notify_all()
                reply = server._answer(request)
                if reply.delay:
                    time.sleep(reply.delay)
                body = reply.body
                if not isinstance(body, bytes | str):
                    body = json.dumps(body)
                    reply.headers.setdefault("Content-Type", "application/json")
                raw = body.encode() if isinstance(body, str) else body
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                self._any()

            def do_POST(self) -> None:
                self._any()

            def do_PUT(self) -> None:
                self._any()

            def log_message(self, *args: object) -> None:
                del args

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.02,), daemon=True
        )

    def route(self, method: str, path: str, responder: Responder) -> None:
        """Answer ``method`` requests whose path fully matches ``path``."""
        with self._lock:
            self._routes.insert(0, (method, re.compile(path), responder))

    def script(self, method: str, path: str, *replies: Reply) -> None:
        """Answer with ``replies`` in turn, then keep repeating the last."""
        queue = list(replies)

        def responder(_request: Request) -> Reply:
            reply = queue.pop(0) if len(queue) > 1 else queue[0]
            return Reply(reply.status, reply.body, dict(reply.headers), reply.delay)

        self.route(method, path, responder)

    def _answer(self, request: Request) -> Reply:
        with self._lock:
            routes = list(self._routes)
        for method, pattern, responder in routes:
            if method == request.method and pattern.fullmatch(request.path):
                return responder(request)
        return Reply(404, {"error": {"message": "Not Found", "code": 2100}})

    def seen(self, method: str, path: str) -> list[Request]:
        """Requests that matched ``method`` and the ``path`` regex."""
        pattern = re.compile(path)
        with self._lock:
            return [
                r
                for r in self.requests
                if r.method == method and pattern.fullmatch(r.path)
            ]

    def wait_for(self, method: str, path: str, count: int, timeout: float) -> bool:
        """Block until ``count`` requests matched ``method`` and ``path``; or time out.

        Woken by each arriving request, never by a timer; says whether they came.
        """
        pattern = re.compile(path)

        def arrived() -> bool:
            matching = (
                r
                for r in self.requests
                if r.method == method and pattern.fullmatch(r.path)
            )
            return sum(1 for _ in matching) >= count

        with self._arrived:
            return self._arrived.wait_for(arrived, timeout)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def pagerduty_api(server: RecordingServer, incidents: dict[str, str]) -> None:
    """Make ``server`` answer like PagerDuty's REST API for notes.

    ``incidents`` maps incident keys to incident ids for ``GET /incidents``.
    ``POST /incidents/{id}/notes`` answers 201 with a numbered note.
    """
    counter = iter(range(1, 1_000_000))

    def lookup(request: Request) -> Reply:
        key = request.query.get("incident_key", [""])[0]
        found = (
            [{"id": incidents[key], "incident_key": key}] if key in incidents else []
        )
        return Reply(200, {"incidents": found, "limit": 25, "more": False})

    def note(request: Request) -> Reply:
        content = request.json()["note"]["content"]
        return Reply(201, {"note": {"id": f"PNOTE{next(counter)}", "content": content}})

    server.route("GET", "/incidents", lookup)
    server.route("POST", r"/incidents/[A-Z0-9]+/notes", note)


def events_api(server: RecordingServer) -> None:
    """Make ``server`` answer like the Events API v2 (202, echoing the dedup key)."""

    def enqueue(request: Request) -> Reply:
        key = request.json().get("dedup_key", "")
        return Reply(
            202, {"status": "success", "message": "Event processed", "dedup_key": key}
        )

    server.route("POST", "/v2/enqueue", enqueue)
