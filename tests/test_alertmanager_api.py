"""The last check before acting: a real Alertmanager says firing, resolved, silenced."""

from __future__ import annotations

import asyncio
import textwrap
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from peers import poll, run_alertmanager

from receiver.engine.guards import GuardDefaults, GuardKeeper
from receiver.engine.planner import PlanContext
from receiver.engine.runner import Runner
from receiver.engine.worker import Processor
from receiver.model import Alert, StepResult, freeze
from receiver.rulebook.loader import load_rulebook
from receiver.sources.alertmanager_api import AlertmanagerApi
from receiver.steps.catalog import builtin_registry
from receiver.store import MemoryStore

pytestmark = pytest.mark.e2e

CONFIG = textwrap.dedent(
    """
    route:
      receiver: nowhere
      group_wait: 1h
    receivers:
      - name: nowhere
        webhook_configs:
          - url: http://127.0.0.1:9/unused
    """
)
LABELS = {"alertname": "StillFiring", "namespace": "production", "odd": 'a"b'}


def _ask(base: str, alert: Alert) -> bool | None:
    async def go() -> bool | None:
        api = AlertmanagerApi(httpx.AsyncClient(timeout=5), base)
        try:
            return await api.still_firing(alert)
        finally:
            await api.aclose()

    return asyncio.run(go())


def test_firing_then_resolved_in_alertmanager(tmp_path):
    """True while Alertmanager lists the alert active, False once it resolved."""
    with run_alertmanager(tmp_path, CONFIG) as am:
        started = datetime.now(UTC) - timedelta(minutes=1)
        body = {"labels": LABELS, "startsAt": started.isoformat()}
        httpx.post(f"{am.url}/api/v2/alerts", json=[body], timeout=5)
        listed = poll(lambda: httpx.get(f"{am.url}/api/v2/alerts", timeout=5).json())
        assert listed, "Alertmanager did not list the posted alert"
        alert = Alert(
            source="alertmanager",
            fingerprint=listed[0]["fingerprint"],
            status="firing",
            labels=freeze(LABELS),
        )
        assert _ask(am.url, alert) is True
        other = Alert(
            source="alertmanager",
            fingerprint="0000000000000000",
            status="firing",
            labels=freeze(LABELS),
        )
        assert _ask(am.url, other) is False

        body["endsAt"] = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
        httpx.post(f"{am.url}/api/v2/alerts", json=[body], timeout=5)
        assert poll(lambda: _ask(am.url, alert) is False, timeout=10)


def test_unreachable_alertmanager_is_unknown():
    """An Alertmanager that cannot be asked answers None: no reason either way."""
    alert = Alert(
        source="alertmanager", fingerprint="f", status="firing", labels=freeze({})
    )
    assert _ask("http://127.0.0.1:9", alert) is None


SILENCED_RULES = """
playbooks:
  hook:
    remediation:
      - type: http.request
        url: "http://hooks.test/{labels.namespace}"
    guards: {cooldown: 0s}
rules:
  - {name: hook, match: ['alertname="StillFiring"'], playbook: hook}
"""


def test_a_silence_in_alertmanager_stops_the_remediation(tmp_path):
    """An Alertmanager silence skips the run, naming its id, author and comment."""

    class Hook:
        calls = 0

        async def run(self, step, alert):
            Hook.calls += 1
            return StepResult(ok=True, reason="POST: HTTP 200")

        async def verify(self, check, step, alert):
            return StepResult(ok=True, reason="ok")

    with run_alertmanager(tmp_path, CONFIG) as am:
        now = datetime.now(UTC)
        body = {"labels": LABELS, "startsAt": (now - timedelta(minutes=1)).isoformat()}
        httpx.post(f"{am.url}/api/v2/alerts", json=[body], timeout=5)
        silence = httpx.post(
            f"{am.url}/api/v2/silences",
            json={
                "matchers": [
                    {"name": "alertname", "value": "StillFiring", "isRegex": False}
                ],
                "startsAt": now.isoformat(),
                "endsAt": (now + timedelta(hours=1)).isoformat(),
                "createdBy": "alice@example.com",
                "comment": "hands off: migrating the database",
            },
            timeout=5,
        ).json()["silenceID"]

        def silenced() -> list:
            listed = httpx.get(f"{am.url}/api/v2/alerts", timeout=5).json()
            return [a for a in listed if a["status"]["silencedBy"]]

        (listed,) = poll(silenced)
        alert = Alert(
            source="alertmanager",
            fingerprint=listed["fingerprint"],
            status="firing",
            labels=freeze(LABELS),
            starts_at=now - timedelta(minutes=1),
        )
        (tmp_path / "rules.yaml").write_text(SILENCED_RULES)

        async def decide():
            api = AlertmanagerApi(httpx.AsyncClient(timeout=5), am.url)
            store = MemoryStore()
            keeper = GuardKeeper(store, "me", GuardDefaults(), firing_check=api)
            runner = Runner(
                {"http": Hook()},
                lambda: datetime.now(UTC),
                mode="execute",
                guards=keeper,
            )
            processor = Processor(
                load_rulebook([tmp_path / "rules.yaml"], steps=builtin_registry()),
                runner,
                lambda: datetime.now(UTC),
                PlanContext(execute=True),
                store=store,
            )
            try:
                view = await api.look(alert)
                (trace,) = await processor.decide([alert], "p-1")
            finally:
                await api.aclose()
                await store.close()
            return view, trace.matches[0].steps[0]

        view, step = asyncio.run(decide())
    assert view.firing is True
    (found,) = view.silences
    assert (found.id, found.author, found.comment) == (
        silence,
        "alice@example.com",
        "hands off: migrating the database",
    )
    assert step.decision.value == "skipped"
    assert step.guard == "silenced"
    assert step.reason == (
        f"silenced in Alertmanager: silence {silence} by alice@example.com: "
        '"hands off: migrating the database"'
    )
    assert Hook.calls == 0
