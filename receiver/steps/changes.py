"""``changes.recent``: the change events stored for an alert's service or namespace.

Change events arrive at ``POST /v2/change/enqueue`` and are stored in the
decision log; ``create_app`` hands this executor a reader for them (steps do not
import the store). The result lists the newest first, capped at the step's
``limit``, next to what the other diagnostics (rollout history) say.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from receiver.errors import PermanentStepError
from receiver.model import Alert, StepResult, freeze, iso
from receiver.rulebook.steps import ChangesRecent, StepModel

# Reads stored change records received since a time, newest first, at most n.
ReadChanges = Callable[[datetime, int], Awaitable[Sequence[Mapping[str, Any]]]]
# How many stored change events one step looks through at most.
SCAN = 1000


def names(change: Mapping[str, Any], step: ChangesRecent) -> bool:
    """Whether a stored change event is about the step's service and namespace."""
    details = change.get("custom_details") or {}
    if not isinstance(details, Mapping):
        details = {}
    if step.service is not None and step.service not in (
        details.get("service"),
        details.get("app"),
        change.get("source"),
    ):
        return False
    return step.namespace is None or details.get("namespace") == step.namespace


class ChangesExecutor:
    """Runs ``changes.recent`` against the stored change events."""

    def __init__(self, read: ReadChanges, clock: Callable[[], datetime]) -> None:
        self._read = read
        self._clock = clock

    async def run(self, step: StepModel, alert: Alert) -> StepResult:
        """List the matching change events within the step's window."""
        del alert
        if not isinstance(step, ChangesRecent):
            raise PermanentStepError(f"changes executor cannot run {step.type_name()}")
        since = self._clock() - step.window
        cutoff = iso(since) or ""
        found = []
        for record in await self._read(since, SCAN):
            change = record.get("change")
            if not isinstance(change, Mapping):
                continue
            if str(change.get("timestamp", "")) >= cutoff and names(change, step):
                found.append(dict(change))
        found.sort(key=lambda c: str(c.get("timestamp", "")), reverse=True)
        shown = found[: step.limit]
        listed = "; ".join(
            f"{c.get('timestamp', '?')} {c.get('summary', '')}"
            + (f" ({c['source']})" if c.get("source") else "")
            for c in shown[:5]
        )
        reason = (
            f"{len(found)} change events for {step.target()} in the last "
            f"{step.describe()['window']}" + (f": {listed}" if listed else "")
        )
        return StepResult(
            ok=True,
            reason=reason,
            result=freeze({"changes": shown, "total": len(found)}),
        )

    async def verify(self, check: Any, step: StepModel, alert: Alert) -> StepResult:
        """Change listings verify nothing."""
        del check, step, alert
        raise PermanentStepError("changes.recent is a diagnostic; it verifies nothing")
