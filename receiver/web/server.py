"""The HTTP server around the application: a connection cap and protocol errors.

``receiver serve`` runs the app through ``serve`` (tests that need a real socket
use ``EdgeAppRunner`` directly). Two things aiohttp does below the application,
done our way here:

- **Connection cap.** Past ``max_connections`` open connections a new one is
  answered ``503`` problem+json and closed at once; the first refusal logs
  ``connection_cap_reached`` (warning) and the end of the episode
  ``connection_cap_cleared`` with how many were refused, so a flood is two log
  lines, not thousands.
- **No lingering.** A request answered before its body was read (bad
  credentials, too large) has its connection closed after the answer.
- **Protocol errors** (a malformed request line or header, a body that is not
  gzip under ``Content-Encoding: gzip``, a bad chunked encoding) never reach a
  handler: aiohttp answers them itself, as text/plain with a traceback in the
  log. Here they are answered problem+json (4xx) with one info line; a content
  coding aiohttp cannot decode (br, zstd) is a 415 naming the ones it can.
- **Expect where no route serves.** An ``Expect`` other than ``100-continue``
  on a path no route serves (or with a method it does not allow) meets
  aiohttp's own expect handler, which raises a text/plain 417 before any
  middleware runs (every route's handler is ``problems.expect_continue``).
  Here it is the middleware's 417 problem+json, with a request id.
"""

from __future__ import annotations

import asyncio
import json
import re
import zlib
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError
from aiohttp.web_log import AccessLogger
from aiohttp.web_protocol import RequestHandler

from receiver.web.problems import (
    CONTENT_TYPE,
    DETAIL,
    expectation_failed,
    problem,
    request_id,
    unsupported_expect,
)

log = structlog.get_logger("receiver.web")
# aiohttp's message for a content coding it knows but cannot decode here:
# "Can not decode content-encoding: brotli (br). Please install `Brotli`".
_UNDECODABLE = re.compile(r"content-encoding: [\w ]+ \((\w+)\)")
_DECODED = "gzip, deflate"


def _raw_problem(status: int, reason: str, detail: str) -> bytes:
    body = json.dumps(
        {
            "type": f"urn:receiver:problem:{status}",
            "title": reason,
            "status": status,
            "detail": detail,
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {CONTENT_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    ).encode()
    return head + body


class EdgeRequestHandler(RequestHandler):
    """aiohttp's per-connection protocol, with problem+json for its own errors."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer a protocol-level error as problem+json; log one line."""
        headers = None
        if isinstance(exc, ContentEncodingError):
            status, detail, headers = _coding_problem(exc)
        elif isinstance(exc, HttpProcessingError | zlib.error | UnicodeError):
            status = exc.code if isinstance(exc, HttpProcessingError) else 400
            status = status if 400 <= status < 500 else 400
            detail = f"malformed HTTP request: {_describe(exc)}"
        elif status == 504:
            detail = "the request took too long to handle"
        elif status >= 500:
            log.error(
                "request_failed",
                error=type(exc).__name__ if exc else "unknown",
                detail=str(exc)[:200] if exc else "",
            )
            detail = "internal error while handling the request; it was logged"
        else:
            detail = f"malformed HTTP request: {message or 'bad request'}"[:300]
        if status < 500:
            log.info("request_rejected", status=status, reason=detail[:300])
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error")
        response = problem(status, detail, headers=headers)
        response.force_close()
        return response


def _coding_problem(exc: ContentEncodingError) -> tuple[int, str, dict[str, str]]:
    """Status, detail and headers for a body its ``Content-Encoding`` cannot undo.

    A coding aiohttp cannot decode here is 415 with ``Accept-Encoding`` (RFC
    9110, 15.5.16), not its advice to install a package; a body that is not
    what its coding says is 400.
    """
    accept = {"Accept-Encoding": _DECODED}
    named = _UNDECODABLE.search(_describe(exc))
    if named:
        detail = (
            f"Content-Encoding {named.group(1)} is not supported; send the body "
            f"uncompressed or with {_DECODED.replace(', ', ' or ')}"
        )
        return 415, detail, accept
    detail = (
        f"the body does not decode as its Content-Encoding says "
        f"({_describe(exc)[:60]}); check Content-Encoding, or send the body "
        "uncompressed"
    )
    return 400, detail, accept


def _answering_expect(
    handle: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    """``handle``, with a 417 problem+json where aiohttp would raise text/plain.

    Only aiohttp's own expect handler raises ``HTTPExpectationFailed`` outside
    the middleware: the one of a request no route took (ours never raises).
    """

    async def answer(request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await handle(request)
        except web.HTTPExpectationFailed:
            expect = unsupported_expect(request)
            if expect is None:
                raise
            response = expectation_failed(expect)
            response.headers["X-Request-Id"] = request_id(request)
            log.info("request_rejected", status=417, reason=response[DETAIL])
            if not request.content.is_eof():
                response.force_close()
            return response

    return answer


def _describe(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
    text = str(text).replace("\r", " ").replace("\n", " ")
    return text[:200] or type(exc).__name__


class _Refusal(asyncio.Protocol):
    """Answers a connection past the cap with a canned response and closes it."""

    def __init__(self, answer: bytes) -> None:
        self._answer = answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Answer at once; whatever the client sends is never read."""
        if isinstance(transport, asyncio.WriteTransport):
            transport.write(self._answer)
        transport.close()


class EdgeServer(web.Server):
    """A ``web.Server`` that caps open connections and uses ``EdgeRequestHandler``."""

    def __init__(
        self,
        base: web.Server,
        *,
        max_connections: int,
    ) -> None:
        # The same arguments aiohttp chose for ``base`` (request factory,
        # access log, cancellation).
        super().__init__(
            _answering_expect(base.request_handler),
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **base._kwargs,  # noqa: SLF001 (aiohttp keeps them only here)
        )
        self.max_connections = max_connections
        self.refused = 0

    def __call__(self) -> asyncio.BaseProtocol:  # type: ignore[override]
        """A protocol per connection: ours, or a refusal past the cap."""
        if len(self._connections) >= self.max_connections:
            if self.refused == 0:
                log.warning(
                    "connection_cap_reached",
                    max_connections=self.max_connections,
                    detail="refusing new connections with 503 until some close; "
                    "raise max_connections if this is legitimate load",
                )
            self.refused += 1
            return _Refusal(
                _raw_problem(
                    503,
                    "Service Unavailable",
                    f"the receiver holds its maximum of {self.max_connections} "
                    "connections; retry shortly",
                )
            )
        return EdgeRequestHandler(self, loop=self._loop, **self._kwargs)

    def connection_lost(
        self, handler: RequestHandler, exc: BaseException | None = None
    ) -> None:
        """Forget the connection; say when a refusal episode ends."""
        super().connection_lost(handler, exc)
        if self.refused and len(self._connections) < self.max_connections // 2 + 1:
            log.info("connection_cap_cleared", refused=self.refused)
            self.refused = 0


class EdgeAppRunner(web.AppRunner):
    """An ``AppRunner`` whose server is an ``EdgeServer``."""

    def __init__(
        self,
        app: web.Application,
        *,
        max_connections: int,
        handle_signals: bool = False,
        access_log_class: type[AbstractAccessLogger] = AccessLogger,
        **kwargs: object,
    ) -> None:
        # A request refused before its body was read is closed after the
        # answer instead of aiohttp's default 10 s of reading and discarding
        # the rest: a hostile sender cannot keep a connection busy that way.
        kwargs.setdefault("lingering_time", 0)
        super().__init__(
            app,
            handle_signals=handle_signals,
            access_log_class=access_log_class,
            **kwargs,
        )
        self._max_connections = max_connections

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # Rebuilt as our subclass.
        return EdgeServer(server, max_connections=self._max_connections)


def serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    max_connections: int,
    loop: asyncio.AbstractEventLoop,
    on_started: Callable[[str], None] | None = None,
) -> None:
    """Run ``app`` on ``host:port`` until SIGINT/SIGTERM, then clean up.

    ``on_started`` is called once every socket is bound, with aiohttp's banner
    (``======== Running on http://HOST:PORT ========``) naming the bound address.
    """
    runner = EdgeAppRunner(app, max_connections=max_connections, handle_signals=True)

    async def run() -> None:
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        if on_started is not None:
            on_started(f"======== Running on {site.name} ========")
        await asyncio.Event().wait()

    try:
        loop.run_until_complete(run())
    except (web.GracefulExit, KeyboardInterrupt):
        # Said, so a log that ends here reads as a stop, not a crash.
        log.info(
            "receiver_stopping",
            detail="asked to stop (SIGTERM or SIGINT): answering the requests "
            "in flight, then stopping the worker; the journal keeps what it "
            "did not finish",
        )
    finally:
        loop.run_until_complete(runner.cleanup())
        loop.close()
    log.info("receiver_stopped")
