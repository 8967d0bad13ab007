"""Sinks against servers that answer oddly: garbage 2xx bodies, odd rate-limit headers.

Each must end in a recorded outcome or a ``SinkError`` (a safe message), never
an unexpected exception, a NaN wait or a wait that never ends.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import httpx
import pytest
from fakes import RecordingServer, Reply

from receiver.model import (
    Alert,
    AlertTrace,
    Decision,
    MatchTrace,
    Severity,
    StepKind,
    StepTrace,
    freeze,
)
from receiver.sinks.delivery import Deliverer, SinkError
from receiver.sinks.pagerduty import PagerDutyNoteSink
from receiver.sinks.slack import SlackSink

NOW = datetime(2026, 11, 26, 10, 12, tzinfo=UTC)


def trace() -> AlertTrace:
    alert = Alert(
        source="events_v2",
        fingerprint="fp1",
        status="firing",
        labels=freeze({"alertname": "A"}),
        starts_at=NOW,
        refs=freeze({"dedup_key": "ev-1"}),
    )
    step = StepTrace(
        kind=StepKind.REMEDIATION,
        type="k8s.restart",
        target="deploy/siem",
        decision=Decision.EXECUTED,
        reason="done",
    )
    match = MatchTrace(rule="r", severity=Severity.P1, playbook="p", steps=(step,))
    return AlertTrace(
        alert=alert, matches=(match,), decided_at=NOW, payload_id="p1", mode="execute"
    )


class Waits:
    """An injected sleep that records each wait and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def deliverer(sleep: Waits) -> Deliverer:
    return Deliverer(
        httpx.AsyncClient(timeout=5.0), sleep=sleep, clock=lambda: NOW, max_wait=60.0
    )


@pytest.mark.parametrize(
    "body",
    [
        [],  # a JSON list, not an object
        {"incidents": ["Q1"]},  # incidents that are not objects
        {"incidents": {"id": "Q1"}},  # not a list
    ],
)
async def test_a_garbage_incident_lookup_is_a_sink_error(body):
    with RecordingServer() as server:
        server.script("GET", "/incidents", Reply(200, body))
        sink = PagerDutyNoteSink(
            deliverer(Waits()), api_url=server.url, token="t", from_email="a@b.test"
        )
        with pytest.raises(SinkError, match="incident lookup"):
            await sink.send(trace())
        assert server.seen("POST", r"/incidents/.*/notes") == []
        await sink.aclose()


@pytest.mark.parametrize(
    "headers",
    [
        {"ratelimit-reset": "nan"},
        {"x-ratelimit-reset": "NaN"},
        {"retry-after": "\xb2"},  # a digit to str.isdigit, not to float()
    ],
)
async def test_odd_rate_limit_headers_give_a_finite_wait(headers):
    with RecordingServer() as server:
        server.script(
            "POST", "/hook", Reply(429, "slow down", headers), Reply(200, "ok")
        )
        waits = Waits()
        sink = SlackSink(deliverer(waits), url=f"{server.url}/hook")
        outcome = await sink.send(trace())
        assert outcome.status == "sent"
        assert waits.waits, "the 429 was retried after a wait"
        assert all(math.isfinite(w) and 0 <= w <= 60 for w in waits.waits), waits
        await sink.aclose()
