"""RFC 9457 ``application/problem+json`` responses and the middleware that maps errors.

Every rejection says what was wrong and how to fix it. The only 5xx on purpose is
503 when the journal cannot take a payload (the sender retries).
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from receiver.errors import (
    AuthError,
    InputError,
    OverloadedError,
    PayloadTooLargeError,
    ReceiverError,
    StoreUnavailableError,
    UnsupportedMediaError,
)
from receiver.metrics import Metrics

CONTENT_TYPE = "application/problem+json"
# Where a problem response keeps its detail, for the one log line per rejection.
DETAIL = web.ResponseKey("problem_detail", str)
log = structlog.get_logger("receiver.web")

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    413: "Payload too large",
    415: "Unsupported media type",
    503: "Service unavailable",
    500: "Internal error",
}


def problem(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """Build a problem+json response."""
    body: dict[str, Any] = {
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


def error_response(exc: ReceiverError) -> web.Response:
    """Map a receiver error to its response."""
    if isinstance(exc, PayloadTooLargeError):
        return problem(413, str(exc), slug="payload-too-large")
    if isinstance(exc, UnsupportedMediaError):
        return problem(415, str(exc), slug="unsupported-media-type")
    if isinstance(exc, InputError):
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
    413: "too_large",
    415: "unsupported_media",
    503: "unavailable",
}


def make_middleware(
    metrics: Metrics,
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Middleware: request id, duration histogram, and error mapping."""

    @web.middleware
    async def middleware(
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = request.headers.get("X-Request-Id") or os.urandom(8).hex()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        route = request.match_info.route.resource
        route_name = route.canonical if route is not None else "unmatched"
        try:
            try:
                response = await handler(request)
            except ReceiverError as exc:
                response = error_response(exc)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                detail = exc.text or exc.reason
                if exc.status == 404:
                    detail = f"no such endpoint {request.path}; see /openapi.json"
                elif exc.status == 405:
                    detail = f"{request.method} is not allowed on {request.path}"
                response = problem(exc.status, detail)
            except Exception:  # the edge answers problem+json even for our bugs
                log.exception("request_failed", path=request.path)
                response = problem(
                    500,
                    "internal error while handling the request; it was logged "
                    f"with request id {request_id}",
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
                metrics.webhooks.labels(source.removeprefix("webhook:"), outcome).inc()
                if response.status >= 400:
                    log.info(
                        "webhook_rejected",
                        source=source.removeprefix("webhook:"),
                        status=response.status,
                        reason=str(response.get(DETAIL, ""))[:300],
                    )
            response.headers["X-Request-Id"] = request_id
            return response
        finally:
            status = locals().get("response")
            metrics.request_duration.labels(
                route_name,
                request.method,
                str(status.status) if isinstance(status, web.StreamResponse) else "500",
            ).observe(time.perf_counter() - started)
            structlog.contextvars.unbind_contextvars("request_id")

    return middleware
