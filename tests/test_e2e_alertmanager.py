"""A real Alertmanager delivers firing and resolved alerts to a receiver process."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from peers import poll, run_alertmanager, run_receiver

pytestmark = pytest.mark.e2e

TOKEN = "e2e-token-6f1c"
RULES = """
playbooks:
  restart:
    diagnostics:
      - type: k8s.pods
        namespace: "{labels.namespace}"
        workload: "{labels.deployment}"
    remediation:
      - type: k8s.rollout_restart
        namespace: "{labels.namespace}"
        workload: "{labels.deployment}"
rules:
  - name: crashloop
    match: ['alertname="E2ECrashLoop"', 'namespace=~"prod.*"']
    status: any
    severity: P1
    playbook: restart
"""


def _am_config(receiver_url: str) -> str:
    return textwrap.dedent(
        f"""
        route:
          receiver: receiver
          group_by: [alertname]
          group_wait: 1s
          group_interval: 1s
          repeat_interval: 1h
        receivers:
          - name: receiver
            webhook_configs:
              - url: {receiver_url}/webhooks/alertmanager
                send_resolved: true
                http_config:
                  authorization:
                    type: Bearer
                    credentials: {TOKEN}
        """
    )


def _decisions(base: str) -> list[dict[str, object]]:
    response = httpx.get(
        f"{base}/api/v1/decisions",
        params={"rule": "crashloop"},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    )
    response.raise_for_status()
    return list(response.json()["decisions"])


def test_alertmanager_delivers_firing_then_resolved(tmp_path):
    """Firing and resolved webhooks (bearer auth) become readable decisions."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    with (
        run_receiver(tmp_path, rules=rules, env={"RECEIVER_AUTH_TOKENS": TOKEN}) as rx,
        run_alertmanager(tmp_path, _am_config(rx.url)) as am,
    ):
        started = datetime.now(UTC) - timedelta(seconds=5)
        alert = {
            "labels": {
                "alertname": "E2ECrashLoop",
                "namespace": "production",
                "deployment": "sark",
            },
            "annotations": {"summary": "sark is crash looping"},
            "startsAt": started.isoformat(),
            "generatorURL": "http://prometheus.test/graph",
        }
        httpx.post(
            f"{am.url}/api/v2/alerts", json=[alert], timeout=5
        ).raise_for_status()
        firing = poll(
            lambda: [d for d in _decisions(rx.url) if d["status"] == "firing"]
        )
        assert firing, (
            f"no firing decision; receiver log:\n{rx.log.read_text()[-2000:]}"
        )
        decision = firing[0]
        assert decision["labels"]["alertname"] == "E2ECrashLoop"
        assert decision["source"] == "alertmanager"
        match = decision["matches"][0]
        assert (match["rule"], match["severity"], match["playbook"]) == (
            "crashloop",
            "P1",
            "restart",
        )
        restart = match["steps"][1]
        assert restart["type"] == "k8s.rollout_restart"
        assert restart["decision"] == "dry_run"
        assert restart["target"] == "deployment/sark -n production"

        alert["endsAt"] = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
        httpx.post(
            f"{am.url}/api/v2/alerts", json=[alert], timeout=5
        ).raise_for_status()
        resolved = poll(
            lambda: [d for d in _decisions(rx.url) if d["status"] == "resolved"]
        )
        assert resolved, (
            f"no resolved decision; receiver log:\n{rx.log.read_text()[-2000:]}"
        )
        assert resolved[0]["fingerprint"] == decision["fingerprint"]
        steps = resolved[0]["matches"][0]["steps"]
        assert steps[1]["decision"] == "skipped"
        assert "alert resolved" in steps[1]["reason"]

        payloads = httpx.get(
            f"{rx.url}/api/v1/payloads",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=5,
        ).json()["payloads"]
        assert payloads
        assert all("authorization" not in p["headers"] for p in payloads)
        assert TOKEN not in rx.log.read_text()
