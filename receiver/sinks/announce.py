"""Incident announcements through the configured sinks: Slack, webhook, PagerDuty note.

The incident service (``receiver.incidents.service``) hands over messages: an
incident opened, a promotion, a breach, an escalation, a status-update draft, a
post-mortem reminder. ``SinkAnnouncer`` posts each to every configured sink that
can carry text: Slack (a message), the webhook (JSON with the incident id), and a
note on the PagerDuty incident when one is linked, for promotions, escalations,
status-update drafts and post-mortem reminders only (marked as our own, so its
``incident.annotated`` echo is never answered). Failures are returned as outcome
lines and logged by the caller; they never raise. Built by ``build_announcer``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import httpx

from receiver.retrying import Sleep
from receiver.settings import PagerDutySettings, SinkSettings, SlackSettings
from receiver.sinks.delivery import Deliverer, SinkError
from receiver.sinks.pagerduty import ACCEPT, incident_path
from receiver.sinks.render import OWN_NOTE_MARKER, slack_escape

if TYPE_CHECKING:
    from receiver.model import JSONObject, JSONValue

# PagerDuty already shows the incident opening and its state changes, and the
# decision note says what the receiver found: a note is posted only for what
# PagerDuty does not know.
PAGERDUTY_KINDS = frozenset(
    {"promoted", "escalation", "status_draft", "post_mortem_due"}
)


class Announcement(Protocol):
    """What a message carries (``receiver.incidents.effects.Message``)."""

    @property
    def kind(self) -> str: ...  # noqa: D102
    @property
    def title(self) -> str: ...  # noqa: D102
    @property
    def text(self) -> str: ...  # noqa: D102
    @property
    def contact(self) -> str: ...  # noqa: D102
    @property
    def incident_id(self) -> str: ...  # noqa: D102
    @property
    def pagerduty_id(self) -> str: ...  # noqa: D102
    @property
    def severity(self) -> str: ...  # noqa: D102


class SinkAnnouncer:
    """Posts incident messages to Slack, the webhooks and the PagerDuty incident."""

    def __init__(
        self,
        deliverer: Deliverer,
        *,
        slack_url: str | None = None,
        webhook_urls: Sequence[str] = (),
        pagerduty: tuple[str, str, str] | None = None,  # api url, token, From
        max_chars: int = 24_000,
    ) -> None:
        self._d = deliverer
        self._slack = slack_url
        self._webhooks = list(webhook_urls)
        self._pd = pagerduty
        self._max = max_chars

    async def announce(self, message: Announcement) -> list[str]:
        """Deliver to every configured sink; one outcome line each."""
        outcomes: list[str] = []
        if self._slack:
            outcomes.append(await self._slack_post(message, self._slack))
        outcomes += [await self._webhook(message, url) for url in self._webhooks]
        if (
            self._pd is not None
            and message.pagerduty_id
            and message.kind in PAGERDUTY_KINDS
        ):
            outcomes.append(await self._note(message, *self._pd))
        return outcomes

    def _text(self, message: Announcement) -> str:
        who = f"\nContact: {message.contact}" if message.contact else ""
        return f"{message.title}{who}\n\n{message.text}"[: self._max]

    async def _slack_post(self, message: Announcement, url: str) -> str:
        # Titles and texts carry alert values (summaries, names): mrkdwn
        # control sequences in them must not ping anyone or make links. The
        # contact is the operator's own setting and stays as configured.
        who = f"\nContact: {message.contact}" if message.contact else ""
        title, body = slack_escape(message.title), slack_escape(message.text)
        text = f"{title}{who}\n\n{body}"[: self._max]
        return await self._post("slack", url, {"text": text}, what="Slack webhook")

    async def _webhook(self, message: Announcement, url: str) -> str:
        body = {
            "kind": message.kind,
            "incident_id": message.incident_id,
            "severity": message.severity,
            "title": message.title,
            "text": message.text,
            "contact": message.contact,
        }
        return await self._post("webhook", url, body, what="incident webhook")

    async def _note(
        self, message: Announcement, api: str, token: str, sender: str
    ) -> str:
        incident = message.pagerduty_id
        content = f"{OWN_NOTE_MARKER} {self._text(message)}"[: self._max]
        return await self._post(
            "pagerduty_note",
            f"{api.rstrip('/')}/incidents/{incident_path(incident)}/notes",
            {"note": {"content": content}},
            what=f"note on PagerDuty incident {incident}",
            headers={
                "Authorization": f"Token token={token}",
                "Accept": ACCEPT,
                "From": sender,
            },
        )

    async def _post(
        self,
        sink: str,
        url: str,
        body: JSONValue,
        *,
        what: str,
        headers: dict[str, str] | None = None,
    ) -> str:
        try:
            response, _ = await self._d.send(
                "POST", url, what=what, json=body, headers=headers
            )
        except SinkError as exc:
            return f"{sink}: failed: {exc}"
        except httpx.HTTPError as exc:
            return f"{sink}: failed: {exc.__class__.__name__}"
        if 200 <= response.status_code < 300:
            return f"{sink}: sent"
        return (
            f"{sink}: failed: HTTP {response.status_code}: "
            f"{self._d.excerpt(response, 100)}"
        )

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._d.aclose()


def build_announcer(
    sinks: SinkSettings,
    pagerduty: PagerDutySettings,
    slack: SlackSettings,
    *,
    secrets: Sequence[str],
    transport: httpx.AsyncBaseTransport | None = None,
    sleep: Sleep = asyncio.sleep,
) -> SinkAnnouncer | None:
    """The announcer for the sinks the settings name and configure, or None."""
    chosen = set(sinks.default)
    slack_url = slack.webhook_url if "slack" in chosen else None
    hooks = sinks.webhook_urls if "webhook" in chosen else []
    pd = None
    if (
        "pagerduty_note" in chosen
        and pagerduty.api_token is not None
        and pagerduty.from_email
    ):
        pd = (
            pagerduty.api_url,
            pagerduty.api_token.get_secret_value(),
            pagerduty.from_email,
        )
    if slack_url is None and not hooks and pd is None:
        return None
    return SinkAnnouncer(
        Deliverer.configured(sinks, secrets=secrets, transport=transport, sleep=sleep),
        slack_url=slack_url.get_secret_value() if slack_url else None,
        webhook_urls=[u.get_secret_value() for u in hooks],
        pagerduty=pd,
        max_chars=sinks.note_max_chars,
    )


class PagerDutyEscalator:
    """Escalates a PagerDuty incident through the REST API (``PUT /incidents/{id}``).

    Raises the escalation level and sets the priority whose name is the
    incident's severity (``P0``..``P3``, as PagerDuty's default priority scheme
    names them), looked up once from ``GET /priorities``.
    """

    def __init__(
        self, deliverer: Deliverer, *, api_url: str, token: str, from_email: str
    ) -> None:
        self._d = deliverer
        self._api = api_url.rstrip("/")
        self._headers = {
            "Authorization": f"Token token={token}",
            "Accept": ACCEPT,
            "From": from_email,
        }
        self._priorities: dict[str, str] | None = None

    async def _priority_ids(self) -> dict[str, str]:
        if self._priorities is not None:
            return self._priorities
        response, _ = await self._d.send(
            "GET",
            f"{self._api}/priorities",
            what="GET /priorities",
            headers=self._headers,
        )
        found: dict[str, str] = {}
        if response.status_code == 200:
            try:
                for item in response.json().get("priorities") or []:
                    found[str(item.get("name", ""))] = str(item.get("id", ""))
            except (ValueError, AttributeError):
                found = {}
            self._priorities = found
        return found

    async def escalate(self, incident_id: str, level: int, priority: str) -> str:
        """Raise the level and set the priority; return a line saying what happened."""
        try:
            ids = await self._priority_ids()
        except (SinkError, httpx.HTTPError) as exc:
            return _failed(exc)
        body: JSONObject = {"type": "incident_reference", "escalation_level": level}
        if ids.get(priority):
            body["priority"] = {"id": ids[priority], "type": "priority_reference"}
        failed = await self._put_incident(incident_id, body)
        if failed:
            return failed
        priority_note = f", priority {priority}" if "priority" in body else ""
        return f"escalation level {level}{priority_note} on {incident_id}"

    async def set_status(self, incident_id: str, status: str) -> str:
        """Acknowledge or resolve the incident; return a line saying what happened."""
        body: JSONObject = {"type": "incident_reference", "status": status}
        failed = await self._put_incident(incident_id, body)
        return failed or f"{incident_id} {status}"

    async def _put_incident(self, incident_id: str, body: JSONObject) -> str:
        """``PUT /incidents/{id}``: ``""`` when PagerDuty took it, else why not."""
        try:
            response, _ = await self._d.send(
                "PUT",
                f"{self._api}/incidents/{incident_path(incident_id)}",
                what=f"PUT /incidents/{incident_id}",
                json={"incident": body},
                headers={**self._headers, "Content-Type": "application/json"},
            )
        except (SinkError, httpx.HTTPError) as exc:
            return _failed(exc)
        if response.status_code != 200:
            return (
                f"failed: PagerDuty answered HTTP {response.status_code}: "
                f"{self._d.excerpt(response, 200)}"
            )
        return ""

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._d.aclose()


def _failed(exc: SinkError | httpx.HTTPError) -> str:
    """The outcome line for a call that did not get an answer."""
    if isinstance(exc, SinkError):
        return f"failed: {exc}"
    return f"failed: {exc.__class__.__name__}"


def build_escalator(
    sinks: SinkSettings,
    pagerduty: PagerDutySettings,
    *,
    secrets: Sequence[str],
    transport: httpx.AsyncBaseTransport | None = None,
    sleep: Sleep = asyncio.sleep,
) -> PagerDutyEscalator | None:
    """The PagerDuty escalator when an API token and From address are set."""
    if pagerduty.api_token is None or not pagerduty.from_email:
        return None
    return PagerDutyEscalator(
        Deliverer.configured(sinks, secrets=secrets, transport=transport, sleep=sleep),
        api_url=pagerduty.api_url,
        token=pagerduty.api_token.get_secret_value(),
        from_email=pagerduty.from_email,
    )
