"""The operator console at ``/ui/``: server-rendered pages, no build step.

Behind the API credentials: a browser without them gets the basic-auth prompt
(``WWW-Authenticate: Basic``); no token ever goes in a URL.

- ``/ui/incidents``: severity, state and the runbook's three clocks (acknowledge,
  mitigate, resolve) counting down, red *and* written "BREACHED" when passed.
  ``/ui/incidents/{id}``: the timeline, each alert's decision trace (steps with
  their outcome, reason, findings and verification), notes sent, the report,
  and forms to Acknowledge and Mark mitigated (while that clock runs), Resolve
  (while open) and Comment: the approve scope, the signed-in identity, the
  same ``IncidentService`` calls as the API.
- ``/ui/approvals``: pending approvals with the exact request each would run,
  and Approve / Reject buttons. The approver is the authenticated identity,
  never a form field; deciding goes through the one approval policy
  (``approvals.ApprovalDesk``) that Slack and the API use too.
- ``/ui/guards``: the global pause, circuit breakers, cooldowns, budgets in use,
  locks held, parked journal entries and parked sink deliveries; Reset (a
  breaker) and Pause / Resume need the admin scope and are written to the
  decision log; Decide again (a parked entry) and Send again (a parked
  delivery) need the admin scope and are logged.
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

One module per page (``incidents``, ``approvals``, ``guards``, ``rules``,
``backtest``) over ``base`` (identity, form tokens) and ``render`` (layout,
escaping, constants); ``Console`` composes them and registers the routes.
"""

from __future__ import annotations

from aiohttp import web

from receiver.web.console.approvals import ApprovalPages
from receiver.web.console.backtest import BacktestPages
from receiver.web.console.guards import GuardPages
from receiver.web.console.incidents import IncidentPages
from receiver.web.console.paths import console_paths
from receiver.web.console.render import MAX_CANDIDATE_BYTES, clock_item, html_errors
from receiver.web.console.rules import RulePages
from receiver.web.routing import Routes


class Console(IncidentPages, ApprovalPages, GuardPages, RulePages, BacktestPages):
    """The ``/ui/`` pages."""

    def attach(self, app: web.Application) -> None:
        """Register the routes."""
        r = Routes(app.router)
        get, post = r.add_get, r.add_post
        for add, path, handler in (
            (get, "/ui", self.home),
            (get, "/ui/", self.home),
            (get, "/ui/static/console.js", self.script),
            (get, "/ui/incidents", self.incident_list),
            (get, "/ui/incidents/{id}", self.incident),
            (post, "/ui/incidents/{id}/acknowledge", self.acknowledge_incident),
            (post, "/ui/incidents/{id}/mitigate", self.mitigate_incident),
            (post, "/ui/incidents/{id}/resolve", self.resolve_incident),
            (post, "/ui/incidents/{id}/comment", self.comment_incident),
            (get, "/ui/approvals", self.approvals),
            (post, "/ui/approvals/{id}", self.decide),
            (get, "/ui/guards", self.guards),
            (post, "/ui/guards/reset", self.reset),
            (post, "/ui/guards/pause", self.pause),
            (post, "/ui/guards/retry-delivery", self.retry_delivery),
            (post, "/ui/guards/retry-entry", self.retry_entry),
            (get, "/ui/rules", self.rules),
            (post, "/ui/rules/dry-run", self.dry_run),
            (get, "/ui/backtest", self.backtest_form),
            (post, "/ui/backtest", self.backtest),
        ):
            # A refusal is a page a person reads, not the API's problem+json.
            add(path, html_errors(handler))
        app[CONSOLE] = self


CONSOLE = web.AppKey("console", Console)


__all__ = [
    "CONSOLE",
    "MAX_CANDIDATE_BYTES",
    "Console",
    "clock_item",
    "console_paths",
]
