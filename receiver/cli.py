"""The ``receiver`` command: serve, replay, report, rules check, rules test.

Parses arguments, loads settings and rules, and hands off; no logic of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from receiver import __version__
from receiver.errors import ConfigError, InputError, RuleError
from receiver.model import AlertTrace, Decision, MatchTrace

DEFAULT_RULES = [Path("rules")]
# Seconds a worker child may take to shut down before it exits regardless.
CHILD_STOP_GRACE = 20.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="receiver",
        description="Alert-automation receiver: Alertmanager and PagerDuty in, "
        "safe playbooks out.",
    )
    parser.add_argument(
        "--version", action="version", version=f"receiver {__version__}"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8080)")
    serve.add_argument("--rules", type=Path, action="append", help="rule file or dir")
    serve.add_argument("--config", type=Path, help="YAML settings file")
    serve.add_argument(
        "--execute",
        action="store_true",
        help="run remediations for real (default: dry-run)",
    )
    serve.add_argument(
        "--mode",
        choices=["dry-run", "diagnose", "execute"],
        help="dry-run (default): nothing is contacted; diagnose: read-only "
        "diagnostics run and sinks post; execute: remediations run too",
    )
    serve.add_argument(
        "--role",
        choices=["all", "edge", "worker"],
        default="all",
        help="all (default): the edge, and the worker in a child process it "
        "supervises; edge: webhooks and API only; worker: decide the journal "
        "(serves only /healthz, /readyz and /metrics)",
    )
    # Internal: the doorbell descriptor a supervising edge hands its worker child.
    serve.add_argument("--bell-fd", type=int, help=argparse.SUPPRESS)

    replay = sub.add_parser(
        "replay", help="decide stored payloads offline and print the trace"
    )
    replay.add_argument("files", nargs="*", type=Path, metavar="FILE")
    replay.add_argument(
        "--from",
        dest="sources",
        action="append",
        default=[],
        metavar="URL/ID",
        help="fetch a stored payload from a running receiver, e.g. "
        "http://127.0.0.1:8080/<payload id> (token from RECEIVER_ADMIN_TOKENS, "
        "RECEIVER_READ_TOKENS or RECEIVER_AUTH_TOKENS)",
    )
    replay.add_argument(
        "--retry",
        action="store_true",
        help="with --from: put a parked entry back in that receiver's queue "
        "(POST /api/v1/parked/<id>/retry) instead of deciding it here",
    )
    replay.add_argument("--rules", type=Path, action="append", help="rule file or dir")
    replay.add_argument("--at", help="fix 'now' (ISO 8601) for duration-based severity")
    replay.add_argument("--json", action="store_true", help="print JSON")

    backtest = sub.add_parser(
        "backtest",
        help="replay stored payloads against new rules and report what changes",
    )
    backtest.add_argument(
        "--rules", type=Path, action="append", required=True, help="new rules"
    )
    backtest.add_argument(
        "--baseline", type=Path, action="append", help="rules to compare with"
    )
    backtest.add_argument("--since", default="7d", help="period, e.g. 7d, 12h")
    backtest.add_argument("--db", type=Path, help="SQLite database file")
    backtest.add_argument("--store", help="store URL (default: the settings' store)")
    backtest.add_argument("--config", type=Path, help="YAML settings file")
    backtest.add_argument(
        "--max-changed",
        type=int,
        help="exit 1 when more alerts than this are decided differently",
    )
    backtest.add_argument("--limit", type=int, default=100_000, help="max payloads")
    backtest.add_argument("--json", action="store_true", help="print JSON")

    report = sub.add_parser(
        "report", help="print an incident's report and post-mortem (Markdown)"
    )
    report.add_argument("incident_id", metavar="ID", help="e.g. INC-2026-11-26-001")
    report.add_argument("--config", type=Path, help="YAML settings file")
    report.add_argument("--store", help="store URL (default: the settings' store)")
    report.add_argument(
        "--rules", type=Path, action="append", help="rule file or dir (targets)"
    )

    rules = sub.add_parser("rules", help="check or test rule files")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True)
    check = rules_sub.add_parser("check", help="validate rule files")
    check.add_argument("paths", nargs="*", type=Path, metavar="PATH")
    test = rules_sub.add_parser("test", help="run rule unit tests (*.test.yaml)")
    test.add_argument("paths", nargs="*", type=Path, metavar="PATH")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``receiver`` console script."""
    args = _parser().parse_args(argv)
    if args.command != "serve":
        from receiver import logs  # noqa: PLC0415

        logs.configure("console", "warning")
    if args.command == "serve":
        return _serve_or_say_why(args)
    try:
        return _dispatch(args)
    except (ConfigError, InputError) as exc:
        print(f"receiver: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    except RuleError as exc:
        for detail in exc.details:
            print(f"error: {detail}", file=sys.stderr)  # noqa: T201
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    """Run the chosen command."""
    if args.command == "serve":
        return _serve(args)
    if args.command == "replay":
        return _retry_all(args) if args.retry else asyncio.run(_replay(args))
    if args.command == "report":
        return asyncio.run(_report(args))
    if args.command == "backtest":
        return asyncio.run(_backtest(args))
    if args.rules_command == "check":
        return _rules_check(args.paths or DEFAULT_RULES)
    return _rules_test(args.paths or DEFAULT_RULES)


async def _report(args: argparse.Namespace) -> int:
    from receiver.app_incidents import print_report  # noqa: PLC0415

    return await print_report(args.incident_id, args.config, args.store, args.rules)


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _rules_check(paths: list[Path]) -> int:
    from receiver.rulebook.loader import load_rulebook  # noqa: PLC0415

    book = load_rulebook(paths)
    _out(
        f"ok: {len(book.rules)} rules, {len(book.playbooks)} playbooks in "
        f"{len(book.files)} files"
    )
    return 0


def _rules_test(paths: list[Path]) -> int:
    from receiver.engine.planner import PlanContext, plan  # noqa: PLC0415
    from receiver.rulebook.loader import (  # noqa: PLC0415
        Rulebook,
        load_rulebook,
        rule_files,
    )
    from receiver.rulebook.ruletest import (  # noqa: PLC0415
        PlannedMatchView,
        PlannedStepView,
        run_file,
        test_files,
    )

    def planner(
        alert: Any, book: Rulebook, now: datetime, execute: bool
    ) -> list[PlannedMatchView]:
        planned = plan(alert, book, now, PlanContext(execute=execute))
        return [
            PlannedMatchView(
                m.rule,
                m.severity.value,
                m.playbook,
                tuple(
                    PlannedStepView(
                        s.trace.type,
                        s.trace.name,
                        "run" if s.run else s.trace.decision.value,
                        s.trace.reason,
                    )
                    for s in m.steps
                ),
            )
            for m in planned.matches
        ]

    # Test files may name their own rule files; the rest test what ``paths``
    # hold (so `rules test FILE.test.yaml` works on its own).
    book = load_rulebook(paths) if rule_files(paths) else None
    files = test_files(paths)
    if not files:
        _out(f"no rule tests (*.test.yaml) under {', '.join(map(str, paths))}")
        return 1
    failed = 0
    total = 0
    for path in files:
        for result in run_file(path, book, planner):
            total += 1
            if result.ok:
                _out(f"PASS {result.file}: {result.name}")
                continue
            failed += 1
            _out(f"FAIL {result.file}: {result.name}")
            for problem in result.problems:
                _out(f"  {problem}")
    _out(f"{total - failed} passed, {failed} failed")
    return 1 if failed else 0


def _serve_or_say_why(args: argparse.Namespace) -> int:
    """``receiver serve``; a failure to start is one clear log line and exit 1."""
    from receiver import logs  # noqa: PLC0415

    # Until the settings say otherwise: JSON unless on a terminal, so even a
    # failure to read the settings is a line log shippers can parse.
    logs.configure("auto", "info")
    import structlog  # noqa: PLC0415

    try:
        return _serve(args)
    except RuleError as exc:
        problems = [str(d) for d in exc.details]
        error = f"the rules do not load ({len(problems)} problems): " + "; ".join(
            problems
        )
    except (ConfigError, InputError) as exc:
        error = " ".join(str(exc).split())
    except OSError as exc:
        error = f"cannot start: {exc.strerror or exc}"
        if exc.filename:
            error += f": {exc.filename}"
    structlog.get_logger("receiver").error("serve_failed", error=error)
    return 1


def _die_with_the_edge() -> None:
    """A worker child never outlives its edge: a kill -9 of one takes both.

    Without it the child, told by the doorbell that the edge is gone, could
    still be finishing (or be slow to cancel) its work while a restarted edge
    and its new worker take the same store over, which on SQLite assumes one
    instance. Linux only (``PR_SET_PDEATHSIG``); elsewhere the doorbell's end
    of file stops the child.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes  # noqa: PLC0415
    import signal  # noqa: PLC0415

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() == 1:  # the edge died before the call above
        os._exit(1)


def _serve(args: argparse.Namespace) -> int:
    import gc  # noqa: PLC0415

    if args.bell_fd is not None:
        _die_with_the_edge()

    import httpx  # noqa: PLC0415
    import uvloop  # noqa: PLC0415

    from receiver import logs  # noqa: PLC0415
    from receiver.app import create_app  # noqa: PLC0415
    from receiver.engine.doorbell import EdgeBell, WorkerBell  # noqa: PLC0415
    from receiver.rulebook.loader import load_rulebook  # noqa: PLC0415
    from receiver.settings import load_settings  # noqa: PLC0415
    from receiver.sources.alertmanager_api import AlertmanagerApi  # noqa: PLC0415
    from receiver.steps import build_executors  # noqa: PLC0415
    from receiver.store import Retention, open_store  # noqa: PLC0415
    from receiver.supervisor import WorkerSupervisor, supervise  # noqa: PLC0415
    from receiver.web.server import serve  # noqa: PLC0415

    settings = load_settings(
        args.config,
        overrides={
            "host": args.host,
            "port": args.port,
            "rules": args.rules,
            "mode": "execute" if args.execute else args.mode,
        },
    )
    settings.check_safe()
    logs.configure(settings.log_format, settings.log_level, settings.secret_values())
    rulebook = load_rulebook(settings.rules)
    firing_check = None
    if settings.alertmanager_url:
        firing_check = AlertmanagerApi(
            httpx.AsyncClient(timeout=httpx.Timeout(5.0, connect=2.0)),
            settings.alertmanager_url,
        )
    role = args.role
    # An in-memory store cannot be shared with a child: one process does all.
    split = role == "all" and not _in_memory(settings.store)
    store = open_store(
        settings.store,
        Retention(
            max_age=settings.retention,
            max_payloads=settings.retention_payloads,
            max_decisions=settings.retention_decisions,
            lease=settings.journal_lease,
        ),
        # Beside a live worker process, the edge must not hand its claims back.
        reclaim=role == "worker" or (not split and role == "all"),
    )
    edge_bell = worker_bell = supervisor = None
    if split:
        edge_end, worker_end = socket.socketpair()
        edge_bell = EdgeBell(edge_end)
        supervisor = WorkerSupervisor(_passed_on(args), worker_end)
    if args.bell_fd is not None:
        worker_bell = WorkerBell(socket.socket(fileno=args.bell_fd))
    app = create_app(
        settings,
        rulebook=rulebook,
        store=store,
        executors=build_executors(settings) if role != "edge" else {},
        firing_check=firing_check,
        rule_paths=settings.rules,
        role="edge" if split else role,
        edge_bell=edge_bell,
        worker_bell=worker_bell,
        # A reload on the edge (SIGHUP, POST /-/reload) reaches the worker child.
        reload_worker=supervisor.reload if supervisor is not None else None,
    )
    if supervisor is not None:
        app.cleanup_ctx.append(supervise(supervisor))
    # Everything built so far lives for the whole process: keep it out of the
    # garbage collector's generations so collections during a storm stay cheap.
    gc.freeze()
    loop = uvloop.new_event_loop()
    if worker_bell is not None:
        loop.run_until_complete(_run_child(app, worker_bell))
        return 0
    serve(
        app,
        host=settings.host,
        port=settings.port,
        max_connections=settings.max_connections,
        loop=loop,
        on_started=lambda banner: _log_started(settings, rulebook, role, banner),
    )
    return 0


def _in_memory(url: str) -> bool:
    return url.removeprefix("sqlite://").strip("/") == ":memory:"


def _passed_on(args: argparse.Namespace) -> list[str]:
    """The serve options a worker child needs (everything but where to listen)."""
    out: list[str] = []
    if args.config is not None:
        out += ["--config", str(args.config)]
    for path in args.rules or []:
        out += ["--rules", str(path)]
    if args.execute:
        out.append("--execute")
    if args.mode is not None:
        out += ["--mode", args.mode]
    return out


async def _run_child(app: Any, bell: Any) -> None:
    """A supervised worker: no listener; stop on SIGTERM or when the edge is gone."""
    import signal  # noqa: PLC0415

    from aiohttp import web  # noqa: PLC0415

    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gone = asyncio.create_task(bell.edge_gone.wait())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({gone, stopped}, return_when=asyncio.FIRST_COMPLETED)
    gone.cancel()
    stopped.cancel()
    try:
        # Bounded: a worker whose edge is gone must not linger on a stuck
        # shutdown; the journal keeps what it did not finish.
        await asyncio.wait_for(runner.cleanup(), CHILD_STOP_GRACE)
    except TimeoutError:
        import structlog  # noqa: PLC0415

        structlog.get_logger("receiver").error(
            "worker_stop_timed_out", seconds=CHILD_STOP_GRACE
        )
        os._exit(1)


def _log_started(settings: Any, rulebook: Any, role: str, banner: str) -> None:
    """Once every listening socket is bound (aiohttp's banner names them)."""
    import structlog  # noqa: PLC0415

    log = structlog.get_logger("receiver")
    base = f"http://{settings.host}:{settings.port}"
    # The banner names the bound addresses (the real port when --port 0).
    bound = re.search(r"Running on (\S+)", banner)
    log.info(
        "receiver_started",
        url=bound.group(1) if bound else base,
        version=__version__,
        role=role,
        mode=settings.mode,
        rules=len(rulebook.rules),
        playbooks=len(rulebook.playbooks),
        store=settings.store.split("://", 1)[0],
    )
    if not settings.has_credentials:
        log.warning(
            "auth_disabled",
            detail="no credentials configured: listening on loopback only and "
            "accepting unauthenticated requests; set RECEIVER_AUTH_TOKENS before "
            "exposing the receiver",
        )
    if settings.mode != "execute":
        log.info(
            "dry_run_mode",
            mode=settings.mode,
            detail="remediations are only described, never run; start with "
            "--execute to run them"
            + (
                ""
                if settings.mode == "diagnose"
                else " (--mode diagnose runs read-only diagnostics)"
            ),
        )
    log.info(
        "try_it",
        detail=f"send an example alert: examples/send.sh {base} "
        "(then GET /api/v1/decisions)",
    )


async def _replay(args: argparse.Namespace) -> int:
    from receiver.engine.planner import PlanContext  # noqa: PLC0415
    from receiver.engine.runner import Runner  # noqa: PLC0415
    from receiver.engine.worker import Processor  # noqa: PLC0415
    from receiver.rulebook.loader import load_rulebook  # noqa: PLC0415
    from receiver.sources import detect, parse_json  # noqa: PLC0415

    at = _at(args.at)

    def clock() -> datetime:
        return at or datetime.now(UTC)

    if not args.files and not args.sources:
        raise InputError("give payload files to replay, or --from URL/ID")

    rulebook = load_rulebook(args.rules or DEFAULT_RULES)
    processor = Processor(rulebook, Runner({}, clock), clock, PlanContext())
    traces: list[tuple[Path, AlertTrace]] = []
    events: list[str] = []
    inputs = [(path, _read(path)) for path in args.files]
    inputs += [(Path(ref), _fetch(ref)) for ref in args.sources]
    for path, body in inputs:
        try:
            data: Any = parse_json(body)
            source = detect(data)
            alerts = processor.alerts(source, body, clock())
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from exc
        if not alerts:
            events.append(_recorded_event(path, data))
        traces.extend((path, t) for t in await processor.decide(alerts, now=at))
    if args.json:
        _out(json.dumps({"alerts": [t.to_json() for _, t in traces]}, indent=2))
    else:
        _print_traces(traces)
        for line in events:
            _out(line)
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


def _recorded_event(path: Path, data: Any) -> str:
    """What replay says of a payload that is an event, not an alert."""
    event = data.get("event") if isinstance(data, dict) else None
    kind = event.get("event_type", "event") if isinstance(event, dict) else "event"
    return f"== {path}\n{str(kind)[:100]}: recorded as an event, not an alert"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc


def _api(ref: str) -> tuple[str, str, dict[str, str]]:
    """Base URL, payload id and auth headers for a ``--from`` reference."""
    from receiver.settings import load_settings  # noqa: PLC0415

    base, _, payload_id = ref.rstrip("/").rpartition("/")
    if not base.startswith(("http://", "https://")) or not payload_id:
        raise InputError(
            f"--from {ref!r}: expected BASE_URL/PAYLOAD_ID, e.g. "
            "http://127.0.0.1:8080/001a2182ce5b373ea899227ef"
        )
    base = base.removesuffix("/api/v1/payloads").removesuffix("/api/v1/parked")
    settings = load_settings()
    headers = {}
    # Retrying a parked entry needs the admin scope, reading a payload read:
    # an admin token does both, then a read token, then the webhook token.
    tokens = [*settings.admin_tokens, *settings.read_tokens, *settings.auth_tokens]
    if tokens:
        headers["Authorization"] = f"Bearer {tokens[0].get_secret_value()}"
    return base, payload_id, headers


def _retry_all(args: argparse.Namespace) -> int:
    """``replay --retry --from URL/ID...``: queue parked entries again."""
    if args.files or not args.sources:
        raise InputError("--retry takes only --from URL/ID (parked entries)")
    for ref in args.sources:
        _out(_retry(ref))
    return 0


def _retry(ref: str) -> str:
    """Queue a parked entry again in a running receiver."""
    import httpx  # noqa: PLC0415

    base, payload_id, headers = _api(ref)
    try:
        response = httpx.post(
            f"{base}/api/v1/parked/{payload_id}/retry", headers=headers, timeout=10
        )
    except httpx.HTTPError as exc:
        raise InputError(f"--from {ref}: cannot reach the receiver: {exc}") from exc
    if response.status_code != 202:
        detail = response.text[:300]
        raise InputError(f"--from {ref}: HTTP {response.status_code}: {detail}")
    return f"queued parked entry {payload_id} again"


def _fetch(ref: str) -> bytes:
    """A stored payload from a running receiver's API, as it was received."""
    import httpx  # noqa: PLC0415

    base, payload_id, headers = _api(ref)
    try:
        response = httpx.get(
            f"{base}/api/v1/payloads/{payload_id}", headers=headers, timeout=10
        )
    except httpx.HTTPError as exc:
        raise InputError(f"--from {ref}: cannot reach the receiver: {exc}") from exc
    if response.status_code != 200:
        detail = response.text[:300]
        raise InputError(f"--from {ref}: HTTP {response.status_code}: {detail}")
    payload = response.json().get("payload")
    return json.dumps(payload).encode()


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
    _out(f"{head}, playbook {match.playbook}")
    if match.description:
        _out(f"    {match.description}")
    if firing:
        _out(
            f"    ack within {info.acknowledge_within}, mitigate within "
            f"{info.mitigate_within}, updates every {info.update_every}, "
            f"{info.escalation()}"
        )
    if match.escalate_to:
        _out(f"    escalate to: {match.escalate_to}")
    if match.runbook_url:
        _out(f"    runbook: {match.runbook_url}")
    for note in match.notes:
        _out(f"    {note}")
    for step in match.steps:
        label = f"{step.type} ({step.name})" if step.name else step.type
        _out(
            f"    {_MARK[step.decision]} {step.kind.value:<11} {label:<28} "
            f"{step.decision.value}: {step.reason}"
        )


def _print_traces(traces: list[tuple[Path, AlertTrace]]) -> None:
    last: Path | None = None
    for path, trace in traces:
        if path != last:
            _out(f"== {path}")
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
        _out(f"{name} [{status}] from {alert.source}, fp {alert.fingerprint}")
        if labels:
            _out(f"  labels: {labels}")
        for note in trace.notes:
            _out(f"  note: {note}")
        for match in trace.matches:
            _print_match(match, alert.status == "firing")
        _out()


async def _backtest(args: argparse.Namespace) -> int:
    from receiver.app import guard_defaults  # noqa: PLC0415
    from receiver.engine import backtest  # noqa: PLC0415
    from receiver.rulebook.loader import load_rulebook  # noqa: PLC0415
    from receiver.settings import load_settings  # noqa: PLC0415
    from receiver.store import open_store  # noqa: PLC0415

    period = backtest.parse_since(args.since)
    settings = load_settings(args.config)
    url = f"sqlite:///{args.db}" if args.db else args.store or settings.store
    if args.db and not args.db.exists():
        raise InputError(f"--db {args.db}: no such database file")
    new_rules = load_rulebook(args.rules)
    old_rules = load_rulebook(args.baseline or DEFAULT_RULES)
    store = open_store(url)
    try:
        entries = await backtest.stored_since(
            store, datetime.now(UTC) - period, args.limit
        )
    finally:
        await store.close()
    namespaces = tuple(settings.namespaces) if settings.namespaces is not None else None
    results = [
        await backtest.simulate(
            rules,
            entries,
            guard_defaults(settings),
            namespaces=namespaces,
            alertname_from=settings.pagerduty_alertname_from,
        )
        for rules in (old_rules, new_rules)
    ]
    report = backtest.compare(*results, payloads=len(entries))
    if args.json:
        _out(json.dumps(report.to_json(), indent=2))
    else:
        for line in report.lines():
            _out(line)
    if args.max_changed is not None and report.changed > args.max_changed:
        print(  # noqa: T201
            f"receiver: {report.changed} alerts decided differently, "
            f"more than --max-changed {args.max_changed}",
            file=sys.stderr,
        )
        return 1
    return 0
