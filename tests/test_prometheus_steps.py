"""prometheus.query steps and verification against a real Prometheus and real PromQL."""

from __future__ import annotations

import time

import httpx
import pytest
from peers import run_prometheus

from receiver.errors import PermanentStepError
from receiver.model import Alert, freeze
from receiver.rulebook.steps import PrometheusVerify
from receiver.settings import load_settings
from receiver.steps import build_executors
from receiver.steps.prometheus import PrometheusExecutor
from receiver.steps.prometheus.query import PrometheusQuery

pytestmark = pytest.mark.e2e

ALERT = Alert(
    source="alertmanager",
    fingerprint="beef",
    status="firing",
    labels=freeze({"alertname": "SarkHighLatency", "job": "prometheus"}),
)


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory):
    """A Prometheus on loopback scraping itself every second."""
    with run_prometheus(tmp_path_factory.mktemp("prometheus")) as base:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            body = httpx.get(f"{base}/api/v1/query", params={"query": "up"}).json()
            if body["data"]["result"]:
                break
            time.sleep(0.2)
        else:
            pytest.fail("Prometheus never scraped itself")
        yield base


@pytest.fixture
async def executor(prometheus_url):
    ex = PrometheusExecutor(httpx.AsyncClient(timeout=5), {"default": prometheus_url})
    yield ex
    await ex.aclose()


async def test_query_returns_series_with_labels_and_values(executor):
    """`up` comes back as a series with its labels and the value 1."""
    step = PrometheusQuery(query="up", condition="== 1")
    result = await executor.run(step, ALERT)
    (series,) = result.result["series"]
    assert series["labels"]["job"] == "prometheus"
    assert series["value"] == 1.0
    assert result.result["condition_met"] is True
    assert result.reason.startswith("1 series: {")
    assert "(expect == 1: met)" in result.reason


async def test_template_renders_alert_labels_into_promql(executor):
    """{labels.job} becomes the alert's job label inside the PromQL string."""
    step = PrometheusQuery(query='up{job="{labels.job}"}').rendered(ALERT)
    assert step.query == 'up{job="prometheus"}'
    result = await executor.run(step, ALERT)
    assert result.result["total_series"] == 1


async def test_a_label_value_cannot_break_out_of_the_promql_string(executor):
    """A quote in a label value is escaped: no injection, just no matching series."""
    hostile = Alert(
        source="alertmanager",
        fingerprint="x",
        status="firing",
        labels=freeze({"job": 'x"} or vector(1) or up{job="'}),
    )
    step = PrometheusQuery(query='up{job="{labels.job}"}').rendered(hostile)
    result = await executor.run(step, hostile)
    assert result.result["series"] == []
    assert result.reason == "0 series: no data"


async def test_many_series_are_capped_with_the_total_reported(executor):
    """A histogram's buckets come back as many series; the trace keeps max_series."""
    step = PrometheusQuery(
        query="prometheus_http_request_duration_seconds_bucket", max_series=3
    )
    result = await executor.run(step, ALERT)
    assert len(result.result["series"]) == 3
    assert result.result["total_series"] > 3
    assert all("le" in s["labels"] for s in result.result["series"])


async def test_request_counters_answer_real_promql(executor):
    """prometheus_http_requests_total counts the queries this test itself made."""
    step = PrometheusQuery(
        query='sum(prometheus_http_requests_total{handler="/api/v1/query"})',
        condition="> 0",
    )
    result = await executor.run(step, ALERT)
    assert result.result["condition_met"] is True
    assert result.result["series"][0]["value"] >= 1


async def test_a_condition_that_does_not_hold_is_reported_not_raised(executor):
    """A diagnostic whose threshold is missed still succeeds and says 'not met'."""
    step = PrometheusQuery(query="up", condition="< 0.5")
    result = await executor.run(step, ALERT)
    assert result.ok is True
    assert result.result["condition_met"] is False
    assert "(expect < 0.5: not met)" in result.reason


async def test_no_data_never_meets_a_condition(executor):
    """An empty result is 'not met', never a silent pass."""
    step = PrometheusQuery(query='up{job="nope"}', condition="== 0")
    result = await executor.run(step, ALERT)
    assert result.result["condition_met"] is False


async def test_scalar_results_are_supported(executor):
    """A scalar (scalar(up)) is one labelless value."""
    result = await executor.run(PrometheusQuery(query="scalar(up)"), ALERT)
    assert result.result["series"] == [{"labels": {}, "value": 1.0}]


async def test_bad_promql_is_a_permanent_error_with_prometheus_message(executor):
    """Prometheus rejects bad PromQL; the error carries its errorType, no retry."""
    with pytest.raises(PermanentStepError, match="bad_data"):
        await executor.run(PrometheusQuery(query="sum(("), ALERT)


async def test_unknown_prometheus_target_is_permanent(executor):
    """A step naming an unconfigured Prometheus fails with the configured names."""
    step = PrometheusQuery(query="up", prometheus="other")
    with pytest.raises(PermanentStepError, match="no Prometheus named 'other'"):
        await executor.run(step, ALERT)


async def test_verification_polls_until_the_condition_holds(executor):
    """A verify polls the query until it holds: here, once more samples arrive."""
    now = await executor.query("default", "count_over_time(up[5m])")
    wanted = now[0].value + 2
    check = PrometheusVerify(
        query="count_over_time(up[5m])",
        condition=f">= {wanted:g}",
        timeout=20,
        interval=0.3,
    )
    started = time.monotonic()
    result = await executor.verify(check, PrometheusQuery(query="up"), ALERT)
    assert result.ok, result.reason
    assert result.reason.startswith("verified: count_over_time(up[5m]) = ")
    assert time.monotonic() - started >= 1.0  # it had to wait for two scrapes


async def test_verification_times_out_with_the_last_value(executor):
    """A condition that never holds ends 'not verified' with the value it saw."""
    check = PrometheusVerify(
        query="up",
        condition="< 0",
        timeout=1,
        interval=0.2,
    )
    result = await executor.verify(check, PrometheusQuery(query="up"), ALERT)
    assert not result.ok
    assert result.reason.startswith("not verified within 1s: up = 1 (wanted < 0)")


async def test_named_targets_come_from_settings(prometheus_url):
    """prometheus_targets (and prometheus_url as 'default') configure the executor."""
    settings = load_settings(
        environ={
            "RECEIVER_PROMETHEUS_URL": prometheus_url,
            "RECEIVER_PROMETHEUS_TARGETS": f"second={prometheus_url}",
        }
    )
    executors = build_executors(settings)
    try:
        ex = executors["prometheus"]
        for name in ("default", "second"):
            step = PrometheusQuery(query="up", prometheus=name)
            assert (await ex.run(step, ALERT)).result["total_series"] == 1
    finally:
        for item in executors.values():
            await item.aclose()
