"""The console's rules page and dry run."""

from __future__ import annotations

from aiohttp import web

from receiver.errors import InputError
from receiver.model import iso
from receiver.web.console.base import ConsoleBase
from receiver.web.console.render import (
    _e,
    _page,
    _step_row,
    _table,
)


class RulePages(ConsoleBase):
    """``/ui/rules``: loaded rule files and the dry-run form."""

    async def rules(self, request: web.Request) -> web.Response:
        """GET /ui/rules: loaded files, last reload, and the dry-run form."""
        who = self._who(request)
        if isinstance(who, web.Response):
            return who
        return _page("Rules", self._rules_body(request))

    def _rules_body(
        self, request: web.Request, result: str = "", payload_id: str = ""
    ) -> str:
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
            + self._hidden(request)
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
            body = self._rules_body(request, result, payload_id)
            return _page("Rules", body, status=404)
        try:
            alerts = self._processor.alerts(entry.source, entry.body, self._clock())
        except InputError as exc:
            result = f"<p role=alert>The payload does not parse: {_e(exc)}</p>"
            body = self._rules_body(request, result, payload_id)
            return _page("Rules", body, status=422)
        traces = await self._processor.decide_dry_run(alerts)
        parts = []
        for trace in traces:
            name = trace.alert.labels.get("alertname", trace.alert.fingerprint)
            rows = [
                [
                    _e(f"{m.rule} ({m.severity.value}) -> {m.playbook}"),
                    *_step_row(step.to_json())[1:4],
                ]
                for m in trace.matches
                for step in m.steps
            ]
            matched = ", ".join(m.rule for m in trace.matches) or "no rule"
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
        return _page("Rules", self._rules_body(request, result, payload_id))
