"""One HTTP delivery with bounded retries, honouring Retry-After, and safe errors.

Used by every sink. Retries 429 and 5xx answers and connections that failed before
anything was sent, with jittered exponential backoff, or exactly as long as the
server asks (``Retry-After``, ``ratelimit-reset``, ``X-RateLimit-Reset``) when it
says so. A wait longer than ``max_wait`` gives up at once rather than hammering a
rate limit. Nothing that may already have reached the server (a read timeout) is
sent again. Every message that leaves here has configured secrets scrubbed out.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

import httpx
from tenacity import RetryCallState

from receiver.retrying import (
    RetryPolicy,
    Sleep,
    policy_wait,
    retrying,
    transient_status,
)
from receiver.scrubbing import Scrubber
from receiver.settings import SinkSettings

if TYPE_CHECKING:
    from receiver.model import JSONObject, JSONValue

# "occurrence": post when an alert occurrence is first decided or a remediation
# reaches a new outcome; "decision": post every decision record once.
Dedupe = Literal["occurrence", "decision"]
Clock = Callable[[], datetime]
_EPOCH_THRESHOLD = 1_000_000_000  # larger reset values are epoch seconds


class SinkError(Exception):
    """A delivery failed for good; the message is safe to record and log."""

    def __init__(self, message: str, attempts: int = 1) -> None:
        super().__init__(message)
        self.attempts = attempts


class _RetryableError(Exception):
    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class SinkOutcome:
    """What one sink did with one decision trace."""

    sink: str
    status: Literal["sent", "skipped", "failed"]
    detail: str
    attempts: int = 0

    def to_json(self) -> JSONObject:
        """Plain JSON form for the decision log."""
        return {
            "sink": self.sink,
            "status": self.status,
            "detail": self.detail,
            "attempts": self.attempts,
        }


def retry_after(headers: Mapping[str, str], now: datetime) -> float | None:
    """Seconds the server asks us to wait, from the headers that say so."""
    value = headers.get("retry-after")
    if value:
        value = value.strip()
        if value.isdigit():
            # ``str.isdigit`` also takes digits float() does not ("²").
            return float(value) if value.isascii() else None
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max((when - now).total_seconds(), 0.0)
    for name in ("ratelimit-reset", "x-ratelimit-reset"):
        value = headers.get(name)
        if value:
            try:
                number = float(value.strip())
            except ValueError:
                continue
            if not math.isfinite(number):  # a wait of NaN seconds never ends
                continue
            if number > _EPOCH_THRESHOLD:
                number -= now.timestamp()
            return max(number, 0.0)
    return None


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, _RetryableError)


class Deliverer:
    """Sends requests through one ``httpx.AsyncClient`` with the retry policy."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        secrets: Iterable[str] = (),
        attempts: int = 4,
        max_wait: float = 60.0,
        sleep: Sleep = asyncio.sleep,
        clock: Clock | None = None,
    ) -> None:
        self._client = client
        self.scrub = Scrubber(secrets)
        self._max_wait = max_wait
        self._policy = RetryPolicy(
            attempts=attempts, multiplier=0.5, cap=max_wait, on=_retryable
        )
        self._sleep = sleep
        self._clock = clock or (lambda: datetime.now(UTC))

    @classmethod
    def configured(
        cls,
        sinks: SinkSettings,
        *,
        secrets: Iterable[str],
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> Deliverer:
        """A deliverer with the ``sinks`` settings' timeout and retry policy."""
        timeout = sinks.timeout.total_seconds()
        return cls(
            httpx.AsyncClient(
                timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
                follow_redirects=False,
                transport=transport,
                headers={"User-Agent": "alert-receiver"},
            ),
            secrets=secrets,
            attempts=sinks.attempts,
            max_wait=sinks.max_wait.total_seconds(),
            sleep=sleep,
        )

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _RetryableError) and exc.retry_after is not None:
            return exc.retry_after
        return float(policy_wait(self._policy)(state))

    async def send(
        self,
        method: str,
        url: str,
        *,
        what: str,
        json: JSONValue = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> tuple[httpx.Response, int]:
        """Send, retrying what is safe to retry; return (response, attempts).

        ``what`` names the request in messages (never the URL: it may hold a
        token). Answers other than 429/5xx are returned for the caller to judge.

        Raises:
            SinkError: no usable answer after the retries, or a wait too long.
        """
        attempts = 0
        try:
            async for attempt in retrying(
                self._policy, sleep=self._sleep, wait=self._wait
            ):
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    return (
                        await self._once(
                            method=method,
                            url=url,
                            what=what,
                            json=json,
                            headers=headers,
                            params=params,
                        ),
                        attempts,
                    )
        except _RetryableError as exc:
            raise SinkError(
                f"{what}: gave up after {attempts} tries: {exc}", attempts
            ) from exc
        except SinkError as exc:
            exc.attempts = attempts
            raise
        raise AssertionError  # pragma: no cover (reraise=True always raises)

    async def _once(
        self,
        *,
        method: str,
        url: str,
        what: str,
        json: JSONValue,
        headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
    ) -> httpx.Response:
        try:
            response = await self._client.request(
                method, url, json=json, headers=headers, params=params
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise _RetryableError(
                f"could not connect ({exc.__class__.__name__})", None
            ) from exc
        except (httpx.InvalidURL, UnicodeError) as exc:
            # Nothing was sent, and nothing will be on a retry: a failed outcome
            # (the URL is a secret of the settings: never in the text).
            raise SinkError(
                f"{what}: the URL cannot be used ({exc.__class__.__name__}); "
                "check the sink's settings"
            ) from None
        except httpx.HTTPError as exc:
            # It may have arrived: sending it again could post twice.
            raise SinkError(
                f"{what}: {exc.__class__.__name__}; not retried, it may have "
                "reached the server"
            ) from exc
        if transient_status(response.status_code):
            wait = retry_after(response.headers, self._clock())
            if wait is not None and wait > self._max_wait:
                raise SinkError(
                    f"{what}: HTTP {response.status_code}, asked to wait {wait:g}s, "
                    f"longer than sink_max_wait ({self._max_wait:g}s); gave up"
                )
            raise _RetryableError(f"HTTP {response.status_code}", wait)
        return response

    def excerpt(self, response: httpx.Response, limit: int = 300) -> str:
        """A scrubbed, capped excerpt of an error answer's body."""
        text = self.scrub(" ".join(response.text.split()))
        return text[:limit]

    async def aclose(self) -> None:
        """Close the client."""
        await self._client.aclose()
