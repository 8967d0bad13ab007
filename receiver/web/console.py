"""The operator console at ``/ui/``: server-rendered pages, no build step.

Behind the API credentials: a browser without them gets the basic-auth prompt
(``WWW-Authenticate: Basic``); no token ever goes in a URL.

- ``/ui/incidents``: severity, state and the runbook's three clocks (acknowledge,
  mitigate, resolve) counting down, red *and* written "BREACHED" when passed.
  ``/ui/incidents/{id}``: the timeline, each alert's decision trace (steps with
  their outcome, reason, findings and verification), notes sent, the report.
- ``/ui/approvals``: pending approvals with the exact request each would run,
  and Approve / Reject buttons. The approver is the authenticated identity,
  never a form field; deciding goes through the one approval policy
  (``approvals.ApprovalDesk``) that Slack and the API use too.
- ``/ui/guards``: the global pause, circuit breakers, cooldowns, budgets in use,
  locks held, parked journal entries; Reset (a breaker) and Pause / Resume need
  the admin scope and are written to the decision log.
- ``/ui/rules``: the loaded rule files and their last reload, and a form that
  decides a stored payload against them (dry-run: nothing runs).

Forms carry a token bound to the signed-in identity, so another site cannot
post them. Pages are plain HTML with one small script (the clocks) that read on
a phone, and every state is written out in words (never colour alone).
Built in ``create_app``.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import os
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlencode

import structlog
from aiohttp import web

from receiver.engine.guards import GuardDefaults, GuardKeeper
from receiver.engine.worker import Processor
from receiver.errors import AuthError, InputError
from receiver.incidents.clocks import Clock, clocks
from receiver.incidents.service import IncidentService
from receiver.model import iso
from receiver.store.base import DecisionQuery, Store, new_id
from receiver.store.incidents_base import IncidentQuery
from receiver.web.admin import Admin
from receiver.web.approvals import ApprovalDesk, identify
from receiver.web.auth import Authenticator, Scope
from receiver.web.reload import Reloader

log = structlog.get_logger("receiver.console")

MAX_RESULT = 600  # characters of a step's findings shown inline
_CSS = """
body{font-family:system-ui,sans-serif;margin:0;padding:1rem;max-width:64rem;
line-height:1.4}
nav{display:flex;flex-wrap:wrap;gap:.5rem 1rem;margin-bottom:.5rem}
nav a{padding:.4rem 0}
table{border-collapse:collapse;width:100%}
td,th{border:1px solid #888;padding:.4rem;text-align:left;vertical-align:top;
overflow-wrap:anywhere}
pre{white-space:pre-wrap;word-break:break-all;margin:0}
button,input,textarea{padding:.5rem;margin:.2rem 0;font-size:1rem;max-width:100%}
button{padding:.5rem 1rem;min-height:2.75rem}
.state{font-weight:bold}
ul.clocks{list-style:none;padding:0;margin:0}
.breached{color:#b00020;font-weight:bold}
.breached::before{content:"\\26A0  "}
.ok::before{content:"\\2022  "}
.stopped::before{content:"\\2713  "}
[role=alert]{border:2px solid #b00020;padding:.5rem}
@media (max-width:40rem){table,thead,tbody,tr,td,th{display:block}
thead{display:none}td{border:none;padding:.2rem 0}
tr{border-bottom:1px solid #888;padding:.5rem 0}
td[data-label]::before{content:attr(data-label) ": ";font-weight:bold}}
"""
# The one script: running clocks count down every second from the server's
# view at render, and turn red and say BREACHED when their deadline passes.
# Without it the server-rendered text (correct at page load) stays.
_JS = """
"use strict";
const loaded = Date.now();
function fmt(s){s=Math.max(0,Math.floor(s));const h=Math.floor(s/3600),
m=Math.floor(s%3600/60),x=s%60;return (h?h+"h ":"")+(h||m?m+"m ":"")+x+"s";}
function tick(){const gone=(Date.now()-loaded)/1000;
document.querySelectorAll("[data-left]").forEach(function(e){
const left=parseFloat(e.dataset.left)-gone,n=e.dataset.name,due=e.dataset.due;
if(left>=0){e.textContent=n+": "+fmt(left)+" left (due "+due+")";
e.className="clock ok";}else{e.textContent=n+": BREACHED "+fmt(-left)+
" ago (was due "+due+")";e.className="clock breached";}});}
setInterval(tick,1000);
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _span(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def _minute(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC") if at else ""


def _page(title: str, body: str, *, status: int = 200) -> web.Response:
    text = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{_e(title)} - alert-receiver</title><style>{_CSS}</style>"
        '<script src="/ui/static/console.js" defer></script></head>'
        '<body><nav aria-label="Console"><a href="/ui/incidents">Incidents</a>'
        '<a href="/ui/approvals">Approvals</a>'
        '<a href="/ui/guards">Guards</a><a href="/ui/rules">Rules</a></nav>'
        f"<main><h1>{_e(title)}</h1>{body}</main></body></html>"
    )
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
            "script-src 'self'; form-action 'self'; frame-ancestors 'none'",
        },
    )


def _table(head: Iterable[str], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return f"<p>{_e(empty)}</p>"
    names = list(head)
    cells = "".join(f"<th>{_e(h)}</th>" for h in names)
    # On a phone the header row is hidden and each cell says what it is.
    labels = [f' data-label="{_e(h)}"' if h else "" for h in names]
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{labels[i] if i < len(labels) else ''}>{c}</td>"
            for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def clock_item(clock: Clock, now: datetime) -> str:
    """One clock as a list item: its state in words, red when breached."""
    due = clock.deadline.strftime("%H:%M UTC")
    data = f'data-name="{_e(clock.name)}" data-due="{_e(due)}"'
    if clock.stopped is not None:
        late = clock.stopped > clock.deadline
        text = f"{clock.name}: stopped at {_minute(clock.stopped)}, " + (
            "LATE (BREACHED)" if late else "in time"
        )
        kind = "breached" if late else "stopped"
        return f'<li class="clock {kind}" {data}>{_e(text)}</li>'
    # Seconds left at render (negative: past due): the script counts from
    # there, so a browser whose clock is off still shows the server's view.
    left = (clock.deadline - now).total_seconds()
    running = f'{data} data-left="{left:.1f}"'
    if now > clock.deadline:
        text = (
            f"{clock.name}: BREACHED {_span(now - clock.deadline)} ago (was due {due})"
        )
        return f'<li class="clock breached" {running}>{_e(text)}</li>'
    text = f"{clock.name}: {_span(clock.deadline - now)} left (due {due})"
    return f'<li class="clock ok" {running}>{_e(text)}</li>'


def _step_row(step: Mapping[str, Any]) -> list[str]:
    result = step.get("result") or {}
    shown = json.dumps(result, sort_keys=True, default=str)
    if len(shown) > MAX_RESULT:
        shown = shown[:MAX_RESULT] + " …"
    verify = result.get("verification") or result.get("verify") or ""
    return [
        _e(step.get("kind", "")),
        _e(f"{step.get('name') or step.get('type')} on {step.get('target')}"),
        f"<span class=state>{_e(str(step.get('decision', '')).upper())}</span>"
        + (f" ({_e(step['guard'])})" if step.get("guard") else ""),
        f"<pre>{_e(step.get('reason', ''))}</pre>",
        (f"<pre>{_e(shown)}</pre>" if result else "")
        + (f"<p>verification: {_e(verify)}</p>" if verify else ""),
    ]


class Console:
    """The ``/ui/`` pages."""

    def __init__(
        self,
        *,
        store: Store,
        auth: Authenticator,
        desk: ApprovalDesk,
        processor: Processor,
        admin: Admin,
        clock: Callable[[], datetime],
        defaults: GuardDefaults,
        reloader: Reloader | None = None,
        secrets: Iterable[str] = (),
    ) -> None:
        self._store = store
        self._auth = auth
        self._desk = desk
        self._processor = processor
        self._admin = admin
        self._clock = clock
        self._defaults = defaults
        self._reloader = reloader
        # Set once the incident service is built (after the console's routes).
        self.incidents: IncidentService | None = None
        # Every replica derives the same form key from the configured secrets,
        # so a page served by one can be submitted to another.
        known = sorted(secrets)
        self._key = (
            hashlib.sha256(b"receiver-console\0" + "\0".join(known).encode()).digest()
            if known
            else os.urandom(32)
        )

    def attach(self, app: web.Application) -> None:
        """Register the routes."""
        r = app.router
        r.add_get("/ui", self.home)
        r.add_get("/ui/", self.home)
        r.add_get("/ui/static/console.js", self.script)
        r.add_get("/ui/incidents", self.incident_list)
        r.add_get("/ui/incidents/{id}", self.incident)
        r.add_get("/ui/approvals", self.approvals)
        r.add_post("/ui/approvals/{id}", self.decide)
        r.add_get("/ui/guards", self.guards)
        r.add_post("/ui/guards/reset", self.reset)
        r.add_post("/ui/guards/pause", self.pause)
        r.add_get("/ui/rules", self.rules)
        r.add_post("/ui/rules/dry-run", self.dry_run)

    # ------------------------------------------------------------ identity

    def _who(self, request: web.Request, scope: Scope = "read") -> str | web.Response:
        """The signed-in identity with ``scope``, or the 401/403 answer.

        (Answered here, not raised: the problem middleware drops the headers
        of a raised HTTP error, and the prompt needs ``WWW-Authenticate``.)
        """
        header = request.headers.get("Authorization")
        try:
            self._auth.require(header, scope)
        except AuthError as exc:
            if exc.status == 403 and scope != "read":
                return _page(
                    "Not allowed",
                    f"<p role=alert>{_e(self._refused(scope, str(exc)))}</p>"
                    '<p><a href="/ui/">Back to the console</a></p>',
                    status=403,
                )
            return web.Response(
                status=exc.status,
                text=f"{exc}\n",
                headers={"WWW-Authenticate": 'Basic realm="receiver", charset="UTF-8"'},
            )
        return identify(self._auth, header).name

    @staticmethod
    def _refused(scope: Scope, detail: str) -> str:
        what = {
            "admin": "Resetting breakers and pausing remediations",
            "approve": "Approving and rejecting remediations",
            "replay": "Running replays",
        }.get(scope, "This")
        return (
            f"Refused: {what} needs the {scope} scope, and you are signed in "
            f"without it ({detail}). Sign in again with a token that has it."
        )

    def _token(self, who: str) -> str:
        return hmac.new(self._key, who.encode(), hashlib.sha256).hexdigest()

    async def _form(self, request: web.Request, who: str) -> Mapping[str, str]:
        form = await request.post()
        token = str(form.get("token", ""))
        if not hmac.compare_digest(token.encode(), self._token(who).encode()):
            raise web.HTTPForbidden(
                text="the form is stale or not from this console; reload the page"
            )
        return {k: str(v) for k, v in form.items() if isinstance(v, str)}

    def _hidden(self, who: str) -> str:
        return f'<input type=hidden name=token value="{self._token(who)}">'

    @staticmethod
    def _notice(request: web.Request) -> str:
        notice = request.query.get("notice", "")
        if not notice:
            return ""
        return f"<p role=status><strong>{_e(notice[:300])}</strong></p>"

    # --------------------------------------------------------------- pages

    async def home(self, request: web.Request) -> web.Response:
        """GET /ui/: the incidents page."""
        who = self._who(request)
        if isinstance(who, web.Response):
            return who
        raise web.HTTPFound("/ui/incidents")

    async def script(self, _request: web.Request) -> web.Response:
        """GET /ui/static/console.js: the clocks' countdown."""
        return web.Response(
            text=_JS,
            content_type="text/javascript",
            headers={"Cache-Control": "max-age=300"},
        )

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
            return _page(
                "No such incident",
                f"<p role=alert>There is no incident {_e(incident_id[:80])}.</p>",
                status=404,
            )
        now = self._clock()
        head = (
            f"<p><span class=state>{_e(found.severity.value)}</span> · "
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
                for match in record.get("matches", []):
                    rows += [_step_row(step) for step in match.get("steps", [])]
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
            + "<h2>Timeline</h2>"
            + timeline
            + "<h2>Decision traces</h2>"
            + ("".join(traces) or "<p>No alerts.</p>")
            + "<h2>Notes sent</h2>"
            + sent
        )
        return _page(f"Incident {found.id}: {found.title}", body)

    async def approvals(self, request: web.Request) -> web.Response:
        """GET /ui/approvals: pending approvals with their buttons."""
        who = self._who(request)
        if isinstance(who, web.Response):
            return who
        rows = []
        for approval in await self._store.approvals("pending"):
            req = approval.request
            form = (
                f'<form method=post action="/ui/approvals/{_e(approval.id)}">'
                + self._hidden(who)
                + "<button name=decision value=approve>Approve</button>"
                "<button name=decision value=reject>Reject</button></form>"
            )
            rows.append(
                [
                    f"<span class=state>pending</span><br>{_e(approval.id)}",
                    _e(f"{req.get('playbook')} / {req.get('rule')}"),
                    _e(f"{req.get('alertname')} ({req.get('fingerprint')})"),
                    (
                        f"<pre>{_e(req.get('action', ''))}</pre><small>"
                        f"{_e(req.get('step'))} on {_e(req.get('target'))}"
                        + (
                            " · DESTRUCTIVE: two approvers"
                            if req.get("destructive")
                            else ""
                        )
                        + "</small>"
                    ),
                    _e(iso(approval.expires_at)),
                    form,
                ]
            )
        decided = [
            [
                f"<span class=state>{_e(a.status)}</span>",
                _e(a.id),
                _e(a.decided_by),
                _e(iso(a.decided_at)),
                _e(a.request.get("action", "")),
            ]
            for a in (await self._store.approvals())[:20]
            if a.status != "pending"
        ]
        body = (
            self._notice(request)
            + f"<p>Signed in as <strong>{_e(who)}</strong>.</p>"
            + _table(
                ["State", "Playbook / rule", "Alert", "Would run", "Expires", ""],
                rows,
                "No remediation is waiting for approval.",
            )
            + "<h2>Recently decided</h2>"
            + _table(["State", "Approval", "By", "At", "Action"], decided, "None yet.")
        )
        return _page("Approvals", body)

    async def decide(self, request: web.Request) -> web.Response:
        """POST /ui/approvals/{id}: approve or reject as the signed-in person."""
        who = self._who(request, "approve")
        if isinstance(who, web.Response):
            return who
        form = await self._form(request, who)
        decision = form.get("decision", "")
        if decision not in ("approve", "reject"):
            raise web.HTTPBadRequest(text="decision must be approve or reject")
        action: Literal["approve", "reject"] = (
            "approve" if decision == "approve" else "reject"
        )
        approver = identify(self._auth, request.headers.get("Authorization"))
        answer = await self._desk.decide(
            request.match_info["id"], action, approver, via="console"
        )
        log.info("console_approval", approval=request.match_info["id"], by=who)
        raise web.HTTPSeeOther("/ui/approvals?" + urlencode({"notice": answer.text}))

    async def guards(self, request: web.Request) -> web.Response:
        """GET /ui/guards: pause, breakers, cooldowns, budgets, locks, parked."""
        who = self._who(request)
        if isinstance(who, web.Response):
            return who
        now = self._clock()
        hidden = self._hidden(who)
        pause = await self._store.pause()
        paused = (
            f"<p class=state>Remediations PAUSED by {_e(pause.by)} at "
            f"{_e(iso(pause.at))}: {_e(pause.reason or 'no reason given')}</p>"
            "<form method=post action=/ui/guards/pause>"
            + hidden
            + "<button name=paused value=false>Resume remediations</button></form>"
            if pause
            else "<p class=state>Remediations running (not paused).</p>"
            "<form method=post action=/ui/guards/pause>"
            + hidden
            + "<label>Reason <input name=reason maxlength=200 required></label> "
            "<button name=paused value=true>Pause all remediations</button></form>"
        )
        parked = [
            [
                _e(p.entry.id),
                _e(p.entry.source),
                _e(p.entry.attempts),
                f"<pre>{_e(p.reason)}</pre>",
            ]
            for p in await self._store.parked(50)
        ]
        rows = []
        playbooks = self._processor.rulebook.playbooks
        for playbook, target in await self._recent_targets():
            book = playbooks.get(playbook)
            if book is None:
                continue
            scope = GuardKeeper.circuit_scope(playbook, target, book.guards)
            circuit = await self._store.circuit(scope)
            if circuit.opened_at:
                state = f"OPEN since {iso(circuit.opened_at)}"
                state_html = (
                    f"<span class='state breached'>{_e(state)}</span>"
                    "<form method=post action=/ui/guards/reset>"
                    + hidden
                    + f'<input type=hidden name=scope value="{_e(scope)}">'
                    "<button>Reset breaker</button></form>"
                )
            else:
                state_html = (
                    "<span class=state>"
                    f"closed ({circuit.failures} failures in a row)</span>"
                )
            last = await self._store.last_run(f"cooldown:{playbook}:{target}", now)
            holder = await self._store.lock_holder(f"target:{target}", now)
            rows.append(
                [
                    _e(playbook),
                    _e(target),
                    state_html,
                    _e(f"last run {iso(last)}" if last else "no cooldown running"),
                    _e(f"held by {holder}" if holder else "free"),
                ]
            )
        budgets = []
        for name, book in sorted(playbooks.items()):
            limit = book.guards.budget.max if book.guards.budget else None
            window = book.guards.budget.window if book.guards.budget else None
            limit = limit if limit is not None else self._defaults.budget_max
            window = window if window is not None else self._defaults.budget_window
            used = await self._runs(name, now - window)
            budgets.append(
                [
                    _e(name),
                    f"<span class=state>{used} of {limit} used</span>"
                    + (" (SPENT)" if used >= limit else ""),
                    _e(f"per {_span(window)}"),
                ]
            )
        body = (
            self._notice(request)
            + "<h2>Pause</h2>"
            + paused
            + "<h2>Circuit breakers, cooldowns and locks</h2>"
            + _table(
                ["Playbook", "Target", "Circuit", "Cooldown", "Lock"],
                rows,
                "No remediation in the recent decisions.",
            )
            + "<h2>Budgets in use</h2><p>Remediations run in each playbook's "
            "budget window, from the decision log.</p>"
            + _table(["Playbook", "Used", "Window"], budgets, "No playbooks.")
            + "<h2>Parked journal entries</h2>"
            + _table(["Entry", "Source", "Attempts", "Why"], parked, "None parked.")
        )
        return _page("Guards", body)

    async def _runs(self, playbook: str, since: datetime) -> int:
        records = await self._store.decisions(
            DecisionQuery(playbook=playbook, since=since, limit=1000)
        )
        return sum(
            1
            for record in records
            for match in record.get("matches", [])
            if match.get("playbook") == playbook
            for step in match.get("steps", [])
            if step.get("kind") == "remediation" and step.get("decision") == "executed"
        )

    async def reset(self, request: web.Request) -> web.Response:
        """POST /ui/guards/reset: close a circuit breaker (admin, audited)."""
        who = self._who(request, "admin")
        if isinstance(who, web.Response):
            return who
        form = await self._form(request, who)
        scope = form.get("scope", "")
        if not scope.startswith("playbook:") or len(scope) > 600:
            raise web.HTTPBadRequest(text="scope must name a playbook's breaker")
        now = self._clock()
        before = await self._store.circuit(scope)
        await self._store.reset_circuit(scope)
        await self._store.record(
            [
                {
                    "payload_id": f"admin.circuit.{new_id()}",
                    "fingerprint": "",
                    "decided_at": iso(now),
                    "event": "circuit_reset",
                    "by": who,
                    "scope": scope,
                    "was_open": before.opened_at is not None,
                    "matches": [],
                    "notes": [f"circuit {scope} reset by {who} (console)"],
                }
            ]
        )
        log.warning("circuit_reset", scope=scope, by=who)
        notice = f"circuit {scope} reset by {who}"
        raise web.HTTPSeeOther("/ui/guards?" + urlencode({"notice": notice}))

    async def pause(self, request: web.Request) -> web.Response:
        """POST /ui/guards/pause: pause or resume remediations (admin, audited)."""
        who = self._who(request, "admin")
        if isinstance(who, web.Response):
            return who
        form = await self._form(request, who)
        paused = form.get("paused") == "true"
        reason = " ".join(form.get("reason", "").split())[:200]
        await self._admin.switch(paused=paused, by=who, reason=reason)
        notice = f"remediations {'paused' if paused else 'resumed'} by {who}"
        raise web.HTTPSeeOther("/ui/guards?" + urlencode({"notice": notice}))

    async def rules(self, request: web.Request) -> web.Response:
        """GET /ui/rules: loaded files, last reload, and the dry-run form."""
        who = self._who(request)
        if isinstance(who, web.Response):
            return who
        return _page("Rules", self._rules_body(who))

    def _rules_body(self, who: str, result: str = "", payload_id: str = "") -> str:
        book = self._processor.rulebook
        reloader = self._reloader
        loaded = (
            f"<p>Last loaded {_e(iso(reloader.loaded_at))}: {len(book.rules)} rules, "
            f"{len(book.playbooks)} playbooks.</p>"
            if reloader is not None
            else f"<p>{len(book.rules)} rules, {len(book.playbooks)} playbooks.</p>"
        )
        if reloader is not None and reloader.last_error:
            loaded += (
                f"<p role=alert>The last reload FAILED at "
                f"{_e(iso(reloader.last_error_at))} and the rules above stay "
                f"loaded: {_e(reloader.last_error)}</p>"
            )
        files = "".join(f"<li><code>{_e(f)}</code></li>" for f in book.files)
        rules = _table(
            ["Rule", "Playbook", "Matchers"],
            [
                [
                    _e(c.name),
                    _e(c.rule.playbook),
                    f"<pre>{_e(', '.join(c.rule.match))}</pre>",
                ]
                for c in book.rules[:200]
            ],
            "No rules loaded.",
        )
        return (
            loaded
            + f"<h2>Files</h2><ul>{files or '<li>none</li>'}</ul>"
            + "<h2>Decide a stored payload (dry-run)</h2>"
            "<p>Nothing runs: every step is decided as in dry-run mode.</p>"
            "<form method=post action=/ui/rules/dry-run>"
            + self._hidden(who)
            + "<label>Payload id <input name=payload_id required maxlength=100 "
            f'value="{_e(payload_id)}"></label> <button>Decide</button></form>'
            + result
            + "<h2>Rules</h2>"
            + rules
        )

    async def dry_run(self, request: web.Request) -> web.Response:
        """POST /ui/rules/dry-run: decide a stored payload, nothing runs."""
        who = self._who(request)
        if isinstance(who, web.Response):
            return who
        form = await self._form(request, who)
        payload_id = form.get("payload_id", "").strip()[:100]
        entry = await self._store.payload(payload_id)
        if entry is None:
            result = (
                f"<p role=alert>No stored payload {_e(payload_id)}; the API's "
                "GET /api/v1/payloads lists them.</p>"
            )
            return _page("Rules", self._rules_body(who, result, payload_id), status=404)
        try:
            alerts = self._processor.alerts(entry.source, entry.body, self._clock())
        except InputError as exc:
            result = f"<p role=alert>The payload does not parse: {_e(exc)}</p>"
            return _page("Rules", self._rules_body(who, result, payload_id), status=422)
        traces = await self._processor.decide_dry_run(alerts)
        parts = []
        for trace in traces:
            data = trace.to_json()
            name = data["labels"].get("alertname", data["fingerprint"])
            rows = [
                [
                    _e(f"{m['rule']} ({m['severity']}) -> {m['playbook']}"),
                    *_step_row(step)[1:4],
                ]
                for m in data["matches"]
                for step in m["steps"]
            ]
            matched = ", ".join(m["rule"] for m in data["matches"]) or "no rule"
            parts.append(
                f"<h3>{_e(name)}: {_e(matched)}</h3>"
                + _table(
                    ["Rule", "Step", "Decision", "Reason"],
                    rows,
                    "No rule matched, so nothing would run.",
                )
            )
        result = (
            "<section aria-label='Dry-run result' id=dry-run>"
            + ("".join(parts) or "<p>The payload holds no alerts.</p>")
            + "</section>"
        )
        return _page("Rules", self._rules_body(who, result, payload_id))

    async def _recent_targets(self) -> list[tuple[str, str]]:
        found: dict[tuple[str, str], None] = {}
        for record in await self._store.decisions(DecisionQuery(limit=200)):
            for match in record.get("matches", []):
                for step in match.get("steps", []):
                    if step.get("kind") == "remediation" and step.get("target"):
                        found[(str(match.get("playbook")), str(step["target"]))] = None
        return list(found)


def console_paths() -> dict[str, Any]:
    """The OpenAPI paths of the console's pages (HTML, basic-auth prompt)."""
    page = {
        "description": "An HTML page",
        "content": {"text/html": {"schema": {"type": "string"}}},
    }
    security: list[dict[str, list[str]]] = [{"basic": []}, {"bearer": []}]
    path_id = [
        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    ]

    def get(summary: str, *codes: int, **extra: Any) -> dict[str, Any]:
        answers = {str(c): page for c in sorted({200, 401, 403, *codes})}
        return {
            "get": {
                "summary": summary,
                "security": security,
                "responses": answers,
                **extra,
            }
        }

    def form(summary: str, *codes: int, **extra: Any) -> dict[str, Any]:
        answers = {str(c): page for c in sorted({303, 400, 401, 403, *codes})}
        return {
            "post": {
                "summary": summary,
                "security": security,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {
                            "schema": {"type": "object"}
                        }
                    },
                },
                "responses": answers,
                **extra,
            }
        }

    return {
        "/ui": get("Console home"),
        "/ui/": get("Console home"),
        "/ui/static/console.js": {
            "get": {
                "summary": "The console's script (clocks)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "JavaScript",
                        "content": {"text/javascript": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/ui/incidents": get("Incidents and their clocks"),
        "/ui/incidents/{id}": get(
            "One incident: clocks, timeline, traces, notes", 404, parameters=path_id
        ),
        "/ui/approvals": get("Pending approvals"),
        "/ui/approvals/{id}": form(
            "Approve or reject as the signed-in person", parameters=path_id
        ),
        "/ui/guards": get("Pause, breakers, budgets, locks, parked"),
        "/ui/guards/reset": form("Reset a circuit breaker (admin scope; audited)"),
        "/ui/guards/pause": form("Pause or resume remediations (admin; audited)"),
        "/ui/rules": get("Loaded rules and the dry-run form"),
        "/ui/rules/dry-run": form(
            "Decide a stored payload against the rules (dry-run)", 200, 404, 422
        ),
    }
