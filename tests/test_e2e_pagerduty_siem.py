"""A PagerDuty SIEM incident end to end: breaker reset on real Redis, one note, no loop.

Real processes: the receiver (execute mode, the shipped rules/), a throwaway
redis-server as the application's Redis (the receiver's own state is SQLite), and
Prometheus scraping a stand-in SIEM forwarder's metrics. PagerDuty's REST API is a
local recording server (the real one cannot run here; our interface to it is what
is under test).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import peers
import pytest
import redis
from fakes import RecordingServer, Reply, pagerduty_api
from peers import (
    Peer,
    poll,
    run_receiver,
    run_redis,
)

from receiver.sinks import is_own_note

pytestmark = pytest.mark.e2e

RULES = Path(__file__).resolve().parent.parent / "rules"
SECRET = "pd-webhook-secret-e2e-4411"
TOKEN = "api-token-e2e-20c7"
PD_API_TOKEN = "pd-rest-token-e2e-93b1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
INCIDENT = "Q7SIEM0SPLUNK1"


def forwarder_metrics(target: redis.Redis) -> Reply:
    """Counters of a SIEM forwarder: events fail while its breaker key is set."""
    forwarded = itertools.count(100, 7)
    failed = itertools.count(0, 3)
    last_failed = [0]

    def respond(_request: object) -> Reply:
        if target.exists("circuit:splunk:state"):
            last_failed[0] = next(failed)
        text = (
            "# TYPE siem_events_forwarded_total counter\n"
            f'siem_events_forwarded_total{{namespace="production",siem="splunk"}} '
            f"{next(forwarded)}\n"
            "# TYPE siem_events_failed_total counter\n"
            f'siem_events_failed_total{{namespace="production",siem="splunk"}} '
            f"{last_failed[0]}\n"
        )
        return Reply(200, text, {"Content-Type": "text/plain; version=0.0.4"})

    return respond  # type: ignore[return-value]


def run_prometheus(tmp: Path, target: str) -> contextlib.AbstractContextManager[str]:
    """Prometheus on loopback scraping the fake SIEM forwarder every second."""
    return peers.run_prometheus(tmp, job="siem-forwarder", target=target)


def signed(body: dict, webhook_id: str) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    sig = hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
    return raw, {
        "Content-Type": "application/json",
        "X-PagerDuty-Signature": f"v1={sig}",
        "X-Webhook-Id": webhook_id,
    }


def triggered(now: datetime) -> dict:
    return {
        "event": {
            "id": "01JSIEMTRIGGERED00000000001",
            "event_type": "incident.triggered",
            "resource_type": "incident",
            "occurred_at": now.isoformat(),
            "agent": {"id": "PSIEMSV", "summary": "SARK SIEM forwarder"},
            "data": {
                "id": INCIDENT,
                "type": "incident",
                "html_url": f"https://example.pagerduty.com/incidents/{INCIDENT}",
                "number": 4242,
                "status": "triggered",
                "incident_key": "sark-siem-down:splunk",
                "created_at": (now - timedelta(minutes=10)).isoformat(),
                "title": "SarkSiemForwardingDown: splunk forwarding stopped",
                "urgency": "high",
                "service": {"id": "PSIEMSV", "summary": "SARK SIEM forwarding"},
            },
        }
    }


def annotated(now: datetime, content: str) -> dict:
    return {
        "event": {
            "id": "01JSIEMANNOTATED0000000001",
            "event_type": "incident.annotated",
            "resource_type": "incident",
            "occurred_at": now.isoformat(),
            "agent": {"id": "PBOTUSR", "summary": "oncall-bot"},
            "data": {
                "incident": {
                    "id": INCIDENT,
                    "summary": "SarkSiemForwardingDown: splunk forwarding stopped",
                    "html_url": f"https://example.pagerduty.com/incidents/{INCIDENT}",
                },
                "id": "PNOTE1",
                "content": content,
                "trimmed": False,
                "type": "incident_note",
            },
        }
    }


def decisions(base: str, **params: str) -> list[dict]:
    response = httpx.get(f"{base}/api/v1/decisions", params=params, headers=AUTH)
    return response.json()["decisions"]


def post(base: str, body: dict, webhook_id: str) -> dict:
    raw, headers = signed(body, webhook_id)
    response = httpx.post(f"{base}/webhooks/pagerduty", content=raw, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()


@dataclass
class World:
    """The running peers of the scenario."""

    rx: Peer
    pd: RecordingServer
    app_redis: redis.Redis


@contextlib.contextmanager
def world(tmp_path: Path) -> Iterator[World]:
    """The app's Redis with an open breaker, Prometheus, fake PagerDuty, receiver."""
    with (
        run_redis(tmp_path) as app_redis_url,
        RecordingServer() as pd,
        contextlib.closing(redis.Redis.from_url(app_redis_url)) as app_redis,
    ):
        pagerduty_api(pd, {})
        pd.route("GET", "/metrics", forwarder_metrics(app_redis))
        app_redis.set("circuit:splunk:state", "open")
        app_redis.set("circuit:splunk:failure", "17")
        app_redis.set("circuit:datadog:state", "open")
        with run_prometheus(tmp_path, f"127.0.0.1:{pd.port}") as prom:
            query = (
                'sum(rate(siem_events_forwarded_total{namespace="production",'
                'siem="splunk"}[5m]))'
            )

            def forwarding_known() -> bool:
                body = httpx.get(f"{prom}/api/v1/query", params={"query": query})
                return bool(body.json()["data"]["result"])

            assert poll(forwarding_known, timeout=20, interval=0.2)
            env = {
                "RECEIVER_MODE": "execute",
                "RECEIVER_STORE": f"sqlite:///{tmp_path / 'state.db'}",
                "RECEIVER_AUTH_TOKENS": TOKEN,
                "RECEIVER_PAGERDUTY_SECRETS": SECRET,
                "RECEIVER_REDIS_TARGETS": f"default={app_redis_url}",
                "RECEIVER_PROMETHEUS_URL": prom,
                "RECEIVER_SINKS": "pagerduty_note",
                "RECEIVER_PAGERDUTY_API_URL": pd.url,
                "RECEIVER_PAGERDUTY_API_TOKEN": PD_API_TOKEN,
                "RECEIVER_PAGERDUTY_FROM": "oncall-bot@example.com",
            }
            with run_receiver(tmp_path, rules=RULES, env=env) as rx:
                yield World(rx, pd, app_redis)


def check_first_decision(w: World, pid: str) -> None:
    """The playbook ran for real: breaker read, reset, verified; others untouched."""
    (decision,) = decisions(w.rx.url, payload_id=pid)
    (match,) = decision["matches"]
    assert match["rule"] == "pagerduty-sark-siem-down-splunk"
    steps = {s["type"]: s for s in match["steps"]}
    reset = steps["redis.reset_circuit_breaker"]
    assert reset["decision"] == "executed", reset["reason"]
    assert reset["result"]["verification"]["ok"] is True
    assert reset["result"]["previous"] == {
        "circuit:splunk:state": "open",
        "circuit:splunk:failure": "17",
    }
    seen = steps["redis.get"]["result"]["keys"]
    assert seen["circuit:splunk:state"]["value"] == "open"
    assert w.app_redis.exists("circuit:splunk:state", "circuit:splunk:failure") == 0
    assert w.app_redis.get("circuit:datadog:state") == b"open"


def check_note(w: World) -> str:
    """Exactly one note, posted as PagerDuty wants, saying what was done."""
    (note,) = w.pd.seen("POST", f"/incidents/{INCIDENT}/notes")
    assert note.headers["Authorization"] == f"Token token={PD_API_TOKEN}"
    assert note.headers["From"] == "oncall-bot@example.com"
    content = note.json()["note"]["content"]
    assert is_own_note(content)
    assert "P1 High (SEV-2) | SarkSiemForwardingDown" in content
    assert "reset circuit breaker 'splunk'" in content
    assert "=> verified: sum(rate(siem_events_forwarded_total" in content
    assert "circuit:splunk:state = 'open'" in content
    return str(content)


def test_siem_incident_resets_the_breaker_and_notes_once(tmp_path):
    """Triggered: breaker reset and one note; the echo and redeliveries add nothing."""
    with world(tmp_path) as w:
        base = w.rx.url
        now = datetime.now(UTC)
        pid = post(base, triggered(now), "wh-trigger-1")["id"]
        sinks = poll(lambda: decisions(base, payload_id=f"{pid}.sinks"), timeout=30)
        assert sinks, w.rx.log.read_text()[-3000:]
        assert sinks[0]["sinks"][0]["status"] == "sent"
        check_first_decision(w, pid)
        content = check_note(w)

        # Something else breaks the breaker again; nothing below may touch it.
        w.app_redis.set("circuit:splunk:state", "open")
        echo = post(base, annotated(datetime.now(UTC), content), "wh-note-1")
        # The echo of our own note is recognised at the edge and not journaled.
        assert echo["status"] == "ignored"
        assert "id" not in echo  # nothing journaled, so no journal id
        assert post(base, triggered(now), "wh-trigger-1")["status"] == "duplicate"
        # Even a copy the edge cannot recognise changes nothing.
        copy = post(base, triggered(now), "wh-trigger-copy")
        assert poll(lambda: decisions(base, payload_id=copy["id"]))
        time.sleep(1.0)  # room for any (wrong) background delivery

        (copy_decision,) = decisions(base, payload_id=copy["id"])
        copy_reset = next(
            s
            for s in copy_decision["matches"][0]["steps"]
            if s["type"] == "redis.reset_circuit_breaker"
        )
        assert copy_reset["decision"] == "skipped"
        assert copy_reset["reason"].startswith(("cooldown", "already done"))
        assert len(w.pd.seen("POST", r"/incidents/.*/notes")) == 1
        assert w.app_redis.get("circuit:splunk:state") == b"open"
        assert decisions(base, payload_id=f"{copy['id']}.sinks") == []
