"""Guards hold when a decision pass's clock reading is older than another's.

A pass reads the clock once (``Processor.decide``) and decides its alerts one
after another with that reading; a pass that began first may reach a guard
after a pass that began later already went through it (its earlier steps were
slow, or another replica's clock runs behind). The guards must hold all the
same: a budget of 1 passes one run, and a lock taken late in a long pass is
not born expired. Both stores; clocks advance on every reading, tasks are
ordered by events, never by sleeping.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from guard_helpers import HOUR, T0, Clock

from receiver.engine.guards import GuardDefaults, GuardKeeper
from receiver.engine.planner import PlanContext
from receiver.engine.runner import Runner
from receiver.engine.worker import Processor
from receiver.model import Alert, Decision, StepResult, freeze
from receiver.rulebook.loader import load_rulebook
from receiver.steps.catalog import builtin_registry
from receiver.store.base import Store

RULES = """
playbooks:
  slow:
    remediation:
      - type: http.request
        url: "http://slow.test/{labels.service}"
    guards: {cooldown: 0s, budget: {max: 100, window: 1h}}
  budgeted:
    remediation:
      - type: http.request
        url: "http://hooks.test/{labels.service}"
    guards: {cooldown: 0s, budget: {max: 1, window: 1h}}
rules:
  - {name: slow, match: ['alertname="Slow"'], playbook: slow}
  - {name: budgeted, match: ['alertname="Budgeted"'], playbook: budgeted}
"""


@dataclass
class Executor:
    """An http executor: ``slow.test`` waits for ``go`` (after ``entered``)."""

    clock: Clock
    calls: list[str] = field(default_factory=list)
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    go: asyncio.Event = field(default_factory=asyncio.Event)
    slow_for: timedelta = timedelta(0)
    during: Any = None

    async def run(self, step: Any, alert: Alert) -> StepResult:
        self.calls.append(step.url)
        if step.url.startswith("http://slow.test/"):
            self.entered.set()
            await self.go.wait()
            self.clock.advance(self.slow_for)
        elif self.during is not None:
            await self.during(step)
        return StepResult(ok=True, reason=f"POST {step.url}: HTTP 200")

    async def verify(self, check: Any, step: Any, alert: Alert) -> StepResult:
        return StepResult(ok=True, reason="verified")


@pytest.fixture
def store(any_store: Store) -> Store:
    return any_store


def _processor(
    tmp_path: Any, store: Store, clock: Clock, executor: Executor
) -> Processor:
    (tmp_path / "rules.yaml").write_text(RULES)
    rulebook = load_rulebook([tmp_path / "rules.yaml"], steps=builtin_registry())
    keeper = GuardKeeper(
        store, "worker-1", GuardDefaults(global_budget_max=1000, cooldown=timedelta(0))
    )
    runner = Runner({"http": executor}, clock, mode="execute", guards=keeper)
    return Processor(rulebook, runner, clock, PlanContext(execute=True), store=store)


def _alert(alertname: str, service: str) -> Alert:
    return Alert(
        source="alertmanager",
        fingerprint=f"fp-{alertname}-{service}",
        status="firing",
        labels=freeze({"alertname": alertname, "service": service}),
        starts_at=T0 - HOUR,
    )


async def test_store_budget_counts_a_slot_taken_at_a_later_reading(
    store: Store,
) -> None:
    """A reservation at an earlier ``now`` still sees a slot taken at a later one."""
    later = await store.reserve_budget("b", 1, HOUR, T0 + timedelta(seconds=5))
    assert later is not None
    earlier = await store.reserve_budget("b", 1, HOUR, T0)
    assert earlier is None


async def test_a_pass_that_began_first_cannot_overspend_a_budget_of_one(
    store: Store, tmp_path: Any
) -> None:
    """Two passes, two alerts of one budget of 1: exactly one of them runs.

    Pass A reads the clock first, then its first alert's step is slow; pass B
    begins later and spends the budget meanwhile. When A reaches its second
    alert (same budget), its reading is older than B's slot.
    """
    clock = Clock()
    executor = Executor(clock)
    processor = _processor(tmp_path, store, clock, executor)
    first = asyncio.create_task(
        processor.decide([_alert("Slow", "s"), _alert("Budgeted", "a")], "payload-a")
    )
    await executor.entered.wait()
    second = await processor.decide([_alert("Budgeted", "b")], "payload-b")
    executor.go.set()
    traces = await first
    ran_b = second[0].matches[0].steps[-1]
    ran_a = traces[1].matches[0].steps[-1]
    assert ran_b.decision is Decision.EXECUTED
    assert ran_a.decision is Decision.SKIPPED, ran_a.reason
    assert ran_a.guard == "budget"
    assert [c for c in executor.calls if "hooks.test" in c] == ["http://hooks.test/b"]


async def test_a_lock_taken_late_in_a_long_pass_is_not_born_expired(
    store: Store, tmp_path: Any
) -> None:
    """The target lock lasts its TTL from when it is taken, not from the pass start.

    The pass's first step takes an hour (by the clock); the second step's lock
    must still keep another replica (a fresh clock reading) off its target
    while it runs.
    """
    clock = Clock()
    executor = Executor(clock, slow_for=HOUR)
    executor.go.set()
    seen: list[object] = []

    async def other_replica(step: Any) -> None:
        seen.append(
            await store.acquire_lock(
                "target:http://hooks.test/a", "replica-2", clock(), timedelta(minutes=5)
            )
        )

    executor.during = other_replica
    processor = _processor(tmp_path, store, clock, executor)
    traces = await processor.decide(
        [_alert("Slow", "s"), _alert("Budgeted", "a")], "payload-a"
    )
    assert traces[1].matches[0].steps[-1].decision is Decision.EXECUTED
    assert seen == [None]
