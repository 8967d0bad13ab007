"""The edge's per-request metrics and log context, kept cheap per request.

Accepted webhooks and request durations are tallied in plain numbers and added
to the Prometheus metrics whenever the registry is read; the numbers read are
the ones ``Counter.inc`` and ``Histogram.observe`` would have given. The
request id is in the context of every line logged while a request is handled.
"""

from __future__ import annotations

import math

import structlog
from conftest import bearer
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families
from test_web import AM, am_payload

from receiver.metrics import REQUEST_BUCKETS, Metrics
from receiver.web.problems import _Children

DURATION = "receiver_request_duration_seconds"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def route(status: str, **more: str) -> tuple[tuple[str, str], ...]:
    labels = {"route": AM, "method": "POST", "status": status, **more}
    return tuple(sorted(labels.items()))


@settings(max_examples=200, deadline=None)
@given(
    seconds=st.lists(
        st.floats(min_value=0, max_value=10, allow_nan=False)
        | st.sampled_from([*REQUEST_BUCKETS, 0.0]),
        max_size=30,
    ),
    flushes=st.sets(st.integers(min_value=0, max_value=30)),
)
def test_tallied_durations_read_as_observed_ones(seconds, flushes):
    """Whenever read: the same buckets and count as observe, the same sum."""
    metrics = Metrics()
    children = _Children(metrics)
    registry = CollectorRegistry()
    direct = Histogram("d", "d", ["route"], registry=registry, buckets=REQUEST_BUCKETS)
    for i, value in enumerate(seconds):
        if i in flushes:
            children.flush()
        children.observe(AM, "POST", "202", value)
        direct.labels(AM).observe(value)
    ours = {
        s.labels.get("le"): s.value
        for family in metrics.registry.collect()
        if family.name == DURATION
        for s in family.samples
        if s.name == f"{DURATION}_bucket"
    }
    theirs = {
        s.labels.get("le"): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == "d_bucket"
    }
    if seconds:
        assert ours == theirs
        total = sum(
            s.value
            for family in metrics.registry.collect()
            if family.name == DURATION
            for s in family.samples
            if s.name == f"{DURATION}_sum"
        )
        assert math.isclose(total, sum(seconds), rel_tol=1e-9, abs_tol=1e-12)


async def test_accepted_webhooks_and_durations_are_read_on_every_scrape(make_client):
    """Each scrape shows every request answered before it, never twice."""
    client = await make_client()
    for _ in range(3):
        resp = await client.post(AM, json=am_payload(), headers=bearer())
        assert resp.status == 202
    first = samples(await (await client.get("/metrics")).text())
    accepted = (
        "receiver_webhooks_total",
        (("outcome", "accepted"), ("source", "alertmanager")),
    )
    assert first[accepted] == 3
    assert first[(f"{DURATION}_count", route("202"))] == 3
    assert (
        first[
            (
                f"{DURATION}_bucket",
                route("202", le="+Inf"),
            )
        ]
        == 3
    )
    resp = await client.post(AM, json=am_payload(), headers=bearer("wrong"))
    assert resp.status == 403
    resp = await client.post(AM, json=am_payload(), headers=bearer())
    second = samples(await (await client.get("/metrics")).text())
    assert second[accepted] == 4
    assert second[(f"{DURATION}_count", route("202"))] == 4
    assert second[(f"{DURATION}_count", route("403"))] == 1
    assert (
        second[(f"{DURATION}_sum", route("202"))]
        > first[(f"{DURATION}_sum", route("202"))]
    )


async def test_lines_logged_during_a_request_carry_its_id(make_client):
    """A refusal's line carries the id the response echoes; none after it."""
    client = await make_client()
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        resp = await client.post(
            AM, json=am_payload(), headers={**bearer("wrong"), "X-Request-Id": "r-1"}
        )
        structlog.get_logger("test").info("after")
    assert resp.status == 403
    assert resp.headers["X-Request-Id"] == "r-1"
    rejected = [e for e in logs if e["event"] == "webhook_rejected"]
    assert [e.get("request_id") for e in rejected] == ["r-1"]
    # Who sent it, to find the misconfigured sender.
    assert rejected[0]["peer"] == "127.0.0.1"
    assert rejected[0]["user_agent"].startswith("Python/")
    assert "request_id" not in next(e for e in logs if e["event"] == "after")


def test_durations_past_the_kept_keys_are_observed_at_once():
    """Methods are the client's to choose: past 1,024 keys nothing is tallied."""
    metrics = Metrics()
    children = _Children(metrics)
    for i in range(1100):
        children.observe("unmatched", f"M{i}", "405", 0.002)
    assert len(children._tallies) == 1024
    counts = [
        s.value
        for family in metrics.registry.collect()
        if family.name == DURATION
        for s in family.samples
        if s.name == f"{DURATION}_count"
    ]
    assert len(counts) == 1100
    assert set(counts) == {1}
