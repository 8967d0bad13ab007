"""The console's guards page and its admin actions."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from urllib.parse import urlencode

from aiohttp import web

from receiver.engine.guards import GuardKeeper
from receiver.model import JSONValue, iso, json_objects
from receiver.store.base import DecisionQuery, new_id
from receiver.web.console.base import ConsoleBase
from receiver.web.console.render import (
    _e,
    _page,
    _span,
    _table,
    log,
)

# Parked entries and deliveries listed on the page; the API lists more.
SHOWN = 50


def _more(shown: int, count: int, api: str) -> str:
    """A line saying the list is cut, and where the rest is."""
    if count <= shown:
        return ""
    return (
        f"<p class=state>{shown} of {count} shown, newest first; "
        f"<code>GET {api}?limit=1000</code> lists more.</p>"
    )


class GuardPages(ConsoleBase):
    """``/ui/guards``: pause, breakers, cooldowns, budgets, locks; Reset and Pause."""

    async def guards(self, request: web.Request) -> web.Response:
        """GET /ui/guards: pause, breakers, cooldowns, budgets, locks, parked."""
        who = self._who(request)
        if isinstance(who, web.Response):
            return who
        now = self._clock()
        hidden = self._hidden(request)
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
                "<form method=post action=/ui/guards/retry-entry>"
                + hidden
                + f'<input type=hidden name=entry value="{_e(p.entry.id)}">'
                "<button>Decide again</button></form>",
            ]
            for p in await self._store.parked(SHOWN)
        ]
        delivery_list, deliveries_count = await self._admin.deliveries_parked(SHOWN)
        deliveries = [
            [
                _e(d["id"]),
                _e(f"{d.get('alertname') or '?'} ({d.get('fingerprint') or '?'})"),
                _e(_listed(d["left"]) or "none"),
                _e(d["attempts"]),
                f"<pre>{_e(d['reason'])}</pre>",
                "<form method=post action=/ui/guards/retry-delivery>"
                + hidden
                + f'<input type=hidden name=row value="{_e(d["id"])}">'
                "<button>Send again</button></form>",
            ]
            for d in delivery_list
        ]
        entries_count = await self._store.parked_count()
        rows = []
        playbooks = self._processor.rulebook.playbooks
        # A binding (``as:``) shares a cooldown per target with the playbook
        # it was bound from.
        rules = self._processor.rulebook.rules
        bound_from = {r.playbook: r.rule.playbook for r in rules}
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
            last = await GuardKeeper.last_run(
                self._store, playbook, target, now, bound_from.get(playbook, "")
            )
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
            + "<h2>Parked journal entries</h2><p>Payloads the worker could not "
            "finish deciding after repeated attempts. Decide again once the cause "
            "is fixed.</p>"
            + _table(
                ["Entry", "Source", "Attempts", "Why", "Action"],
                parked,
                "None parked.",
            )
            + _more(len(parked), entries_count, "/api/v1/parked")
            + "<h2>Parked sink deliveries</h2><p>PagerDuty notes, Slack messages "
            "and webhook calls that could not be delivered after repeated "
            "attempts. Send again once the cause is fixed: only the sinks left "
            "are contacted.</p>"
            + _table(
                ["Delivery", "Alert", "Sinks left", "Attempts", "Why", "Action"],
                deliveries,
                "None parked.",
            )
            + _more(len(deliveries), deliveries_count, "/api/v1/sinks/parked")
        )
        return _page("Guards", body)

    async def _runs(self, playbook: str, since: datetime) -> int:
        records = await self._store.decisions(
            DecisionQuery(playbook=playbook, since=since, limit=1000)
        )
        return sum(
            1
            for record in records
            for match in json_objects(record.get("matches"))
            if match.get("playbook") == playbook
            for step in json_objects(match.get("steps"))
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

    async def retry_entry(self, request: web.Request) -> web.Response:
        """POST /ui/guards/retry-entry: a parked journal entry back in the queue."""
        return await self._requeue(
            request, "entry", "parked journal entry", self._admin.requeue_entry
        )

    async def retry_delivery(self, request: web.Request) -> web.Response:
        """POST /ui/guards/retry-delivery: send a parked delivery again (admin)."""
        return await self._requeue(
            request, "row", "parked sink delivery", self._admin.requeue_delivery
        )

    async def _requeue(
        self,
        request: web.Request,
        field: str,
        what: str,
        requeue: Callable[[str, str], Awaitable[bool]],
    ) -> web.Response:
        """An admin's retry of the parked thing the form's ``field`` names."""
        who = self._who(request, "admin")
        if isinstance(who, web.Response):
            return who
        form = await self._form(request, who)
        name = form.get(field, "")
        if not name or len(name) > 200:
            raise web.HTTPBadRequest(text=f"{field} must name a {what}")
        if await requeue(name, who):
            notice = f"{what} {name} queued again by {who}"
        else:
            notice = f"no {what} {name} (done or retried meanwhile)"
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

    async def _recent_targets(self) -> list[tuple[str, str]]:
        found: dict[tuple[str, str], None] = {}
        for record in await self._store.decisions(DecisionQuery(limit=200)):
            for match in json_objects(record.get("matches")):
                for step in json_objects(match.get("steps")):
                    if step.get("kind") == "remediation" and step.get("target"):
                        found[(str(match.get("playbook")), str(step["target"]))] = None
        return list(found)


def _listed(value: JSONValue) -> str:
    return ", ".join(str(v) for v in value) if isinstance(value, list) else ""
