"""The console's incident pages, and what the on-call does from them.

One incident's page has a form per thing a person adds, each the service call
of the API's endpoint under its scope (approve): Acknowledge
(``IncidentService.acknowledge_first``), Mark mitigated (``mitigate_first``),
Resolve (``resolve_open``) and Comment (``comment``). Each form is shown only
while it can change something, and each answers with a redirect back to the
page and a notice saying what happened, "nothing changed" included (someone
else was first).
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from datetime import datetime
from typing import TypeVar
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
from receiver.web.incidents import MAX_TEXT as _TEXT_CHARS

# What a notice after a form may say (the page shows no more; the URL stays
# short), and how much of a why it quotes (the timeline has all of it).
_NOTICE_CHARS = 300
_WHY_QUOTED = 120
# How an acknowledgment from here reads on the timeline ("Acknowledged via ...").
_VIA = "the console"

_T = TypeVar("_T")


def _missing(incident_id: str) -> web.Response:
    return _page(
        "No such incident",
        f"<p role=alert>There is no incident {_e(incident_id[:80])}.</p>",
        status=404,
    )


def _done(incident: Incident, kind: str, at: datetime | None) -> str:
    """Who did ``kind`` (its first line on the timeline), when and why."""
    for entry in incident.timeline:
        if entry.kind == kind:
            text = entry.text
            if len(text) > _WHY_QUOTED:
                text = text[: _WHY_QUOTED - 1] + "…"
            return f"by {entry.by} at {_minute(entry.at)}: {text}"
    return f"at {_minute(at)}"


def _resolution(incident: Incident) -> str:
    """Who resolved ``incident``, when and why, from its timeline."""
    return _done(incident, "resolved", incident.resolved_at)


def _first(incident: Incident, *, acknowledging: bool) -> str:
    """What was done before an acknowledge or a mitigate that changed nothing."""
    if not incident.active:
        return f"was already resolved {_resolution(incident)}"
    if acknowledging and incident.acknowledged_at is not None:
        return "was already acknowledged " + _done(
            incident, "acknowledged", incident.acknowledged_at
        )
    already = "was already mitigated " + _done(
        incident, "mitigated", incident.mitigated_at
    )
    return already + (" (the acknowledge clock stopped then)" if acknowledging else "")


def _typed(form: Mapping[str, str], what: str, *, required: bool = False) -> str:
    """The form's ``text``, as the API takes it: at most 4000 characters."""
    # A textarea is sent with CRLF line breaks; its maxlength counts LF.
    text = form.get("text", "").replace("\r\n", "\n").strip()
    if len(text) > _TEXT_CHARS:
        raise web.HTTPBadRequest(
            text=f"{what} is {len(text)} characters long; at most {_TEXT_CHARS}"
        )
    if required and not text:
        raise web.HTTPBadRequest(
            text=f"{what} is empty: say what to add to the timeline"
        )
    return text


async def _attempt(incident_id: str, call: Awaitable[_T]) -> _T | web.Response:
    """``call``'s result; the page of an unknown incident; 409 on a conflict.

    (The store being down is answered 503 by the middleware, as for the API.)
    """
    try:
        return await call
    except NotFoundError:
        return _missing(incident_id)
    except ConflictError as exc:
        raise web.HTTPConflict(text=f"{exc}; try again") from None


def _back(incident_id: str, notice: str) -> web.HTTPSeeOther:
    """The redirect to the incident's page, saying ``notice``."""
    return web.HTTPSeeOther(
        f"/ui/incidents/{quote(incident_id, safe='')}?"
        + urlencode({"notice": notice[:_NOTICE_CHARS]})
    )


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
            ["At", "What", "By", "Detail"],
            [
                [
                    f'<span class="nw">{_e(_minute(t.at))}</span>',
                    f'<span class="nw">{_e(t.kind)}</span>',
                    f'<span class="w">{_e(t.by)}</span>',
                    f"<pre>{_e(t.text)}</pre>",
                ]
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
            + self._acknowledge_form(request, found)
            + self._mitigate_form(request, found)
            + self._resolve_form(request, found)
            + "<h2>Timeline</h2>"
            + timeline
            + self._comment_form(request, found)
            + "<h2>Decision traces</h2>"
            + ("".join(traces) or "<p>No alerts.</p>")
            + "<h2>Notes sent</h2>"
            + sent
        )
        return _page(f"Incident {found.id}: {found.title}", body)

    # --------------------------------------------------------------- forms

    def _post(self, request: web.Request, incident: Incident, action: str) -> str:
        """The opening of a form posting to ``action`` of ``incident``, token in."""
        path = f"/ui/incidents/{quote(incident.id, safe='')}/{action}"
        return f'<form method=post action="{_e(path)}">' + self._hidden(request)

    def _acknowledge_form(self, request: web.Request, incident: Incident) -> str:
        """Acknowledge, while nothing stopped the acknowledge clock.

        Not once mitigated either: mitigating stopped the clock, and an
        acknowledgment after it would not stop it again.
        """
        if not incident.awaiting_acknowledgment:
            return ""
        return (
            "<h2>Acknowledge</h2>"
            + self._post(request, incident, "acknowledge")
            + "<p><button>Acknowledge incident</button> <small>(approve scope; "
            "recorded on the timeline as you; the acknowledge clock stops)</small>"
            "</p></form>"
        )

    def _mitigate_form(self, request: web.Request, incident: Incident) -> str:
        """Mark mitigated, with an optional what, until mitigated or resolved."""
        if not incident.active or incident.mitigated_at is not None:
            return ""
        return (
            "<h2>Mitigate</h2>"
            + self._post(request, incident, "mitigate")
            + "<p><label for=mitigation>What mitigated it (optional)</label><br>"
            "<textarea id=mitigation name=text rows=2 "
            f"maxlength={_TEXT_CHARS}></textarea></p>"
            "<p><button>Mark mitigated</button> <small>(approve scope; recorded "
            "on the timeline as you; the mitigate clock stops)</small></p></form>"
        )

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
        return (
            f"<h2>Resolve</h2>{lost}"
            + self._post(request, incident, "resolve")
            + f"<p><label for=why>Why (optional)</label><br><textarea id=why "
            f"name=text rows=2 maxlength={_TEXT_CHARS}></textarea></p>"
            "<p><button>Resolve incident</button> <small>(approve scope; "
            "recorded on the timeline as you; every clock stops)</small></p>"
            "</form>"
        )

    def _comment_form(self, request: web.Request, incident: Incident) -> str:
        """A comment on the timeline: on any incident, resolved too (as the API)."""
        return (
            "<h2>Comment</h2>"
            + self._post(request, incident, "comment")
            + "<p><label for=comment>Add to the timeline</label><br>"
            "<textarea id=comment name=text rows=3 required "
            f"maxlength={_TEXT_CHARS}></textarea></p>"
            "<p><button>Add comment</button> <small>(approve scope; recorded on "
            "the timeline as you)</small></p></form>"
        )

    # ------------------------------------------------------------- actions

    async def _signed_form(
        self, request: web.Request, doing: str
    ) -> tuple[str, Mapping[str, str]] | web.Response:
        """Who posts, under the approve scope, and their form (token checked)."""
        who = self._who(request, "approve", doing=doing)
        if isinstance(who, web.Response):
            return who
        return who, await self._form(request, who)

    async def acknowledge_incident(self, request: web.Request) -> web.Response:
        """POST /ui/incidents/{id}/acknowledge: acknowledge as the signed-in person.

        The acknowledge clock stops. Under the API's scope (approve); through
        ``acknowledge_first``, which changes nothing once the clock stopped.
        """
        signed = await self._signed_form(request, "Acknowledging incidents")
        if isinstance(signed, web.Response):
            return signed
        who, _ = signed
        incident_id = request.match_info["id"]
        if self.incidents is None:
            return _missing(incident_id)
        done = await _attempt(
            incident_id,
            self.incidents.acknowledge_first(incident_id, by=who, via=_VIA),
        )
        if isinstance(done, web.Response):
            return done
        after, acknowledged = done
        if acknowledged:
            notice = (
                f"{incident_id} acknowledged by {who} at "
                f"{_minute(after.acknowledged_at)}; the acknowledge clock stopped"
            )
            log.info("console_incident_acknowledged", incident=incident_id, by=who)
        else:
            notice = (
                f"{incident_id} {_first(after, acknowledging=True)}; nothing changed"
            )
        raise _back(incident_id, notice)

    async def mitigate_incident(self, request: web.Request) -> web.Response:
        """POST /ui/incidents/{id}/mitigate: mark it mitigated, with an optional what.

        The service call of ``POST /api/v1/incidents/{id}/mitigate``, under the
        same scope (approve).
        """
        signed = await self._signed_form(request, "Marking incidents mitigated")
        if isinstance(signed, web.Response):
            return signed
        who, form = signed
        what = _typed(form, "what mitigated it")
        incident_id = request.match_info["id"]
        if self.incidents is None:
            return _missing(incident_id)
        done = await _attempt(
            incident_id,
            self.incidents.mitigate_first(incident_id, by=who, text=what),
        )
        if isinstance(done, web.Response):
            return done
        after, mitigated = done
        if mitigated:
            notice = (
                f"{incident_id} mitigated "
                f"{_done(after, 'mitigated', after.mitigated_at)}"
            )
            log.info("console_incident_mitigated", incident=incident_id, by=who)
        else:
            notice = (
                f"{incident_id} {_first(after, acknowledging=False)}; nothing changed"
            )
        raise _back(incident_id, notice)

    async def resolve_incident(self, request: web.Request) -> web.Response:
        """POST /ui/incidents/{id}/resolve: resolve it as the signed-in person.

        The same service call as ``POST /api/v1/incidents/{id}/resolve``, under
        the same scope (approve).
        """
        signed = await self._signed_form(request, "Resolving incidents")
        if isinstance(signed, web.Response):
            return signed
        who, form = signed
        why = _typed(form, "why")
        incident_id = request.match_info["id"]
        if self.incidents is None:
            return _missing(incident_id)
        done = await _attempt(
            incident_id, self.incidents.resolve_open(incident_id, by=who, text=why)
        )
        if isinstance(done, web.Response):
            return done
        after, resolved = done
        if resolved:
            notice = f"{incident_id} resolved {_resolution(after)}"
            log.info("console_incident_resolved", incident=incident_id, by=who)
        else:
            notice = (
                f"{incident_id} was already resolved {_resolution(after)}; "
                "nothing changed"
            )
        raise _back(incident_id, notice)

    async def comment_incident(self, request: web.Request) -> web.Response:
        """POST /ui/incidents/{id}/comment: a comment on the timeline.

        The service call of ``POST /api/v1/incidents/{id}/timeline``, under the
        same scope (approve); a resolved incident takes comments too.
        """
        signed = await self._signed_form(request, "Commenting on incidents")
        if isinstance(signed, web.Response):
            return signed
        who, form = signed
        text = _typed(form, "the comment", required=True)
        incident_id = request.match_info["id"]
        if self.incidents is None:
            return _missing(incident_id)
        done = await _attempt(
            incident_id, self.incidents.comment(incident_id, by=who, text=text)
        )
        if isinstance(done, web.Response):
            return done
        log.info("console_incident_commented", incident=incident_id, by=who)
        raise _back(
            incident_id, f"{incident_id}: comment added to the timeline as {who}"
        )
