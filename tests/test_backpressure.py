"""The edge sheds with 503 + Retry-After at the journal's bound, and loses nothing.

In process: an edge-only app (no worker drains its journal) with a tiny bound.
End to end: a real Alertmanager keeps re-sending what was shed while a gated
remediation holds the worker, and every alert is decided exactly once.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from conftest import NOW, ROUTING_KEY, bearer, full_settings
from counting import hook_env
from fakes import RecordingServer, Reply, Request
from peers import poll, run_alertmanager, run_receiver

from receiver.app import create_app
from receiver.metrics import Metrics
from receiver.rulebook.loader import load_rulebook
from receiver.runtime import build_runtime
from receiver.steps.catalog import builtin_registry
from receiver.store import MemoryStore
from receiver.store.base import DecisionQuery
from receiver.web.handlers import Backpressure


def _payload(i: int) -> bytes:
    alert = {
        "status": "firing",
        "labels": {
            "alertname": "KubePodCrashLooping",
            "namespace": "prod",
            "n": str(i),
        },
        "annotations": {},
        "startsAt": "2024-05-06T07:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": f"{i:016x}",
    }
    return json.dumps(
        {"version": "4", "status": "firing", "receiver": "r", "alerts": [alert]}
    ).encode()


class Clock:
    """A clock that moves a millisecond on every read, and jumps when told."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


async def _edge(
    aiohttp_client: Any, web_rules: Path, bound: Backpressure, clock: Clock
) -> Any:
    store = MemoryStore()
    metrics = Metrics()
    app = create_app(
        build_runtime(full_settings()),
        rulebook=load_rulebook([web_rules], steps=builtin_registry()),
        store=store,
        clock=clock,
        metrics=metrics,
        role="edge",
        backpressure=bound,
    )
    client = await aiohttp_client(app)
    client.store = store
    client.metrics = metrics
    return client


async def _post(client: Any, i: int) -> Any:
    return await client.post(
        "/webhooks/alertmanager",
        data=_payload(i),
        headers={**bearer(), "Content-Type": "application/json"},
    )


async def test_depth_bound_sheds_with_retry_after(aiohttp_client, web_rules):
    """At the depth bound a webhook gets 503 problem+json with Retry-After."""
    bound = Backpressure(max_depth=2, recount_at_bound=0.0)
    client = await _edge(aiohttp_client, web_rules, bound, Clock())
    with structlog.testing.capture_logs() as logs:
        assert (await _post(client, 1)).status == 202
        assert (await _post(client, 2)).status == 202
        shed = await _post(client, 3)
    assert shed.status == 503
    assert shed.headers["Retry-After"] == "5"
    assert shed.content_type == "application/problem+json"
    problem = await shed.json()
    assert problem["type"] == "urn:receiver:problem:overloaded"
    assert "2 payloads waiting" in problem["detail"]
    assert [e["bound"] for e in logs if e["event"] == "webhooks_shed"] == ["depth"]
    assert client.metrics.shed.labels("alertmanager", "depth")._value.get() == 1
    # Nothing shed was journaled; what was accepted is all there.
    count, _ = await client.store.pending()
    assert count == 2


async def test_a_shed_answer_is_held_without_holding_up_the_edge(
    aiohttp_client, web_rules
):
    """The 503 comes after ``shed_pause``; meanwhile the edge answers others.

    A sender that retries at once, ignoring Retry-After, gets one refusal per
    pause per connection, not as many as the edge can compute.
    """
    bound = Backpressure(max_depth=1, recount_at_bound=0.0, shed_pause=2.0)
    client = await _edge(aiohttp_client, web_rules, bound, Clock())
    assert (await _post(client, 1)).status == 202
    loop = asyncio.get_running_loop()
    started = loop.time()
    shed = asyncio.create_task(_post(client, 2))
    assert (await client.get("/healthz")).status == 200
    assert not shed.done()
    answer = await shed
    assert answer.status == 503
    assert answer.headers["Retry-After"] == "5"
    # asyncio's sleep never returns early: a lower bound is not a timing guess.
    assert loop.time() - started >= 2.0
    count, _ = await client.store.pending()
    assert count == 1


async def test_no_shed_pause_answers_at_once(aiohttp_client, web_rules):
    """``shed_pause=0`` refuses without waiting (the loop is not even yielded)."""
    bound = Backpressure(max_depth=1, recount_at_bound=0.0, shed_pause=0.0)
    client = await _edge(aiohttp_client, web_rules, bound, Clock())
    assert (await _post(client, 1)).status == 202
    assert (await _post(client, 2)).status == 503


async def test_draining_the_journal_reopens_the_edge(aiohttp_client, web_rules):
    """Once entries are decided the next webhook is accepted again."""
    bound = Backpressure(max_depth=1, recount_at_bound=0.0)
    client = await _edge(aiohttp_client, web_rules, bound, Clock())
    assert (await _post(client, 1)).status == 202
    assert (await _post(client, 2)).status == 503
    lease = await client.store.claim("test", 0.0, NOW)
    assert lease is not None
    await client.store.complete(lease.entry.id, [])
    assert (await _post(client, 2)).status == 202


async def test_age_bound_sheds_when_the_oldest_waits_too_long(
    aiohttp_client, web_rules
):
    """A payload waiting longer than the age bound makes the edge shed."""
    clock = Clock()
    bound = Backpressure(max_depth=1000, max_age=60.0, recount_at_bound=0.0)
    client = await _edge(aiohttp_client, web_rules, bound, clock)
    assert (await _post(client, 1)).status == 202
    assert (await _post(client, 2)).status == 202
    clock.now += timedelta(seconds=61)
    shed = await _post(client, 3)
    assert shed.status == 503
    assert client.metrics.shed.labels("alertmanager", "age")._value.get() == 1


async def test_shed_is_checked_before_the_body_is_read(aiohttp_client, web_rules):
    """A shed request is refused before its body is parsed (garbage is not a 400)."""
    bound = Backpressure(max_depth=1, recount_at_bound=0.0)
    client = await _edge(aiohttp_client, web_rules, bound, Clock())
    assert (await _post(client, 1)).status == 202
    resp = await client.post(
        "/webhooks/alertmanager",
        data=b"{not json",
        headers={**bearer(), "Content-Type": "application/json"},
    )
    assert resp.status == 503


async def test_change_events_are_shed_at_the_bound_in_the_events_api_shape(
    aiohttp_client, web_rules
):
    """/v2/change/enqueue gets the same 503 + Retry-After, in PagerDuty's shape."""
    bound = Backpressure(max_depth=1, recount_at_bound=0.0)
    client = await _edge(aiohttp_client, web_rules, bound, Clock())
    change = {
        "routing_key": ROUTING_KEY,
        "payload": {"summary": "Deployed api v1.2.3", "source": "ci"},
    }
    assert (await client.post("/v2/change/enqueue", json=change)).status == 202
    assert (await _post(client, 1)).status == 202
    shed = await client.post("/v2/change/enqueue", json=change)
    assert shed.status == 503
    assert shed.headers["Retry-After"] == "5"
    answer = await shed.json()
    assert answer["status"] == "service unavailable"
    assert "1 payloads waiting" in answer["message"]
    assert client.metrics.shed.labels("change_events", "depth")._value.get() == 1
    # Only the first change event was stored.
    stored = await client.store.decisions(DecisionQuery(fingerprint="change-events"))
    assert len(stored) == 1


# ---------------------------------------------------------------- end to end

TOKEN = "backpressure-token"


class Gate:
    """Holds every remediation request until opened (bounded), counting them."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.server = RecordingServer()
        self.server.route("POST", ".*", self._reply)

    def _reply(self, _request: Request) -> Reply:
        self.open.wait(timeout=60)
        return Reply(200, b"ok")

    def runs(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.server.seen("POST", ".*"):
            out[r.path] = out.get(r.path, 0) + 1
        return out


@pytest.mark.e2e
def test_alertmanager_resends_what_was_shed_and_each_is_decided_once(tmp_path):
    """Shed webhooks come back from Alertmanager's retries; each alert runs once."""
    rules = tmp_path / "rules.yaml"
    gate = Gate()
    with gate.server:
        rules.write_text(
            textwrap.dedent(
                f"""
                playbooks:
                  hook:
                    remediation:
                      - type: http.request
                        url: "{gate.server.url}/run/{{alert.fingerprint}}"
                    guards:
                      cooldown: 0s
                      budget: {{max: 100000, window: 1h}}
                rules:
                  - name: hook
                    match: ['alertname="Shed"']
                    playbook: hook
                """
            )
        )
        env = {
            **hook_env(gate.server.port, f"sqlite:///{tmp_path / 's.db'}", TOKEN),
            "RECEIVER_JOURNAL_MAX_DEPTH": "1",
            "RECEIVER_WORKERS": "1",
            "RECEIVER_LOG_LEVEL": "info",
        }
        with run_receiver(tmp_path, rules=rules, env=env) as rx:
            config = textwrap.dedent(
                f"""
                route:
                  receiver: rx
                  group_by: [n]
                  group_wait: 1s
                  group_interval: 1h
                  repeat_interval: 1h
                receivers:
                  - name: rx
                    webhook_configs:
                      - url: {rx.url}/webhooks/alertmanager
                        http_config:
                          authorization: {{type: Bearer, credentials: {TOKEN}}}
                """
            )
            with run_alertmanager(tmp_path, config) as am:
                started = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
                alerts = [
                    {"labels": {"alertname": "Shed", "n": str(i)}, "startsAt": started}
                    for i in range(4)
                ]
                httpx.post(f"{am.url}/api/v2/alerts", json=alerts[:1], timeout=5)
                # The first remediation holds the worker: the journal is at its
                # bound (one entry in flight) and the other groups are shed.
                assert poll(gate.runs, timeout=20)
                httpx.post(f"{am.url}/api/v2/alerts", json=alerts[1:], timeout=5)
                assert poll(lambda: "webhooks_shed" in rx.log.read_text(), timeout=20)
                gate.open.set()

                def decided() -> list[dict[str, Any]]:
                    response = httpx.get(
                        f"{rx.url}/api/v1/decisions",
                        params={"rule": "hook", "limit": 100},
                        headers={"Authorization": f"Bearer {TOKEN}"},
                        timeout=5,
                    )
                    found = response.json()["decisions"]
                    return found if len(found) >= 4 else []

                records = poll(decided, timeout=60, interval=0.2)
        assert records, "shed alerts were not all decided after Alertmanager retried"
        fingerprints = sorted(r["fingerprint"] for r in records)  # type: ignore[union-attr]
        assert len(set(fingerprints)) == 4
        assert len(fingerprints) == 4, f"an alert was decided twice: {fingerprints}"
        assert sorted(gate.runs().values()) == [1, 1, 1, 1]
