"""Reload the rules without a restart: ``SIGHUP`` and ``POST /-/reload``.

As Prometheus and Alertmanager do it: the new rule files are loaded and checked
in full first; only a rulebook without errors replaces the current one, in one
assignment, so every alert is decided by either the old or the new rules, never
a mix. A bad file keeps the current rules, logs every problem, and sets
``receiver_config_last_reload_successful`` to 0 until a reload succeeds.

Built by ``create_app`` when it is given the rule paths (``receiver serve``).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

import structlog
from aiohttp import web

from receiver.engine.worker import Processor
from receiver.errors import RuleError, RuleErrorDetail
from receiver.metrics import Metrics
from receiver.model import Severity
from receiver.rulebook.loader import Rulebook, load_rulebook
from receiver.rulebook.steps import StepRegistry
from receiver.web.auth import Authenticator
from receiver.web.problems import problem

log = structlog.get_logger("receiver.reload")


def step_types(rulebook: Rulebook) -> set[str]:
    """Every step type the rulebook's playbooks use (for the metrics)."""
    return {
        step.type_name()
        for playbook in rulebook.playbooks.values()
        for step in (*playbook.diagnostics, *playbook.remediation)
    }


def _load(paths: Sequence[Path], steps: StepRegistry) -> Rulebook:
    """``load_rulebook``, with every failure a ``RuleError``.

    A file the loader does not expect (not UTF-8, nested past the YAML
    parser's recursion) must fail the reload like any bad file: the current
    rules stay, the failure is counted and logged, ``POST /-/reload`` is 422.
    """
    try:
        return load_rulebook(paths, steps=steps)
    except RuleError:
        raise
    except UnicodeDecodeError as exc:
        message = f"a rule file is not UTF-8 text ({exc.reason} at byte {exc.start})"
    except RecursionError:
        message = "a rule file nests too deeply to parse"
    except Exception as exc:  # noqa: BLE001 (a reload never takes the service down)
        message = f"the rule files could not be loaded: {type(exc).__name__}: {exc}"
    files = ", ".join(str(p) for p in paths) or "no files"
    raise RuleError([RuleErrorDetail(files, message[:500])])


class Reloader:
    """Loads the rule paths again and swaps the processor's rulebook if valid."""

    def __init__(
        self,
        processor: Processor,
        paths: Sequence[Path],
        *,
        metrics: Metrics,
        auth: Authenticator,
        clock: Callable[[], datetime],
        on_reloaded: Callable[[], None] | None = None,
    ) -> None:
        # Passes a successful reload on (the edge's to its worker process).
        self._on_reloaded = on_reloaded
        self._processor = processor
        self.paths = list(paths)
        self._metrics = metrics
        self._auth = auth
        self._clock = clock
        # What the console shows: the last successful load, the last failure.
        self.loaded_at = clock()
        self.last_error = ""
        self.last_error_at: datetime | None = None
        self.loaded(processor.rulebook)

    def listen(self) -> None:
        """Reload on SIGHUP (when there are rule paths to load again)."""
        if self.paths:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.on_signal)

    def stop_listening(self) -> None:
        """Stop reloading on SIGHUP."""
        if self.paths:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)

    def loaded(self, rulebook: Rulebook) -> None:
        """Record a successful load (at start and after each reload)."""
        self.loaded_at = self._clock()
        self._metrics.rules_load_succeeded(
            len(rulebook.rules), self.loaded_at.timestamp()
        )
        self._metrics.known(
            step_types=step_types(rulebook),
            sinks=(),
            rules=[
                (r.name, r.severity.value)
                for r in rulebook.rules
                if isinstance(r.severity, Severity)
            ],
        )

    def reload(self, trigger: str) -> RuleError | None:
        """Load the rules again; the error when they stay as they were."""
        try:
            # The step types the running rules were loaded with.
            steps = self._processor.rulebook.steps
            rulebook = _load(self.paths, steps)
        except RuleError as exc:
            self._metrics.rules_load_failed()
            self.last_error = "; ".join(str(d) for d in exc.details[:5])
            self.last_error_at = self._clock()
            log.error(  # noqa: TRY400 (the errors are listed; no traceback)
                "rules_reload_failed",
                trigger=trigger,
                errors=[str(d) for d in exc.details[:50]],
                detail="the current rules stay loaded",
            )
            return exc
        self._processor.rulebook = rulebook
        self.last_error, self.last_error_at = "", None
        self.loaded(rulebook)
        if self._on_reloaded is not None:
            self._on_reloaded()
        log.info(
            "rules_reloaded",
            trigger=trigger,
            rules=len(rulebook.rules),
            playbooks=len(rulebook.playbooks),
            files=len(rulebook.files),
        )
        return None

    def on_signal(self) -> None:
        """SIGHUP."""
        self.reload("sighup")

    async def handle(self, request: web.Request) -> web.Response:
        """POST /-/reload (scope admin)."""
        self._auth.require(request.headers.get("Authorization"), "admin")
        error = self.reload("api")
        if error is not None:
            lines = [str(d) for d in error.details]
            shown = "; ".join(lines[:5]) + (
                f" (and {len(lines) - 5} more)" if len(lines) > 5 else ""
            )
            return problem(
                422,
                f"rules not reloaded, the current rules stay loaded: {shown}",
                slug="reload-failed",
                errors=[{"pointer": "", "detail": line} for line in lines[:50]],
            )
        rulebook = self._processor.rulebook
        return web.json_response(
            {
                "status": "success",
                "rules": len(rulebook.rules),
                "playbooks": len(rulebook.playbooks),
            }
        )
