"""``receiver serve``: load settings, build the runtime, run the edge and worker.

Called by ``receiver.cli.main``; heavy imports stay inside the functions so the
other commands start fast.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import sys
from typing import TYPE_CHECKING

from receiver import __version__
from receiver.errors import (
    ConfigError,
    InputError,
    ReceiverError,
    RuleError,
    StoreUnavailableError,
)

if TYPE_CHECKING:
    from aiohttp import web

    from receiver.engine.doorbell import WorkerBell
    from receiver.rulebook.loader import Rulebook
    from receiver.settings import Settings

# Seconds a worker child may take to shut down before it exits regardless.
CHILD_STOP_GRACE = 20.0


def serve_or_say_why(args: argparse.Namespace) -> int:
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
        count = "1 problem" if len(problems) == 1 else f"{len(problems)} problems"
        error = f"the rules do not load ({count}): " + "; ".join(problems)
    except (ConfigError, InputError) as exc:
        error = " ".join(str(exc).split())
    except OSError as exc:
        error = f"cannot start: {exc.strerror or exc}"
        if exc.filename:
            error += f": {exc.filename}"
    except StoreUnavailableError as exc:
        # The store cannot be reached yet (a worker child is started again by
        # its supervisor; a process manager restarts the edge).
        error = f"cannot start: {' '.join(str(exc).split())}"
        if "credentials" not in error:
            error += "; check that the store is up"
    except ReceiverError as exc:
        error = f"cannot start: {' '.join(str(exc).split())}"
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
    import warnings  # noqa: PLC0415

    import structlog  # noqa: PLC0415
    import uvloop  # noqa: PLC0415

    from receiver import logs  # noqa: PLC0415
    from receiver.app import create_app  # noqa: PLC0415
    from receiver.engine.doorbell import EdgeBell, WorkerBell  # noqa: PLC0415
    from receiver.rulebook.loader import load_rulebook  # noqa: PLC0415
    from receiver.runtime import build_runtime  # noqa: PLC0415
    from receiver.settings import (  # noqa: PLC0415
        SettingsDeprecationWarning,
        load_settings,
    )
    from receiver.steps.catalog import builtin_registry  # noqa: PLC0415
    from receiver.supervisor import WorkerSupervisor, supervise  # noqa: PLC0415
    from receiver.web.server import serve  # noqa: PLC0415

    with warnings.catch_warnings(record=True) as deprecated:
        warnings.simplefilter("always", SettingsDeprecationWarning)
        settings = load_settings(
            args.config,
            overrides={
                "server": {"host": args.host, "port": args.port},
                "engine": {
                    "rules": args.rules,
                    "mode": "execute" if args.execute else args.mode,
                },
            },
        )
    settings.check_safe()
    server = settings.server
    logs.configure(server.log_format, server.log_level, settings.secret_values())
    for warning in deprecated:
        structlog.get_logger("receiver").warning(
            "setting_deprecated", detail=str(warning.message)
        )
    runtime = build_runtime(settings)
    rulebook = load_rulebook(settings.engine.rules, steps=builtin_registry())
    role = args.role
    # An in-memory store cannot be shared with a child: one process does all.
    split = role == "all" and not settings.store.in_memory
    store = runtime.open_store(
        # Beside a live worker process, the edge must not hand its claims back.
        reclaim=role == "worker" or (not split and role == "all"),
    )
    edge_bell = worker_bell = supervisor = None
    if split:
        edge_bell = EdgeBell()
        supervisor = WorkerSupervisor(_passed_on(args), edge_bell.new_line)
    if args.bell_fd is not None:
        worker_bell = WorkerBell(socket.socket(fileno=args.bell_fd))
    app = create_app(
        runtime,
        rulebook=rulebook,
        store=store,
        executors=runtime.executors() if role != "edge" else {},
        firing_check=runtime.firing_check(),
        rule_paths=settings.engine.rules,
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
        host=server.host,
        port=server.port,
        max_connections=server.max_connections,
        loop=loop,
        on_started=lambda banner: _log_started(settings, rulebook, role, banner),
    )
    return 0


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


async def _run_child(app: web.Application, bell: WorkerBell) -> None:
    """A supervised worker: no listener; stop on SIGTERM or when the edge is gone."""
    import signal  # noqa: PLC0415

    from aiohttp.web import AppRunner  # noqa: PLC0415

    runner = AppRunner(app, handle_signals=False)
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
    # Bounded: a worker whose edge is gone must not linger on a stuck
    # shutdown; the journal keeps what it did not finish.
    if not await stop_within(runner, CHILD_STOP_GRACE):
        os._exit(1)


async def stop_within(runner: web.AppRunner, grace: float) -> bool:
    """Clean the app up within ``grace`` seconds; False (logged) if it could not.

    Cut short at the grace, aiohttp cancels the cleanup steps still running;
    each raises its ``CancelledError`` (a stop never swallows its own), and
    with more than one aiohttp raises them together as a ``CleanupError``:
    that too is the grace running out, not a crash to print a traceback for.
    """
    import structlog  # noqa: PLC0415
    from aiohttp.web import CleanupError  # noqa: PLC0415

    try:
        await asyncio.wait_for(runner.cleanup(), grace)
    except TimeoutError:
        errors: list[BaseException] = []
    except CleanupError as exc:
        errors = list(exc.args[1]) if len(exc.args) > 1 else []
    except Exception as exc:  # noqa: BLE001 (one step failed: aiohttp raises it as is)
        errors = [exc]
    else:
        return True
    log = structlog.get_logger("receiver")
    if all(isinstance(e, asyncio.CancelledError) for e in errors):
        log.error("worker_stop_timed_out", seconds=grace)
    else:
        log.error("worker_stop_failed", errors=[repr(e) for e in errors])
    return False


def _log_started(
    settings: Settings, rulebook: Rulebook, role: str, banner: str
) -> None:
    """Once every listening socket is bound (aiohttp's banner names them)."""
    import structlog  # noqa: PLC0415

    log = structlog.get_logger("receiver")
    mode = settings.engine.mode
    base = f"http://{settings.server.host}:{settings.server.port}"
    # The banner names the bound addresses (the real port when --port 0).
    bound = re.search(r"Running on (\S+)", banner)
    if bound:
        base = bound.group(1)
    log.info(
        "receiver_started",
        url=base,
        version=__version__,
        role=role,
        mode=mode,
        rules=len(rulebook.rules),
        playbooks=len(rulebook.playbooks),
        store=settings.store.url.split("://", 1)[0],
    )
    if not settings.has_credentials:
        log.warning(
            "auth_disabled",
            detail="no credentials configured: listening on loopback only and "
            "accepting unauthenticated requests; set RECEIVER_AUTH_TOKENS before "
            "exposing the receiver",
        )
    if mode != "execute":
        log.info(
            "dry_run_mode",
            mode=mode,
            detail="remediations are only described, never run; start with "
            "--execute to run them"
            + (
                ""
                if mode == "diagnose"
                else " (--mode diagnose runs read-only diagnostics)"
            ),
        )
    log.info(
        "try_it",
        detail=f"send an example alert: examples/send.sh {base} "
        "(then GET /api/v1/decisions)",
    )
