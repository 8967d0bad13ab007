"""The last check before acting: ask a real Alertmanager if the alert still fires."""

from __future__ import annotations

import asyncio
import textwrap
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from peers import poll, run_alertmanager

from receiver.model import Alert, freeze
from receiver.sources.alertmanager_api import AlertmanagerApi

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
