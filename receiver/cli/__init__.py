"""The ``receiver`` command: serve, replay, backtest, report, rules check/test.

Parses arguments and hands off: ``serving`` runs the service, ``offline``
replays and backtests; no logic of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from receiver import __version__
from receiver.cli.offline import (
    DEFAULT_RULES,
    out,
    retry_all,
    run_backtest,
    run_replay,
)
from receiver.errors import ConfigError, InputError, RuleError, StoreUnavailableError

if TYPE_CHECKING:
    from receiver.model import Alert
    from receiver.rulebook.loader import Rulebook


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
    replay.add_argument(
        "--config",
        type=Path,
        help="YAML settings file (the namespace allowlist and the PagerDuty "
        "alertname label apply as in serve)",
    )
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
        from receiver.cli.serving import serve_or_say_why  # noqa: PLC0415

        return serve_or_say_why(args)
    try:
        return _dispatch(args)
    except (ConfigError, InputError) as exc:
        print(f"receiver: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    except StoreUnavailableError as exc:
        # ``report`` and ``backtest`` read a store that may be a live
        # service's Redis: nothing was read, which is not "no such incident"
        # or "more than --max-changed" (exit 1).
        print(  # noqa: T201
            f"receiver: cannot read the store: {' '.join(str(exc).split())}; "
            "check that it is up and that --store (or store.url) names it",
            file=sys.stderr,
        )
        return 2
    except RuleError as exc:
        for detail in exc.details:
            print(f"error: {detail}", file=sys.stderr)  # noqa: T201
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    """Run the chosen command."""
    if args.command == "replay":
        return retry_all(args) if args.retry else asyncio.run(run_replay(args))
    if args.command == "report":
        return asyncio.run(_report(args))
    if args.command == "backtest":
        return asyncio.run(run_backtest(args))
    if args.rules_command == "check":
        return _rules_check(args.paths or DEFAULT_RULES)
    return _rules_test(args.paths or DEFAULT_RULES)


async def _report(args: argparse.Namespace) -> int:
    from receiver.cli.offline import run_report  # noqa: PLC0415

    return await run_report(args)


def _rules_check(paths: list[Path]) -> int:
    from receiver.rulebook.loader import load_rulebook  # noqa: PLC0415
    from receiver.steps.catalog import builtin_registry  # noqa: PLC0415

    book = load_rulebook(paths, steps=builtin_registry())
    out(
        f"ok: {len(book.rules)} rules, {len(book.playbooks)} playbooks in "
        f"{len(book.files)} files"
    )
    return 0


def _rules_test(paths: list[Path]) -> int:
    from receiver.engine.planner import PlanContext, plan  # noqa: PLC0415
    from receiver.rulebook.loader import (  # noqa: PLC0415
        load_rulebook,
        rule_files,
    )
    from receiver.rulebook.ruletest import (  # noqa: PLC0415
        PlannedMatchView,
        PlannedStepView,
        run_file,
        test_files,
    )
    from receiver.steps.catalog import builtin_registry  # noqa: PLC0415

    def planner(
        alert: Alert, book: Rulebook, now: datetime, execute: bool
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
    steps = builtin_registry()
    book = load_rulebook(paths, steps=steps) if rule_files(paths) else None
    files = test_files(paths)
    if not files:
        out(f"no rule tests (*.test.yaml) under {', '.join(map(str, paths))}")
        return 1
    failed = 0
    total = 0
    for path in files:
        for result in run_file(path, book, planner, steps=steps):
            total += 1
            if result.ok:
                out(f"PASS {result.file}: {result.name}")
                continue
            failed += 1
            out(f"FAIL {result.file}: {result.name}")
            for problem in result.problems:
                out(f"  {problem}")
    out(f"{total - failed} passed, {failed} failed")
    return 1 if failed else 0
