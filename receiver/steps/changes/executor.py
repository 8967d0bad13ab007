"""``ChangesExecutor``: reads the change events stored for ``changes.*`` steps.

Change events arrive at ``POST /v2/change/enqueue`` and are stored in the
decision log; ``create_app`` hands this executor a reader for them (steps do not
import the store). The step modules beside this one (``recent``) run through
``read`` and ``clock``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime

from receiver.errors import PermanentStepError
from receiver.model import Alert, JSONValue, StepResult
from receiver.rulebook.steps import StepModel, Templated
from receiver.steps.catalog import StepDef, family_steps
from receiver.steps.defs import Table

# Reads stored change records received since a time, newest first, at most n.
ReadChanges = Callable[[datetime, int], Awaitable[Sequence[Mapping[str, JSONValue]]]]
# How many stored change events one step looks through at most.
SCAN = 1000


class ChangesExecutor:
    """Runs ``changes.recent`` against the stored change events."""

    def __init__(
        self,
        read: ReadChanges,
        clock: Callable[[], datetime],
        steps: Sequence[StepDef] | None = None,
    ) -> None:
        self.read = read
        self.clock = clock
        self._table: Table[ChangesExecutor] = Table(
            "changes", family_steps(__package__, steps)
        )

    async def run(self, step: StepModel, alert: Alert) -> StepResult:
        """Run a ``changes.*`` diagnostic through its step module."""
        return await self._table.run(self, step, alert)

    async def verify(
        self, check: Templated, step: StepModel, alert: Alert
    ) -> StepResult:
        """Change listings verify nothing."""
        del check, step, alert
        raise PermanentStepError("changes.recent is a diagnostic; it verifies nothing")
