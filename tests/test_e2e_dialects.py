"""The receiver speaks its senders' dialects: real Alertmanager, real pdpyras.

Alertmanager 0.25 pages the receiver's ``/v2/enqueue`` through
``pagerduty_configs`` with ``group_by`` making groups of three, and sends a
webhook truncated by ``max_alerts``; PagerDuty's own Python client (``pdpyras``)
triggers, acknowledges and resolves by dedup key, and sends change events.
"""

from __future__ import annotations

import json
import textwrap
import warnings
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import httpx
import pytest
from peers import poll, run_alertmanager, run_receiver
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

TOKEN = "e2e-token-d1a7"
ROUTING_KEY = "R0UT1NGKEYd1a1ec70123456789abcde"
ENV = {"RECEIVER_AUTH_TOKENS": TOKEN, "RECEIVER_ROUTING_KEYS": ROUTING_KEY}
RULES = """
playbooks:
  api-down:
    diagnostics:
      - type: k8s.pods
        namespace: "{labels.namespace}"
        workload: "{labels.deployment}"
    remediation:
      - type: k8s.rollout_undo
        namespace: "{labels.namespace}"
        deployment: "{labels.deployment}"
rules:
  - name: api-down
    match: ['alertname="E2EApiDown"', 'namespace="production"']
    status: any
    severity: P0
    playbook: api-down
"""


def _decisions(base: str, **params: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{base}/api/v1/decisions",
        params={"limit": "1000", **params},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    )
    response.raise_for_status()
    return list(response.json()["decisions"])


def _metric(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name
    )


def _alert(deployment: str, *, ended: bool = False) -> dict[str, Any]:
    alert: dict[str, Any] = {
        "labels": {
            "alertname": "E2EApiDown",
            "namespace": "production",
            "deployment": deployment,
            "team": "sre",
        },
        "annotations": {"summary": f"{deployment} is down"},
        "startsAt": (datetime.now(UTC) - timedelta(seconds=30)).isoformat(),
        "generatorURL": f"http://prometheus.test/graph?{deployment}",
    }
    if ended:
        alert["endsAt"] = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    return alert


def _post_alerts(am_url: str, alerts: list[dict[str, Any]]) -> None:
    httpx.post(f"{am_url}/api/v2/alerts", json=alerts, timeout=5).raise_for_status()


def test_grouped_pagerduty_pages_are_decided_per_alert(tmp_path):
    """A [FIRING:3] page from Alertmanager is three alerts, each matched and decided."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    with run_receiver(tmp_path, rules=rules, env=ENV) as rx:
        config = textwrap.dedent(
            f"""
            route:
              receiver: pd
              group_by: [alertname, namespace]
              group_wait: 1s
              group_interval: 1s
              repeat_interval: 1h
            receivers:
              - name: pd
                pagerduty_configs:
                  - routing_key: {ROUTING_KEY}
                    url: {rx.url}/v2/enqueue
                    send_resolved: true
            """
        )
        with run_alertmanager(tmp_path, config) as am:
            _post_alerts(am.url, [_alert(d) for d in ("api", "web", "worker")])

            def deployments() -> set[str]:
                return {
                    r["labels"]["deployment"]
                    for r in _decisions(rx.url, rule="api-down")
                }

            # Alertmanager may flush the group before all three alerts are in
            # it; every alert ends up decided, each with its own labels.
            assert poll(lambda: deployments() == {"api", "web", "worker"}), (
                rx.log.read_text()[-3000:]
            )
            records = _decisions(rx.url, rule="api-down")
            assert len({r["fingerprint"] for r in records}) == 3
            for record in records:
                assert record["source"] == "events_v2"
                assert record["status"] == "firing"
                assert record["labels"]["team"] == "sre"
                assert record["annotations"]["summary"].endswith(" is down")
                undo = record["matches"][0]["steps"][1]
                deployment = record["labels"]["deployment"]
                assert undo["target"].startswith(f"deployment/{deployment} ")
            auth = {"Authorization": f"Bearer {TOKEN}"}
            stored = [
                httpx.get(
                    f"{rx.url}/api/v1/payloads/{p['id']}", headers=auth, timeout=5
                ).json()["payload"]
                for p in httpx.get(
                    f"{rx.url}/api/v1/payloads", headers=auth, timeout=5
                ).json()["payloads"]
            ]
            assert any(
                p["payload"]["summary"].startswith("[FIRING:3] E2EApiDown")
                for p in stored
            )
            assert all(p["routing_key"] == "<redacted>" for p in stored)

            # One alert of the group resolves: Alertmanager pages again with two
            # firing and one resolved; the resolved one is decided as resolved.
            _post_alerts(am.url, [_alert("web", ended=True)])

            def web_resolved() -> list[dict[str, Any]]:
                return [
                    r
                    for r in _decisions(rx.url, rule="api-down")
                    if r["status"] == "resolved" and r["labels"]["deployment"] == "web"
                ]

            assert poll(web_resolved), rx.log.read_text()[-3000:]
            # Then the rest: a resolve event listing both.
            _post_alerts(
                am.url, [_alert("api", ended=True), _alert("worker", ended=True)]
            )
            resolved = poll(
                lambda: (
                    {
                        r["labels"]["deployment"]
                        for r in _decisions(rx.url, rule="api-down")
                        if r["status"] == "resolved"
                    }
                    == {"api", "web", "worker"}
                )
            )
            assert resolved, rx.log.read_text()[-3000:]
            assert _metric(rx.url, "receiver_alerts_unmatched_total") == 0


def test_truncated_webhooks_are_warned_counted_and_noted(tmp_path):
    """max_alerts: 1 on a group of three: warning, counter +2, note in the trace."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    with run_receiver(tmp_path, rules=rules, env=ENV) as rx:
        config = textwrap.dedent(
            f"""
            route:
              receiver: hook
              group_by: [alertname]
              group_wait: 1s
              group_interval: 1s
              repeat_interval: 1h
            receivers:
              - name: hook
                webhook_configs:
                  - url: {rx.url}/webhooks/alertmanager
                    max_alerts: 1
                    http_config:
                      authorization: {{type: Bearer, credentials: {TOKEN}}}
            """
        )
        with run_alertmanager(tmp_path, config) as am:
            _post_alerts(am.url, [_alert(d) for d in ("api", "web", "worker")])

            # Alertmanager may flush the group before all three are in it, then
            # again with the three: one alert in the payload, two left out.
            def noted() -> list[dict[str, Any]]:
                return [
                    r
                    for r in _decisions(rx.url, rule="api-down")
                    if any("left 2 more alerts" in n for n in r["notes"])
                ]

            found = poll(noted)
            assert found, rx.log.read_text()[-3000:]
            truncated = _metric(rx.url, "receiver_alerts_truncated_total")
        log = rx.log.read_text()
    [note] = [n for n in found[0]["notes"] if "max_alerts" in n]  # type: ignore[index]
    assert "left 2 more alerts of this group out of the payload (max_alerts)" in note
    entries = [json.loads(line) for line in log.splitlines() if line.strip()]
    warnings_ = [e for e in entries if e["event"] == "alerts_truncated"]
    assert all(w["level"] == "warning" for w in warnings_)
    assert 2 in [w["truncated"] for w in warnings_]
    # Every alert left out of any webhook is counted.
    assert truncated == sum(w["truncated"] for w in warnings_)


def _pdpyras() -> ModuleType:
    """pdpyras, whose import warns that its successor is the pagerduty package."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        import pdpyras  # noqa: PLC0415

    return pdpyras


def test_pdpyras_events_and_change_events(tmp_path):
    """Pdpyras triggers, acknowledges, resolves by dedup key and sends changes."""
    pdpyras = _pdpyras()
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    with run_receiver(tmp_path, rules=rules, env=ENV) as rx:
        events = pdpyras.EventsAPISession(ROUTING_KEY)
        events.url = rx.url
        dedup = events.trigger(
            "api is down",
            "synthetics",
            dedup_key="e2e-api-down",
            severity="critical",
            custom_details={
                "alertname": "E2EApiDown",
                "namespace": "production",
                "deployment": "api",
            },
        )
        assert dedup == "e2e-api-down"
        assert poll(lambda: _decisions(rx.url, rule="api-down"))

        assert events.acknowledge(dedup) == dedup

        def acknowledged() -> list[dict[str, Any]]:
            return [
                r
                for r in _decisions(rx.url)
                if r["labels"].get("dedup_key") == dedup
                and r["status"] == "acknowledged"
            ]

        [ack] = poll(acknowledged)  # type: ignore[misc]
        assert ack["labels"]["deployment"] == "api"

        assert events.resolve(dedup) == dedup
        recovered = poll(
            lambda: [
                r
                for r in _decisions(rx.url, rule="api-down")
                if r["status"] == "resolved"
            ]
        )
        assert recovered, rx.log.read_text()[-3000:]
        assert recovered[0]["labels"]["deployment"] == "api"
        assert recovered[0]["matches"][0]["steps"][1]["decision"] == "skipped"

        with pytest.raises(pdpyras.PDClientError) as rejected:
            events.trigger("bad", "x", severity="fatal")
        body = rejected.value.response.json()
        assert body["status"] == "invalid event"
        assert any("/payload/severity" in e for e in body["errors"])

        changes = pdpyras.ChangeEventsAPISession(ROUTING_KEY)
        changes.url = rx.url
        change_id = changes.submit(
            "Deployed api v2.4.1",
            source="argo-cd",
            custom_details={"service": "api", "namespace": "production"},
            links=[{"href": "https://ci.example.com/runs/812", "text": "run"}],
            timestamp=datetime.now(UTC).isoformat(),
        )
        assert change_id
        [stored] = _decisions(rx.url, fingerprint="change-events")
        assert stored["change"]["id"] == change_id
        assert stored["change"]["summary"] == "Deployed api v2.4.1"
        assert ROUTING_KEY not in rx.log.read_text()
