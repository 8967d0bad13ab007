"""The offline commands: ``replay`` (and ``replay --retry``), ``backtest``, ``report``.

Called by ``receiver.cli.main``. ``replay`` and ``backtest`` build the same
runtime as ``serve`` (``build_runtime``), so the namespace allowlist and the
PagerDuty alertname label mean the same offline as online; each command, once
it has read its settings, logs with the secrets mask ``serve`` logs with.
``backtest`` and ``report`` only read the store they are pointed at.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from receiver.errors import InputError, RuleError
from receiver.model import AlertTrace, Decision, MatchTrace

if TYPE_CHECKING:
    import httpx

    from receiver.settings import Settings

DEFAULT_RULES = [Path("rules")]


def out(text: str = "") -> None:
    """One line on stdout."""
    sys.stdout.write(text + "\n")


def _mask_logs(settings: Settings) -> None:
    """Log as ``main`` set up (console, warnings and up), masking ``settings``' secrets.

    ``main`` sets logging up before any settings are read. The offline
    commands hold tokens (``--from``), webhook URLs and store passwords, and
    log errors with tracebacks that may quote them: the same mask as
    ``receiver serve`` (``settings.secret_values()``).
    """
    from receiver import logs  # noqa: PLC0415

    logs.configure("console", "warning", settings.secret_values())


async def run_replay(args: argparse.Namespace) -> int:
    """``receiver replay``: decide payload files (or fetched ones) offline."""
    from receiver.rulebook.loader import load_rulebook  # noqa: PLC0415
    from receiver.runtime import build_runtime  # noqa: PLC0415
    from receiver.settings import load_settings  # noqa: PLC0415
    from receiver.sources import detect, parse_json  # noqa: PLC0415
    from receiver.steps.catalog import builtin_registry  # noqa: PLC0415

    at = _at(args.at)

    def clock() -> datetime:
        return at or datetime.now(UTC)

    if not args.files and not args.sources:
        raise InputError("give payload files to replay, or --from URL/ID")

    settings = load_settings(args.config)
    _mask_logs(settings)
    runtime = build_runtime(settings)
    rulebook = load_rulebook(args.rules or DEFAULT_RULES, steps=builtin_registry())
    processor = runtime.replayer(rulebook, clock)
    traces: list[tuple[str, AlertTrace]] = []
    events: list[str] = []
    # Named as given: a URL made a Path would lose a slash (``http:/host``).
    inputs = [(str(path), _read(path)) for path in args.files]
    inputs += [(ref, _fetch(ref, settings)) for ref in args.sources]
    for path, body in inputs:
        try:
            data: object = parse_json(body)
            source = detect(data)
            alerts = processor.alerts(source, body, clock())
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from exc
        if not alerts:
            events.append(_recorded_event(path, data))
        traces.extend((path, t) for t in await processor.decide(alerts, now=at))
    processor.flush_decided()
    if args.json:
        out(json.dumps({"alerts": [t.to_json() for _, t in traces]}, indent=2))
    else:
        _print_traces(traces)
        for line in events:
            out(line)
    return 0


def _at(text: str | None) -> datetime | None:
    """``--at``: an ISO 8601 time (UTC unless it says otherwise)."""
    if not text:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InputError(f"--at {text!r} is not an ISO 8601 time") from exc
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _recorded_event(path: str, data: object) -> str:
    """What replay says of a payload that is an event, not an alert."""
    event = data.get("event") if isinstance(data, dict) else None
    kind = event.get("event_type", "event") if isinstance(event, dict) else "event"
    return f"== {path}\n{str(kind)[:100]}: recorded as an event, not an alert"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc


def _api(ref: str, settings: Settings) -> tuple[str, str, dict[str, str]]:
    """Base URL, payload id and auth headers for a ``--from`` reference."""
    base, _, payload_id = ref.rstrip("/").rpartition("/")
    if (
        not base.startswith(("http://", "https://"))
        or not payload_id
        or payload_id in (".", "..")
    ):
        raise InputError(
            f"--from {ref!r}: expected BASE_URL/PAYLOAD_ID, e.g. "
            "http://127.0.0.1:8080/001a2182ce5b373ea899227ef"
        )
    base = base.removesuffix("/api/v1/payloads").removesuffix("/api/v1/parked")
    headers = {}
    # Retrying a parked entry needs the admin scope, reading a payload read:
    # an admin token does both, then a read token, then the webhook token.
    auth = settings.auth
    tokens = [*auth.admin_tokens, *auth.read_tokens, *auth.tokens]
    if tokens:
        headers["Authorization"] = f"Bearer {tokens[0].get_secret_value()}"
    return base, payload_id, headers


def retry_all(args: argparse.Namespace) -> int:
    """``replay --retry --from URL/ID...``: queue parked entries again."""
    from receiver.settings import load_settings  # noqa: PLC0415

    if args.files or not args.sources:
        raise InputError("--retry takes only --from URL/ID (parked entries)")
    settings = load_settings(args.config)
    _mask_logs(settings)
    for ref in args.sources:
        out(_retry(ref, settings))
    return 0


def _retry(ref: str, settings: Settings) -> str:
    """Queue a parked entry again in a running receiver."""
    payload_id, _ = _call(ref, settings, "POST", "/api/v1/parked/{id}/retry", 202)
    return f"queued parked entry {payload_id} again"


def _fetch(ref: str, settings: Settings) -> bytes:
    """A stored payload from a running receiver's API, as it was received."""
    _, response = _call(ref, settings, "GET", "/api/v1/payloads/{id}", 200)
    try:
        answer: object = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or "payload" not in answer:
        raise InputError(
            f"--from {ref}: the answer holds no stored payload (is this a "
            f"receiver's URL?): {response.text[:200]}"
        )
    return json.dumps(answer["payload"]).encode()


def _call(
    ref: str, settings: Settings, method: str, path: str, expect: int
) -> tuple[str, httpx.Response]:
    """``method path`` (``{id}`` the payload id ``ref`` names) on a running receiver.

    With the first of ``settings``' admin, read or webhook tokens (``--config``
    and the environment, as ``serve`` reads them).

    Raises:
        InputError: the receiver cannot be reached or answers other than ``expect``.
    """
    import httpx  # noqa: PLC0415

    base, payload_id, headers = _api(ref, settings)
    # The id is one path segment: '?', '#' or '%2F' in it cannot reach
    # another endpoint with the token.
    url = base + path.format(id=quote(payload_id, safe=""))
    try:
        response = httpx.request(method, url, headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise InputError(f"--from {ref}: cannot reach the receiver: {exc}") from exc
    if response.status_code != expect:
        detail = response.text[:300]
        raise InputError(f"--from {ref}: HTTP {response.status_code}: {detail}")
    return payload_id, response


_MARK = {
    Decision.DRY_RUN: "~",
    Decision.EXECUTED: "+",
    Decision.FAILED: "!",
    Decision.SKIPPED: "-",
    Decision.AWAITING_APPROVAL: "?",
}


def _print_match(match: MatchTrace, firing: bool) -> None:
    info = match.severity.info
    head = f"  rule {match.rule} -> {match.severity} {info.name}"
    out(f"{head}, playbook {match.playbook}")
    if match.description:
        out(f"    {match.description}")
    if firing:
        out(
            f"    ack within {info.acknowledge_within}, mitigate within "
            f"{info.mitigate_within}, updates every {info.update_every}, "
            f"{info.escalation()}"
        )
    if match.escalate_to:
        out(f"    escalate to: {match.escalate_to}")
    if match.runbook_url:
        out(f"    runbook: {match.runbook_url}")
    for note in match.notes:
        out(f"    {note}")
    for step in match.steps:
        label = f"{step.type} ({step.name})" if step.name else step.type
        out(
            f"    {_MARK[step.decision]} {step.kind.value:<11} {label:<28} "
            f"{step.decision.value}: {step.reason}"
        )


def _print_traces(traces: list[tuple[str, AlertTrace]]) -> None:
    last: str | None = None
    for path, trace in traces:
        if path != last:
            out(f"== {path}")
            last = path
        alert = trace.alert
        name = alert.labels.get("alertname", "<no alertname>")
        labels = " ".join(
            f"{k}={v}" for k, v in sorted(alert.labels.items()) if k != "alertname"
        )
        status = (
            alert.status
            if alert.actionable
            else alert.labels.get(
                "event_type", alert.refs.get("event_action", "recorded")
            )
        )
        out(f"{name} [{status}] from {alert.source}, fp {alert.fingerprint}")
        if labels:
            out(f"  labels: {labels}")
        for note in trace.notes:
            out(f"  note: {note}")
        for match in trace.matches:
            _print_match(match, alert.status == "firing")
        out()


async def run_backtest(args: argparse.Namespace) -> int:
    """``receiver backtest``: decide stored payloads by old and new rules; compare."""
    from receiver.engine import backtest  # noqa: PLC0415
    from receiver.rulebook.loader import load_rulebook  # noqa: PLC0415
    from receiver.runtime import build_runtime  # noqa: PLC0415
    from receiver.settings import load_settings  # noqa: PLC0415
    from receiver.steps.catalog import builtin_registry  # noqa: PLC0415
    from receiver.store import open_reader  # noqa: PLC0415

    period = backtest.parse_since(args.since)
    if args.max_changed is not None and args.max_changed < 0:
        raise InputError(f"--max-changed {args.max_changed}: give 0 or more alerts")
    if args.limit < 1:
        raise InputError(f"--limit {args.limit}: give 1 or more payloads")
    settings = load_settings(args.config)
    _mask_logs(settings)
    runtime = build_runtime(settings)
    url = f"sqlite:///{args.db}" if args.db else args.store or settings.store.url
    given = "--db" if args.db else "--store" if args.store else "store.url"
    await _check_store_file(url, given)
    steps = builtin_registry()
    try:
        new_rules = load_rulebook(args.rules, steps=steps)
        old_rules = load_rulebook(args.baseline or DEFAULT_RULES, steps=steps)
    except RuleError as exc:
        # Exit 1 means "more than --max-changed"; rules that do not load are a
        # bad argument (2): nothing was compared.
        for detail in exc.details:
            print(f"error: {detail}", file=sys.stderr)  # noqa: T201
        return 2
    # Read-only: the store may be a live service's, or a copy of one.
    reader = open_reader(url)
    try:
        # One more than the limit: to tell whether the period held more.
        entries = await backtest.stored_since(
            reader, datetime.now(UTC) - period, args.limit + 1
        )
    finally:
        await reader.close()
    if len(entries) > args.limit:
        entries = entries[-args.limit :]
        print(  # noqa: T201
            f"receiver: the period holds more than --limit {args.limit} payloads; "
            f"only the newest {args.limit} are replayed (raise --limit for all)",
            file=sys.stderr,
        )
    results = [
        await backtest.simulate(
            rules,
            entries,
            runtime.guards,
            namespaces=runtime.plan.namespaces,
            alertname_from=runtime.alertname_from,
        )
        for rules in (old_rules, new_rules)
    ]
    report = backtest.compare(*results, payloads=len(entries))
    if args.json:
        out(json.dumps(report.to_json(), indent=2))
    else:
        for line in report.lines():
            out(line)
    if args.max_changed is not None and report.changed > args.max_changed:
        print(  # noqa: T201
            f"receiver: {report.changed} alerts decided differently, "
            f"more than --max-changed {args.max_changed}",
            file=sys.stderr,
        )
        return 1
    return 0


async def _check_store_file(url: str, given: str) -> None:
    """Refuse a SQLite store file that is missing or not a receiver's, unchanged.

    A backtest of the wrong file would otherwise end in a traceback about a
    missing table. Redis and in-memory stores are not files.

    Raises:
        InputError: naming ``given`` (the option or setting), the file and
            what was expected.
    """
    from receiver.store import sqlite_file  # noqa: PLC0415
    from receiver.store.sqlite.reader import store_file_problem  # noqa: PLC0415

    path = sqlite_file(url) if url.startswith("sqlite://") else None
    if path is None:
        return
    problem = await asyncio.to_thread(store_file_problem, path)
    if problem:
        raise InputError(
            f"{given} {path}: {problem}; expected a receiver's SQLite store "
            "(the file receiver serve keeps with store.url sqlite:///PATH)"
        )


async def run_report(args: argparse.Namespace) -> int:
    """``receiver report ID``: the incident's report, logged with the secrets mask.

    A SQLite file that is there but is not a receiver's store (text, an empty
    file, a directory, another program's database) is refused as ``backtest``
    refuses it, before any read; a missing one is refused by ``print_report``.
    """
    from receiver.app_incidents import print_report  # noqa: PLC0415
    from receiver.settings import load_settings  # noqa: PLC0415
    from receiver.store import sqlite_file  # noqa: PLC0415

    settings = load_settings(args.config)
    _mask_logs(settings)
    url = args.store or settings.store.url
    path = sqlite_file(url) if url.startswith("sqlite://") else None
    if path is not None and path.exists():
        problem = await asyncio.to_thread(_report_file_problem, path)
        if problem:
            given = "--store" if args.store else "store.url"
            raise InputError(
                f"{given} {path}: {problem}; expected a receiver's SQLite store "
                "(the file receiver serve keeps with store.url sqlite:///PATH)"
            )
    return await print_report(args.incident_id, args.config, args.store, args.rules)


def _report_file_problem(path: Path) -> str | None:
    """Why the existing ``path`` holds no receiver's incidents (None if it may).

    A store file holds the journal, the incident tables or both (an older
    receiver's has no incident tables: it holds no incidents, which the report
    says). Read as the report reads it: nothing is written.
    """
    from receiver.store.sqlite.reader import store_file_problem  # noqa: PLC0415

    return store_file_problem(path, ("journal", "incidents"))
