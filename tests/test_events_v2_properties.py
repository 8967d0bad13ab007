"""Properties of the Events v2 dialect, checked against simple reference models.

Alertmanager's ``pagerduty.default.instances`` text, rendered the way its Go
template renders it, always parses back to the same alerts; and a sequence of
triggers, acknowledgements and resolves by dedup key leaves every alert in the
state a plain dictionary model predicts.
"""

from __future__ import annotations

import asyncio
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from conftest import flat_settings
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from receiver.app import create_app
from receiver.rulebook.loader import load_rulebook
from receiver.runtime import build_runtime
from receiver.sources import events_v2
from receiver.steps.catalog import builtin_registry
from receiver.store import MemoryStore
from receiver.store.base import DecisionQuery

NAMES = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,12}", fullmatch=True)
# Label values as Prometheus allows them, minus line breaks (which Alertmanager's
# text format cannot carry either).
VALUES = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=20
)
LABELS = st.dictionaries(NAMES, VALUES, min_size=1, max_size=6)
ANNOTATIONS = st.dictionaries(
    NAMES,
    st.lists(VALUES.filter(lambda v: not v.startswith(" - ")), min_size=1, max_size=3),
    max_size=3,
)


def render(alerts: list[tuple[dict[str, str], dict[str, list[str]], str]]) -> str:
    """Alertmanager's ``__text_alert_list`` template, line for line."""
    out = ""
    for labels, notes, source in alerts:
        out += "Labels:\n"
        out += "".join(f" - {k} = {v}\n" for k, v in sorted(labels.items()))
        out += "Annotations:\n"
        out += "".join(
            f" - {k} = {chr(10).join(lines)}\n" for k, lines in sorted(notes.items())
        )
        out += f"Source: {source}\n"
    return out


@given(
    st.lists(
        st.tuples(LABELS, ANNOTATIONS, st.sampled_from(["", "http://p/graph?g0=1"])),
        max_size=5,
    )
)
def test_instance_text_round_trips(alerts):
    """Every alert in the rendered text parses back with its labels and annotations."""
    found = events_v2.am_instances({"firing": render(alerts), "resolved": ""})
    # Alertmanager never lists an alert without labels; neither does the parser.
    assert [dict(i.labels) for i in found] == [a[0] for a in alerts]
    assert [dict(i.annotations) for i in found] == [
        {k: "\n".join(v) for k, v in a[1].items()} for a in alerts
    ]
    assert [i.generator_url for i in found] == [a[2] for a in alerts]


RULES = """
playbooks:
  fix:
    stand_down_when_acknowledged: true
    remediation:
      - type: http.request
        url: https://fix.example.com/{labels.key}
rules:
  - name: any
    match: ['alertname="P"']
    status: any
    playbook: fix
"""
KEYS = ("a", "b", "c")


class EventsLifecycle(RuleBasedStateMachine):
    """Triggers, acknowledges and resolves by dedup key, through the HTTP edge.

    The reference model is a dict: dedup key -> firing/resolved and whether a
    human acknowledged the current occurrence.
    """

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.now = datetime(2026, 1, 1, tzinfo=UTC)
        self.store = MemoryStore()
        rules = Path(self.loop.run_until_complete(asyncio.to_thread(_rules_file)))
        app = create_app(
            build_runtime(flat_settings(host="127.0.0.1", workers=1)),
            rulebook=load_rulebook([rules], steps=builtin_registry()),
            store=self.store,
            clock=self._clock,
            sinks={},
        )
        self.client = TestClient(TestServer(app), loop=self.loop)
        self.loop.run_until_complete(self.client.start_server())
        self.model: dict[str, dict[str, Any]] = {}

    def _clock(self) -> datetime:
        # Ticks on every read, as a real clock does.
        self.now += timedelta(milliseconds=1)
        return self.now

    def _send(self, body: dict[str, Any]) -> dict[str, Any]:
        async def go() -> dict[str, Any]:
            resp = await self.client.post("/v2/enqueue", json=body)
            assert resp.status == 202, await resp.text()
            answer: dict[str, Any] = await resp.json()
            for _ in range(1000):
                if (await self.store.pending())[0] == 0:
                    return answer
                await asyncio.sleep(0.005)
            raise AssertionError("journal not drained")

        return self.loop.run_until_complete(go())

    def _records(self) -> list[dict[str, Any]]:
        return self.loop.run_until_complete(
            self.store.decisions(DecisionQuery(limit=1000))
        )

    def _latest(self, key: str) -> dict[str, Any]:
        """The newest record of the group's first alert (or of the bare key)."""
        for record in self._records():
            labels = record["labels"]
            if labels.get("dedup_key") == key and "extra" not in labels:
                return record
        raise AssertionError(f"no record for {key}")

    def _page(self, key: str, action: str, extras: int) -> dict[str, Any]:
        """What Alertmanager's pagerduty_configs send for a group of alerts."""
        alerts = [{"alertname": "P", "key": key}]
        alerts += [
            {"alertname": "P", "key": key, "extra": str(n)} for n in range(extras)
        ]
        return {
            "routing_key": "k",
            "event_action": action,
            "dedup_key": key,
            "payload": {
                "summary": f"[FIRING:{len(alerts)}] P",
                "source": "Alertmanager",
                "severity": "error",
                "custom_details": {
                    "firing": render([(a, {}, "") for a in alerts]),
                    "resolved": "",
                    "num_firing": str(len(alerts)),
                    "num_resolved": "0",
                },
            },
        }

    @rule(key=st.sampled_from(KEYS))
    def trigger(self, key: str) -> None:
        """Alertmanager pages (again): a new occurrence, or folded into the open one."""
        state = self.model.get(key)
        extras = state["extras"] if state and state["status"] == "firing" else 0
        answer = self._send(self._page(key, "trigger", extras))
        if state is not None and state["status"] == "firing":
            assert answer["message"].endswith("(duplicate of the open alert)")
            return
        self.model[key] = {"status": "firing", "acked": False, "extras": 0}
        record = self._latest(key)
        assert record["status"] == "firing"
        assert record["matches"][0]["steps"][0]["decision"] == "dry_run"

    @rule(key=st.sampled_from(KEYS))
    def group_grows(self, key: str) -> None:
        """A page with one more alert re-decides the first: stood down once acked."""
        state = self.model.get(key)
        if state is None or state["status"] != "firing":
            return
        state["extras"] += 1
        answer = self._send(self._page(key, "trigger", state["extras"]))
        assert answer["message"] == "Event processed"
        step = self._latest(key)["matches"][0]["steps"][0]
        if state["acked"]:
            assert step["decision"] == "skipped", step
            assert "stand_down_when_acknowledged" in step["reason"]
        else:
            assert step["decision"] == "dry_run", step

    @rule(key=st.sampled_from(KEYS))
    def acknowledge(self, key: str) -> None:
        """An acknowledge by dedup key is recorded with its trigger's labels."""
        self._send(
            {"routing_key": "k", "event_action": "acknowledge", "dedup_key": key}
        )
        record = self._latest(key)
        assert record["status"] == "acknowledged"
        assert record["matches"] == []
        if key in self.model:
            assert record["labels"]["key"] == key
            if self.model[key]["status"] == "firing":
                self.model[key]["acked"] = True
        else:
            assert record["labels"] == {"dedup_key": key}

    @rule(key=st.sampled_from(KEYS))
    def resolve(self, key: str) -> None:
        """A resolve by dedup key is decided with the trigger's rule; never folded."""
        answer = self._send(
            {"routing_key": "k", "event_action": "resolve", "dedup_key": key}
        )
        assert answer["message"] == "Event processed"
        record = self._latest(key)
        assert record["status"] == "resolved"
        if key in self.model:
            assert [m["rule"] for m in record["matches"]] == ["any"]
            self.model[key]["status"] = "resolved"
            self.model[key]["acked"] = False
        else:
            assert record["matches"] == []

    @invariant()
    def every_known_key_has_its_labels(self) -> None:
        for key in self.model:
            assert self._latest(key)["labels"]["key"] == key

    def teardown(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


def _rules_file() -> str:
    path = Path(tempfile.mkdtemp()) / "rules.yaml"
    path.write_text(RULES, encoding="utf-8")
    return str(path)


EventsLifecycle.TestCase.settings = settings(
    max_examples=20, stateful_step_count=15, deadline=None
)
test_events_lifecycle = EventsLifecycle.TestCase
