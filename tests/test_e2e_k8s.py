"""Alertmanager -> receiver process -> Kubernetes API: SarkApiDown rolls sark back once.

A real Alertmanager delivers ``SarkApiDown`` (namespace=production, deployment=sark)
to a real receiver process in execute mode, whose Kubernetes settings point at a
kmock server (``tests/kube.py``) holding a Deployment whose last rollout was ten
minutes ago. The receiver rolls it back, verifies the rollout (the emulator's
controller catches the status up shortly after the patch), and records it;
Alertmanager's resends (``repeat_interval: 1s``) change nothing more.
"""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from kube import DEPLOYMENTS, Cluster, ThreadedCluster, seed_rollout
from peers import poll, run_alertmanager, run_receiver

pytestmark = pytest.mark.e2e

TOKEN = "k8s-e2e-token-5d1a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NS = "production"
RULES = """
playbooks:
  api-down:
    description: Playbook 1 (SARK API down), the Kubernetes part.
    diagnostics:
      - type: k8s.pods
        namespace: "{labels.namespace}"
        workload: "{labels.deployment}"
      - type: k8s.rollout_history
        namespace: "{labels.namespace}"
        deployment: "{labels.deployment}"
        flag_within: 2h
    remediation:
      - type: k8s.rollout_undo
        namespace: "{labels.namespace}"
        deployment: "{labels.deployment}"
        only_if_rollout_within: 2h
        verify:
          type: k8s.rollout_status
          timeout: 30s
    # No cooldown and a roomy budget: only the idempotency key may stop a resend.
    guards:
      cooldown: 0s
      budget: {max: 100, window: 6h}
      circuit_breaker: {failures: 1, cool_off: 2h}
rules:
  - name: api-down
    match: ['alertname="SarkApiDown"']
    severity: P0
    playbook: api-down
"""


def _am_config(receiver_url: str) -> str:
    return textwrap.dedent(
        f"""
        route:
          receiver: rx
          group_by: [alertname]
          group_wait: 1s
          group_interval: 1s
          repeat_interval: 1s
        receivers:
          - name: rx
            webhook_configs:
              - url: {receiver_url}/webhooks/alertmanager
                http_config:
                  authorization: {{type: Bearer, credentials: {TOKEN}}}
        """
    )


def _decisions(base: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{base}/api/v1/decisions",
        params={"rule": "api-down", "limit": 100},
        headers=AUTH,
        timeout=5,
    )
    response.raise_for_status()
    return list(response.json()["decisions"])


def _undo(decision: dict[str, Any]) -> dict[str, Any]:
    return next(
        s for s in decision["matches"][0]["steps"] if s["type"] == "k8s.rollout_undo"
    )


def test_sark_api_down_is_rolled_back_verified_and_done_once(tmp_path):
    """Alertmanager's alert rolls sark back once, verified; resends do nothing more."""
    cluster = Cluster(settle_after=0.5)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    with ThreadedCluster(cluster) as kube:
        kube.call(
            lambda c: seed_rollout(
                c,
                NS,
                "sark",
                [
                    ("ghcr.io/example/sark:1.9", timedelta(days=3), "release 1.9"),
                    ("ghcr.io/example/sark:2.0", timedelta(minutes=10), "release 2.0"),
                ],
                ready=0,
                crash=("Error", 1),
            )
        )
        env = {
            "RECEIVER_AUTH_TOKENS": TOKEN,
            "RECEIVER_MODE": "execute",
            "RECEIVER_STORE": f"sqlite:///{tmp_path / 'state.db'}",
            "RECEIVER_NAMESPACES": NS,
            "RECEIVER_KUBE_MODE": "host",
            "RECEIVER_KUBE_HOST": kube.url,
            "RECEIVER_KUBE_POLL_INTERVAL": "100ms",
        }
        with (
            run_receiver(tmp_path, rules=rules, env=env) as rx,
            run_alertmanager(tmp_path, _am_config(rx.url)) as am,
        ):
            started = (datetime.now(UTC) - timedelta(minutes=3)).isoformat()
            alert = {
                "labels": {
                    "alertname": "SarkApiDown",
                    "namespace": NS,
                    "deployment": "sark",
                    "severity": "critical",
                },
                "annotations": {"summary": "SARK API is down"},
                "startsAt": started,
            }
            httpx.post(
                f"{am.url}/api/v2/alerts", json=[alert], timeout=5
            ).raise_for_status()

            def resent() -> list[dict[str, Any]]:
                found = _decisions(rx.url)
                executed = [d for d in found if _undo(d)["decision"] != "skipped"]
                return found if executed and len(found) >= 3 else []

            decisions = poll(resent, timeout=60, interval=0.2)
            assert decisions, f"receiver log:\n{rx.log.read_text()[-3000:]}"
        patches = kube.call(
            lambda c: [r.data for r in c.seen("PATCH", "/deployments/sark$")]
        )
        after = kube.call(lambda c: c.get(DEPLOYMENTS, NS, "sark"))

    assert isinstance(decisions, list)
    first = min(decisions, key=lambda d: d["decided_at"])
    undo = _undo(first)
    assert undo["decision"] == "executed", undo
    assert undo["reason"].startswith(
        "rolled back deployment/sark -n production from revision 2 "
        "(ghcr.io/example/sark:2.0) to revision 1 (ghcr.io/example/sark:1.9) "
        "'release 1.9'; verified: deployment \"sark\" successfully rolled out"
    ), undo["reason"]
    assert undo["result"]["verification"]["ok"] is True
    assert undo["result"]["request"]["content_type"] == "application/json-patch+json"
    pods, history = first["matches"][0]["steps"][:2]
    assert "CrashLoopBackOff" in pods["reason"]
    assert "RECENT ROLLOUT within 2h" in history["reason"]

    later = [d for d in decisions if d is not first]
    assert later
    assert all(_undo(d)["reason"].startswith("already done by") for d in later), [
        _undo(d)["reason"] for d in later
    ]
    assert len(patches) == 1, patches
    assert after is not None
    containers = after["spec"]["template"]["spec"]["containers"]
    assert [c["image"] for c in containers] == ["ghcr.io/example/sark:1.9"]
    assert after["status"]["observedGeneration"] == after["metadata"]["generation"]
