"""The ``slack`` sink: one incoming-webhook message per decision.

Severity and response targets, what was found, what was done or would be done,
links to the alert and runbook (``render.render_slack``). The webhook URL is the
credential, so it never appears in a message, a log line or an outcome. Built by
``receiver.sinks.build_sinks``; called by the dispatcher.
"""

from __future__ import annotations

from receiver.model import AlertTrace
from receiver.sinks.delivery import Dedupe, Deliverer, SinkError, SinkOutcome
from receiver.sinks.render import render_slack


class SlackSink:
    """Posts the rendered trace to a Slack incoming webhook."""

    name = "slack"
    dedupe: Dedupe = "occurrence"

    def __init__(self, deliverer: Deliverer, *, url: str) -> None:
        self._d = deliverer
        self._url = url

    async def send(self, trace: AlertTrace) -> SinkOutcome:
        """Post the message; Slack answers ``ok`` on success."""
        response, attempts = await self._d.send(
            "POST", self._url, what="Slack webhook", json=render_slack(trace)
        )
        if response.status_code != 200:
            raise SinkError(
                f"Slack webhook: HTTP {response.status_code}: "
                f"{self._d.excerpt(response, 100)}",
                attempts,
            )
        return SinkOutcome(self.name, "sent", "message posted", attempts)

    async def aclose(self) -> None:
        """Close the deliverer's client (shared sinks may close it twice: harmless)."""
        await self._d.aclose()
