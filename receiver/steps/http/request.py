"""``http.request``: call a remediation webhook on an allowlisted host, once.

The request is sent once (its idempotency key is already claimed), again only
when the connection failed before anything was sent. Each request carries an
``Idempotency-Key`` header, the same for every delivery of one alert occurrence
(unless the step sets that header itself), so a target that honours it can
refuse a duplicate the receiver could not rule out.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

import httpx
from pydantic import ConfigDict, Field, JsonValue, WithJsonSchema
from typing_extensions import override

from receiver.errors import PermanentStepError
from receiver.model import (
    Alert,
    Intent,
    JSONObject,
    RecheckResult,
    StepResult,
    iso,
)
from receiver.retrying import RetryPolicy, retrying
from receiver.rulebook.steps.base import Url
from receiver.rulebook.steps.verify import Remediation
from receiver.steps.defs import Change
from receiver.steps.http.executor import read_answer

if TYPE_CHECKING:
    from receiver.steps.http.executor import HttpExecutor


class HttpRequest(Remediation):
    """Call a remediation webhook on an allowlisted host."""

    family: ClassVar[str] = "http"
    type: Literal["http.request"] = "http.request"
    method: Literal["POST", "PUT", "PATCH", "DELETE"] = "POST"
    url: Url
    json_body: Annotated[
        dict[str, JsonValue] | None,
        # The schema rules have always had: any JSON object.
        WithJsonSchema(
            {
                "anyOf": [
                    {"additionalProperties": True, "type": "object"},
                    {"type": "null"},
                ]
            }
        ),
    ] = Field(default=None, alias="json")
    headers: dict[str, str] = Field(default_factory=dict)
    expect_status: list[int] = Field(default_factory=lambda: [200, 201, 202, 204])
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @override
    def target(self) -> str:
        return self.url

    @override
    def describe(self) -> JSONObject:
        return {
            "verb": self.method,
            "url": self.url,
            "body": self.json_body,
            "action": f"{self.method} {self.url}",
        }


IDEMPOTENCY_HEADER = "Idempotency-Key"
_BODY_CHARS = 1024  # of an answer's body kept in the result


def request_key(step: HttpRequest, alert: Alert) -> str:
    """The ``Idempotency-Key`` of ``step`` for this alert occurrence.

    Method, URL and body, the alert's fingerprint and start: every delivery of
    one occurrence sends the same key, a new occurrence a new one.
    """
    body = json.dumps(step.json_body, sort_keys=True)
    raw = "|".join(
        (step.method, step.url, body, alert.fingerprint, iso(alert.starts_at) or "")
    )
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def _connect_error(exc: BaseException) -> bool:
    return isinstance(exc, httpx.ConnectError)


# A remediation call is sent again only when it never connected: once it may
# have arrived, sending it twice could act twice.
_CONNECT_ONLY = RetryPolicy(on=_connect_error)


async def prepare(http: HttpExecutor, step: HttpRequest, alert: Alert) -> Intent:
    """Record the exact request an ``http.request`` is about to send.

    Header values are never recorded (they may carry credentials), only
    their names, and the body as a digest.
    """
    del http
    body = json.dumps(step.json_body, sort_keys=True).encode()
    key = _sent_key(step) or request_key(step, alert)
    return Intent(
        f"{step.method} {step.url}",
        {
            "method": step.method,
            "url": step.url,
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "headers": sorted(step.headers or {}),
            "idempotency_key": key,
        },
    )


async def apply(
    http: HttpExecutor, step: HttpRequest, alert: Alert, intent: Intent
) -> StepResult:
    """Send the request ``prepare`` recorded, with the key it recorded."""
    key = intent.data.get("idempotency_key")
    return await send(
        http, step, key if isinstance(key, str) and key else request_key(step, alert)
    )


async def recheck(
    http: HttpExecutor, step: HttpRequest, intent: Intent
) -> RecheckResult:
    """A request leaves no trace here to read back: it cannot tell."""
    del http, step
    return RecheckResult(
        None,
        f"{intent.summary} is not idempotent and leaves nothing the receiver "
        "can read back; whether it arrived cannot be told (declare a verify "
        "on the step so a crash recovery can check its effect)",
    )


async def send(http: HttpExecutor, step: HttpRequest, key: str) -> StepResult:
    """Send the request once (again only if it never connected)."""
    http.check(step.url)
    headers = dict(step.headers or {})
    if _sent_key(step) is None:
        headers[IDEMPOTENCY_HEADER] = key
    try:
        async for attempt in retrying(_CONNECT_ONLY):
            with attempt:
                async with http.client.stream(
                    step.method, step.url, json=step.json_body, headers=headers
                ) as response:
                    # 1024 characters are kept: at most 4 bytes each.
                    answer = await read_answer(response, 4 * _BODY_CHARS)
    except httpx.ConnectError as exc:
        raise PermanentStepError(
            f"{step.method} {step.url} failed: could not connect after 3 "
            "attempts (nothing was sent)"
        ) from exc
    except (httpx.InvalidURL, UnicodeError) as exc:
        raise PermanentStepError(
            f"refused {step.url!r}: {exc} (nothing was sent)"
        ) from exc
    except httpx.HTTPError as exc:
        raise PermanentStepError(
            f"{step.method} {step.url} failed: {exc.__class__.__name__}; not "
            "retried, it may have reached the server"
        ) from exc
    ok = answer.status in step.expect_status
    return StepResult(
        ok=ok,
        reason=f"{step.method} {step.url}: HTTP {answer.status}"
        + ("" if ok else f" (expected one of {step.expect_status})"),
        result={"status": answer.status, "body": answer.text()[:_BODY_CHARS]},
    )


def _sent_key(step: HttpRequest) -> str | None:
    """The ``Idempotency-Key`` the step sets itself, if it does."""
    for name, value in (step.headers or {}).items():
        if name.lower() == IDEMPOTENCY_HEADER.lower():
            return value
    return None


STEPS = (Change(HttpRequest, prepare, apply, recheck),)
