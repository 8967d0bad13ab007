"""Recording a decision writes the bytes the plain path wrote.

The plain path, kept here as the specification: ``to_json`` copying with
``dict()`` and reading enum ``.value``, the walk of ``test_compact_record``,
then one msgspec encoding of the whole record. The recording path takes
shortcuts (mapping proxies copied through their dict, enum values read with
``str()``); the stored text must not tell.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_compact_record import LONG, reference

from receiver.model import (
    Alert,
    AlertTrace,
    Decision,
    MatchTrace,
    Severity,
    StepKind,
    StepTrace,
    freeze,
    iso,
)
from receiver.store.records import compact_record, record_text
from receiver.store.sqlite.journal import _HEADERS, _headers

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def plain_step(step: StepTrace) -> dict[str, Any]:
    """``StepTrace.to_json`` as it was: ``dict()`` copies, ``.value``."""
    out: dict[str, Any] = {
        "kind": step.kind.value,
        "type": step.type,
        "target": step.target,
        "decision": step.decision.value,
        "reason": step.reason,
    }
    if step.guard:
        out["guard"] = step.guard
    if step.name:
        out["name"] = step.name
    if step.request:
        out["request"] = dict(step.request)
    if step.result:
        out["result"] = dict(step.result)
    return out


def plain_trace(trace: AlertTrace) -> dict[str, Any]:
    """``AlertTrace.to_json`` as it was."""
    alert = trace.alert
    return {
        "fingerprint": alert.fingerprint,
        "status": alert.state,
        "labels": dict(alert.labels),
        "source": alert.source,
        "startsAt": iso(alert.starts_at),
        "annotations": dict(alert.annotations),
        "refs": dict(alert.refs),
        "actionable": alert.actionable,
        "payload_id": trace.payload_id,
        "decided_at": iso(trace.decided_at),
        "mode": trace.mode,
        "notes": list(trace.notes),
        "matches": [
            {
                "rule": m.rule,
                "severity": m.severity.value,
                "playbook": m.playbook,
                "steps": [plain_step(s) for s in m.steps],
                "severity_info": m.severity.info.to_json(),
                "description": m.description,
                "runbook_url": m.runbook_url,
                "escalate_to": m.escalate_to,
                "notes": list(m.notes),
            }
            for m in trace.matches
        ],
    }


def plain_text(record: dict[str, Any]) -> str:
    """The text the plain path stored: the walk, then one encoding."""
    return msgspec.json.encode(reference(record)).decode()


def _exact_types(value: object) -> None:
    """No enum member or mapping proxy left in a record: only JSON's own types."""
    if isinstance(value, dict):
        assert type(value) is dict
        for k, v in value.items():
            assert type(k) is str
            _exact_types(v)
    elif isinstance(value, list):
        for v in value:
            _exact_types(v)
    else:
        assert value is None or type(value) in (str, int, float, bool), value


# Rendered text: long values, short ones, unicode and what JSON escapes.
SHORT = st.sampled_from(["", "a", "é", "\u2028", '"q"', "\\", "ns/prod", "☃"])
FLOATS = st.sampled_from([0.5, float("nan"), float("inf"), -float("inf"), 1e300])


@st.composite
def traces(draw: st.DrawFn) -> AlertTrace:
    """A trace with 0-3 matches, whose steps render some of the alert's values."""
    longs = draw(st.lists(LONG, max_size=3))
    labels = {"alertname": draw(SHORT)} | {f"l{i}": v for i, v in enumerate(longs)}
    annotations = draw(
        st.sampled_from(
            [
                {},
                {"summary": "short"},
                {"runbook_url": "https://wiki.example.com/" + "r" * 64},
                *([{"summary": longs[0], "again": longs[0]}] if longs else []),
            ]
        )
    )
    pieces = st.sampled_from([*longs, *annotations.values(), "x", "é"]) | SHORT

    def text() -> str:
        return "".join(draw(st.lists(pieces, max_size=3)))

    def step() -> StepTrace:
        request = draw(
            st.sampled_from(
                [
                    {},
                    {"verb": "get", "path": text()},
                    {"q": text(), "n": draw(FLOATS), "body": {"spec": [text(), 1]}},
                ]
            )
        )
        return StepTrace(
            draw(st.sampled_from(list(StepKind))),
            "http.get",
            text(),
            draw(st.sampled_from(list(Decision))),
            text(),
            request=freeze(request),
            result=freeze(draw(st.sampled_from([{}, {"value": draw(FLOATS)}]))),
            name=draw(st.sampled_from(["", "look"])),
            guard=draw(st.sampled_from(["", "cooldown"])),
        )

    matches = tuple(
        MatchTrace(
            f"rule-{i}",
            draw(st.sampled_from(list(Severity))),
            "book",
            steps=tuple(step() for _ in range(draw(st.integers(0, 3)))),
            notes=tuple(text() for _ in range(draw(st.integers(0, 2)))),
            description=text(),
            runbook_url=annotations.get("runbook_url", ""),
        )
        for i in range(draw(st.integers(0, 3)))
    )
    alert = Alert(
        "alertmanager",
        "fp",
        draw(st.sampled_from(["firing", "resolved"])),
        freeze(labels),
        freeze(annotations),
        starts_at=draw(st.sampled_from([None, T0 - timedelta(hours=1)])),
        refs=freeze({"receiver": "r"}),
    )
    return AlertTrace(alert, matches, T0, "payload", notes=("n",))


@settings(max_examples=400)
@given(traces())
def test_a_trace_is_recorded_as_the_plain_path_recorded_it(trace):
    """Same record and same stored bytes as dict copies, .value and two encodings."""
    record = trace.to_json()
    _exact_types(record)
    plain = plain_trace(trace)
    assert json.dumps(record) == json.dumps(plain)
    compacted = compact_record(record)
    assert compacted == reference(plain)
    assert record_text(compacted) == plain_text(plain)
    assert json.dumps(compacted) == json.dumps(reference(plain)), "what Redis writes"


def test_a_long_value_no_step_renders_is_stored_as_the_plain_path_stores_it():
    """A long annotation no step renders, a non-finite float: the plain bytes."""
    url = "https://wiki.example.com/" + "r" * 64
    step = StepTrace(
        StepKind.DIAGNOSTIC,
        "http.get",
        "t",
        Decision.DRY_RUN,
        "why",
        request=freeze({"path": "/x", "n": float("nan")}),
    )
    alert = Alert("alertmanager", "fp", "firing", freeze({}), freeze({"u": url}))
    match = MatchTrace("r", Severity.P1, "b", steps=(step,), runbook_url=url)
    record = AlertTrace(alert, (match, match), T0).to_json()
    compacted = compact_record(record)
    text = record_text(compacted)
    assert text == plain_text(record)
    assert json.loads(text)["matches"][1]["steps"][0]["request"]["n"] is None


HEADERS = st.dictionaries(st.text(), st.text())


@given(HEADERS)
def test_journal_headers_read_as_json_reads_them(headers):
    """Headers written compactly or by json.dumps read back as json.loads reads."""
    for text in (_HEADERS.encode(headers).decode(), json.dumps(headers)):
        assert _headers(text) == json.loads(text)


def test_journal_headers_json_alone_reads_are_still_read():
    """A lone surrogate (which msgspec refuses) reads as json.loads reads it."""
    text = json.dumps({"x-name": "\udc80"})
    assert _headers(text) == {"x-name": "\udc80"}


def test_journal_headers_that_are_not_json_fail_as_json_loads_fails():
    """A garbled headers column raises json's error, as it did before msgspec."""
    with pytest.raises(json.JSONDecodeError):
        _headers('{"x-name": ')
