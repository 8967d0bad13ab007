"""Reuse diagnostics of an unchanged alert occurrence within a window.

Alertmanager resends a firing group every ``group_interval``/``repeat_interval``;
without this, every resend runs every diagnostic again (one alert listed pods 66
times in 10 minutes). A diagnostic that ran (decision ``executed``) is kept for
``window``, keyed by rule, step, fingerprint, start, status, labels and
annotations: a resend of the same occurrence reuses it (its reason says so and
when it ran), a changed alert or an expired window runs it again. Failures are
never reused. Per process and bounded (oldest dropped first); the runner owns it.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

from receiver.model import Alert, Decision, StepTrace, iso

MAX_ENTRIES = 10_000


def occurrence_key(rule: str, index: int, alert: Alert) -> str:
    """What must be equal for a diagnostic to be reused."""
    raw = json.dumps(
        [
            rule,
            index,
            alert.fingerprint,
            iso(alert.starts_at),
            alert.status,
            sorted(alert.labels.items()),
            sorted(alert.annotations.items()),
        ]
    )
    return hashlib.sha256(raw.encode()).hexdigest()


class DiagnosticsReuse:
    """Remembers diagnostic traces for ``window`` on the injected clock."""

    def __init__(
        self,
        window: timedelta,
        clock: Callable[[], datetime],
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self.window = window
        self._clock = clock
        self._max = max_entries
        self._seen: OrderedDict[str, tuple[datetime, StepTrace]] = OrderedDict()

    def get(self, key: str) -> StepTrace | None:
        """The remembered trace, marked as reused, or None if none is fresh."""
        found = self._seen.get(key)
        if found is None:
            return None
        at, trace = found
        if self._clock() - at >= self.window:
            del self._seen[key]
            return None
        return replace(
            trace,
            reason=f"reused from {iso(at)} (alert unchanged within "
            f"{int(self.window.total_seconds())}s): {trace.reason}",
        )

    def put(self, key: str, trace: StepTrace) -> None:
        """Remember a diagnostic that ran; failures are never remembered."""
        if trace.decision is not Decision.EXECUTED or self.window <= timedelta(0):
            return
        self._seen[key] = (self._clock(), trace)
        self._seen.move_to_end(key)
        while len(self._seen) > self._max:
            self._seen.popitem(last=False)
