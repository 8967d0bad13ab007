"""The console's backtest form: bounded, admin-only, audited."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Mapping
from datetime import datetime
from urllib.parse import parse_qsl

import yaml
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from receiver.engine import backtest
from receiver.engine.backtest import Bounded, MatchSummary
from receiver.errors import ClientGoneError, InputError, RuleError, RuleErrorDetail
from receiver.model import iso
from receiver.rulebook.loader import Rulebook, load_rulebook
from receiver.store.base import new_id
from receiver.web.console.base import ConsoleBase
from receiver.web.console.render import (
    BACKTEST_TITLE,
    CANDIDATE,
    FORM_TIMEOUT,
    MAX_CANDIDATE_BYTES,
    MAX_CANDIDATE_NODES,
    MAX_FORM_BYTES,
    _e,
    _page,
    _table,
    log,
)


class BacktestPages(ConsoleBase):
    """``/ui/backtest``: candidate rules replayed over stored payloads."""

    async def backtest_form(self, request: web.Request) -> web.Response:
        """GET /ui/backtest: the candidate rules form (admin)."""
        who = self._who(request, "admin")
        if isinstance(who, web.Response):
            return who
        return _page(BACKTEST_TITLE, self._backtest_body(request, {}))

    def _backtest_body(
        self, request: web.Request, form: Mapping[str, str], result: str = ""
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
            + self._hidden(request)
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
                self._backtest_body(request, form, _rule_errors(exc.details)),
                status=400,
            )
        except _Refusal as exc:
            return self._backtest_refused(request, form, exc.why, exc.status)
        except InputError as exc:
            return self._backtest_refused(request, form, str(exc).lstrip("-"), 400)
        return _page(BACKTEST_TITLE, self._backtest_body(request, form, result))

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
        except ConnectionError:
            raise ClientGoneError(
                "the client disconnected while sending the form"
            ) from None
        except (ValueError, HttpProcessingError, RequestPayloadError) as exc:
            # A malformed multipart body, or one not decodable under its
            # Content-Encoding.
            raise _Refusal(400, "the form does not parse as multipart") from exc
        self._check_form(request, who, fields.get("token", ""))
        return fields, upload

    def _backtest_refused(
        self, request: web.Request, form: Mapping[str, str], why: str, status: int
    ) -> web.Response:
        note = f"<p role=alert id=refused>Not run: {_e(why)}.</p>"
        return _page(
            BACKTEST_TITLE,
            self._backtest_body(request, form, note),
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
        steps = self._processor.rulebook.steps
        if replaces == "all":
            return load_rulebook([], {name: text}, steps=steps), "all"
        if replaces == "new":
            return load_rulebook(files, {name: text}, steps=steps), "none"
        if replaces.isdigit() and int(replaces) < len(files):
            target = files[int(replaces)]
            return load_rulebook(files, {target: text}, steps=steps), target
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
        data: object = yaml.safe_load(text)
    except yaml.YAMLError:
        return  # the loader reports it with its place
    except RecursionError:
        raise InputError(
            "the candidate nests too deeply to parse; write the rules out"
        ) from None
    seen = 0
    stack: list[object] = [data]
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


def _decided(summary: Iterable[MatchSummary]) -> str:
    items = [
        f"<li>{_e(m.rule)} <span class=state>{_e(m.severity)}</span> -&gt; "
        f"{_e(m.playbook)}"
        + (
            "<ul>" + "".join(f"<li>{_e(step)}</li>" for step in m.steps) + "</ul>"
            if m.steps
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
            _e(e.payload_id),
            _e(e.alertname or e.fingerprint),
            _decided(e.baseline),
            _decided(e.new),
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
            _e(r.remediation),
            _e(r.baseline),
            _e(r.new),
            "<span class=state>"
            + ("MORE often" if r.new > r.baseline else "LESS often")
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
