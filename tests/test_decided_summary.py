"""At info the worker sums up the payloads it decided; each one's line is debug.

One JSON line per decided payload cost the worker CPU and blocked its event loop
on the log file while the database synced. The per-payload line
(``payload_decided``) is at debug; an info line (``payloads_decided``) says,
about once a second and when the worker stops, how many payloads and alerts were
decided, how many matched, the step decisions, and the first and last payload id.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from conftest import Ticking, summary_contexts

from receiver.engine import processing
from receiver.engine.planner import PlanContext
from receiver.engine.runner import Runner
from receiver.engine.worker import Processor
from receiver.logs import Summary
from receiver.metrics import Metrics
from receiver.model import Alert
from receiver.rulebook.loader import load_rulebook
from receiver.sources import body_alerts
from receiver.steps.catalog import builtin_registry
from receiver.store.handles import JournalEntry

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
FIXTURES = Path(__file__).parent / "fixtures" / "pagerduty_v3"
RULES = """
playbooks:
  look:
    remediation:
      - {type: http.request, url: "http://hooks.test/{labels.service}"}
rules:
  - {name: look, match: ['alertname="Look"'], playbook: look}
"""


def _alerts(names: list[str]) -> list[Alert]:
    body = {
        "version": "4",
        "status": "firing",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": name, "service": f"s{i}"},
                "annotations": {},
                "startsAt": "2026-11-26T09:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": f"fp-{i}",
            }
            for i, name in enumerate(names)
        ],
    }
    return body_alerts("alertmanager", json.dumps(body).encode(), T0)


def _processor(tmp_path: Any) -> Processor:
    (tmp_path / "rules.yaml").write_text(RULES)
    clock = Ticking(T0)
    return Processor(
        load_rulebook([tmp_path / "rules.yaml"], steps=builtin_registry()),
        Runner({}, clock),
        clock,
        PlanContext(),
    )


async def test_decided_payloads_are_summed_up_at_info(tmp_path) -> None:
    """Three payloads: no line at info until the summary, which sums them up."""
    processor = _processor(tmp_path)
    with structlog.testing.capture_logs() as logs:
        await processor.decide(_alerts(["Look"]), "p1")
        await processor.decide(_alerts(["Look", "Other"]), "p2")
        await processor.decide(_alerts(["Other", "Other", "Look"]), "p3")
        assert [e for e in logs if e["log_level"] == "info"] == []
        processor.flush_decided()
        processor.flush_decided()  # nothing new: no second line
    [summary] = [e for e in logs if e["event"] == "payloads_decided"]
    assert summary["log_level"] == "info"
    assert summary["payloads"] == {"alertmanager": 3}  # per source, as the edge counts
    assert summary["alerts"] == 6
    assert summary["matched"] == 3
    assert sum(summary["steps"].values()) == 3  # one step per match
    assert (summary["first_payload_id"], summary["last_payload_id"]) == ("p1", "p3")


async def test_the_summary_counts_payloads_by_their_journal_source(tmp_path) -> None:
    """Counted under the source it came in on, an empty payload too."""
    processor = _processor(tmp_path)
    body = (FIXTURES / "incident.annotated.json").read_bytes()
    entries = [
        JournalEntry("p1", "pagerduty", T0, body),
        JournalEntry(
            "p2",
            "alertmanager",
            T0,
            b'{"version":"4","status":"firing","receiver":"r","groupLabels":{},"commonLabels":{},"commonAnnotations":{},"externalURL":"","groupKey":"g","alerts":[]}',
        ),
        JournalEntry("p3", "pagerduty", T0, body),
    ]
    with structlog.testing.capture_logs() as logs:
        for entry in entries:
            await processor.process(entry)
        processor.flush_decided()
    [summary] = [e for e in logs if e["event"] == "payloads_decided"]
    assert summary["payloads"] == {"pagerduty": 2, "alertmanager": 1}


async def test_each_payload_has_its_line_at_debug(tmp_path) -> None:
    """Debug on: one payload_decided line per payload, with its counts."""
    processor = _processor(tmp_path)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(0))
    with structlog.testing.capture_logs() as logs:
        await processor.decide(_alerts(["Look", "Other"]), "p1")
    [line] = [e for e in logs if e["event"] == "payload_decided"]
    assert line["log_level"] == "debug"
    assert (line["payload_id"], line["alerts"], line["matched"]) == ("p1", 2, 1)


async def test_the_summary_is_due_after_its_window_without_the_payloads_context(
    tmp_path, monkeypatch
) -> None:
    """Logged by itself once the window ends, in a context of its own."""
    monkeypatch.setattr(processing, "DECIDED_SUMMARY_EVERY", 0.0)
    seen, flushed = summary_contexts(monkeypatch)
    processor = _processor(tmp_path)
    structlog.contextvars.bind_contextvars(payload_id="p1", worker=0)
    try:
        await processor.decide(_alerts(["Look"]), "p1")
    finally:
        structlog.contextvars.unbind_contextvars("payload_id", "worker")
    await asyncio.wait_for(flushed.wait(), 10)
    assert seen == [{}]


async def test_counts_are_summed_key_by_key() -> None:
    """Plain counts add up; counts by key add up per key, in first-seen order."""
    lines: list[tuple[str, dict[str, Any]]] = []

    class Log:
        def info(self, event: str, **kw: Any) -> None:
            lines.append((event, kw))

    summary = Summary(Log(), "things_done", 3600)  # type: ignore[arg-type]
    summary.add("a", things=1, by_kind={"x": 1})
    summary.add("b", things=2, by_kind={"y": 1, "x": 2})
    summary.flush()
    summary.flush()
    assert lines == [
        (
            "things_done",
            {
                "things": 3,
                "by_kind": {"x": 3, "y": 1},
                "first_payload_id": "a",
                "last_payload_id": "b",
            },
        )
    ]


async def test_decided_counts_reach_the_metrics_when_read_and_only_once(
    tmp_path,
) -> None:
    """Counts are added at each read of the metrics, each payload's once."""
    metrics = Metrics()
    (tmp_path / "rules.yaml").write_text(RULES)
    clock = Ticking(T0)
    processor = Processor(
        load_rulebook([tmp_path / "rules.yaml"], steps=builtin_registry()),
        Runner({}, clock),
        clock,
        PlanContext(),
        metrics=metrics,
    )

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    await processor.decide(_alerts(["Look", "Other"]), "p1")
    await processor.decide(_alerts(["Look"]), "p2")
    firing = {"source": "alertmanager", "status": "firing"}
    for _ in range(2):  # read twice: nothing is added twice
        assert sample("receiver_alerts_total", **firing) == 3
        assert sample("receiver_alerts_unmatched_total", source="alertmanager") == 1
        assert sample("receiver_rule_matches_total", rule="look", severity="P2") == 2
    await processor.decide(_alerts(["Other"]), "p3")
    assert sample("receiver_alerts_total", **firing) == 4
    assert sample("receiver_alerts_unmatched_total", source="alertmanager") == 2
    text = metrics.render().decode()
    assert 'receiver_alerts_total{source="alertmanager",status="firing"} 4.0' in text
