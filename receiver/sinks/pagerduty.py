"""PagerDuty sinks: a note on the incident, and an Events API v2 trigger.

``pagerduty_note`` posts the rendered trace as a note on the incident the alert is
about: the PagerDuty webhook names it (``refs["incident_id"]``); for Events v2 and
Alertmanager alerts it is looked up by incident key (the Events v2 ``dedup_key``,
or the one Alertmanager's ``pagerduty_configs`` derive from the group key).

``pagerduty_event`` sends an Events API v2 ``trigger`` for Alertmanager alerts with
the diagnostics in ``custom_details`` and Alertmanager's own dedup key, so they land
in the alert log of the incident Alertmanager opened (or a deterministic key of
our own when the group key is unknown).

Built by ``receiver.sinks.build_sinks``; called by the dispatcher.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING
from urllib.parse import quote

from receiver.model import AlertTrace, iso
from receiver.sinks.delivery import Dedupe, Deliverer, SinkError, SinkOutcome
from receiver.sinks.render import (
    alertmanager_dedup_key,
    alertname,
    custom_details,
    event_severity,
    event_summary,
    links,
    render_note,
)

if TYPE_CHECKING:
    from receiver.model import JSONObject

ACCEPT = "application/vnd.pagerduty+json;version=2"
_HINTS = {
    401: "check RECEIVER_PAGERDUTY_API_TOKEN",
    403: "the API token may not write notes (use a full-access or user token)",
    404: "no such incident, or the token cannot see it",
}


def incident_key(trace: AlertTrace) -> str:
    """The incident key PagerDuty knows this alert by, or ``""``."""
    alert = trace.alert
    if alert.labels.get("incident_key"):
        return alert.labels["incident_key"]
    if alert.source == "events_v2" and alert.refs.get("dedup_key"):
        return alert.refs["dedup_key"]
    if alert.source == "alertmanager" and alert.refs.get("group_key"):
        return alertmanager_dedup_key(alert.refs["group_key"])
    return ""


def _error(status: int, body: str, what: str) -> str:
    hint = f" ({_HINTS[status]})" if status in _HINTS else ""
    return f"{what}: PagerDuty answered HTTP {status}{hint}" + (
        f": {body}" if body else ""
    )


def incident_path(incident_id: str) -> str:
    """An incident id as one segment of a REST API path (``/`` and ``..`` inert).

    PagerDuty's ids are letters and digits; this one came from a webhook or
    the API's own answer, and still may never name another endpoint.
    """
    return quote(incident_id, safe="")


class PagerDutyNoteSink:
    """Posts one note per decision on the alert's PagerDuty incident."""

    name = "pagerduty_note"
    dedupe: Dedupe = "occurrence"

    def __init__(
        self,
        deliverer: Deliverer,
        *,
        api_url: str,
        token: str,
        from_email: str,
        max_chars: int = 24_000,
    ) -> None:
        self._d = deliverer
        self._api = api_url.rstrip("/")
        self._headers = {
            "Authorization": f"Token token={token}",
            "Accept": ACCEPT,
            "From": from_email,
        }
        self._max = max_chars

    async def _incident(self, trace: AlertTrace) -> tuple[str, str, int]:
        """(incident id, how it was found, requests made); id ``""`` if none."""
        incident_id = trace.alert.refs.get("incident_id", "")
        if incident_id:
            return incident_id, "from the webhook", 0
        key = incident_key(trace)
        if not key:
            return "", "the alert names no incident and has no incident key", 0
        response, attempts = await self._d.send(
            "GET",
            f"{self._api}/incidents",
            what="GET /incidents?incident_key=...",
            headers={k: v for k, v in self._headers.items() if k != "From"},
            params={"incident_key": key},
        )
        if response.status_code != 200:
            raise SinkError(
                _error(
                    response.status_code,
                    self._d.excerpt(response),
                    "incident lookup",
                ),
                attempts,
            )
        try:
            incidents = response.json().get("incidents") or []
            found = str(incidents[0].get("id", "")) if incidents else ""
        except ValueError as exc:
            raise SinkError(
                "incident lookup: PagerDuty answered non-JSON", attempts
            ) from exc
        except (AttributeError, KeyError, IndexError, TypeError) as exc:
            raise SinkError(
                "incident lookup: PagerDuty answered JSON of another shape", attempts
            ) from exc
        if not incidents:
            return "", f"no PagerDuty incident has incident_key {key[:64]}", attempts
        return found, f"by incident_key {key[:64]}", attempts

    async def send(self, trace: AlertTrace) -> SinkOutcome:
        """Find the incident and post the rendered trace as a note."""
        incident_id, how, lookups = await self._incident(trace)
        if not incident_id:
            return SinkOutcome(self.name, "skipped", how, lookups)
        content = render_note(trace, self._max)
        response, attempts = await self._d.send(
            "POST",
            f"{self._api}/incidents/{incident_path(incident_id)}/notes",
            what=f"POST /incidents/{incident_id}/notes",
            json={"note": {"content": content}},
            headers={**self._headers, "Content-Type": "application/json"},
        )
        if response.status_code not in (200, 201):
            raise SinkError(
                _error(
                    response.status_code,
                    self._d.excerpt(response),
                    f"note on incident {incident_id}",
                ),
                lookups + attempts,
            )
        note_id = ""
        try:
            note_id = str(response.json().get("note", {}).get("id", ""))
        except (ValueError, AttributeError):
            note_id = ""
        return SinkOutcome(
            self.name,
            "sent",
            f"note {note_id or '(no id)'} on incident {incident_id} ({how}), "
            f"{len(content)} chars",
            lookups + attempts,
        )

    async def aclose(self) -> None:
        """Close the deliverer's client (shared sinks may close it twice: harmless)."""
        await self._d.aclose()


def event_dedup_key(trace: AlertTrace) -> str:
    """Alertmanager's dedup key for the alert's group, or a deterministic one."""
    group_key = trace.alert.refs.get("group_key", "")
    if group_key:
        return alertmanager_dedup_key(group_key)
    seed = f"{trace.alert.fingerprint}:{iso(trace.alert.starts_at) or ''}"
    return "alert-receiver-" + hashlib.sha256(seed.encode()).hexdigest()[:32]


class PagerDutyEventSink:
    """Sends diagnostics to PagerDuty as an Events API v2 trigger."""

    name = "pagerduty_event"
    dedupe: Dedupe = "occurrence"

    def __init__(self, deliverer: Deliverer, *, url: str, routing_key: str) -> None:
        self._d = deliverer
        self._url = url
        self._key = routing_key

    def body(self, trace: AlertTrace) -> JSONObject:
        """The Events API v2 request for ``trace``."""
        labels = trace.alert.labels
        payload: JSONObject = {
            "summary": event_summary(trace),
            "source": labels.get("instance")
            or labels.get("namespace")
            or labels.get("job")
            or "alert-receiver",
            "severity": event_severity(trace),
            "timestamp": iso(trace.decided_at),
            "component": labels.get("service") or labels.get("deployment"),
            "group": labels.get("namespace"),
            "class": alertname(trace),
            "custom_details": custom_details(trace),
        }
        body: JSONObject = {
            "routing_key": self._key,
            "event_action": "trigger",
            "dedup_key": event_dedup_key(trace),
            "payload": {k: v for k, v in payload.items() if v},
            "client": "alert-receiver",
            "links": [{"href": url, "text": text} for text, url in links(trace)],
        }
        if trace.alert.generator_url:
            body["client_url"] = trace.alert.generator_url
        return body

    async def send(self, trace: AlertTrace) -> SinkOutcome:
        """Trigger (or add to) the incident for a firing Alertmanager alert."""
        alert = trace.alert
        if alert.source != "alertmanager":
            return SinkOutcome(
                self.name,
                "skipped",
                f"pagerduty_event is for Alertmanager alerts; a {alert.source} "
                "alert already has its incident (use pagerduty_note)",
            )
        if alert.status != "firing":
            return SinkOutcome(
                self.name,
                "skipped",
                "resolved: a trigger would reopen the incident Alertmanager resolves",
            )
        body = self.body(trace)
        response, attempts = await self._d.send(
            "POST", self._url, what="Events API v2 trigger", json=body
        )
        if response.status_code != 202:
            raise SinkError(
                f"Events API v2 trigger: PagerDuty answered HTTP "
                f"{response.status_code}: {self._d.excerpt(response)}",
                attempts,
            )
        return SinkOutcome(
            self.name,
            "sent",
            f"event accepted, dedup_key {body['dedup_key']}",
            attempts,
        )

    async def aclose(self) -> None:
        """Close the deliverer's client (shared sinks may close it twice: harmless)."""
        await self._d.aclose()
