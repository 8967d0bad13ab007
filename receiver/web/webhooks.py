"""The three webhooks: Alertmanager, PagerDuty and PagerDuty Events v2."""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web

from receiver.model import Alert
from receiver.sinks.render import is_own_note
from receiver.sources import alertmanager, events_v2, pagerduty, parse_json
from receiver.sources.caps import check_caps
from receiver.web.edge import PARSE_IN_THREAD, Edge, alert_states, redact_routing_key

log = structlog.get_logger("receiver.web")
# The Content-Type json_response gives (passed as a header, not parsed again).
_JSON = {"Content-Type": "application/json; charset=utf-8"}


class Webhooks(Edge):
    """The webhook routes: parse, check, journal, answer 202."""

    async def alertmanager(self, request: web.Request) -> web.Response:
        """POST /webhooks/alertmanager."""
        self._require(request, "webhook")
        await self._admit("alertmanager")
        body = await self._body(request)
        # Only what the edge checks and journals is taken from the body here;
        # the worker builds the alerts when it decides them.
        caps = self._limits.caps
        if len(body) > PARSE_IN_THREAD:
            got = await asyncio.to_thread(alertmanager.admit, body, caps)
        else:
            got = alertmanager.admit(body, caps)
        alerts = got.alerts
        if got.truncated:
            self._metrics.alerts_truncated.inc(got.truncated)
            log.warning(
                "alerts_truncated",
                truncated=got.truncated,
                received=len(alerts),
                group_key=got.group_key[:200],
                detail="Alertmanager left alerts of this group out of the webhook "
                "(max_alerts); those alerts are not decided",
            )
        if not got.checked:
            check_caps(alerts, caps)
        now = self._clock()
        states = alert_states(alerts, got.starts, now)
        entry = await self._journal(
            "alertmanager",
            body,
            states,
            alerts=len(alerts),
            headers=request.headers,
            now=now,
        )
        # The JSON json_response would write, without encoding a dict: the id
        # is hex and the count an int.
        count = len(alerts)
        answer = f'{{"status": "accepted", "id": "{entry.id}", "alerts": {count}}}'
        return web.Response(
            body=answer.encode(),
            status=202,
            headers=_JSON,
        )

    async def pagerduty(self, request: web.Request) -> web.Response:
        """POST /webhooks/pagerduty.

        A correctly signed delivery is always accepted: incident events become an
        alert, every other event (``service.*``, ``pagey.ping``, types added
        later) is stored and recorded as an event, never refused. The signature
        header is checked before the body is read, the HMAC after.
        """
        await self._admit("pagerduty")
        signatures = self._auth.signature_parts(
            request.headers.get("X-PagerDuty-Signature")
        )
        body = await self._body(request, authenticated=False)
        self._auth.check_signature(signatures, body)
        event = pagerduty.parse(parse_json(body))
        alerts = pagerduty.alerts_of(
            event, self._clock(), alertname_from=self._alertname_from
        )
        # No per-alert caps: a signed delivery is never refused for its
        # content, and its alert is bounded by ``alerts_of`` (values cut).
        delivery = request.headers.get("X-Webhook-Id") or event.id
        if delivery and await self._duplicate("pagerduty", delivery[:200]):
            return web.json_response(
                {"status": "duplicate", "alerts": 0, "event_type": event.event_type},
                status=202,
            )
        if alerts and is_own_note(alerts[0].annotations.get("note", "")):
            # PagerDuty echoes the note we posted as incident.annotated: no loop.
            log.info("own_note_ignored", incident=alerts[0].refs.get("incident_id"))
            return web.json_response(
                {
                    "status": "ignored",
                    "alerts": 0,
                    "event_type": event.event_type,
                    "reason": "a note this receiver posted",
                },
                status=202,
            )
        entry = await self._accept("pagerduty", body, alerts, request.headers)
        recorded = "alert" if alerts else "event"
        if not alerts:
            log.info(
                "pagerduty_event_recorded",
                event_type=event.event_type[:100],
                payload_id=entry.id,
            )
        return web.json_response(
            {
                "status": "accepted",
                "id": entry.id,
                "alerts": len(alerts),
                "event_type": event.event_type,
                "recorded_as": recorded,
            },
            status=202,
        )

    async def read_body(self, request: web.Request) -> bytes:
        """A body whose sender the body itself proves (change events' routing key).

        Read like ``/v2/enqueue``'s: refused before reading when no routing key
        is configured, shed (503 + Retry-After) while the journal is at its
        bound (the store is behind: a change event is one more write to it),
        then under the unauthenticated cap and count.
        """
        self._auth.routing_keys_open()
        await self._admit("change_events")
        return await self._body(request, authenticated=False)

    async def enqueue(self, request: web.Request) -> web.Response:
        """POST /v2/enqueue (PagerDuty Events API v2; errors in its shape)."""
        self._auth.routing_keys_open()
        await self._admit("events_v2")
        body = await self._body(request, authenticated=False)
        data = parse_json(body)
        if isinstance(data, dict) and isinstance(data.get("routing_key"), str):
            self._auth.check_routing_key(data["routing_key"])
        parsed = events_v2.to_alerts(data, self._clock(), body=body)
        check_caps(parsed, self._limits.caps)
        dedup = parsed[0].refs["dedup_key"]
        # A resolve naming only the dedup key closes every alert its trigger
        # opened (a grouped page's each have a fingerprint): record their states.
        alerts = [a for raw in parsed for a in await self._processor.inherit(raw)]
        if data.get("event_action") == "trigger" and await self._all_open(alerts):
            # Same dedup_key, every alert already firing: PagerDuty would fold it
            # into the open incident; so do we. A resolve is never folded.
            # Nothing new is journaled, so the answer carries no journal id.
            self._metrics.duplicates.labels("events_v2").inc()
            return web.json_response(
                {
                    "status": "success",
                    "message": "Event processed (duplicate of the open alert)",
                    "dedup_key": dedup,
                },
                status=202,
            )
        entry = await self._accept(
            "events_v2", redact_routing_key(data, dedup), alerts, request.headers
        )
        return web.json_response(
            {
                "status": "success",
                "message": "Event processed",
                "dedup_key": dedup,
                "id": entry.id,
            },
            status=202,
        )

    async def _all_open(self, alerts: list[Alert]) -> bool:
        group = await self._store.alert_state(
            events_v2.group_fingerprint(alerts[0].refs["dedup_key"])
        )
        for alert in alerts:
            if alert.status != "firing":
                return False
            state = await self._store.alert_state(alert.fingerprint)
            if state is None or state.status != "firing":
                return False
            if (
                group is not None
                and group.status == "resolved"
                and group.updated_at >= state.updated_at
            ):
                return False  # resolved by dedup key since it fired
        return True
