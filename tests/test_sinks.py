"""Sinks against real local HTTP servers: what was sent, retries, dedupe, records."""

from __future__ import annotations

import asyncio
import hashlib
import json
import textwrap
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import structlog
from conftest import Ticking, flat_settings, journal_drained
from fakes import RecordingServer, Reply, events_api, pagerduty_api
from peers import poll, run_alertmanager, run_redis

from receiver.app import SINKS, create_app
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
from receiver.rulebook.loader import load_rulebook
from receiver.runtime import build_runtime
from receiver.settings import Settings
from receiver.sinks import (
    SinkDispatcher,
    SinkError,
    SinkOutcome,
    is_own_note,
    playbook_sinks,
)
from receiver.sinks.delivery import retry_after
from receiver.sinks.dispatch import DRY_RUN_DETAIL
from receiver.sinks.render import (
    OWN_NOTE_MARKER,
    alertmanager_dedup_key,
    custom_details,
    render_note,
    render_slack,
)
from receiver.steps.catalog import builtin_registry
from receiver.store import MemoryStore
from receiver.store.base import DecisionQuery
from receiver.store.outbox import RedisOutbox, SqliteOutbox

NOW = datetime(2026, 11, 26, 10, 12, tzinfo=UTC)
STARTED = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
API_TOKEN = "pd-api-token-5e1f"
FROM = "oncall-bot@example.com"
ROUTING = "R0UT1NGKEY0f3a"
GROUP_KEY = '{}/{alertname="SarkSiemForwardingDown"}:{siem="splunk"}'


@pytest.fixture(autouse=True)
def fresh_logging():
    """Reset structlog: print to the current stdout, no cached loggers.

    Other tests run the CLI in-process, which configures structlog for good with
    cached loggers bound to that test's (since closed) captured stderr.
    """
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


class Sleeps:
    """An injected sleep that records the waits instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def alert(source="alertmanager", status="firing", **refs: str) -> Alert:
    labels = {"alertname": "SarkSiemForwardingDown", "namespace": "production"}
    labels["siem"] = "splunk"
    if source == "pagerduty":
        labels = {"alertname": "SarkSiemForwardingDown: splunk", "incident_id": "Q1"}
    return Alert(
        source=source,
        fingerprint="fp-siem-1",
        status=status,
        labels=freeze(labels),
        starts_at=STARTED,
        generator_url="http://prometheus.test/graph?g0.expr=siem",
        refs=freeze(refs),
    )


def step(kind, type_, decision, reason, name="", **result) -> StepTrace:
    return StepTrace(
        kind=kind,
        type=type_,
        target="t",
        decision=decision,
        reason=reason,
        result=freeze(result),
        name=name,
    )


D, R = StepKind.DIAGNOSTIC, StepKind.REMEDIATION


def siem_steps(remediation=Decision.EXECUTED) -> tuple[StepTrace, ...]:
    return (
        step(
            D,
            "prometheus.query",
            Decision.EXECUTED,
            "1 series: 0 (expect > 0: not met)",
            "events forwarded",
            series=[{"labels": {"siem": "splunk"}, "value": 0.0}],
            total_series=1,
        ),
        step(
            D,
            "redis.get",
            Decision.EXECUTED,
            "redis default: circuit:splunk:state = 'open'",
            "circuit breaker state",
            keys={
                "circuit:splunk:state": {"type": "string", "value": "open"},
                "circuit:splunk:failure": {"type": "none"},
            },
        ),
        step(
            D,
            "k8s.logs",
            Decision.EXECUTED,
            "logs of deployment/siem-fwd: 2 lines",
            "forwarder logs",
            pods=[
                {
                    "pod": "siem-fwd-0",
                    "container": "fwd",
                    "lines": ["ERROR splunk HEC 503", "WARN circuit open, dropping"],
                }
            ],
        ),
        step(
            D,
            "k8s.pods",
            Decision.EXECUTED,
            "1 pod",
            "forwarder pods",
            pods=[
                {
                    "name": "siem-fwd-0",
                    "phase": "Running",
                    "ready": "0/1",
                    "is_ready": False,
                    "restarts": 4,
                    "last_termination": {"reason": "Error", "exit_code": 1},
                }
            ],
        ),
        step(
            D,
            "k8s.events",
            Decision.EXECUTED,
            "1 event",
            "forwarder events",
            events=[
                {
                    "type": "Warning",
                    "reason": "BackOff",
                    "object": "Pod/siem-fwd-0",
                    "message": "Back-off restarting failed container",
                    "count": 5,
                    "age": "3m",
                }
            ],
        ),
        step(
            R,
            "redis.reset_circuit_breaker",
            remediation,
            "redis default: reset circuit breaker 'splunk': unlinked "
            "circuit:splunk:state (was 'open')"
            if remediation is Decision.EXECUTED
            else "dry-run mode: would reset circuit breaker 'splunk'",
            "reset the SIEM circuit breaker",
            **(
                {"verification": {"ok": True, "reason": "verified: rate = 3.2 (> 0)"}}
                if remediation is Decision.EXECUTED
                else {}
            ),
        ),
    )


def trace(
    a: Alert | None = None,
    *,
    payload_id="p1",
    remediation=Decision.EXECUTED,
    mode="execute",
    playbook="siem-down",
) -> AlertTrace:
    return AlertTrace(
        alert=a or alert(),
        matches=(
            MatchTrace(
                rule="sark-siem-forwarding-down",
                severity=Severity.P1,
                playbook=playbook,
                steps=siem_steps(remediation),
                notes=("severity: fixed P1",),
                description="Playbook 5, SIEM integration down (P1).",
                runbook_url="https://wiki.example.com/runbooks/sark#playbook-5",
            ),
        ),
        decided_at=NOW,
        payload_id=payload_id,
        mode=mode,
    )


# ------------------------------------------------------------------ rendering


def test_note_has_what_on_call_needs_at_3am():
    """Severity targets, match, findings, actions, verification and links, in order."""
    note = render_note(trace(alert(group_key=GROUP_KEY)), 24_000)
    lines = note.splitlines()
    assert lines[0] == (
        f"{OWN_NOTE_MARKER} P1 High (SEV-2) | SarkSiemForwardingDown | firing | "
        "1 done, verified"
    )
    assert "Acknowledge within 15m, mitigate within 2h, resolve within 8h" in note
    assert "escalate after 2h to Engineering Manager" in note
    assert "Matched rule sark-siem-forwarding-down -> playbook siem-down" in note
    assert '{siem="splunk"} = 0' in note
    assert "circuit:splunk:state = 'open'" in note
    assert "circuit:splunk:failure: (missing)" in note
    assert "| siem-fwd-0: WARN circuit open, dropping" in note
    assert (
        "siem-fwd-0 phase=Running ready=0/1 restarts=4 last exit Error (code 1)" in note
    )
    assert "Warning BackOff Pod/siem-fwd-0: Back-off restarting failed container" in (
        note
    )
    assert "What was done:" in note
    assert "    => verified: rate = 3.2 (> 0)" in note
    assert "- runbook: https://wiki.example.com/runbooks/sark#playbook-5" in note
    assert "- alert source: http://prometheus.test/graph?g0.expr=siem" in note
    order = [note.index(s) for s in ("What we found:", "What was done:", "Links:")]
    assert order == sorted(order)


def test_dry_run_note_says_what_would_be_done():
    """In dry-run the actions section is 'would be done'."""
    note = render_note(trace(remediation=Decision.DRY_RUN, mode="dry-run"), 24_000)
    assert "What would be done (dry-run):" in note
    assert "1 would run (dry-run)" in note.splitlines()[0]


def test_note_is_capped_and_says_where_the_rest_is():
    """A huge trace becomes a note of at most the cap, pointing at the full trace."""
    huge = step(D, "k8s.logs", Decision.EXECUTED, "x" * 50_000, lines=["y" * 500] * 50)
    big = trace()
    big = AlertTrace(
        alert=big.alert,
        matches=tuple(
            MatchTrace(
                rule=f"r{i}",
                severity=Severity.P2,
                playbook="p",
                steps=(huge,) * 30,
            )
            for i in range(5)
        ),
        decided_at=NOW,
        payload_id="p-huge",
    )
    note = render_note(big, 5_000)
    assert len(note) <= 5_000
    assert note.endswith("full trace: GET /api/v1/decisions?payload_id=p-huge)")


def test_own_notes_are_recognised():
    """Our notes carry the marker on the first line; a person's note does not."""
    assert is_own_note(render_note(trace(), 24_000))
    assert is_own_note("  \n" + OWN_NOTE_MARKER + " P1 ...")
    assert not is_own_note("IC: Jane. Rolling back.")
    assert not is_own_note(f"quoting {OWN_NOTE_MARKER} later in the text")


def test_slack_message_fits_block_kit_limits():
    """Header, sections under 3000 characters, links as context, text fallback."""
    message = render_slack(trace(alert(group_key=GROUP_KEY)))
    blocks = message["blocks"]
    assert message["text"].startswith("P1 High (SEV-2) | SarkSiemForwardingDown")
    assert blocks[0]["type"] == "header"
    assert len(blocks) <= 50
    texts = [b["text"]["text"] for b in blocks if b["type"] == "section"]
    assert all(len(t) <= 3000 for t in texts)
    assert any(t.startswith("*What we found*") for t in texts)
    assert any(t.startswith("*What was done*") for t in texts)
    assert (
        "<https://wiki.example.com/runbooks/sark#playbook-5|runbook>"
        in (blocks[-1]["elements"][0]["text"])
    )


def test_custom_details_are_capped():
    """Events v2 custom_details shrink to the cap, dropping details first."""
    many = AlertTrace(
        alert=alert(),
        matches=tuple(
            MatchTrace(
                rule=f"r{i}", severity=Severity.P1, playbook="p", steps=siem_steps()
            )
            for i in range(40)
        ),
        decided_at=NOW,
    )
    details = custom_details(many, max_chars=8_000)
    assert len(json.dumps(details)) <= 8_000
    assert details["truncated"] is True
    assert details["matches"][0]["rule"] == "r0"


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "Thu, 26 Nov 2026 10:12:30 GMT"}, 30.0),
        ({"ratelimit-reset": "12"}, 12.0),
        ({"x-ratelimit-reset": str(int(NOW.timestamp()) + 5)}, 5.0),
        ({}, None),
    ],
)
def test_retry_after_reads_the_headers_that_say_how_long(headers, wait):
    """Retry-After (seconds or date) and rate-limit reset headers give the wait."""
    assert retry_after(httpx.Headers(headers), NOW) == wait


# ------------------------------------------------------------------ fixtures


@pytest.fixture
def pd():
    with RecordingServer() as server:
        pagerduty_api(
            server, {alertmanager_dedup_key(GROUP_KEY): "QAM1", "ev-1": "QEV1"}
        )
        events_api(server)
        server.script("POST", "/services/T0/B0/slacksecret", Reply(200, "ok"))
        server.script("POST", "/hook", Reply(200, "{}"))
        yield server


def settings(server: RecordingServer, **overrides) -> Settings:
    values = {
        "pagerduty_api_url": server.url,
        "pagerduty_api_token": API_TOKEN,
        "pagerduty_from": FROM,
        "pagerduty_events_url": f"{server.url}/v2/enqueue",
        "pagerduty_routing_key": ROUTING,
        "slack_webhook_url": f"{server.url}/services/T0/B0/slacksecret",
        "webhook_urls": [f"{server.url}/hook?token=hooktoken77"],
        "sink_max_wait": 60,
    }
    values.update(overrides)
    return flat_settings(**values)


@pytest.fixture
async def make_sinks():
    built = []

    def factory(s: Settings, sleep=None):
        sinks = build_runtime(s).sinks(sleep=sleep or Sleeps())
        built.append(sinks)
        return sinks

    yield factory
    for sinks in built:
        for sink in sinks.values():
            await sink.aclose()


# ------------------------------------------------------------------ pagerduty_note


async def test_note_posts_exactly_what_pagerduty_expects(pd, make_sinks):
    """POST /incidents/{id}/notes with Token auth, v2 Accept, From and a note body."""
    sink = make_sinks(settings(pd))["pagerduty_note"]
    outcome = await sink.send(trace(alert("pagerduty", incident_id="Q1")))
    assert outcome.status == "sent"
    assert outcome.detail.startswith("note PNOTE1 on incident Q1 (from the webhook)")
    (sent,) = pd.seen("POST", "/incidents/Q1/notes")
    assert sent.headers["Authorization"] == f"Token token={API_TOKEN}"
    assert sent.headers["Accept"] == "application/vnd.pagerduty+json;version=2"
    assert sent.headers["From"] == FROM
    assert sent.headers["Content-Type"] == "application/json"
    body = sent.json()
    assert list(body) == ["note"]
    assert list(body["note"]) == ["content"]
    assert is_own_note(body["note"]["content"])
    assert pd.seen("GET", "/incidents") == []


async def test_note_finds_the_incident_by_key_for_alertmanager_and_events_v2(
    pd, make_sinks
):
    """No incident id: look it up by Alertmanager's or the Events v2 dedup key."""
    sink = make_sinks(settings(pd))["pagerduty_note"]
    am = await sink.send(trace(alert(group_key=GROUP_KEY)))
    ev = await sink.send(trace(alert("events_v2", dedup_key="ev-1")))
    assert am.status == ev.status == "sent"
    lookups = pd.seen("GET", "/incidents")
    assert [r.query["incident_key"][0] for r in lookups] == [
        alertmanager_dedup_key(GROUP_KEY),
        "ev-1",
    ]
    assert lookups[0].headers["Authorization"] == f"Token token={API_TOKEN}"
    assert len(pd.seen("POST", "/incidents/QAM1/notes")) == 1
    assert len(pd.seen("POST", "/incidents/QEV1/notes")) == 1


async def test_no_incident_for_the_key_skips_without_posting(pd, make_sinks):
    """An unknown incident key is a skip with the reason, and no note is posted."""
    sink = make_sinks(settings(pd))["pagerduty_note"]
    outcome = await sink.send(trace(alert("events_v2", dedup_key="nobody")))
    assert outcome.status == "skipped"
    assert outcome.detail == "no PagerDuty incident has incident_key nobody"
    assert pd.seen("POST", r"/incidents/.*/notes") == []


async def test_note_retries_429_honouring_retry_after(pd, make_sinks):
    """A 429 with Retry-After: 7 waits exactly 7 s (injected), then posts once."""
    pd.script(
        "POST",
        "/incidents/Q1/notes",
        Reply(429, {"error": {"message": "Rate Limit Exceeded"}}, {"Retry-After": "7"}),
        Reply(201, {"note": {"id": "PN9"}}),
    )
    sleeps = Sleeps()
    sink = make_sinks(settings(pd), sleeps)["pagerduty_note"]
    outcome = await sink.send(trace(alert("pagerduty", incident_id="Q1")))
    assert outcome.status == "sent"
    assert outcome.attempts == 2
    assert sleeps.waits == [7.0]
    assert len(pd.seen("POST", "/incidents/Q1/notes")) == 2


async def test_note_retries_5xx_with_bounded_backoff_then_gives_up(pd, make_sinks):
    """Persistent 503s are tried sink_attempts times with backoff, then fail."""
    pd.script("POST", "/incidents/Q1/notes", Reply(503, "unavailable"))
    sleeps = Sleeps()
    sink = make_sinks(settings(pd, sink_attempts=3), sleeps)["pagerduty_note"]
    with pytest.raises(SinkError, match="gave up after 3 tries: HTTP 503") as caught:
        await sink.send(trace(alert("pagerduty", incident_id="Q1")))
    assert caught.value.attempts == 3
    assert len(sleeps.waits) == 2
    assert all(0 <= w <= 60 for w in sleeps.waits)
    assert len(pd.seen("POST", "/incidents/Q1/notes")) == 3


async def test_a_retry_after_beyond_the_cap_gives_up_at_once(pd, make_sinks):
    """Asked to wait longer than sink_max_wait, the sink gives up without waiting."""
    pd.script(
        "POST", "/incidents/Q1/notes", Reply(429, "slow down", {"Retry-After": "3600"})
    )
    sleeps = Sleeps()
    sink = make_sinks(settings(pd), sleeps)["pagerduty_note"]
    with pytest.raises(SinkError, match="asked to wait 3600s, longer than"):
        await sink.send(trace(alert("pagerduty", incident_id="Q1")))
    assert sleeps.waits == []
    assert len(pd.seen("POST", "/incidents/Q1/notes")) == 1


async def test_a_401_is_not_retried_and_hints_at_the_token(pd, make_sinks):
    """A rejected token fails at once with a hint; the token is not in the message."""
    pd.script(
        "POST",
        "/incidents/Q1/notes",
        Reply(401, {"error": {"message": f"Invalid token {API_TOKEN}"}}),
    )
    sink = make_sinks(settings(pd))["pagerduty_note"]
    with pytest.raises(SinkError, match="check RECEIVER_PAGERDUTY_API_TOKEN") as caught:
        await sink.send(trace(alert("pagerduty", incident_id="Q1")))
    assert API_TOKEN not in str(caught.value)
    assert "***" in str(caught.value)
    assert len(pd.seen("POST", "/incidents/Q1/notes")) == 1


async def test_note_size_is_capped_by_settings(pd, make_sinks):
    """note_max_chars bounds what is posted."""
    sink = make_sinks(settings(pd, note_max_chars=1_000))["pagerduty_note"]
    await sink.send(trace(alert("pagerduty", incident_id="Q1")))
    (sent,) = pd.seen("POST", "/incidents/Q1/notes")
    assert len(sent.json()["note"]["content"]) <= 1_000


# ------------------------------------------------------------------ pagerduty_event


async def test_event_joins_alertmanagers_incident_with_diagnostics(pd, make_sinks):
    """An Events v2 trigger with Alertmanager's dedup key and the findings inside."""
    sink = make_sinks(settings(pd))["pagerduty_event"]
    outcome = await sink.send(trace(alert(group_key=GROUP_KEY)))
    assert outcome.status == "sent"
    (sent,) = pd.seen("POST", "/v2/enqueue")
    body = sent.json()
    assert body["routing_key"] == ROUTING
    assert body["event_action"] == "trigger"
    assert body["dedup_key"] == hashlib.sha256(GROUP_KEY.encode()).hexdigest()
    payload = body["payload"]
    assert payload["severity"] == "error"
    assert payload["source"] == "production"
    assert payload["class"] == "SarkSiemForwardingDown"
    assert payload["summary"].startswith(f"{OWN_NOTE_MARKER} P1 High (SEV-2)")
    found = payload["custom_details"]["matches"][0]["found"]
    assert found[1]["details"] == [
        "circuit:splunk:state = 'open'",
        "circuit:splunk:failure: (missing)",
    ]
    assert {
        "href": "https://wiki.example.com/runbooks/sark#playbook-5",
        "text": "runbook",
    } in (body["links"])


async def test_event_dedup_key_is_deterministic_without_a_group_key(pd, make_sinks):
    """Without a group key the dedup key derives from fingerprint and start."""
    sink = make_sinks(settings(pd))["pagerduty_event"]
    await sink.send(trace(alert(), payload_id="a"))
    await sink.send(trace(alert(), payload_id="b"))
    keys = [r.json()["dedup_key"] for r in pd.seen("POST", "/v2/enqueue")]
    assert keys[0] == keys[1]
    assert keys[0].startswith("alert-receiver-")


async def test_event_skips_other_sources_and_resolved_alerts(pd, make_sinks):
    """PagerDuty and Events v2 alerts, and resolves, send no trigger."""
    sink = make_sinks(settings(pd))["pagerduty_event"]
    pagerduty = await sink.send(trace(alert("pagerduty", incident_id="Q1")))
    resolved = await sink.send(trace(alert(status="resolved", group_key=GROUP_KEY)))
    assert pagerduty.status == resolved.status == "skipped"
    assert "use pagerduty_note" in pagerduty.detail
    assert pd.seen("POST", "/v2/enqueue") == []


async def test_event_400_fails_with_pagerdutys_errors(pd, make_sinks):
    """A refused event records PagerDuty's error list."""
    pd.script(
        "POST",
        "/v2/enqueue",
        Reply(
            400, {"status": "invalid event", "errors": ["'payload.source' is missing"]}
        ),
    )
    sink = make_sinks(settings(pd))["pagerduty_event"]
    with pytest.raises(SinkError, match=r"HTTP 400: .*payload\.source' is missing"):
        await sink.send(trace(alert(group_key=GROUP_KEY)))


# ------------------------------------------------------------------ slack, webhook


async def test_slack_posts_the_message_and_honours_retry_after(pd, make_sinks):
    """A 429 from Slack waits Retry-After, then the message is posted once."""
    pd.script(
        "POST",
        "/services/T0/B0/slacksecret",
        Reply(429, "rate_limited", {"Retry-After": "2"}),
        Reply(200, "ok"),
    )
    sleeps = Sleeps()
    sink = make_sinks(settings(pd), sleeps)["slack"]
    outcome = await sink.send(trace())
    assert (outcome.status, outcome.attempts, sleeps.waits) == ("sent", 2, [2.0])
    last = pd.seen("POST", "/services/T0/B0/slacksecret")[-1]
    assert last.headers["Content-Type"] == "application/json"
    assert last.json()["blocks"][0]["type"] == "header"


async def test_an_incident_id_stays_one_path_segment(pd, make_sinks):
    """An incident id with ``/`` and ``..`` never reaches another endpoint."""
    sink = make_sinks(settings(pd))["pagerduty_note"]
    with pytest.raises(SinkError, match="HTTP 404"):  # no such incident
        await sink.send(trace(alert("pagerduty", incident_id="Q1/../../users")))
    paths = [r.path for r in pd.requests]
    assert paths == ["/incidents/Q1%2F..%2F..%2Fusers/notes"]


async def test_slack_errors_never_show_the_webhook_url(pd, make_sinks):
    """Slack's 404 no_service fails without the (secret) webhook URL in the message."""
    pd.script("POST", "/services/T0/B0/slacksecret", Reply(404, "no_service"))
    sink = make_sinks(settings(pd))["slack"]
    with pytest.raises(
        Exception, match="Slack webhook: HTTP 404: no_service"
    ) as caught:
        await sink.send(trace())
    assert "slacksecret" not in str(caught.value)


async def test_webhook_posts_the_trace_json(pd, make_sinks):
    """The webhook sink POSTs AlertTrace.to_json() with identifying headers."""
    sink = make_sinks(settings(pd))["webhook"]
    t = trace()
    outcome = await sink.send(t)
    assert outcome.detail == f"delivered to 127.0.0.1:{pd.port}"
    (sent,) = pd.seen("POST", "/hook")
    assert sent.query == {"token": ["hooktoken77"]}
    assert sent.json() == json.loads(json.dumps(t.to_json()))
    assert sent.headers["X-Receiver-Payload-Id"] == "p1"
    assert sent.headers["X-Receiver-Fingerprint"] == "fp-siem-1"


async def test_webhook_failure_names_the_host_only(pd, make_sinks):
    """A failing URL is reported by host; its token-bearing query stays out."""
    pd.script("POST", "/hook", Reply(500, "down"))
    sink = make_sinks(settings(pd, sink_attempts=1))["webhook"]
    with pytest.raises(SinkError, match="0 of 1 delivered") as caught:
        await sink.send(trace())
    assert "hooktoken77" not in str(caught.value)


async def test_a_url_no_client_can_use_is_a_failed_delivery(pd, make_sinks):
    """A URL httpx refuses (an empty IDNA label) fails the sink, secret kept out."""
    bad = "https://xn--/hook?token=hooktoken77"
    sink = make_sinks(settings(pd, webhook_urls=[bad], sink_attempts=1))["webhook"]
    with pytest.raises(SinkError, match="cannot be used") as caught:
        await sink.send(trace())
    assert "hooktoken77" not in str(caught.value)


# ------------------------------------------------------------------ dispatcher


def dispatcher(sinks, store, default=("pagerduty_note",), playbooks=None, outbox=None):
    return SinkDispatcher(
        sinks,
        store=store,
        outbox=outbox or SqliteOutbox(":memory:"),
        choose=lambda t: playbook_sinks(t, playbooks or {}, default),
        clock=Ticking(NOW),
    )


async def test_at_most_one_note_per_decision_and_occurrence(pd, make_sinks):
    """Redelivery and resends post nothing new; a new outcome or a resolve does."""
    store = MemoryStore()
    d = dispatcher(make_sinks(settings(pd)), store)
    first = trace(alert("pagerduty", incident_id="Q1"), payload_id="p1")
    await d.put([first])
    await d.put([first])  # the same decision again (a redelivered payload)
    await d.drain()
    # A resend: same occurrence, the remediation now skipped as already done.
    resend = trace(
        alert("pagerduty", incident_id="Q1"),
        payload_id="p2",
        remediation=Decision.SKIPPED,
    )
    await d.put([resend])
    await d.drain()
    assert len(pd.seen("POST", "/incidents/Q1/notes")) == 1
    failed = trace(
        alert("pagerduty", incident_id="Q1"),
        payload_id="p3",
        remediation=Decision.FAILED,
    )
    await d.put([failed])
    await d.drain()
    resolved = trace(
        alert("pagerduty", status="resolved", incident_id="Q1"), payload_id="p4"
    )
    await d.put([resolved])
    await d.drain()
    assert len(pd.seen("POST", "/incidents/Q1/notes")) == 3
    await d.aclose()
    await store.close()


async def test_dry_run_posts_to_no_sink_and_records_what_it_withheld(pd, make_sinks):
    """A dry-run trace contacts nothing; switching to diagnose still posts it."""
    store = MemoryStore()
    d = dispatcher(
        make_sinks(settings(pd)),
        store,
        default=("pagerduty_note", "slack", "webhook"),
    )
    dry = trace(alert("pagerduty", incident_id="Q1"), payload_id="d1", mode="dry-run")
    await d.put([dry])
    await d.drain()
    await d.put(
        [trace(alert("pagerduty", incident_id="Q1"), payload_id="d2", mode="dry-run")]
    )
    await d.drain()
    assert pd.requests == [], "dry-run must not contact any sink"
    (record,) = await store.decisions(DecisionQuery(payload_id="d1.sinks"))
    assert {(o["sink"], o["status"], o["detail"]) for o in record["sinks"]} == {
        (name, "skipped", DRY_RUN_DETAIL)
        for name in ("pagerduty_note", "slack", "webhook")
    }
    # The resend's webhook ("decision" dedupe) is recorded too; nothing is posted.
    assert pd.requests == []
    live = trace(alert("pagerduty", incident_id="Q1"), payload_id="d3", mode="diagnose")
    await d.put([live])
    await d.drain()
    assert len(pd.seen("POST", "/incidents/Q1/notes")) == 1
    assert len(pd.seen("POST", "/services/T0/B0/slacksecret")) == 1
    (posted,) = await store.decisions(DecisionQuery(payload_id="d3.sinks"))
    assert {o["status"] for o in posted["sinks"]} == {"sent"}
    await d.aclose()
    await store.close()


async def test_our_own_annotated_echo_and_unmatched_alerts_go_nowhere(pd, make_sinks):
    """The incident.annotated our note triggers, and unmatched alerts, send nothing."""
    store = MemoryStore()
    d = dispatcher(make_sinks(settings(pd)), store)
    note = render_note(trace(), 24_000)
    echo = Alert(
        source="pagerduty",
        fingerprint="pd-Q1",
        status="firing",
        labels=freeze({"event_type": "incident.annotated", "incident_id": "Q1"}),
        annotations=freeze({"note": note[:2000]}),
        refs=freeze({"incident_id": "Q1"}),
        actionable=False,
    )
    await d.put([AlertTrace(alert=echo, matches=(), decided_at=NOW, payload_id="e")])
    await d.put([AlertTrace(alert=alert(), matches=(), decided_at=NOW, payload_id="u")])
    await d.drain()
    assert await d.counts() == (0, 0)
    assert pd.requests == []
    assert await store.decisions(DecisionQuery()) == []
    await d.aclose()
    await store.close()


async def test_playbook_sinks_override_the_default_and_unknown_ones_are_recorded(
    pd, make_sinks
):
    """A playbook's own sink list wins; a name nobody configured is a recorded skip."""
    store = MemoryStore()
    book = load_rulebook_text(
        """
        playbooks:
          siem-down: {sinks: [slack, teams]}
        rules: []
        """
    )
    d = dispatcher(make_sinks(settings(pd)), store, playbooks=book.playbooks)
    await d.put([trace(payload_id="p9")])
    await d.drain()
    assert len(pd.seen("POST", "/services/T0/B0/slacksecret")) == 1
    assert pd.seen("POST", r"/incidents/.*") == []
    (record,) = await store.decisions(DecisionQuery(payload_id="p9.sinks"))
    assert record["record"] == "sinks"
    assert record["decision_payload_id"] == "p9"
    assert [(s["sink"], s["status"]) for s in record["sinks"]] == [
        ("slack", "sent"),
        ("teams", "skipped"),
    ]
    assert "not configured" in record["sinks"][1]["detail"]
    # The payload's own decisions are not mixed with sink records.
    assert await store.decisions(DecisionQuery(payload_id="p9")) == []
    await d.aclose()
    await store.close()


def load_rulebook_text(text: str):
    import tempfile  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rules.yaml"
        path.write_text(textwrap.dedent(text))
        return load_rulebook([path], steps=builtin_registry())


async def test_failures_are_recorded_never_raised(pd, make_sinks):
    """A sink that fails leaves a 'failed' outcome record; submit never raises."""
    pd.script("POST", "/incidents/Q1/notes", Reply(500, "boom"))
    store = MemoryStore()
    d = dispatcher(make_sinks(settings(pd, sink_attempts=2)), store)
    await d.put([trace(alert("pagerduty", incident_id="Q1"), payload_id="pf")])
    await d.drain()
    (record,) = await store.decisions(DecisionQuery(payload_id="pf.sinks"))
    (outcome,) = record["sinks"]
    assert outcome["status"] == "failed"
    assert outcome["attempts"] == 2
    assert "gave up after 2 tries: HTTP 500" in outcome["detail"]
    await d.aclose()
    await store.close()


async def test_outcome_records_work_on_the_redis_store_too(pd, make_sinks, tmp_path):
    """The follow-up record lands in a Redis store the same way as in SQLite."""
    from receiver.store.redis import RedisStore  # noqa: PLC0415

    with run_redis(tmp_path) as url:
        store = RedisStore(url)
        d = dispatcher(
            make_sinks(settings(pd)),
            store,
            default=("slack",),
            outbox=RedisOutbox(url),
        )
        await d.put([trace(payload_id="pr")])
        await d.drain()
        (record,) = await store.decisions(DecisionQuery(payload_id="pr.sinks"))
        assert record["sinks"][0]["status"] == "sent"
        assert await store.decisions(DecisionQuery(payload_id="pr")) == []
        # A later record for the same payload is appended, not swallowed.
        await d.put([trace(payload_id="pr", remediation=Decision.FAILED)])
        await d.drain()
        assert len(await store.decisions(DecisionQuery(payload_id="pr.sinks"))) == 2
        await d.aclose()
    await store.close()


class SlowSink:
    """A sink that waits until released, to test the dispatcher's bounds."""

    name = "slow"
    dedupe = "decision"

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = 0
        self.cancelled = 0
        self.closed = False

    async def send(self, trace: AlertTrace) -> SinkOutcome:
        self.started += 1
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return SinkOutcome(self.name, "sent", "ok")

    async def aclose(self) -> None:
        self.closed = True


async def test_dispatch_is_bounded_and_shutdown_hands_deliveries_back(tmp_path):
    """At most ``concurrency`` deliver at once; nothing is dropped.

    aclose cancels the late ones, which stay in the outbox and are delivered
    by the next start.
    """
    path = str(tmp_path / "r.db")
    store = MemoryStore()
    slow = SlowSink()
    d = SinkDispatcher(
        {"slow": slow},
        store=store,
        outbox=SqliteOutbox(path),
        choose=lambda t: ["slow"],
        clock=Ticking(NOW),
        concurrency=2,
    )
    await d.put([trace(payload_id=f"s{i}") for i in range(5)])
    while slow.started < 2:
        await asyncio.sleep(0)  # let the two loops claim (no timing involved)
    for _ in range(20):
        await asyncio.sleep(0)
    assert slow.started == 2  # at most two deliver at once
    await d.aclose(grace=0.05)
    assert slow.cancelled == 2
    assert slow.closed
    again = SlowSink()
    again.release.set()
    d2 = SinkDispatcher(
        {"slow": again},
        store=store,
        outbox=SqliteOutbox(path),
        choose=lambda t: ["slow"],
        clock=Ticking(NOW),
        concurrency=2,
    )
    await d2.drain()
    assert again.started == 5
    ids = {r["decision_payload_id"] for r in await store.decisions(DecisionQuery())}
    assert ids == {f"s{i}" for i in range(5)}
    await d2.aclose()
    await store.close()


# ------------------------------------------------------------------ in the app


RULES = """
playbooks:
  hook:
    diagnostics:
      - type: http.get
        name: health
        url: "{url}/health"
    sinks: [slack, webhook]
rules:
  - name: hook
    match: ['alertname="SinkMe"']
    playbook: hook
"""


async def test_the_worker_hands_decisions_to_sinks_without_waiting(
    aiohttp_client, tmp_path
):
    """A slow sink does not delay the decision record; its outcome follows later."""
    with RecordingServer() as srv:
        srv.script("GET", "/health", Reply(200, {"ok": True}))
        srv.script("POST", "/services/T0/B0/slacksecret", Reply(200, "ok", delay=1.0))
        srv.script("POST", "/hook", Reply(204))
        rules = tmp_path / "rules.yaml"
        rules.write_text(RULES.replace("{url}", srv.url))
        s = settings(
            srv,
            http_allowlist=[f"127.0.0.1:{srv.port}"],
            workers=1,
            mode="diagnose",
        )
        store = MemoryStore()
        app = create_app(
            build_runtime(s),
            rulebook=load_rulebook([rules], steps=builtin_registry()),
            store=store,
            clock=Ticking(NOW),
            executors=__import__("receiver.steps", fromlist=["x"]).build_executors(s),
        )
        client = await aiohttp_client(app)
        body = {
            "version": "4",
            "status": "firing",
            "receiver": "r",
            "groupKey": "{}:{}",
            "alerts": [
                {
                    "status": "firing",
                    "labels": {"alertname": "SinkMe"},
                    "annotations": {},
                    "startsAt": "2026-11-26T10:00:00Z",
                    "endsAt": "0001-01-01T00:00:00Z",
                    "fingerprint": "00aa",
                }
            ],
        }
        resp = await client.post("/webhooks/alertmanager", json=body)
        assert resp.status == 202
        payload_id = (await resp.json())["id"]

        async def records(pid: str) -> list:
            r = await client.get("/api/v1/decisions", params={"payload_id": pid})
            return (await r.json())["decisions"]

        await journal_drained(store)
        assert await records(payload_id)
        assert await records(f"{payload_id}.sinks") == []  # Slack is still busy
        await app[SINKS].drain()
        (record,) = await records(f"{payload_id}.sinks")
        assert {(o["sink"], o["status"]) for o in record["sinks"]} == {
            ("slack", "sent"),
            ("webhook", "sent"),
        }
        (hook,) = srv.seen("POST", "/hook")
        assert hook.json()["payload_id"] == payload_id
        assert hook.json()["matches"][0]["steps"][0]["decision"] == "executed"


# ------------------------------------------------------------------ Alertmanager


@pytest.mark.e2e
def test_alertmanager_dedup_key_is_sha256_of_the_group_key(tmp_path):
    """Real Alertmanager: its PagerDuty dedup_key is sha256 of the webhook groupKey."""
    with RecordingServer() as srv:
        events_api(srv)
        srv.script("POST", "/am", Reply(200, "{}"))
        config = textwrap.dedent(
            f"""
            route:
              receiver: both
              group_by: [alertname, siem]
              group_wait: 1s
              group_interval: 1s
            receivers:
              - name: both
                webhook_configs:
                  - url: {srv.url}/am
                pagerduty_configs:
                  - routing_key: {ROUTING}
                    url: {srv.url}/v2/enqueue
            """
        )
        with run_alertmanager(tmp_path, config) as am:
            started = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
            alerts = [
                {
                    "labels": {"alertname": "SarkSiemForwardingDown", "siem": "splunk"},
                    "startsAt": started,
                }
            ]
            httpx.post(f"{am.url}/api/v2/alerts", json=alerts, timeout=5)
            assert poll(
                lambda: srv.seen("POST", "/am") and srv.seen("POST", "/v2/enqueue"),
                timeout=15,
            )
        group_key = srv.seen("POST", "/am")[0].json()["groupKey"]
        dedup_key = srv.seen("POST", "/v2/enqueue")[0].json()["dedup_key"]
        assert alertmanager_dedup_key(group_key) == dedup_key


class BrokenSink:
    """A sink with a bug: it raises something unexpected."""

    name = "broken"
    dedupe = "decision"

    async def send(self, trace: AlertTrace) -> SinkOutcome:
        raise RuntimeError("bug near https://hooks.example/services/T/B/s3cr3t")

    async def aclose(self) -> None:
        pass


async def test_a_sink_bug_is_contained_and_scrubbed(capsys):
    """An unexpected exception in a sink ends that delivery, logged without secrets."""
    store = MemoryStore()
    d = SinkDispatcher(
        {"broken": BrokenSink()},
        store=store,
        outbox=SqliteOutbox(":memory:"),
        choose=lambda t: ["broken"],
        clock=Ticking(NOW),
        scrub=lambda text: text.replace("s3cr3t", "***"),
        max_attempts=1,
    )
    await d.put([trace(payload_id="pb")])
    await d.drain()
    assert await d.counts() == (0, 1)  # parked: kept, counted, not retried
    out = capsys.readouterr()
    assert "sink_delivery_parked" in out.out + out.err
    assert "RuntimeError: bug near https://hooks.example/services/T/B/***" in (
        out.out + out.err
    )
    assert "s3cr3t" not in out.out + out.err
    await d.aclose()
    await store.close()


async def test_outcomes_are_reported_per_sink(pd, make_sinks):
    """Every delivery outcome is reported as (sink, status), for the metrics."""
    pd.script("POST", "/hook", Reply(500, "down"))
    store = MemoryStore()
    seen: list[tuple[str, str]] = []
    d = SinkDispatcher(
        make_sinks(settings(pd, sink_attempts=1)),
        store=store,
        outbox=SqliteOutbox(":memory:"),
        choose=lambda _t: ["webhook", "pagerduty_note", "missing"],
        clock=Ticking(NOW),
        on_outcome=lambda sink, status: seen.append((sink, status)),
    )
    await d.put([trace(alert("pagerduty", incident_id="Q1"), payload_id="p1")])
    await d.drain()
    assert sorted(seen) == [
        ("missing", "skipped"),
        ("pagerduty_note", "sent"),
        ("webhook", "failed"),
    ]
    await store.close()


async def test_sink_deliveries_are_counted_per_sink_and_outcome(
    pd, aiohttp_client, web_rules
):
    """/metrics counts each delivery as receiver_sink_deliveries_total{sink,outcome}."""
    from conftest import TOKEN, full_settings  # noqa: PLC0415
    from prometheus_client.parser import (  # noqa: PLC0415
        text_string_to_metric_families,
    )

    pd.script("POST", "/hook", Reply(500, "down"))
    rules = load_rulebook([web_rules], steps=builtin_registry())
    store = MemoryStore()
    app = create_app(
        build_runtime(
            full_settings(
                webhook_urls=[f"{pd.url}/hook"],
                slack_webhook_url=f"{pd.url}/services/T0/B0/slacksecret",
                sinks=["slack", "webhook"],
                sink_attempts=1,
                mode="diagnose",
            )
        ),
        rulebook=rules,
        store=store,
        clock=Ticking(NOW),
    )
    client = await aiohttp_client(app)

    def counts(text: str) -> dict[tuple[str, str], float]:
        return {
            (s.labels["sink"], s.labels["outcome"]): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "receiver_sink_deliveries_total"
        }

    before = counts(await (await client.get("/metrics")).text())
    assert before[("webhook", "failed")] == 0  # known before the first delivery
    body = {
        "version": "4",
        "status": "firing",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "KubePodCrashLooping", "namespace": "prod"},
                "startsAt": "2024-05-06T07:00:00Z",
                "fingerprint": "fp-sinks",
            }
        ],
    }
    headers = {"Authorization": f"Bearer {TOKEN}"}
    resp = await client.post("/webhooks/alertmanager", json=body, headers=headers)
    assert resp.status == 202
    await journal_drained(store)
    await app[SINKS].drain()
    after = counts(await (await client.get("/metrics")).text())
    assert after[("webhook", "failed")] == 1
    assert after[("slack", "sent")] == 1
    assert after[("webhook", "sent")] == 0
