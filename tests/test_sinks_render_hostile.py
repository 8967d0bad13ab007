"""Hostile alert values in Slack messages and Events v2 bodies.

Labels, annotations and links come from whoever raised the alert: they must not
ping anyone, inject a link, or push a message over the sink's limits.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import httpx

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
from receiver.sinks.announce import SinkAnnouncer
from receiver.sinks.delivery import Deliverer
from receiver.sinks.render import custom_details, render_slack

NOW = datetime(2026, 11, 26, 10, 12, tzinfo=UTC)
# Slack's control sequences: <!channel>, <!here>, <@U123>, <#C1>, <http://x|y>.
CONTROL = re.compile(r"<[!@#]|<https?://evil")


def trace(
    labels: dict[str, str], *, generator_url: str = "", runbook_url: str = ""
) -> AlertTrace:
    alert = Alert(
        source="alertmanager",
        fingerprint="fp1",
        status="firing",
        labels=freeze(labels),
        starts_at=NOW,
        generator_url=generator_url,
    )
    step = StepTrace(
        kind=StepKind.REMEDIATION,
        type="k8s.restart",
        target="deploy/siem",
        decision=Decision.EXECUTED,
        reason="done",
    )
    match = MatchTrace(
        rule="siem",
        severity=Severity.P1,
        playbook="siem",
        steps=(step,),
        runbook_url=runbook_url,
    )
    return AlertTrace(
        alert=alert, matches=(match,), decided_at=NOW, payload_id="p1", mode="execute"
    )


def all_mrkdwn(message: dict) -> list[str]:
    """Every text Slack reads as mrkdwn: the fallback and mrkdwn objects."""
    texts = [message["text"]]
    for block in message["blocks"]:
        if block["type"] == "section":
            texts.append(block["text"]["text"])
        texts += [
            element["text"]
            for element in block.get("elements", [])
            if element.get("type") == "mrkdwn"
        ]
    return texts


def test_a_hostile_alertname_pings_nobody_in_the_fallback_text():
    """The fallback ``text`` is mrkdwn too (and the one notifications show)."""
    message = render_slack(trace({"alertname": "<!channel> <@U123> <http://evil|x>"}))
    for text in all_mrkdwn(message):
        assert not CONTROL.search(text), text


def test_a_hostile_link_cannot_mention_or_relabel():
    """A generator URL is linked only as an http(s) URL, never as a mention.

    ``<!channel|alert source>`` and ``<@U123|alert source>`` are mentions in
    Slack's syntax; a ``|`` or ``>`` in a URL would end the link early.
    """
    for url in (
        "!channel",
        "@U123",
        "#C123",
        "http://ok.test/a|click me> <!channel",
        "http://ok.test/a><!here><http://evil.test|runbook",
    ):
        message = render_slack(trace({"alertname": "A"}, generator_url=url))
        links = message["blocks"][-1]["elements"][0]["text"]
        assert not CONTROL.search(links), links
        for mention in ("<!", "<@", "<#"):
            assert mention not in links
        # One link markup at most (the alert source), one label in it.
        assert links.count("<") <= 1, links
        assert links.count("|") <= 1, links


def test_very_long_links_keep_the_context_block_under_slacks_limit():
    """A mrkdwn text object holds at most 3000 characters."""
    long = "http://prometheus.test/graph?g0.expr=" + "x" * 5000
    message = render_slack(
        trace(
            {"alertname": "A"},
            generator_url=long,
            runbook_url="https://wiki.test/runbook",
        )
    )
    for text in all_mrkdwn(message):
        assert len(text) <= 3000


def test_custom_details_stay_under_the_cap_with_huge_labels():
    """Labels and the summary count too: a 50 kB label cannot blow the cap."""
    huge = trace({"alertname": "A" * 20_000, "blob": "x" * 50_000})
    details = custom_details(huge)
    assert len(json.dumps(details)) <= 16_000
    assert details["truncated"] is True


async def test_an_announcement_pings_nobody_in_slack():
    """Incident titles are alert summaries: escaped like every other value."""
    posted: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        posted.append(json.loads(request.content))
        return httpx.Response(200, text="ok")

    class Message:
        kind = "opened"
        title = "[P1] INC-1 opened: <!channel> <@U123> <http://evil.test|see>"
        text = "Summary: <!here> & more"
        contact = "Incident Commander"
        incident_id = "INC-1"
        pagerduty_id = ""
        severity = "P1"

    announcer = SinkAnnouncer(
        Deliverer(httpx.AsyncClient(transport=httpx.MockTransport(handler))),
        slack_url="https://hooks.slack.test/services/T/B/secret",
    )
    assert await announcer.announce(Message()) == ["slack: sent"]
    await announcer.aclose()
    (body,) = posted
    for mention in ("<!", "<@"):
        assert mention not in body["text"], body["text"]
    assert not CONTROL.search(body["text"])
