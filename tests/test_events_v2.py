"""Events API v2 semantics at the edge and in the worker.

Alertmanager's grouped pages are decided per alert; resolves and acknowledges
that name only a dedup key (PagerDuty's documented form, what ``pdpyras`` sends)
inherit their trigger's labels and rule; acknowledgements are recorded as such
and make ``stand_down_when_acknowledged`` playbooks skip their remediations.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import structlog
from conftest import (
    PD_SECRET,
    ROUTING_KEY,
    Ticking,
    bearer,
    journal_drained,
    pd_signature,
    wait_for_decisions,
)
from prometheus_client.parser import text_string_to_metric_families

from receiver.engine.journaling import alert_states
from receiver.engine.planner import PlanContext
from receiver.engine.processing import PREPARED_FOR, Processor
from receiver.engine.runner import Runner
from receiver.model import Decision
from receiver.rulebook.loader import load_rulebook
from receiver.sources import events_v2
from receiver.steps.catalog import builtin_registry
from receiver.store import SqliteStore
from receiver.store.base import JournalEntry

ENQUEUE = "/v2/enqueue"

RULES = """
playbooks:
  disk:
    stand_down_when_acknowledged: true
    diagnostics:
      - type: k8s.pods
        namespace: "{labels.namespace}"
        workload: "{labels.deployment}"
    remediation:
      - type: k8s.rollout_restart
        namespace: "{labels.namespace}"
        workload: "{labels.deployment}"
  pd-api:
    stand_down_when_acknowledged: true
    diagnostics:
      - type: k8s.pods
        namespace: production
        workload: api
    remediation:
      - type: k8s.rollout_restart
        namespace: production
        workload: api
  keeps-going:
    remediation:
      - type: k8s.rollout_restart
        namespace: "{labels.namespace}"
        workload: "{labels.deployment}"
rules:
  - name: disk-full
    match: ['alertname="DiskFull"']
    sources: [events_v2]
    status: any
    severity: P1
    playbook: disk
  - name: cpu-high
    match: ['alertname="CpuHigh"']
    status: any
    severity: P2
    playbook: keeps-going
  - name: pd-api-down
    match: ['incident_key="api-down"']
    sources: [pagerduty]
    severity: P0
    playbook: pd-api
"""


@pytest.fixture
def web_rules(tmp_path: Path) -> Path:
    """This module's rules replace the shared test rules."""
    path = tmp_path / "rules.yaml"
    path.write_text(RULES, encoding="utf-8")
    return path


def instances(*alerts: dict[str, str]) -> str:
    """Alertmanager's default ``pagerduty.default.instances`` text."""
    out = ""
    for labels in alerts:
        out += "Labels:\n"
        out += "".join(f" - {k} = {v}\n" for k, v in sorted(labels.items()))
        out += "Annotations:\n - summary = disk almost full\n"
        out += f"Source: http://prometheus.test/graph?{labels.get('deployment')}\n"
    return out


def am_page(
    firing: list[dict[str, str]],
    resolved: list[dict[str, str]] | None = None,
    *,
    action: str = "trigger",
    dedup: str = "group-1",
) -> dict[str, Any]:
    """An Events v2 request as Alertmanager's pagerduty_configs sends it."""
    resolved = resolved or []
    return {
        "routing_key": ROUTING_KEY,
        "dedup_key": dedup,
        "event_action": action,
        "payload": {
            "summary": f"[FIRING:{len(firing)}] DiskFull production",
            "source": "Alertmanager",
            "severity": "error",
            "custom_details": {
                "firing": instances(*firing),
                "resolved": instances(*resolved),
                "num_firing": str(len(firing)),
                "num_resolved": str(len(resolved)),
            },
        },
        "client": "Alertmanager",
        "client_url": "http://alertmanager.test/#/alerts",
    }


def disk(deployment: str, alertname: str = "DiskFull") -> dict[str, str]:
    return {"alertname": alertname, "namespace": "production", "deployment": deployment}


def _sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                return float(sample.value)
    return 0.0


async def test_grouped_page_decides_each_alert(make_client):
    """A page listing three alerts is three alerts, each with its own labels."""
    client = await make_client()
    body = am_page([disk("api"), disk("web"), disk("worker")])
    resp = await client.post(ENQUEUE, json=body)
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["dedup_key"] == "group-1"
    records = await wait_for_decisions(client, {"rule": "disk-full"}, count=3)
    assert sorted(r["labels"]["deployment"] for r in records) == [
        "api",
        "web",
        "worker",
    ]
    assert len({r["fingerprint"] for r in records}) == 3
    for record in records:
        assert record["status"] == "firing"
        assert record["labels"]["dedup_key"] == "group-1"
        assert record["labels"]["namespace"] == "production"
        assert record["annotations"]["summary"] == "disk almost full"
        [match] = record["matches"]
        assert match["severity"] == "P1"
        deployment = record["labels"]["deployment"]
        assert match["steps"][0]["target"].endswith(f"{deployment} -n production")


async def test_grouped_page_mixed_alerts_each_match_their_rule(make_client):
    """Alerts of different names in one group each match their own rule."""
    client = await make_client()
    body = am_page([disk("api"), disk("api", "CpuHigh")], [disk("web")])
    assert (await client.post(ENQUEUE, json=body)).status == 202
    await journal_drained(client.store)
    records = (await (await client.get("/api/v1/decisions", headers=bearer())).json())[
        "decisions"
    ]
    seen = {
        (r["labels"]["alertname"], r["labels"]["deployment"]): (
            r["status"],
            [m["rule"] for m in r["matches"]],
        )
        for r in records
    }
    assert seen == {
        ("DiskFull", "api"): ("firing", ["disk-full"]),
        ("CpuHigh", "api"): ("firing", ["cpu-high"]),
        ("DiskFull", "web"): ("resolved", ["disk-full"]),
    }


def test_instances_parse_multiline_annotations():
    """An annotation value running over several lines stays one value."""
    text = (
        "Labels:\n - alertname = A\n - x = 1\nAnnotations:\n"
        " - description = first line\nsecond line\n - summary = s\n"
        "Source: http://p/graph\nLabels:\n - alertname = B\nAnnotations:\nSource: \n"
    )
    found = events_v2.am_instances({"firing": text, "resolved": ""})
    assert [dict(i.labels) for i in found] == [
        {"alertname": "A", "x": "1"},
        {"alertname": "B"},
    ]
    assert found[0].annotations["description"] == "first line\nsecond line"
    assert found[0].generator_url == "http://p/graph"
    assert found[1].generator_url == ""


@pytest.mark.parametrize(
    "details",
    [
        {
            "error": "Custom details have been removed because the original "
            "event exceeds the maximum size of 512 kB"
        },
        {"firing": "a custom template", "alertname": "DiskFull"},
        None,
    ],
)
def test_not_alertmanager_details_fall_back_to_group_labels(details):
    """Without Alertmanager's instance lists the request is one alert."""
    body = am_page([])
    body["payload"]["custom_details"] = details
    body["payload"]["class"] = "DiskFull"
    [alert] = events_v2.to_alerts(body, None)  # type: ignore[arg-type]
    assert alert.labels["alertname"] == "DiskFull"
    assert alert.fingerprint == events_v2.group_fingerprint("group-1")


async def test_resolve_by_dedup_key_inherits_labels_and_rule(make_client):
    """A resolve naming only the dedup key is decided with its trigger's labels."""
    client = await make_client()
    trigger = am_page([disk("api")], dedup="single")
    del trigger["payload"]["custom_details"]
    trigger["payload"]["class"] = "DiskFull"
    trigger["payload"]["custom_details"] = {"deployment": "api", "namespace": "prod"}
    assert (await client.post(ENQUEUE, json=trigger)).status == 202
    await wait_for_decisions(client, {"rule": "disk-full"})
    resolve = {
        "routing_key": ROUTING_KEY,
        "event_action": "resolve",
        "dedup_key": "single",
    }
    resp = await client.post(ENQUEUE, json=resolve)
    assert resp.status == 202
    assert (await resp.json())["message"] == "Event processed"
    records = await wait_for_decisions(client, {"rule": "disk-full"}, count=2)
    recovery = records[0]
    assert recovery["status"] == "resolved"
    assert recovery["labels"]["deployment"] == "api"
    assert recovery["labels"]["alertname"] == "DiskFull"
    assert recovery["fingerprint"] == records[1]["fingerprint"]
    metrics = await (await client.get("/metrics")).text()
    assert _sample(metrics, "receiver_alerts_unmatched_total", source="events_v2") == 0


async def test_resolve_by_dedup_key_of_a_grouped_page(make_client):
    """A dedup-key-only resolve of a grouped page resolves each of its alerts."""
    client = await make_client()
    page = am_page([disk("api"), disk("web"), disk("worker")])
    assert (await client.post(ENQUEUE, json=page)).status == 202
    await wait_for_decisions(client, {"rule": "disk-full"}, count=3)
    resolve = {
        "routing_key": ROUTING_KEY,
        "event_action": "resolve",
        "dedup_key": "group-1",
    }
    assert (await client.post(ENQUEUE, json=resolve)).status == 202
    records = await wait_for_decisions(client, {"rule": "disk-full"}, count=6)
    resolved = [r for r in records if r["status"] == "resolved"]
    assert sorted(r["labels"]["deployment"] for r in resolved) == [
        "api",
        "web",
        "worker",
    ]


async def test_unknown_dedup_key_resolve_is_decided_alone(make_client):
    """A resolve for a dedup key never seen is recorded with the key alone."""
    client = await make_client()
    resolve = {
        "routing_key": ROUTING_KEY,
        "event_action": "resolve",
        "dedup_key": "nobody",
    }
    assert (await client.post(ENQUEUE, json=resolve)).status == 202
    [record] = await wait_for_decisions(
        client, {"fingerprint": events_v2.group_fingerprint("nobody")}
    )
    assert record["labels"] == {"dedup_key": "nobody"}
    assert record["matches"] == []


async def test_acknowledge_recorded_and_playbook_stands_down(make_client):
    """An acknowledge is recorded as acknowledged; its playbook then stands down."""
    client = await make_client()
    assert (await client.post(ENQUEUE, json=am_page([disk("api")]))).status == 202
    [first] = await wait_for_decisions(client, {"rule": "disk-full"})
    assert first["matches"][0]["steps"][1]["decision"] == "dry_run"
    ack = {
        "routing_key": ROUTING_KEY,
        "event_action": "acknowledge",
        "dedup_key": "group-1",
    }
    assert (await client.post(ENQUEUE, json=ack)).status == 202
    await journal_drained(client.store)
    acked = (
        await wait_for_decisions(client, {"fingerprint": first["fingerprint"]}, count=2)
    )[0]
    assert acked["status"] == "acknowledged"
    assert acked["labels"]["deployment"] == "api"
    assert acked["matches"] == []
    # The group grows: Alertmanager pages again with both alerts.
    grown = am_page([disk("api"), disk("web"), disk("api", "CpuHigh")])
    assert (await client.post(ENQUEUE, json=grown)).status == 202
    await journal_drained(client.store)
    records = (await (await client.get("/api/v1/decisions", headers=bearer())).json())[
        "decisions"
    ]
    latest = {}
    for r in records:
        latest.setdefault((r["labels"]["alertname"], r["labels"]["deployment"]), r)
    api = latest[("DiskFull", "api")]["matches"][0]["steps"]
    assert api[0]["decision"] == "dry_run"  # diagnostics still run
    assert api[1]["decision"] == "skipped"
    assert api[1]["reason"].startswith("acknowledged by a human at ")
    # A playbook without stand_down_when_acknowledged keeps going.
    cpu = latest[("CpuHigh", "api")]["matches"][0]["steps"]
    assert cpu[0]["decision"] == "dry_run"
    metrics = await (await client.get("/metrics")).text()
    assert (
        _sample(
            metrics, "receiver_alerts_total", source="events_v2", status="acknowledged"
        )
        == 1
    )
    assert _sample(metrics, "receiver_guard_skips_total", guard="acknowledged") >= 1


async def test_pagerduty_acknowledge_stands_down_later_firing_events(make_client):
    """After incident.acknowledged, a later firing event skips the remediations."""
    client = await make_client()
    fixtures = Path(__file__).parent / "fixtures" / "pagerduty_v3"

    async def send(event_type: str) -> None:
        payload = json.loads((fixtures / f"{event_type}.json").read_bytes())
        payload["event"]["id"] = f"ev-{event_type}"
        data = payload["event"]["data"]
        data["incident_key"] = "api-down"
        data["title"] = "API down"
        body = json.dumps(payload).encode()
        headers = {
            "Content-Type": "application/json",
            "X-PagerDuty-Signature": pd_signature(body, PD_SECRET),
        }
        resp = await client.post("/webhooks/pagerduty", data=body, headers=headers)
        assert resp.status == 202, await resp.text()
        await journal_drained(client.store)

    await send("incident.triggered")
    await send("incident.acknowledged")
    await send("incident.priority_updated")
    records = await wait_for_decisions(client, {"rule": "pd-api-down"}, count=2)
    before, after = records[1], records[0]
    assert before["matches"][0]["steps"][1]["decision"] == "dry_run"
    assert after["matches"][0]["steps"][1]["decision"] == "skipped"
    assert "stand_down_when_acknowledged" in after["matches"][0]["steps"][1]["reason"]
    await send("incident.unacknowledged")
    await send("incident.escalated")
    latest = (await wait_for_decisions(client, {"rule": "pd-api-down"}, count=3))[0]
    assert latest["matches"][0]["steps"][1]["decision"] == "dry_run"


async def test_duplicate_trigger_folded_duplicate_resolve_not(make_client):
    """A repeated trigger is folded into the open alert; a repeated resolve is not."""
    client = await make_client()
    page = am_page([disk("api")])
    first = await (await client.post(ENQUEUE, json=page)).json()
    await journal_drained(client.store)
    again = await (await client.post(ENQUEUE, json=page)).json()
    assert first["message"] == "Event processed"
    assert again["message"] == "Event processed (duplicate of the open alert)"
    resolve = am_page([], [disk("api")], action="resolve")
    one = await (await client.post(ENQUEUE, json=resolve)).json()
    await journal_drained(client.store)
    two = await (await client.post(ENQUEUE, json=resolve)).json()
    assert one["message"] == two["message"] == "Event processed"
    assert one["id"]
    assert two["id"]


async def test_truncated_alertmanager_payload_warns_counts_and_notes(make_client):
    """TruncatedAlerts > 0 logs a warning, counts the lost alerts, notes the trace."""
    from test_web import am_alert, am_payload  # noqa: PLC0415

    client = await make_client()
    payload = am_payload(am_alert())
    payload["truncatedAlerts"] = 4
    with structlog.testing.capture_logs() as logs:
        resp = await client.post(
            "/webhooks/alertmanager", json=payload, headers=bearer()
        )
    assert resp.status == 202
    [warning] = [e for e in logs if e["event"] == "alerts_truncated"]
    assert warning["log_level"] == "warning"
    assert warning["truncated"] == 4
    metrics = await (await client.get("/metrics")).text()
    assert _sample(metrics, "receiver_alerts_truncated_total") == 4
    await journal_drained(client.store)
    records = (await (await client.get("/api/v1/decisions", headers=bearer())).json())[
        "decisions"
    ]
    assert any("left 4 more alerts" in n for n in records[0]["notes"])


async def test_change_event_accepted_and_stored(make_client):
    """POST /v2/change/enqueue answers like PagerDuty and stores the change."""
    client = await make_client()
    body = {
        "routing_key": ROUTING_KEY,
        "payload": {
            "summary": "Deployed api v1.2.3",
            "source": "ci",
            "timestamp": "2024-05-06T07:00:00Z",
            "custom_details": {"service": "api", "namespace": "production"},
        },
        "links": [{"href": "https://ci.example.com/builds/42", "text": "build 42"}],
    }
    resp = await client.post("/v2/change/enqueue", json=body)
    assert resp.status == 202, await resp.text()
    answer = await resp.json()
    assert answer["status"] == "success"
    assert answer["message"] == "Change event processed"
    [record] = await wait_for_decisions(client, {"fingerprint": "change-events"})
    change = record["change"]
    assert change["summary"] == "Deployed api v1.2.3"
    assert change["timestamp"] == "2024-05-06T07:00:00.000Z"
    assert change["custom_details"]["service"] == "api"
    assert change["links"][0]["href"].endswith("/42")
    assert ROUTING_KEY not in json.dumps(record)


class _CountingStore(SqliteStore):
    """An in-memory store that counts the acknowledgement reads (``last_runs``)."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.ack_reads = 0

    async def last_runs(self, scopes: Any, now: Any) -> Any:
        self.ack_reads += 1
        return await super().last_runs(scopes, now)


def _pd_entry(event_type: str, n: int, at: Any) -> JournalEntry:
    fixtures = Path(__file__).parent / "fixtures" / "pagerduty_v3"
    payload = json.loads((fixtures / f"{event_type}.json").read_bytes())
    payload["event"]["id"] = f"ev-{n}"
    data = payload["event"]["data"]
    data["incident_key"] = "api-down"
    data["title"] = "API down"
    return JournalEntry(f"e{n}", "pagerduty", at, json.dumps(payload).encode())


async def _read_ahead_rig(web_rules: Path) -> tuple[Processor, _CountingStore, Any]:
    store = _CountingStore()
    clock = Ticking()
    processor = Processor(
        load_rulebook([web_rules], steps=builtin_registry()),
        Runner({}, clock),
        clock,
        PlanContext(),
        store=store,
    )

    async def journal(entry: JournalEntry) -> JournalEntry:
        alerts = processor.alerts(entry.source, entry.body, clock())
        await store.append(entry, await alert_states(store, alerts, clock()))
        return entry

    triggered = await journal(_pd_entry("incident.triggered", 1, clock()))
    [first] = await processor.process(triggered)
    assert first.matches[0].steps[1].decision is Decision.DRY_RUN
    return processor, store, journal


async def test_an_acknowledge_in_a_batch_read_ahead_stands_down_the_next_entry(
    web_rules,
):
    """A batch's acknowledgements are read once, before any entry is decided.

    The acknowledge decided first is still seen by the firing event after it.
    """
    processor, store, journal = await _read_ahead_rig(web_rules)
    acked = await journal(_pd_entry("incident.acknowledged", 2, processor._clock()))
    later = await journal(_pd_entry("incident.priority_updated", 3, processor._clock()))
    reads = store.ack_reads
    prepared = await processor.prepare([acked, later])
    await processor.process(acked, prepared)
    [trace] = await processor.process(later, prepared)
    assert store.ack_reads == reads + 1  # the batch's one read
    step = trace.matches[0].steps[1]
    assert step.decision is Decision.SKIPPED
    assert "stand_down_when_acknowledged" in step.reason


async def test_what_was_read_ahead_too_long_ago_is_read_again(web_rules):
    """Past PREPARED_FOR, an entry reads its acknowledgements itself."""
    processor, store, journal = await _read_ahead_rig(web_rules)
    first = await journal(_pd_entry("incident.priority_updated", 2, processor._clock()))
    second = await journal(_pd_entry("incident.escalated", 3, processor._clock()))
    prepared = await processor.prepare([first, second])
    assert prepared is not None
    reads = store.ack_reads
    await processor.process(first, prepared)
    assert store.ack_reads == reads  # fresh: nothing read
    processor._clock.now += PREPARED_FOR
    await processor.process(second, prepared)
    assert store.ack_reads == reads + 1


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00+00:00"])
async def test_go_zero_time_reads_as_no_time(make_client, stamp):
    """A client's unset time (Go's zero) is no time: the receiver's own is used.

    Taken as a start in year 1, the alert would have been firing for two
    thousand years by any ``require_firing_for``.
    """
    client = await make_client()
    body = {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": "zero-time",
        "payload": {
            "summary": "disk full",
            "source": "db-1",
            "severity": "critical",
            "timestamp": stamp,
        },
    }
    resp = await client.post(ENQUEUE, json=body)
    assert resp.status == 202, await resp.text()
    (record,) = await wait_for_decisions(client, {})
    assert record["startsAt"].startswith("2024-")  # the test clock's year
    change = {
        "routing_key": ROUTING_KEY,
        "payload": {"summary": "deploy", "source": "ci", "timestamp": stamp},
    }
    resp = await client.post("/v2/change/enqueue", json=change)
    assert resp.status == 202, await resp.text()
    [record] = await wait_for_decisions(client, {"fingerprint": "change-events"})
    assert record["change"]["timestamp"].startswith("2024-")
