"""RFC 9457 ``application/problem+json`` responses and the middleware that maps errors.

Every rejection says what was wrong and how to fix it. The only 5xx on purpose is
503 when the journal cannot take a payload (the sender retries). An ``Expect`` other
than ``100-continue`` is answered 417 here as well: every route's
``expect_handler`` is ``expect_continue``, which leaves it to the middleware.
"""

from __future__ import annotations

import math
import re
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from random import getrandbits

import structlog
from aiohttp import HttpVersion11, hdrs, web
from prometheus_client import Counter

from receiver.errors import (
    AuthError,
    ClientGoneError,
    InputError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    ReceiverError,
    RequestTimeoutError,
    StoreUnavailableError,
    TooManyRequestsError,
    UnsupportedMediaError,
)
from receiver.metrics import REQUEST_BUCKETS, Metrics
from receiver.model import JSONObject

CONTENT_TYPE = "application/problem+json"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Where a problem response keeps its detail, for the one log line per rejection.
DETAIL = web.ResponseKey("problem_detail", str)
# Labelled metric children kept for reuse; a method is the client's to choose,
# so the cache is bounded (past it, children are looked up each time).
_CHILDREN_KEPT = 1024
log = structlog.get_logger("receiver.web")


def _request_id_var() -> ContextVar[object]:
    """The context variable ``bind_contextvars(request_id=...)`` sets.

    Set and reset directly around each request (what binding and unbinding
    do, in a third of the time); structlog's ``merge_contextvars`` puts it in
    every line logged meanwhile.
    """
    token = structlog.contextvars.bind_contextvars(request_id="")["request_id"]
    token.var.reset(token)
    return token.var


_REQUEST_ID_VAR = _request_id_var()

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    408: "Request timeout",
    413: "Payload too large",
    415: "Unsupported media type",
    417: "Expectation failed",
    422: "Unprocessable content",
    429: "Too many requests",
    499: "Client closed request",
    503: "Service unavailable",
    500: "Internal error",
}


def known_params(request: web.Request, *names: str) -> None:
    """Refuse a query parameter the route does not take (a 400 naming them).

    Ignored, a misspelt filter (``status=`` for ``state=``, ``alertname=``)
    answered the whole unfiltered list as if it were the filtered one.
    """
    unknown = sorted(set(request.query) - set(names))
    if unknown:
        takes = ", ".join(sorted(names)) or "no query parameters"
        raise InputError(
            f"unknown query parameter{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(u[:40]) for u in unknown[:5])}; "
            f"{request.path} takes: {takes}",
            errors=[
                {"pointer": f"/{u[:40]}", "detail": "unknown query parameter"}
                for u in unknown[:5]
            ],
        )


def problem(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """Build a problem+json response."""
    body: JSONObject = {
        "type": f"urn:receiver:problem:{slug or status}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    response = web.json_response(
        body, status=status, content_type=CONTENT_TYPE, headers=headers
    )
    response[DETAIL] = detail
    return response


# Input errors with their own status, most specific first.
_INPUT_STATUS: tuple[tuple[type[InputError], int, str, dict[str, str] | None], ...] = (
    (PayloadTooLargeError, 413, "payload-too-large", None),
    (UnsupportedMediaError, 415, "unsupported-media-type", None),
    (NotFoundError, 404, "not-found", None),
    (RequestTimeoutError, 408, "request-timeout", {"Connection": "close"}),
    (TooManyRequestsError, 429, "too-many-requests", {"Retry-After": "1"}),
    # Nobody reads this answer; the status only labels the metric and the log.
    (ClientGoneError, 499, "client-disconnected", None),
)


def error_response(exc: ReceiverError) -> web.Response:
    """Map a receiver error to its response."""
    if isinstance(exc, InputError):
        for kind, status, slug, headers in _INPUT_STATUS:
            if isinstance(exc, kind):
                return problem(
                    status, str(exc), slug=slug, errors=exc.errors, headers=headers
                )
        slug = "invalid-schema" if exc.errors else "invalid-request"
        return problem(400, str(exc), slug=slug, errors=exc.errors)
    if isinstance(exc, AuthError):
        headers = (
            {"WWW-Authenticate": 'Bearer realm="receiver"'}
            if exc.status == 401
            else None
        )
        slug = "unauthorized" if exc.status == 401 else "forbidden"
        return problem(exc.status, str(exc), slug=slug, headers=headers)
    if isinstance(exc, StoreUnavailableError):
        retry = exc.retry_after if isinstance(exc, OverloadedError) else None
        return problem(
            503,
            str(exc),
            slug="store-unavailable" if retry is None else "overloaded",
            headers={"Retry-After": str(retry or 5)},
        )
    return problem(500, "internal error; see the receiver's log", slug="internal")


OUTCOMES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    408: "timeout",
    413: "too_large",
    415: "unsupported_media",
    417: "expectation_failed",
    429: "throttled",
    499: "client_disconnected",
    503: "unavailable",
}


def _http_problem(request: web.Request, exc: web.HTTPException) -> web.Response:
    """Answer aiohttp's own 4xx (no route, wrong method, ...) as problem+json."""
    path = request.path[:200]
    if exc.status == 404 and request.match_info.route.resource is not None:
        # A handler's own 404 (the route exists, the thing it names does not).
        detail = (exc.text or "").replace("\n", " ")[:300] or f"not found: {path}"
        return problem(404, detail, slug="not-found")
    if exc.status == 404:
        return problem(404, f"no such endpoint {path}; {_instead(request)}")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return problem(
            405,
            f"{request.method[:20]} is not allowed on {path}; use {allowed}",
            headers={"Allow": allowed},
        )
    detail = (exc.text or exc.reason or "").replace("\n", " ")[:300]
    return problem(exc.status, detail or exc.reason)


def _instead(request: web.Request) -> str:
    """What to call instead of an unknown path: itself without a trailing slash.

    A sender configured with ``.../webhooks/alertmanager/`` gets a 404, which
    it does not retry; the answer names the URL to configure.
    """
    path = request.path
    bare = path.rstrip("/")
    if bare and bare != path:
        for resource in request.app.router.resources():
            if resource.canonical == bare:
                return f"use {bare[:200]} (without the trailing slash)"
    return "see /openapi.json"


def expectation_failed(expect: str) -> web.Response:
    """The 417 for an ``Expect`` other than ``100-continue``."""
    return problem(
        417,
        f"Expect {expect[:40]!r} is not supported, only 100-continue; send the "
        "request again without the Expect header",
        slug="expectation-failed",
    )


def request_id(request: web.BaseRequest) -> str:
    """The caller's ``X-Request-Id`` when it is a plain token, else a new one.

    Ours need not be secret, only distinct: not a system call per request.
    """
    given = request.headers.get("X-Request-Id")
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return f"{getrandbits(64):016x}"


def unsupported_expect(request: web.BaseRequest) -> str | None:
    """The request's ``Expect`` when it is not ``100-continue``, else None.

    Read as aiohttp reads it: only an HTTP/1.1 request's non-empty ``Expect``.
    """
    expect = request.headers.get(hdrs.EXPECT)
    if (
        not expect
        or request.version != HttpVersion11
        or expect.lower() == "100-continue"
    ):
        return None
    return expect


async def expect_continue(request: web.Request) -> None:
    """Every route's ``expect_handler``: ``100 Continue`` for ``Expect: 100-continue``.

    What aiohttp's own does, except that any other ``Expect`` is left to the
    middleware, which answers it 417 problem+json (aiohttp's answers text/plain,
    before any middleware runs). Routes get it through ``routing.Routes``.
    """
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version == HttpVersion11 and expect.lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # An interim answer: the response itself has not started.
        request.writer.output_size = 0


async def _unless_expectation_fails(
    request: web.Request,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """The handler's response; for an unsupported ``Expect``, a 417 before it runs."""
    expect = unsupported_expect(request)
    if expect is None:
        return await handler(request)
    return expectation_failed(expect)


class _Children:
    """The request metrics the middleware adds to, kept cheap per request.

    Accepted webhooks and request durations are tallied in plain numbers and
    added to the metrics whenever they are read (``Metrics.before_collect``):
    a metric child takes a lock per ``inc`` and walks its buckets per
    ``observe``, about 3 us of every request, measured. Refusals are counted at
    once. The label values are the client's to choose (a method): past
    ``_CHILDREN_KEPT`` keys, durations are observed at once.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._webhooks: dict[tuple[str, str], Counter] = {}
        self._accepted: dict[str, int] = {}
        # Per (route, method, status): observations per bucket (+Inf last), sum.
        self._tallies: dict[tuple[str, str, str], tuple[list[int], list[float]]] = {}
        self._bounds = (*REQUEST_BUCKETS, math.inf)
        metrics.before_collect(self.flush)

    def count_webhook(self, source: str, outcome: str) -> None:
        if outcome == "accepted":
            self._accepted[source] = self._accepted.get(source, 0) + 1
            return
        key = (source, outcome)
        child = self._webhooks.get(key)
        if child is None:
            child = self._metrics.webhooks.labels(source, outcome)
            if len(self._webhooks) < _CHILDREN_KEPT:
                self._webhooks[key] = child
        child.inc()

    def observe(self, route: str, method: str, status: str, seconds: float) -> None:
        key = (route, method, status)
        tally = self._tallies.get(key)
        if tally is None:
            if len(self._tallies) >= _CHILDREN_KEPT:
                self._metrics.request_duration.labels(*key).observe(seconds)
                return
            tally = self._tallies[key] = ([0] * len(self._bounds), [0.0])
        tally[0][bisect_left(self._bounds, seconds)] += 1
        tally[1][0] += seconds

    def flush(self) -> None:
        """Add the tallies to the metrics (before they are read)."""
        accepted, self._accepted = self._accepted, {}
        for source, count in accepted.items():
            self._metrics.webhooks.labels(source, "accepted").inc(count)
        tallies, self._tallies = self._tallies, {}
        for key, (buckets, total) in tallies.items():
            self._metrics.add_observations(
                self._metrics.request_duration.labels(*key), buckets, total[0]
            )


def make_middleware(
    metrics: Metrics,
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Middleware: request id, duration histogram, and error mapping."""
    children = _Children(metrics)

    @web.middleware
    async def middleware(
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        started = time.perf_counter()
        # A caller's id is echoed and logged only when it is a plain token.
        this_id = request_id(request)
        bound = _REQUEST_ID_VAR.set(this_id)
        route = request.match_info.route.resource
        route_name = route.canonical if route is not None else "unmatched"
        response: web.StreamResponse | None = None
        try:
            try:
                response = await _unless_expectation_fails(request, handler)
            except ClientGoneError as exc:
                log.info("client_disconnected", path=request.path, detail=str(exc))
                response = error_response(exc)
            except ReceiverError as exc:
                response = error_response(exc)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                response = _http_problem(request, exc)
            except Exception:  # the edge answers problem+json even for our bugs
                log.exception("request_failed", path=request.path)
                response = problem(
                    500,
                    "internal error while handling the request; it was logged "
                    f"with request id {this_id}",
                    slug="internal",
                )
            source = request.match_info.get("source") or getattr(
                request.match_info.route, "name", None
            )
            if source and source.startswith("webhook:"):
                outcome = (
                    "accepted"
                    if response.status < 300
                    else OUTCOMES.get(response.status, str(response.status))
                )
                children.count_webhook(source.removeprefix("webhook:"), outcome)
                if response.status >= 400 and response.status != 499:
                    # Who sent it: which Alertmanager or integration is
                    # misconfigured (the token is never logged).
                    log.warning(
                        "webhook_rejected",
                        source=source.removeprefix("webhook:"),
                        status=response.status,
                        reason=str(response.get(DETAIL, ""))[:300],
                        peer=request.remote or "",
                        user_agent=request.headers.get(hdrs.USER_AGENT, "")[:120],
                    )
            response.headers["X-Request-Id"] = this_id
            if response.status >= 400 and not request.content.is_eof():
                # Refused before its body was read: the connection closes after
                # the answer (the server never lingers reading the rest).
                response.force_close()
            return response
        finally:
            children.observe(
                route_name,
                request.method,
                "500" if response is None else str(response.status),
                time.perf_counter() - started,
            )
            _REQUEST_ID_VAR.reset(bound)

    return middleware
