"""The console's incident pages."""

from __future__ import annotations

from urllib.parse import quote, urlencode

from aiohttp import web

from receiver.incidents.clocks import clocks
from receiver.incidents.model import Incident
from receiver.incidents.service import ConflictError, NotFoundError
from receiver.model import json_objects
from receiver.store.base import DecisionQuery
from receiver.store.incidents_base import IncidentQuery
from receiver.web.console.base import ConsoleBase
from receiver.web.console.render import (
    _e,
    _minute,
    _page,
    _step_row,
    _table,
    clock_item,
    log,
)
from receiver.web.incidents import MAX_TEXT as _WHY_CHARS

# What a notice after a form may say (the page shows no more; the URL stays
# short), and how much of a why it quotes (the timeline has all of it).
_NOTICE_CHARS = 300
_WHY_QUOTED = 120


def _missing(incident_id: str) -> web.Response:
    return _page(
        "No such incident",
        f"<p role=alert>There is no incident {_e(incident_id[:80])}.</p>",
        status=404,
    )


def _resolution(incident: Incident) -> str:
    """Who resolved ``incident``, when and why, from its timeline."""
    for entry in reversed(incident.timeline):
        if entry.kind == "resolved":
            text = entry.text
            if len(text) > _WHY_QUOTED:
                text = text[: _WHY_QUOTED - 1] + "…"
            return f"by {entry.by} at {_minute(entry.at)}: {text}"
    return f"at {_minute(incident.resolved_at)}"


class IncidentPages(ConsoleBase):
    """``/ui/incidents`` and one incident's page."""

    async def incident_list(self, request: web.Request) -> web.Response:
        """GET /ui/incidents: severity, state and clocks of recent incidents."""
        who = self._who(request)
        if isinstance(who, web.Response):
            return who
        if self.incidents is None:
            return _page("Incidents", "<p>Incidents are not enabled here.</p>")
        now = self._clock()
        found, _cursor = await self.incidents.page(
            IncidentQuery(None, None, None, 50, None)
        )
        policy = self.incidents.policy
        rows = [
            [
                f'<a href="/ui/incidents/{_e(i.id)}">{_e(i.id)}</a><br>{_e(i.title)}',
                f"<span class=state>{_e(i.severity.value)}</span>",
                f"<span class=state>{_e(i.state.value)}</span>",
                '<ul class="clocks">'
                + "".join(clock_item(c, now) for c in clocks(i, policy))
                + "</ul>",
                _e(_minute(i.opened_at)),
            ]
            for i in found
        ]
        body = f"<p>Signed in as <strong>{_e(who)}</strong>.</p>" + _table(
            ["Incident", "Severity", "State", "Clocks", "Opened"],
            rows,
            "No incidents.",
        )
        return _page("Incidents", body)

    async def incident(self, request: web.Request) -> web.Response:
        """GET /ui/incidents/{id}: timeline, decision traces, notes, report."""
        who = self._who(request)
        if isinstance(who, web.Response):
            return who
        incident_id = request.match_info["id"]
        found = (
            await self.incidents.get(incident_id)
            if self.incidents is not None
            else None
        )
        if found is None or self.incidents is None:
            return _missing(incident_id)
        now = self._clock()
        head = (
            self._notice(request)
            + f"<p><span class=state>{_e(found.severity.value)}</span> · "
            f"<span class=state>{_e(found.state.value)}</span> · opened "
            f"{_e(_minute(found.opened_at))} · "
            f'<a href="/api/v1/incidents/{_e(found.id)}/report">Report '
            "(Markdown)</a></p>"
            '<h2>Clocks</h2><ul class="clocks">'
            + "".join(clock_item(c, now) for c in clocks(found, self.incidents.policy))
            + "</ul>"
        )
        timeline = _table(
            ["At", "What", "By", ""],
            [
                [_e(_minute(t.at)), _e(t.kind), _e(t.by), f"<pre>{_e(t.text)}</pre>"]
                for t in found.timeline
            ],
            "Nothing on the timeline yet.",
        )
        notes = [
            t
            for t in found.timeline
            if t.kind in ("message_sent", "status_update", "escalated")
        ]
        sent = _table(
            ["At", "Where", ""],
            [
                [_e(_minute(t.at)), _e(t.kind), f"<pre>{_e(t.text)}</pre>"]
                for t in notes
            ],
            "No notes sent yet.",
        )
        traces = []
        for alert in found.alerts:
            records = await self._store.decisions(
                DecisionQuery(fingerprint=alert.fingerprint, limit=10)
            )
            rows = []
            for record in records:
                for match in json_objects(record.get("matches")):
                    rows += [
                        _step_row(step) for step in json_objects(match.get("steps"))
                    ]
            name = alert.labels.get("alertname", alert.fingerprint)
            traces.append(
                f"<h3>{_e(name)} <small>({_e(alert.fingerprint)}, "
                f"{_e(alert.status)}, rule {_e(alert.rule)})</small></h3>"
                + _table(
                    ["Kind", "Step", "Outcome", "Reason", "Findings"],
                    rows,
                    "No decision recorded for this alert.",
                )
            )
        body = (
            head
            + self._resolve_form(request, found)
            + "<h2>Timeline</h2>"
            + timeline
            + "<h2>Decision traces</h2>"
            + ("".join(traces) or "<p>No alerts.</p>")
            + "<h2>Notes sent</h2>"
            + sent
        )
        return _page(f"Incident {found.id}: {found.title}", body)

    def _resolve_form(self, request: web.Request, incident: Incident) -> str:
        """The Resolve form of an open incident (nothing once it is resolved)."""
        if not incident.active:
            return ""
        lost = (
            "<p><strong>This incident lost track of its alert storm: it will "
            "not resolve by itself when its alerts resolve.</strong> Resolve it "
            "here (or resolve the linked PagerDuty incident) once the storm is "
            "over.</p>"
            if incident.lost_track
            else ""
        )
        action = f"/ui/incidents/{quote(incident.id, safe='')}/resolve"
        return (
            f'<h2>Resolve</h2>{lost}<form method=post action="{_e(action)}">'
            + self._hidden(request)
            + f"<p><label for=why>Why (optional)</label><br><textarea id=why "
            f"name=text rows=2 maxlength={_WHY_CHARS}></textarea></p>"
            "<p><button>Resolve incident</button> <small>(approve scope; "
            "recorded on the timeline as you; every clock stops)</small></p>"
            "</form>"
        )

    async def resolve_incident(self, request: web.Request) -> web.Response:
        """POST /ui/incidents/{id}/resolve: resolve it as the signed-in person.

        The same service call as ``POST /api/v1/incidents/{id}/resolve``, under
        the same scope (approve).
        """
        who = self._who(request, "approve", doing="Resolving incidents")
        if isinstance(who, web.Response):
            return who
        form = await self._form(request, who)
        # A textarea is sent with CRLF line breaks; its maxlength counts LF.
        why = form.get("text", "").replace("\r\n", "\n").strip()
        if len(why) > _WHY_CHARS:
            raise web.HTTPBadRequest(
                text=f"why is {len(why)} characters long; at most {_WHY_CHARS}"
            )
        incident_id = request.match_info["id"]
        service = self.incidents
        before = await service.get(incident_id) if service is not None else None
        if service is None or before is None:
            return _missing(incident_id)
        resolved, after = False, before
        if before.active:
            try:
                after, resolved = await service.resolve_open(
                    incident_id, by=who, text=why
                )
            except NotFoundError:
                return _missing(incident_id)
            except ConflictError as exc:
                raise web.HTTPConflict(text=f"{exc}; try again") from None
        if resolved:
            notice = f"{incident_id} resolved {_resolution(after)}"
            log.info("console_incident_resolved", incident=incident_id, by=who)
        else:
            notice = (
                f"{incident_id} was already resolved {_resolution(after)}; "
                "nothing changed"
            )
        raise web.HTTPSeeOther(
            f"/ui/incidents/{quote(incident_id, safe='')}?"
            + urlencode({"notice": notice[:_NOTICE_CHARS]})
        )
