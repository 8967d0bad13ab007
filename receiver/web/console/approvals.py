"""The console's approvals page."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlencode

from aiohttp import web

from receiver.model import iso
from receiver.web.approvals import identify
from receiver.web.console.base import ConsoleBase
from receiver.web.console.render import (
    _e,
    _page,
    _table,
    log,
)


class ApprovalPages(ConsoleBase):
    """``/ui/approvals``: pending approvals, Approve / Reject."""

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
                + self._hidden(request)
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
