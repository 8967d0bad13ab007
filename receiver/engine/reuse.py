"""Reuse diagnostics of an unchanged alert occurrence within a window.

Alertmanager resends a firing group every ``group_interval``/``repeat_interval``;
without this, every resend runs every diagnostic again (one alert listed pods 66
times in 10 minutes). A diagnostic that ran (decision ``executed``) is kept for
``window``, keyed by rule, step, fingerprint, start, status, labels and
annotations: a resend of the same occurrence reuses it (its reason says so and
when it ran), a changed alert or an expired window runs it again. Failures are
never reused. The runner owns it.

With a ``cache`` (``receiver.store.diagnostics``: the same SQLite file or the
same Redis as the store) a result outlives the process: the worker child, a
restarted receiver and other replicas reuse it too. Each process also keeps a
bounded copy in memory (oldest dropped first). A cache that cannot be reached
is logged and treated as empty: the diagnostic runs.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import NotRequired, Protocol

import structlog
from pydantic import JsonValue, TypeAdapter

# pydantic validates only this TypedDict before Python 3.12.
from typing_extensions import TypedDict

from receiver.errors import StoreUnavailableError
from receiver.model import Alert, Decision, StepKind, StepTrace, freeze, iso

log = structlog.get_logger("receiver.engine")

MAX_ENTRIES = 10_000


class ReuseCache(Protocol):
    """Shared keeping of results (``receiver.store.diagnostics``)."""

    async def recall(self, key: str) -> tuple[datetime, str] | None:
        """When the result under ``key`` was taken and its JSON, or None."""
        ...

    async def remember(
        self, key: str, at: datetime, trace: str, window: timedelta
    ) -> None:
        """Keep ``trace`` (JSON) taken ``at`` for ``window``."""
        ...

    async def close(self) -> None:
        """Release the connection."""
        ...


def _plain(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    if isinstance(value, datetime):
        return iso(value)
    return str(value)


def encode(trace: StepTrace) -> str:
    """A step trace as JSON text (what the cache keeps)."""
    return json.dumps(trace.to_json(), default=_plain, sort_keys=True)


class _Kept(TypedDict):
    """``StepTrace.to_json``: empty request, result, name and guard left out."""

    kind: StepKind
    type: str
    target: str
    decision: Decision
    reason: str
    request: NotRequired[dict[str, JsonValue]]
    result: NotRequired[dict[str, JsonValue]]
    name: NotRequired[str]
    guard: NotRequired[str]


_KEPT = TypeAdapter(_Kept)


def decode(text: str) -> StepTrace:
    """The step trace ``encode`` wrote; ``ValueError`` if damaged."""
    data = _KEPT.validate_json(text)
    return StepTrace(
        kind=data["kind"],
        type=data["type"],
        target=data["target"],
        decision=data["decision"],
        reason=data["reason"],
        request=freeze(data.get("request")),
        result=freeze(data.get("result")),
        name=data.get("name", ""),
        guard=data.get("guard", ""),
    )


def occurrence_key(rule: str, index: int, alert: Alert, step: str = "") -> str:
    """What must be equal for a diagnostic to be reused.

    ``step`` names the rendered step (type and target): after a rule change
    the same index may be another step.
    """
    raw = json.dumps(
        [
            rule,
            index,
            step,
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
        cache: ReuseCache | None = None,
    ) -> None:
        self.window = window
        self._clock = clock
        self._max = max_entries
        self._cache = cache
        self._seen: OrderedDict[str, tuple[datetime, StepTrace]] = OrderedDict()

    async def get(self, key: str) -> StepTrace | None:
        """The remembered trace, marked as reused, or None if none is fresh."""
        if self.window <= timedelta(0):
            return None
        now = self._clock()
        found = self._seen.get(key)
        if found is not None and now - found[0] >= self.window:
            del self._seen[key]
            found = None
        if found is None and self._cache is not None:
            found = await self._recall(key)
            if found is not None and now - found[0] >= self.window:
                found = None
            if found is not None:
                self._keep(key, *found)
        if found is None:
            return None
        at, trace = found
        return replace(
            trace,
            reason=f"reused from {iso(at)} (alert unchanged within "
            f"{int(self.window.total_seconds())}s): {trace.reason}",
        )

    async def _recall(self, key: str) -> tuple[datetime, StepTrace] | None:
        assert self._cache is not None  # noqa: S101 (the caller checked)
        try:
            found = await self._cache.recall(key)
            return None if found is None else (found[0], decode(found[1]))
        except StoreUnavailableError as exc:
            log.warning("diagnostics_cache_unreachable", error=str(exc))
        except (ValueError, KeyError, TypeError):
            log.warning("diagnostics_cache_entry_unreadable", key=key)
        return None

    async def put(self, key: str, trace: StepTrace) -> None:
        """Remember a diagnostic that ran; failures are never remembered."""
        if trace.decision is not Decision.EXECUTED or self.window <= timedelta(0):
            return
        at = self._clock()
        self._keep(key, at, trace)
        if self._cache is None:
            return
        try:
            await self._cache.remember(key, at, encode(trace), self.window)
        except StoreUnavailableError as exc:
            log.warning("diagnostics_cache_unreachable", error=str(exc))

    def _keep(self, key: str, at: datetime, trace: StepTrace) -> None:
        self._seen[key] = (at, trace)
        self._seen.move_to_end(key)
        while len(self._seen) > self._max:
            self._seen.popitem(last=False)

    async def aclose(self) -> None:
        """Close the shared cache, if any."""
        if self._cache is not None:
            await self._cache.close()
