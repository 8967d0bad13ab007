"""Backtests: what a rules change would have decided over stored payloads.

``receiver backtest --rules NEW [--baseline rules] --since 7d`` reads the stored
payloads of a period and replays them, in arrival order, against each rule set
with its own in-memory SQLite store and the real ``GuardKeeper`` and ``Runner``
in execute mode. The executors only simulate (``SimulatedExecutor``: every step
succeeds, nothing is contacted), and the clock follows each payload's arrival
time, so cooldowns, budgets, locks, circuit breakers and approvals play out as
they would have. ``compare`` reports alerts whose rules, severities, playbooks or
step decisions changed, and remediations that would run more or less often.

Used by the CLI (``receiver.cli.offline.run_backtest``) and the console
(``compare_bounded``: both rule sets a payload at a time, yielding to the event
loop, until a deadline); ``summarise`` also reads the live decision log, so
tests can prove the simulation decides what the service did.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from receiver.engine.guards import GuardDefaults, GuardKeeper
from receiver.engine.journaling import alert_states
from receiver.engine.planner import PlanContext
from receiver.engine.runner import Executor, Runner
from receiver.engine.worker import Processor
from receiver.errors import InputError
from receiver.model import (
    Alert,
    JSONObject,
    JSONValue,
    StepResult,
    json_objects,
    json_strings,
)
from receiver.rulebook.loader import Rulebook
from receiver.rulebook.steps import StepModel, Verify
from receiver.store import MemoryStore
from receiver.store.base import JournalEntry, PayloadReader

MAX_EXAMPLES = 10
_SINCE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# Further back than anything stored (the store's times start in 1970); a longer
# period means the same, and ``now - period`` stays a date.
MAX_SINCE = timedelta(days=365 * 1000)


def parse_since(text: str) -> timedelta:
    """``7d``, ``12h``, ``30m``, ``2w`` into a duration (at most ``MAX_SINCE``)."""
    found = _SINCE.match(text.strip())
    if not found or int(found.group(1)) == 0:
        raise InputError(f"--since {text!r}: give a duration like 7d, 12h or 30m")
    seconds = int(found.group(1)) * _UNITS[found.group(2)]
    return timedelta(seconds=min(seconds, int(MAX_SINCE.total_seconds())))


@dataclass
class SimulatedExecutor:
    """Succeeds at every step and verification without contacting anything."""

    family: str
    calls: list[tuple[str, str]] = field(default_factory=list)

    async def run(self, step: StepModel, alert: Alert) -> StepResult:
        """Record the step and report success."""
        self.calls.append((step.type_name(), alert.fingerprint))
        return StepResult(ok=True, reason=f"simulated {step.type_name()}")

    async def verify(self, check: Verify, step: StepModel, alert: Alert) -> StepResult:
        """Every verification passes."""
        del check, step, alert
        return StepResult(ok=True, reason="verified: simulated")


class FollowingClock:
    """A clock set to each payload's arrival that ticks on every read."""

    def __init__(self, start: datetime) -> None:
        self._at = start
        self._ticks = itertools.count()

    def set(self, at: datetime) -> None:
        """Move to ``at`` (never backwards)."""
        self._at = max(self._at, at)
        self._ticks = itertools.count()

    def __call__(self) -> datetime:
        """Now: the current arrival plus a microsecond per read."""
        return self._at + timedelta(microseconds=next(self._ticks))


class Simulation:
    """One rule set deciding payloads in execute mode, one at a time (``feed``)."""

    def __init__(
        self,
        rulebook: Rulebook,
        start: datetime,
        defaults: GuardDefaults,
        *,
        namespaces: tuple[str, ...] | None = None,
        alertname_from: str = "title",
        executors: Mapping[str, Executor] | None = None,
    ) -> None:
        self._store = MemoryStore()
        self._clock = FollowingClock(start)
        keeper = GuardKeeper(self._store, "backtest", defaults)
        if executors is None:
            executors = {
                family: SimulatedExecutor(family) for family in rulebook.steps.families
            }
        runner = Runner(executors, self._clock, mode="execute", guards=keeper)
        self._processor = Processor(
            rulebook,
            runner,
            self._clock,
            PlanContext(execute=True, namespaces=namespaces),
            pagerduty_alertname_from=alertname_from,
            store=self._store,
        )

    async def feed(self, entry: JournalEntry) -> list[JSONObject]:
        """Decide one stored payload at its arrival time; its trace records."""
        clock = self._clock
        clock.set(entry.received_at)
        try:
            alerts = self._processor.alerts(entry.source, entry.body, clock())
        except InputError:
            return []  # the live service refused it at the edge too
        await self._store.append(
            entry, await alert_states(self._store, alerts, clock())
        )
        traces = await self._processor.decide(alerts, entry.id)
        return [t.to_json() for t in traces]

    async def close(self) -> None:
        """Drop the in-memory store."""
        await self._store.close()


async def simulate(
    rulebook: Rulebook,
    entries: Sequence[JournalEntry],
    defaults: GuardDefaults,
    *,
    namespaces: tuple[str, ...] | None = None,
    alertname_from: str = "title",
    executors: Mapping[str, Executor] | None = None,
) -> list[JSONObject]:
    """Decide ``entries`` (oldest first) in execute mode; the trace records.

    ``executors`` default to a ``SimulatedExecutor`` per family.
    """
    if not entries:
        return []
    simulation = Simulation(
        rulebook,
        entries[0].received_at,
        defaults,
        namespaces=namespaces,
        alertname_from=alertname_from,
        executors=executors,
    )
    records: list[JSONObject] = []
    try:
        for entry in entries:
            records += await simulation.feed(entry)
    finally:
        await simulation.close()
    return records


@dataclass(frozen=True)
class Bounded:
    """A report over the first ``replayed`` of ``entries``; ``stopped`` says why."""

    report: Report
    replayed: int
    stopped: bool


async def compare_bounded(
    baseline: Rulebook,
    new: Rulebook,
    entries: Sequence[JournalEntry],
    defaults: GuardDefaults,
    *,
    namespaces: tuple[str, ...] | None = None,
    alertname_from: str = "title",
    expired: Callable[[], bool] = lambda: False,
) -> Bounded:
    """``compare`` both rule sets, a payload at a time, until ``expired()``.

    Both decide each payload before the next, so a stop leaves them on the same
    prefix; the event loop gets a turn after every payload, so a long replay
    (the console's) never holds up the requests beside it.
    """
    if not entries:
        return Bounded(compare([], [], payloads=0), 0, stopped=False)
    sims = [
        Simulation(
            rules,
            entries[0].received_at,
            defaults,
            namespaces=namespaces,
            alertname_from=alertname_from,
        )
        for rules in (baseline, new)
    ]
    results: list[list[JSONObject]] = [[], []]
    replayed = 0
    stopped = False
    try:
        for entry in entries:
            if expired():
                stopped = True
                break
            for sim, records in zip(sims, results, strict=True):
                records.extend(await sim.feed(entry))
            replayed += 1
            await asyncio.sleep(0)
    finally:
        for sim in sims:
            await sim.close()
    return Bounded(compare(*results, payloads=replayed), replayed, stopped=stopped)


Record = Mapping[str, JSONValue]


@dataclass(frozen=True)
class MatchSummary:
    """What matters in one match of a trace record, step decisions as text."""

    rule: str
    severity: str
    playbook: str
    steps: tuple[str, ...]

    def to_json(self) -> JSONObject:
        """JSON form (``--json``)."""
        return {
            "rule": self.rule,
            "severity": self.severity,
            "playbook": self.playbook,
            "steps": list(self.steps),
        }


def _text(value: JSONValue | None) -> str:
    return value if isinstance(value, str) else ""


def summarise(record: Record) -> tuple[MatchSummary, ...]:
    """What matters in a trace record: rules, severities, playbooks, step decisions."""
    return tuple(
        MatchSummary(
            rule=_text(m.get("rule")),
            severity=_text(m.get("severity")),
            playbook=_text(m.get("playbook")),
            steps=tuple(
                f"{s.get('name') or s.get('type')} on {s.get('target')}: "
                f"{s.get('decision')}" + (f" ({s['guard']})" if s.get("guard") else "")
                for s in json_objects(m.get("steps"))
            ),
        )
        for m in json_objects(record.get("matches"))
    )


def _key(record: Record) -> tuple[str, str]:
    return str(record.get("payload_id", "")), str(record.get("fingerprint", ""))


def _executed(records: Iterable[Record]) -> Counter[str]:
    runs: Counter[str] = Counter()
    for record in records:
        for match in json_objects(record.get("matches")):
            for step in json_objects(match.get("steps")):
                if step.get("kind") != "remediation":
                    continue
                if step.get("decision") != "executed":
                    continue
                label = step.get("name") or step.get("type")
                runs[f"{match.get('playbook')}: {label} on {step.get('target')}"] += 1
    return runs


@dataclass(frozen=True)
class Example:
    """One alert decided differently: its summaries under each rule set."""

    payload_id: str
    fingerprint: str
    alertname: str
    baseline: tuple[MatchSummary, ...]
    new: tuple[MatchSummary, ...]

    def to_json(self) -> JSONObject:
        """JSON form (``--json``)."""
        return {
            "payload_id": self.payload_id,
            "fingerprint": self.fingerprint,
            "alertname": self.alertname,
            "baseline": [m.to_json() for m in self.baseline],
            "new": [m.to_json() for m in self.new],
        }


@dataclass(frozen=True)
class Moved:
    """A remediation that would run a different number of times."""

    remediation: str
    baseline: int
    new: int

    def to_json(self) -> JSONObject:
        """JSON form (``--json``)."""
        return {
            "remediation": self.remediation,
            "baseline": self.baseline,
            "new": self.new,
        }


@dataclass(frozen=True)
class Report:
    """The difference between two simulated rule sets."""

    payloads: int
    alerts: int
    changed: int
    examples: list[Example]
    remediations: list[Moved]

    def to_json(self) -> JSONObject:
        """JSON form (``--json``)."""
        return {
            "payloads": self.payloads,
            "alerts": self.alerts,
            "changed_alerts": self.changed,
            "examples": [e.to_json() for e in self.examples],
            "remediations": [r.to_json() for r in self.remediations],
        }

    def lines(self) -> list[str]:
        """Text form for a terminal or a CI log."""
        out = [
            (
                f"{self.payloads} payloads, {self.alerts} alerts: "
                f"{self.changed} decided differently"
            )
        ]
        for example in self.examples:
            out.append(
                f"- payload {example.payload_id} alert "
                f"{example.alertname or example.fingerprint}:"
            )
            out.append(f"    baseline: {_brief(example.baseline)}")
            out.append(f"    new:      {_brief(example.new)}")
        if self.changed > len(self.examples):
            out.append(f"... {self.changed - len(self.examples)} more")
        if self.remediations:
            out.append("Remediations that would run a different number of times:")
            out += [
                f"- {r.remediation}: {r.baseline} -> {r.new}" for r in self.remediations
            ]
        else:
            out.append("Remediations would run as often as before.")
        return out


def _brief(summary: Sequence[MatchSummary]) -> str:
    if not summary:
        return "no rule matched"
    return "; ".join(
        f"{m.rule} {m.severity} -> {m.playbook}"
        + (f" [{', '.join(m.steps)}]" if m.steps else "")
        for m in summary
    )


def compare(
    baseline: Sequence[Record],
    new: Sequence[Record],
    *,
    payloads: int,
) -> Report:
    """Alerts decided differently, and remediation counts that moved."""
    before = {_key(r): r for r in baseline}
    after = {_key(r): r for r in new}
    changed: list[Example] = []
    for key in sorted(before.keys() | after.keys()):
        old_summary = summarise(before.get(key, {}))
        new_summary = summarise(after.get(key, {}))
        if old_summary != new_summary:
            record = before.get(key) or after.get(key) or {}
            labels = json_strings(record.get("labels"))
            changed.append(
                Example(
                    payload_id=key[0],
                    fingerprint=key[1],
                    alertname=labels.get("alertname", ""),
                    baseline=old_summary,
                    new=new_summary,
                )
            )
    old_runs, new_runs = _executed(baseline), _executed(new)
    moved = [
        Moved(name, old_runs[name], new_runs[name])
        for name in sorted(old_runs.keys() | new_runs.keys())
        if old_runs[name] != new_runs[name]
    ]
    return Report(
        payloads=payloads,
        alerts=len(before.keys() | after.keys()),
        changed=len(changed),
        examples=changed[:MAX_EXAMPLES],
        remediations=moved,
    )


async def stored_since(
    store: PayloadReader, since: datetime, limit: int
) -> list[JournalEntry]:
    """Stored payloads received at or after ``since``, oldest first."""
    entries = [e for e in await store.payloads(limit) if e.received_at >= since]
    return sorted(entries, key=lambda e: (e.received_at, e.id))
