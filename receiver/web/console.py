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
- ``/ui/backtest`` (admin): ``receiver backtest`` as a form. Candidate rules
  pasted or uploaded (bounded; checked like ``receiver rules check``) are
  replayed with the loaded ones over a period's stored payloads, guards
  simulated and nothing contacted (``backtest.compare_bounded``: bounded in
  payloads and time, one at a time per replica); every run is audited.

Forms carry a token bound to the signed-in identity, so another site cannot
post them. Pages are plain HTML with one small script (the clocks) that read on
a phone, and every state is written out in words (never colour alone).
Built in ``create_app``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode

import structlog
import yaml
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from receiver.engine import backtest
from receiver.engine.backtest import Bounded
from receiver.engine.guards import GuardDefaults, GuardKeeper
from receiver.engine.worker import Processor
from receiver.errors import AuthError, InputError, RuleError, RuleErrorDetail
from receiver.incidents.lifecycle import Clock, clocks
from receiver.incidents.service import IncidentService
from receiver.model import iso
from receiver.rulebook.loader import Rulebook, load_rulebook
from receiver.store.base import DecisionQuery, Store, new_id
from receiver.store.incidents_base import IncidentQuery
from receiver.web.admin import Admin
from receiver.web.approvals import ApprovalDesk, identify
from receiver.web.auth import Authenticator, Scope
from receiver.web.reload import Reloader

log = structlog.get_logger("receiver.console")

MAX_RESULT = 600  # characters of a step's findings shown inline
# Backtests from the console: the candidate's size, what YAML anchors may
# expand it to, and the payloads and seconds one run may take (beyond them
# the report covers what was replayed and says so; the CLI has no limit).
MAX_CANDIDATE_BYTES = 256 * 1024
MAX_CANDIDATE_NODES = 200_000
MAX_FORM_BYTES = MAX_CANDIDATE_BYTES + 16 * 1024
BACKTEST_PAYLOADS = 2000
BACKTEST_SECONDS = 20.0
CANDIDATE = "candidate.yaml"
BACKTEST_TITLE = "Backtest a rules change"
FORM_TIMEOUT = 30.0  # seconds for the form's body to arrive
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
textarea,select{width:100%;box-sizing:border-box;font-size:1rem}
textarea{font-family:monospace}
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
        '<a href="/ui/guards">Guards</a><a href="/ui/rules">Rules</a>'
        '<a href="/ui/backtest">Backtest</a></nav>'
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
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._auth = auth
        self._desk = desk
        self._processor = processor
        self._admin = admin
        self._clock = clock
        self._defaults = defaults
        self._reloader = reloader
        self.timer = timer
        # One backtest at a time per replica; the bounds are attributes so a
        # deployment (or a test) can tighten them.
        self.busy = asyncio.Lock()
        self.backtest_payloads = BACKTEST_PAYLOADS
        self.backtest_seconds = BACKTEST_SECONDS
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
        r.add_get("/ui/backtest", self.backtest_form)
        r.add_post("/ui/backtest", self.backtest)
        app[CONSOLE] = self

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
                log.warning(
                    "console_refused",
                    path=request.path,
                    scope=scope,
                    by=identify(self._auth, header).name,
                )
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
            "admin": "Resetting breakers, pausing remediations and backtesting "
            "rules changes",
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

    # ------------------------------------------------------------ backtest

    async def backtest_form(self, request: web.Request) -> web.Response:
        """GET /ui/backtest: the candidate rules form (admin)."""
        who = self._who(request, "admin")
        if isinstance(who, web.Response):
            return who
        return _page(BACKTEST_TITLE, self._backtest_body(who, {}))

    def _backtest_body(
        self, who: str, form: Mapping[str, str], result: str = ""
    ) -> str:
        files = self._processor.rulebook.files
        chosen = form.get("replaces", "0" if len(files) == 1 else "all")
        options = [("all", "all the loaded rules (the candidate is the whole set)")]
        options += [(str(i), f"the loaded {f}") for i, f in enumerate(files)]
        options += [("new", "nothing: add it beside the loaded files")]
        select = "".join(
            f'<option value="{_e(v)}"{" selected" if v == chosen else ""}>'
            f"{_e(text)}</option>"
            for v, text in options
        )
        # The outcome first, so a phone shows it without scrolling past the form.
        return (
            result + "<h2>Candidate rules</h2>"
            "<p>Replays the payloads stored in the period, oldest first, against "
            "the loaded rules and the candidate, simulating cooldowns, budgets, "
            "locks, circuit breakers and approvals over time, and shows what "
            "would be decided differently (as <code>receiver backtest</code>). "
            "Nothing is executed or contacted. At most "
            f"{self.backtest_payloads} payloads and {self.backtest_seconds:g} s "
            "per run; the command line has no limit.</p>"
            '<form method=post action=/ui/backtest enctype="multipart/form-data">'
            + self._hidden(who)
            + "<p><label for=rules>Candidate rules (YAML, up to "
            f"{MAX_CANDIDATE_BYTES // 1024} KiB)</label><br>"
            "<textarea id=rules name=rules rows=12 spellcheck=false>"
            + _e(form.get("rules", ""))
            + "</textarea></p>"
            "<p><label>or upload a file <input type=file name=rules_file "
            'accept=".yaml,.yml"></label></p>'
            f"<p><label>It replaces <select name=replaces>{select}</select>"
            "</label></p>"
            "<p><label>Period <input name=since required maxlength=10 size=6 "
            f'value="{_e(form.get("since", "7d"))}"></label> '
            "<small>(30m, 12h, 7d, 2w)</small></p>"
            "<p><label>Fail when more than <input name=max_changed type=number "
            f'min=0 size=6 value="{_e(form.get("max_changed", ""))}"></label> '
            "alerts are decided differently <small>(optional)</small></p>"
            "<button>Run the backtest</button></form>"
        )

    async def backtest(self, request: web.Request) -> web.Response:
        """POST /ui/backtest: the report for candidate rules (admin, audited)."""
        who = self._who(request, "admin")
        if isinstance(who, web.Response):
            return who
        form: dict[str, str] = {}
        try:
            result = await self._run_backtest(request, who, form)
        except RuleError as exc:
            return _page(
                BACKTEST_TITLE,
                self._backtest_body(who, form, _rule_errors(exc.details)),
                status=400,
            )
        except _Refusal as exc:
            return self._backtest_refused(who, form, exc.why, exc.status)
        except InputError as exc:
            return self._backtest_refused(who, form, str(exc).lstrip("-"), 400)
        return _page(BACKTEST_TITLE, self._backtest_body(who, form, result))

    async def _run_backtest(
        self, request: web.Request, who: str, form: dict[str, str]
    ) -> str:
        """The report's HTML; ``form`` is filled with what was sent, to show again."""
        if (request.content_length or 0) > MAX_FORM_BYTES:
            raise _Refusal(413, f"the form is over {MAX_FORM_BYTES // 1024} KiB")
        fields, upload = await self._backtest_form_data(request, who)
        form.update(fields)
        name, text = _candidate(fields.get("rules", ""), upload)
        form["rules"] = text
        since = backtest.parse_since(form.get("since", "7d"))
        limit = _threshold(form.get("max_changed", ""))
        if self.busy.locked():
            raise _Refusal(
                429,
                "another backtest is running on this replica; try again when it "
                "finishes",
            )
        async with self.busy:
            candidate, replaced = await asyncio.to_thread(
                self._load_candidate, name, text, form.get("replaces", "all")
            )
            now = self._clock()
            entries = await backtest.stored_since(
                self._store, now - since, self.backtest_payloads + 1
            )
            more = len(entries) > self.backtest_payloads
            if more:
                entries = entries[len(entries) - self.backtest_payloads :]
            started = self.timer()
            outcome = await backtest.compare_bounded(
                self._processor.rulebook,
                candidate,
                entries,
                self._defaults,
                namespaces=self._processor.namespaces,
                alertname_from=self._processor.alertname_from,
                expired=lambda: self.timer() - started > self.backtest_seconds,
            )
        exceeded = limit is not None and outcome.report.changed > limit
        await self._audit_backtest(
            who,
            digest=hashlib.sha256(text.encode()).hexdigest(),
            replaced=replaced,
            since=form.get("since", ""),
            outcome=outcome,
            exceeded=exceeded,
            now=now,
        )
        return _backtest_result(
            outcome, len(entries), more=more, limit=limit, seconds=self.backtest_seconds
        )

    async def _backtest_form_data(
        self, request: web.Request, who: str
    ) -> tuple[dict[str, str], tuple[str, bytes] | None]:
        """The form's fields and upload, read within the form's own bound.

        (The candidate may be larger than a webhook body, so the form is read
        here, within ``MAX_FORM_BYTES``, rather than under the app's body cap.)
        """
        fields: dict[str, str] = {}
        upload: tuple[str, bytes] | None = None
        try:
            async with asyncio.timeout(FORM_TIMEOUT):
                if not request.content_type.startswith("multipart/"):
                    body = bytearray()
                    while chunk := await request.content.read(64 * 1024):
                        body += chunk
                        if len(body) > MAX_FORM_BYTES:
                            raise _Refusal(
                                413, f"the form is over {MAX_FORM_BYTES // 1024} KiB"
                            )
                    fields = dict(
                        parse_qsl(
                            body.decode("utf-8", "replace"), keep_blank_values=True
                        )
                    )
                else:
                    upload = await _read_multipart(request, fields)
        except TimeoutError:
            raise _Refusal(
                408, f"the form did not arrive within {FORM_TIMEOUT:g} s"
            ) from None
        except (ValueError, HttpProcessingError) as exc:  # a malformed multipart body
            raise _Refusal(400, "the form does not parse as multipart") from exc
        if not hmac.compare_digest(
            fields.get("token", "").encode(), self._token(who).encode()
        ):
            raise web.HTTPForbidden(
                text="the form is stale or not from this console; reload the page"
            )
        return fields, upload

    def _backtest_refused(
        self, who: str, form: Mapping[str, str], why: str, status: int
    ) -> web.Response:
        note = f"<p role=alert id=refused>Not run: {_e(why)}.</p>"
        return _page(
            BACKTEST_TITLE,
            self._backtest_body(who, form, note),
            status=status,
        )

    def _load_candidate(
        self, name: str, text: str, replaces: str
    ) -> tuple[Rulebook, str]:
        """The candidate rule set (checked as ``rules check`` does); what it replaced.

        Runs in a thread: parsing is CPU work. Only the loaded files are read
        from disk, chosen by their position; the form names no path.
        """
        _check_expansion(text)
        files = self._processor.rulebook.files
        if replaces == "all":
            return load_rulebook([], {name: text}), "all"
        if replaces == "new":
            return load_rulebook(files, {name: text}), "none"
        if replaces.isdigit() and int(replaces) < len(files):
            target = files[int(replaces)]
            return load_rulebook(files, {target: text}), target
        raise InputError("choose what the candidate replaces from the list")

    async def _audit_backtest(
        self,
        who: str,
        *,
        digest: str,
        replaced: str,
        since: str,
        outcome: Bounded,
        exceeded: bool,
        now: datetime,
    ) -> None:
        report = outcome.report
        await self._store.record(
            [
                {
                    "payload_id": f"admin.backtest.{new_id()}",
                    "fingerprint": "",
                    "decided_at": iso(now),
                    "event": "backtest",
                    "by": who,
                    "candidate_sha256": digest,
                    "replaces": replaced,
                    "since": since,
                    "payloads": outcome.replayed,
                    "stopped": outcome.stopped,
                    "changed_alerts": report.changed,
                    "threshold_exceeded": exceeded,
                    "matches": [],
                    "notes": [
                        (
                            f"backtest by {who} (console): {report.changed} of "
                            f"{report.alerts} alerts decided differently over "
                            f"{outcome.replayed} payloads; candidate sha256 "
                            f"{digest[:12]}"
                        )
                    ],
                }
            ]
        )
        log.info(
            "console_backtest",
            by=who,
            payloads=outcome.replayed,
            changed=report.changed,
            stopped=outcome.stopped,
        )

    async def _recent_targets(self) -> list[tuple[str, str]]:
        found: dict[tuple[str, str], None] = {}
        for record in await self._store.decisions(DecisionQuery(limit=200)):
            for match in record.get("matches", []):
                for step in match.get("steps", []):
                    if step.get("kind") == "remediation" and step.get("target"):
                        found[(str(match.get("playbook")), str(step["target"]))] = None
        return list(found)


CONSOLE = web.AppKey("console", Console)


class _Refusal(Exception):  # noqa: N818 (a refusal is no error of ours)
    """A backtest not run: the status and why, shown above the form."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


async def _read_multipart(
    request: web.Request, fields: dict[str, str]
) -> tuple[str, bytes] | None:
    """Fill ``fields`` from a multipart form; the upload (name, bytes) if any."""
    upload: tuple[str, bytes] | None = None
    left = MAX_FORM_BYTES
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise _Refusal(400, "the form holds a nested multipart part")
        data = await _read_part(part, left)
        left -= len(data)
        if part.filename is not None:
            if part.name == "rules_file":
                upload = (part.filename, data)
            continue
        fields[part.name or ""] = data.decode("utf-8", "replace")
    return upload


async def _read_part(part: BodyPartReader, left: int) -> bytes:
    """One part of the form, refused once the form passes its bound."""
    data = bytearray()
    while chunk := await part.read_chunk(64 * 1024):
        data += chunk
        if len(data) > left:
            raise _Refusal(413, f"the form is over {MAX_FORM_BYTES // 1024} KiB")
    return bytes(data)


def _candidate(pasted: str, upload: tuple[str, bytes] | None) -> tuple[str, str]:
    """The candidate's file name and text: the upload if any, else the paste."""
    name, raw = CANDIDATE, pasted.encode()
    if upload is not None and upload[1]:
        raw = upload[1]
        base = upload[0].replace("\\", "/").rsplit("/", 1)[-1]
        plain = base.replace(".", "").replace("-", "").replace("_", "")
        if base.endswith((".yaml", ".yml")) and plain.isalnum() and len(base) <= 100:
            name = base
    if not raw.strip():
        raise InputError("paste the candidate rules or upload a file")
    if len(raw) > MAX_CANDIDATE_BYTES:
        raise _Refusal(
            413, f"the candidate rules are over {MAX_CANDIDATE_BYTES // 1024} KiB"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"the candidate rules are not UTF-8 ({exc.reason})") from exc
    return name, text.replace("\r\n", "\n")


def _threshold(text: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    if not text.isdigit() or len(text) > 9:
        raise InputError("the threshold is a whole number of alerts (0 or more)")
    return int(text)


def _check_expansion(text: str) -> None:
    """Refuse YAML whose anchors expand past a bound (a "billion laughs")."""
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError:
        return  # the loader reports it with its place
    seen = 0
    stack = [data]
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_CANDIDATE_NODES:
            raise InputError(
                f"the candidate expands to more than {MAX_CANDIDATE_NODES} YAML "
                "nodes (anchors and aliases); write the rules out"
            )
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _rule_errors(details: Iterable[RuleErrorDetail]) -> str:
    rows = [
        [_e(d.file), _e(d.rule or ""), _e(d.field or ""), f"<pre>{_e(d.message)}</pre>"]
        for d in details
    ]
    return (
        "<section aria-label='Rule errors' id=rule-errors><p role=alert>The "
        "candidate rules do not load (as <code>receiver rules check</code> would "
        f"say); nothing was replayed. {len(rows)} problem(s):</p>"
        + _table(["File", "Rule", "Field", "Problem"], rows, "")
        + "</section>"
    )


def _decided(summary: Iterable[Mapping[str, Any]]) -> str:
    items = [
        f"<li>{_e(m['rule'])} <span class=state>{_e(m['severity'])}</span> -&gt; "
        f"{_e(m['playbook'])}"
        + (
            "<ul>" + "".join(f"<li>{_e(step)}</li>" for step in m["steps"]) + "</ul>"
            if m["steps"]
            else ""
        )
        + "</li>"
        for m in summary
    ]
    return f"<ul>{''.join(items)}</ul>" if items else "no rule matched"


def _backtest_result(
    outcome: Bounded,
    found: int,
    *,
    more: bool,
    limit: int | None,
    seconds: float,
) -> str:
    report = outcome.report
    parts = [
        (
            f"<p class=state id=backtest-summary>{report.payloads} payloads, "
            f"{report.alerts} alerts: {report.changed} decided differently.</p>"
        )
    ]
    if more:
        parts.append(
            f"<p role=note>The period holds more payloads than {found}; the "
            "oldest were left out. <code>receiver backtest</code> replays them "
            "all.</p>"
        )
    if outcome.stopped:
        parts.append(
            f"<p role=alert>STOPPED after {outcome.replayed} of {found} payloads "
            f"(the console's {seconds:g} s limit): the differences below cover "
            "those. <code>receiver backtest</code> replays the whole period.</p>"
        )
    if limit is not None:
        if report.changed > limit:
            parts.append(
                f"<p role=alert id=threshold>THRESHOLD EXCEEDED: {report.changed} "
                f"alerts decided differently, more than {limit}.</p>"
            )
        else:
            parts.append(
                f"<p class=state id=threshold>Within the threshold: "
                f"{report.changed} of at most {limit}.</p>"
            )
    examples = [
        [
            _e(e["payload_id"]),
            _e(e["alertname"] or e["fingerprint"]),
            _decided(e["baseline"]),
            _decided(e["new"]),
        ]
        for e in report.examples
    ]
    parts.append(
        "<h2>Alerts decided differently</h2>"
        + _table(
            ["Payload", "Alert", "Loaded rules", "Candidate"],
            examples,
            "None: every alert is decided as before.",
        )
    )
    if report.changed > len(report.examples):
        parts.append(f"<p>... and {report.changed - len(report.examples)} more.</p>")
    moved = [
        [
            _e(r["remediation"]),
            _e(r["baseline"]),
            _e(r["new"]),
            "<span class=state>"
            + ("MORE often" if r["new"] > r["baseline"] else "LESS often")
            + "</span>",
        ]
        for r in report.remediations
    ]
    parts.append(
        "<h2>Remediations that would run a different number of times</h2>"
        + _table(
            ["Remediation", "Loaded rules", "Candidate", ""],
            moved,
            "None: remediations would run as often as before.",
        )
    )
    parts.append(
        "<p><small>Simulated: every step and verification succeeds; nothing "
        "was executed or contacted.</small></p>"
    )
    return (
        "<section aria-label='Backtest report' id=backtest>"
        + "".join(parts)
        + "</section>"
    )


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
        "/ui/backtest": {
            **get("The backtest form for candidate rules (admin scope)"),
            "post": {
                "summary": "Backtest candidate rules against the loaded ones "
                "(admin scope; dry-run; audited)",
                "security": security,
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {"schema": {"type": "object"}},
                        "application/x-www-form-urlencoded": {
                            "schema": {"type": "object"}
                        },
                    },
                },
                "responses": {str(c): page for c in (200, 400, 401, 403, 413, 429)},
            },
        },
    }
