"""``http.get`` and ``http.request`` steps, and ``http.get`` verification.

Only hosts on the allowlist (settings ``http_allowlist``) are ever called, so an
alert label cannot point the receiver anywhere else (no SSRF). Probes retry
transient failures with bounded, jittered backoff; a remediation request is sent
once (its idempotency key is already claimed), retried only when the connection
failed before anything was sent. Each remediation request carries an
``Idempotency-Key`` header, the same for every delivery of one alert occurrence
(unless the step sets that header itself), so a target that honours it can
refuse a duplicate the receiver could not rule out.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx

from receiver.errors import PermanentStepError, TransientStepError
from receiver.model import Alert, Intent, RecheckResult, StepResult, iso
from receiver.retrying import RetryPolicy, poll_until, retrying, transient_status
from receiver.rulebook.steps import HttpGet, HttpRequest, HttpVerify, StepModel


def json_path(document: Any, path: str) -> Any:
    """Follow a dotted path (``checks.db.healthy``, ``items.0.name``)."""
    current = document
    for part in path.split("."):
        if isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        elif isinstance(current, dict) and part in current:
            current = current[part]
        else:
            raise KeyError(part)
    return current


IDEMPOTENCY_HEADER = "Idempotency-Key"


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


async def warm_up() -> None:
    """Load now what the first request of an httpx client would load.

    httpcore imports its event-loop backend (anyio's, for asyncio) on its
    first request: tens of milliseconds, measured as the first remediation's
    delay after every start of the worker.
    """
    anyio.Event().set()


class HttpExecutor:
    """Runs http steps through one injected ``httpx.AsyncClient``."""

    def __init__(self, client: httpx.AsyncClient, allowlist: list[str]) -> None:
        self._client = client
        self._allow = {a.lower() for a in allowlist}

    def _check(self, url: str) -> None:
        # Rendering already refuses these (the step is skipped); this is the
        # executor's own line for a URL that reached it some other way.
        if any(ch.isspace() or not ch.isprintable() for ch in url):
            raise PermanentStepError(
                f"refused {url!r}: a URL may not hold whitespace or control characters"
            )
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 (raises ValueError for a bad port)
        except ValueError as exc:
            raise PermanentStepError(
                f"refused {url!r}: not a valid URL ({exc})"
            ) from exc
        if parts.scheme not in ("http", "https"):
            raise PermanentStepError(f"refused {url!r}: only http and https URLs")
        host = (parts.hostname or "").lower()
        netloc = f"{host}:{parts.port}" if parts.port else host
        if host not in self._allow and netloc not in self._allow:
            raise PermanentStepError(
                f"refused {parts.scheme}://{netloc}: host is not on http_allowlist "
                f"({', '.join(sorted(self._allow)) or 'empty'})"
            )

    async def run(self, step: StepModel, alert: Alert) -> StepResult:
        """Run an http.get probe or an http.request remediation."""
        if isinstance(step, HttpGet):
            return await self._get(
                step.url, step.expect_status, step.json_path, step.max_body_bytes
            )
        if isinstance(step, HttpRequest):
            return await self._request(step, request_key(step, alert))
        raise PermanentStepError(f"http executor cannot run {step.type_name()}")

    async def prepare(self, step: StepModel, alert: Alert) -> Intent | None:
        """Record the exact request an ``http.request`` is about to send.

        Header values are never recorded (they may carry credentials), only
        their names, and the body as a digest.
        """
        if not isinstance(step, HttpRequest):
            return None
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

    async def apply(self, step: StepModel, alert: Alert, intent: Intent) -> StepResult:
        """Send the request ``prepare`` recorded (the step's own)."""
        if isinstance(step, HttpRequest):
            key = intent.data.get("idempotency_key")
            if isinstance(key, str) and key:
                return await self._request(step, key)
        return await self.run(step, alert)

    async def recheck(
        self, step: StepModel, alert: Alert, intent: Intent
    ) -> RecheckResult:
        """A request leaves no trace here to read back: it cannot tell."""
        del step, alert
        return RecheckResult(
            None,
            f"{intent.summary} is not idempotent and leaves nothing the receiver "
            "can read back; whether it arrived cannot be told (declare a verify "
            "on the step so a crash recovery can check its effect)",
        )

    async def _get(
        self, url: str, expect: int, path: str | None, cap: int = 2048
    ) -> StepResult:
        self._check(url)
        started = time.perf_counter()
        try:
            async for attempt in retrying(RetryPolicy()):
                with attempt:
                    response = await self._send("GET", url)
        except TransientStepError as exc:
            raise TransientStepError(
                f"GET {url} failed after 3 attempts: {exc}"
            ) from exc
        latency = round((time.perf_counter() - started) * 1000, 1)
        result: dict[str, Any] = {
            "status": response.status_code,
            "latency_ms": latency,
            "body": response.text[:cap],
        }
        ok = response.status_code == expect
        reason = f"GET {url}: {response.status_code} in {latency} ms"
        if path:
            try:
                value = json_path(response.json(), path)
            except (ValueError, KeyError):
                value = None
                reason += f"; {path} not found in the body"
            else:
                reason += f"; {path} = {value!r}"
            result["value"] = value
        return StepResult(ok=ok, reason=reason, result=result)

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._client.request(method, url, **kwargs)
        except (httpx.InvalidURL, UnicodeError) as exc:
            raise PermanentStepError(f"refused {url!r}: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise TransientStepError(f"timed out: {exc.__class__.__name__}") from exc
        except httpx.TransportError as exc:
            raise TransientStepError(f"{exc.__class__.__name__}: {exc}") from exc
        if transient_status(response.status_code):
            raise TransientStepError(f"HTTP {response.status_code}")
        return response

    async def _request(self, step: HttpRequest, key: str) -> StepResult:
        self._check(step.url)
        headers = dict(step.headers or {})
        if _sent_key(step) is None:
            headers[IDEMPOTENCY_HEADER] = key
        try:
            async for attempt in retrying(_CONNECT_ONLY):
                with attempt:
                    response = await self._client.request(
                        step.method, step.url, json=step.json_body, headers=headers
                    )
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
        ok = response.status_code in step.expect_status
        return StepResult(
            ok=ok,
            reason=f"{step.method} {step.url}: HTTP {response.status_code}"
            + ("" if ok else f" (expected one of {step.expect_status})"),
            result={"status": response.status_code, "body": response.text[:1024]},
        )

    async def verify(self, check: Any, step: StepModel, alert: Alert) -> StepResult:
        """Poll an http.get verification until it holds or times out."""
        del step, alert
        if not isinstance(check, HttpVerify):
            raise PermanentStepError(f"http executor cannot verify {check.type}")

        async def probe() -> tuple[bool, StepResult]:
            last = await self._get(check.url, check.expect_status, check.json_path)
            if last.ok and check.json_path and check.expect_value is not None:
                value = last.result.get("value")
                last = StepResult(
                    ok=value == check.expect_value,
                    reason=last.reason,
                    result=last.result,
                )
            return last.ok, last

        polled = await poll_until(
            probe,
            check.timeout,
            check.interval.total_seconds(),
            transient=lambda exc: StepResult(ok=False, reason=str(exc)),
        )
        if polled.done:
            return StepResult(ok=True, reason=f"verified: {polled.last.reason}")
        return StepResult(ok=False, reason=f"not verified: {polled.last.reason}")

    async def aclose(self) -> None:
        """Close the client."""
        await self._client.aclose()


def _sent_key(step: HttpRequest) -> str | None:
    """The ``Idempotency-Key`` the step sets itself, if it does."""
    for name, value in (step.headers or {}).items():
        if name.lower() == IDEMPOTENCY_HEADER.lower():
            return value
    return None
