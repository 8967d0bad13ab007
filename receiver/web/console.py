"""The operator console at ``/ui/``: server-rendered pages, no build step.

Behind the API credentials: a browser without them gets the basic-auth prompt
(``WWW-Authenticate: Basic``); no token ever goes in a URL.

- ``/ui/approvals``: pending approvals with the exact request each would run,
  and Approve / Reject buttons. The approver is the authenticated identity (the
  basic-auth user, or ``api-token`` for a bearer token), never a form field.
  Forms carry a token bound to that identity, so another site cannot post them.
  Deciding goes through the same path as Slack (``slack.apply_decision``): the
  approval moves out of ``pending`` once and the payload is journalled again.
- ``/ui/guards``: the global pause, parked journal entries, and for each
  playbook and target seen in recent decisions its circuit breaker, cooldown
  (last run) and lock holder.

Pages are plain HTML with inline CSS that reads on a phone, and states are
written out in words (never colour alone). Built in ``create_app``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import os
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlencode

import structlog
from aiohttp import web

from receiver.engine.guards import GuardKeeper
from receiver.engine.worker import Processor
from receiver.errors import AuthError
from receiver.model import iso
from receiver.store.base import DecisionQuery, Store
from receiver.web.auth import Authenticator, Scope
from receiver.web.slack import apply_decision

log = structlog.get_logger("receiver.console")

MAX_FORM = 4 * 1024
_CSS = """
body{font-family:system-ui,sans-serif;margin:0;padding:1rem;max-width:60rem}
nav a{margin-right:1rem}
table{border-collapse:collapse;width:100%}
td,th{border:1px solid #888;padding:.4rem;text-align:left;vertical-align:top}
pre{white-space:pre-wrap;word-break:break-all;margin:0}
button{padding:.5rem 1rem;margin:.2rem;font-size:1rem}
.state{font-weight:bold}
@media (max-width:40rem){td,th{display:block;border:none}
tr{border-bottom:1px solid #888}}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, body: str) -> web.Response:
    text = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{_e(title)} - alert-receiver</title><style>{_CSS}</style></head>"
        '<body><nav><a href="/ui/approvals">Approvals</a>'
        '<a href="/ui/guards">Guards</a></nav>'
        f"<h1>{_e(title)}</h1>{body}</body></html>"
    )
    return web.Response(
        text=text,
        content_type="text/html",
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
            "form-action 'self'; frame-ancestors 'none'",
        },
    )


def _table(head: Iterable[str], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return f"<p>{_e(empty)}</p>"
    cells = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


class Console:
    """The ``/ui/`` pages."""

    def __init__(
        self,
        *,
        store: Store,
        auth: Authenticator,
        processor: Processor,
        clock: Callable[[], datetime],
        secrets: Iterable[str] = (),
    ) -> None:
        self._store = store
        self._auth = auth
        self._processor = processor
        self._clock = clock
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
        r.add_get("/ui/approvals", self.approvals)
        r.add_post("/ui/approvals/{id}", self.decide)
        r.add_get("/ui/guards", self.guards)

    def _who(self, request: web.Request, scope: Scope = "read") -> str | web.Response:
        """The authenticated identity with ``scope``, or the 401/403 answer.

        (Answered here, not raised: the problem middleware drops the headers
        of a raised HTTP error, and the prompt needs ``WWW-Authenticate``.)
        """
        header = request.headers.get("Authorization")
        try:
            self._auth.require(header, scope)
        except AuthError as exc:
            return web.Response(
                status=exc.status,
                text=f"{exc}\n",
                headers={"WWW-Authenticate": 'Basic realm="receiver", charset="UTF-8"'},
            )
        scheme, _, value = (header or "").partition(" ")
        if scheme.lower() == "basic":
            try:
                user = base64.b64decode(value.strip(), validate=True).decode()
            except (binascii.Error, ValueError):
                return "basic"
            return user.partition(":")[0] or "basic"
        return "api-token" if header else "local"

    def _token(self, who: str) -> str:
        return hmac.new(self._key, who.encode(), hashlib.sha256).hexdigest()

    async def home(self, request: web.Request) -> web.Response:
        """GET /ui/: the approvals page."""
        who = self._who(request)
        if isinstance(who, web.Response):
            return who
        raise web.HTTPFound("/ui/approvals")

    async def approvals(self, request: web.Request) -> web.Response:
        """GET /ui/approvals: pending approvals with their buttons."""
        who = self._who(request)
        if isinstance(who, web.Response):
            return who
        token = self._token(who)
        rows = []
        for approval in await self._store.approvals("pending"):
            req = approval.request
            form = (
                f'<form method=post action="/ui/approvals/{_e(approval.id)}">'
                f'<input type=hidden name=token value="{token}">'
                "<button name=decision value=approve>Approve</button>"
                "<button name=decision value=reject>Reject</button></form>"
            )
            rows.append(
                [
                    f"<span class=state>pending</span><br>{_e(approval.id)}",
                    _e(f"{req.get('playbook')} / {req.get('rule')}"),
                    _e(f"{req.get('alertname')} ({req.get('fingerprint')})"),
                    (
                        f"<pre>{_e(req.get('action', ''))}</pre><small>"
                        f"{_e(req.get('step'))} on {_e(req.get('target'))}</small>"
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
        notice = request.query.get("notice", "")
        body = (
            (
                f"<p role=status><strong>{_e(notice[:300])}</strong></p>"
                if notice
                else ""
            )
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
        form = await request.post()
        token = str(form.get("token", ""))
        if not hmac.compare_digest(token.encode(), self._token(who).encode()):
            raise web.HTTPForbidden(
                text="the form is stale or not from this console; reload the page"
            )
        decision = str(form.get("decision", ""))
        if decision not in ("approve", "reject"):
            raise web.HTTPBadRequest(text="decision must be approve or reject")
        approval = await self._store.get_approval(request.match_info["id"])
        if approval is None:
            raise web.HTTPNotFound(text="no such approval")
        status: Literal["approved", "rejected"] = (
            "approved" if decision == "approve" else "rejected"
        )
        answer = await apply_decision(
            self._store, self._processor, approval, status, by=who, now=self._clock()
        )
        log.info("console_approval", approval=approval.id, status=status, by=who)
        raise web.HTTPSeeOther("/ui/approvals?" + urlencode({"notice": answer.text}))

    async def guards(self, request: web.Request) -> web.Response:
        """GET /ui/guards: pause, parked entries, breakers, cooldowns, locks."""
        who = self._who(request)
        if isinstance(who, web.Response):
            return who
        now = self._clock()
        pause = await self._store.pause()
        paused = (
            f"<p class=state>Remediations PAUSED by {_e(pause.by)} at "
            f"{_e(iso(pause.at))}: {_e(pause.reason or 'no reason given')}</p>"
            if pause
            else "<p class=state>Remediations running (not paused).</p>"
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
            state = (
                f"OPEN since {iso(circuit.opened_at)}"
                if circuit.opened_at
                else f"closed ({circuit.failures} failures in a row)"
            )
            last = await self._store.last_run(f"cooldown:{playbook}:{target}", now)
            holder = await self._store.lock_holder(f"target:{target}", now)
            rows.append(
                [
                    _e(playbook),
                    _e(target),
                    f"<span class=state>{_e(state)}</span>",
                    _e(f"last run {iso(last)}" if last else "no cooldown running"),
                    _e(f"held by {holder}" if holder else "free"),
                ]
            )
        body = (
            "<h2>Pause</h2>"
            + paused
            + "<h2>Circuit breakers, cooldowns and locks</h2>"
            + _table(
                ["Playbook", "Target", "Circuit", "Cooldown", "Lock"],
                rows,
                "No remediation in the recent decisions.",
            )
            + "<h2>Parked journal entries</h2>"
            + _table(["Entry", "Source", "Attempts", "Why"], parked, "None parked.")
        )
        return _page("Guards", body)

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
    get = {"security": security, "responses": {"200": page, "401": page}}
    return {
        "/ui": {"get": {"summary": "Console home", **get}},
        "/ui/": {"get": {"summary": "Console home", **get}},
        "/ui/approvals": {"get": {"summary": "Pending approvals", **get}},
        "/ui/approvals/{id}": {
            "post": {
                "summary": "Approve or reject as the signed-in person (form)",
                "security": security,
                "responses": {"303": page, "401": page, "403": page},
            }
        },
        "/ui/guards": {"get": {"summary": "Pause, parked, breakers, locks", **get}},
    }
