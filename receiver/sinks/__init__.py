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
from collections.abc import Callable, Sequence

import httpx

from receiver.retrying import Sleep
from receiver.scrubbing import Scrubber
from receiver.settings import PagerDutySettings, SinkSettings, SlackSettings
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
    sinks: SinkSettings,
    pagerduty: PagerDutySettings,
    slack: SlackSettings,
    *,
    secrets: Sequence[str],
    transport: httpx.AsyncBaseTransport | None = None,
    sleep: Sleep = asyncio.sleep,
) -> dict[str, Sink]:
    """Every sink the settings configure, by name, each with its own client."""

    def deliverer() -> Deliverer:
        return Deliverer.configured(
            sinks, secrets=secrets, transport=transport, sleep=sleep
        )

    built: dict[str, Sink] = {}
    if pagerduty.api_token is not None and pagerduty.from_email:
        built["pagerduty_note"] = PagerDutyNoteSink(
            deliverer(),
            api_url=pagerduty.api_url,
            token=pagerduty.api_token.get_secret_value(),
            from_email=pagerduty.from_email,
            max_chars=sinks.note_max_chars,
        )
    if pagerduty.routing_key is not None:
        built["pagerduty_event"] = PagerDutyEventSink(
            deliverer(),
            url=pagerduty.events_url,
            routing_key=pagerduty.routing_key.get_secret_value(),
        )
    if slack.webhook_url is not None:
        built["slack"] = SlackSink(
            deliverer(), url=slack.webhook_url.get_secret_value()
        )
    if sinks.webhook_urls:
        built["webhook"] = WebhookSink(
            deliverer(), urls=[u.get_secret_value() for u in sinks.webhook_urls]
        )
    return built


def scrubber(secrets: Sequence[str]) -> Callable[[str], str]:
    """A function that masks every secret of ``secrets`` in a text."""
    return Scrubber(secrets)


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
