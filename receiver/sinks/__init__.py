"""Sinks: write what the receiver saw and did back where responders look.

``pagerduty_note`` (a note on the incident), ``pagerduty_event`` (an Events API v2
trigger for Alertmanager alerts), ``slack`` (an incoming webhook) and ``webhook``
(the trace JSON). ``build_sinks`` makes the configured ones from settings;
``create_app`` hands them to a ``SinkDispatcher``, which the worker feeds after each
payload's decisions are recorded. Sinks never block or fail a remediation: every
failure is retried (429/5xx, bounded), then recorded.

This package imports the model, the rulebook schema and settings; never the
engine, the web edge or the store (the store comes in as a protocol).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from receiver.retrying import Sleep
from receiver.scrubbing import Scrubber
from receiver.settings import Settings
from receiver.sinks.delivery import Deliverer, SinkError, SinkOutcome
from receiver.sinks.dispatch import (
    Sink,
    SinkDispatcher,
    SinkStore,
    playbook_sinks,
)
from receiver.sinks.pagerduty import PagerDutyEventSink, PagerDutyNoteSink
from receiver.sinks.render import OWN_NOTE_MARKER, is_own_note
from receiver.sinks.slack import SlackSink
from receiver.sinks.webhook import WebhookSink


def build_sinks(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    sleep: Sleep = asyncio.sleep,
) -> dict[str, Sink]:
    """Every sink settings configure, by name, sharing one HTTP client."""
    secrets = settings.secret_values()
    timeout = settings.sink_timeout.total_seconds()

    def deliverer() -> Deliverer:
        return Deliverer(
            httpx.AsyncClient(
                timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
                follow_redirects=False,
                transport=transport,
                headers={"User-Agent": "alert-receiver"},
            ),
            secrets=secrets,
            attempts=settings.sink_attempts,
            max_wait=settings.sink_max_wait.total_seconds(),
            sleep=sleep,
        )

    sinks: dict[str, Sink] = {}
    if settings.pagerduty_api_token is not None and settings.pagerduty_from:
        sinks["pagerduty_note"] = PagerDutyNoteSink(
            deliverer(),
            api_url=settings.pagerduty_api_url,
            token=settings.pagerduty_api_token.get_secret_value(),
            from_email=settings.pagerduty_from,
            max_chars=settings.note_max_chars,
        )
    if settings.pagerduty_routing_key is not None:
        sinks["pagerduty_event"] = PagerDutyEventSink(
            deliverer(),
            url=settings.pagerduty_events_url,
            routing_key=settings.pagerduty_routing_key.get_secret_value(),
        )
    if settings.slack_webhook_url is not None:
        sinks["slack"] = SlackSink(
            deliverer(), url=settings.slack_webhook_url.get_secret_value()
        )
    if settings.webhook_urls:
        sinks["webhook"] = WebhookSink(
            deliverer(), urls=[u.get_secret_value() for u in settings.webhook_urls]
        )
    return sinks


def scrubber(settings: Settings) -> Callable[[str], str]:
    """A function that masks every configured secret in a text."""
    return Scrubber(settings.secret_values())


__all__ = [
    "OWN_NOTE_MARKER",
    "Deliverer",
    "PagerDutyEventSink",
    "PagerDutyNoteSink",
    "Sink",
    "SinkDispatcher",
    "SinkError",
    "SinkOutcome",
    "SinkStore",
    "SlackSink",
    "WebhookSink",
    "build_sinks",
    "is_own_note",
    "playbook_sinks",
    "scrubber",
]
