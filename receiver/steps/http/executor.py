"""``HttpExecutor``: the allowlisted HTTP client ``http.*`` steps run through.

Only hosts on the allowlist (settings ``http_allowlist``) are ever called, so an
alert label cannot point the receiver anywhere else (no SSRF). ``get``
retries transient failures with bounded, jittered backoff; it serves the
``http.get`` step (``get`` module) and verify. The ``request`` module sends
remediation requests through ``client`` after ``check``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
import httpx

from receiver.errors import PermanentStepError, TransientStepError
from receiver.model import (
    Alert,
    Intent,
    JSONObject,
    JSONValue,
    RecheckResult,
    StepResult,
)
from receiver.retrying import RetryPolicy, poll_until, retrying, transient_status
from receiver.rulebook.steps import HttpVerify, StepModel, Templated
from receiver.steps.catalog import StepDef, family_steps
from receiver.steps.defs import Table

# The most of an answer's body read at all: the excerpt (``max_body_bytes``)
# and a ``json_path`` come from these bytes, and the rest is never read, so a
# huge or endless body cannot fill memory.
MAX_READ_BYTES = 1 << 20


@dataclass(frozen=True)
class Answer:
    """What a step keeps of an HTTP answer: its status and the start of its body."""

    status: int
    body: bytes
    complete: bool  # the whole body was read
    encoding: str

    def text(self) -> str:
        """The body read, decoded (undecodable bytes replaced)."""
        return self.body.decode(self.encoding, "replace")


async def read_answer(response: httpx.Response, limit: int) -> Answer:
    """The status and at most ``limit`` bytes of a streamed response's body."""
    body = bytearray()
    complete = True
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            del body[limit:]
            complete = False
            break
    # httpx names only an encoding Python knows (else its default, UTF-8).
    encoding = response.encoding or "utf-8"
    return Answer(response.status_code, bytes(body), complete, encoding)


_SHOWN_CHARS = 200  # of a JSON value in a reason (the result keeps it whole)


def _shown(value: JSONValue) -> str:
    """A value as the reason line shows it, cut to a line's length."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"


def json_path(document: JSONValue, path: str) -> JSONValue:
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


async def warm_up() -> None:
    """Load now what the first request of an httpx client would load.

    httpcore imports its event-loop backend (anyio's, for asyncio) on its
    first request: tens of milliseconds, measured as the first remediation's
    delay after every start of the worker.
    """
    anyio.Event().set()


class HttpExecutor:
    """Runs http steps through one injected ``httpx.AsyncClient``."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        allowlist: list[str],
        steps: Sequence[StepDef] | None = None,
    ) -> None:
        self.client = client
        self._allow = {a.lower() for a in allowlist}
        self._table: Table[HttpExecutor] = Table(
            "http", family_steps(__package__, steps)
        )

    def check(self, url: str) -> None:
        """Refuse a URL that is malformed or whose host is not allowlisted.

        Raises:
            PermanentStepError: naming why.
        """
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
        """Run an ``http.*`` step through its step module."""
        return await self._table.run(self, step, alert)

    async def prepare(self, step: StepModel, alert: Alert) -> Intent | None:
        """Record the exact request a remediation is about to send."""
        return await self._table.prepare(self, step, alert)

    async def apply(self, step: StepModel, alert: Alert, intent: Intent) -> StepResult:
        """Send the request ``prepare`` recorded."""
        return await self._table.apply(self, step, alert, intent)

    async def recheck(
        self, step: StepModel, alert: Alert, intent: Intent
    ) -> RecheckResult:
        """Whether an interrupted request arrived (see the step module)."""
        del alert
        return await self._table.recheck(self, step, intent)

    async def get(
        self, url: str, expect: int, path: str | None, cap: int = 2048
    ) -> StepResult:
        """GET ``url`` (retrying transient failures): status, latency, body, value."""
        self.check(url)
        started = time.perf_counter()
        try:
            async for attempt in retrying(RetryPolicy()):
                with attempt:
                    answer = await self._send("GET", url)
        except TransientStepError as exc:
            raise TransientStepError(
                f"GET {url} failed after 3 attempts: {exc}"
            ) from exc
        latency = round((time.perf_counter() - started) * 1000, 1)
        result: JSONObject = {
            "status": answer.status,
            "latency_ms": latency,
            "body": answer.text()[:cap],
        }
        ok = answer.status == expect
        reason = f"GET {url}: {answer.status} in {latency} ms"
        if path:
            value: JSONValue = None
            if not answer.complete:
                reason += f"; {path} not read: the body is over {MAX_READ_BYTES} bytes"
            else:
                try:
                    value = json_path(json.loads(answer.body), path)
                except (ValueError, KeyError, RecursionError):
                    reason += f"; {path} not found in the body"
                else:
                    reason += f"; {path} = {_shown(value)}"
            result["value"] = value
        return StepResult(ok=ok, reason=reason, result=result)

    async def _send(self, method: str, url: str) -> Answer:
        try:
            async with self.client.stream(method, url) as response:
                if transient_status(response.status_code):
                    raise TransientStepError(f"HTTP {response.status_code}")
                return await read_answer(response, MAX_READ_BYTES)
        except (httpx.InvalidURL, UnicodeError) as exc:
            raise PermanentStepError(f"refused {url!r}: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise TransientStepError(f"timed out: {exc.__class__.__name__}") from exc
        except httpx.TransportError as exc:
            raise TransientStepError(f"{exc.__class__.__name__}: {exc}") from exc

    async def verify(
        self, check: Templated, step: StepModel, alert: Alert
    ) -> StepResult:
        """Poll an http.get verification until it holds or times out."""
        del step, alert
        if not isinstance(check, HttpVerify):
            raise PermanentStepError(f"http executor cannot verify {check.type_name()}")

        async def probe() -> tuple[bool, StepResult]:
            last = await self.get(check.url, check.expect_status, check.json_path)
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
        await self.client.aclose()
