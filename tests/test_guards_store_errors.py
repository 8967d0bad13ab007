"""A store outage before anything is sent gives back what the guards took.

The runner lets ``StoreUnavailableError`` out so the worker decides the entry
again. When it happens after the guards passed but before the action left (the
last still-firing check, reading the target, the ``sending`` mark), the retry
must find the occurrence free to run: its run-once claim handed back (not
"already started ... not run again"), its budget slot returned, its lock
released. Both stores; errors are injected once, no sleeping.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from conftest import never_answer_then_fail
from guard_helpers import HOUR, T0, Clock

from receiver.engine.guards import GuardDefaults, GuardKeeper, Held
from receiver.engine.planner import PlanContext
from receiver.engine.runner import Runner
from receiver.engine.worker import Processor
from receiver.errors import StoreUnavailableError
from receiver.model import Alert, Decision, StepResult, freeze
from receiver.rulebook.loader import load_rulebook
from receiver.steps.catalog import builtin_registry
from receiver.store.base import Store

RULES = """
playbooks:
  budgeted:
    remediation:
      - type: http.request
        url: "http://hooks.test/{labels.service}"
    guards: {cooldown: 0s, budget: {max: 1, window: 1h}}
rules:
  - {name: budgeted, match: ['alertname="Budgeted"'], playbook: budgeted}
"""


@dataclass
class Executor:
    calls: list[str] = field(default_factory=list)

    async def run(self, step: Any, alert: Alert) -> StepResult:
        self.calls.append(step.url)
        return StepResult(ok=True, reason=f"POST {step.url}: HTTP 200")

    async def verify(self, check: Any, step: Any, alert: Alert) -> StepResult:
        return StepResult(ok=True, reason="verified")


@pytest.fixture
def store(any_store: Store) -> Store:
    return any_store


def _fail_once(store: Store, name: str, *, on_call: int = 1) -> list[int]:
    """Make ``store.name`` raise StoreUnavailableError on its ``on_call``-th call."""
    real = getattr(store, name)
    calls = [0]

    async def failing(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == on_call:
            raise StoreUnavailableError(f"injected: cannot {name}")
        return await real(*args, **kwargs)

    setattr(store, name, failing)
    return calls


def _keeper(store: Store) -> GuardKeeper:
    return GuardKeeper(
        store, "worker-1", GuardDefaults(global_budget_max=1000, cooldown=timedelta(0))
    )


def _processor(
    tmp_path: Any, store: Store, executor: Executor, keeper: GuardKeeper | None = None
) -> Processor:
    (tmp_path / "rules.yaml").write_text(RULES)
    rulebook = load_rulebook([tmp_path / "rules.yaml"], steps=builtin_registry())
    clock = Clock()
    keeper = keeper or _keeper(store)
    runner = Runner({"http": executor}, clock, mode="execute", guards=keeper)
    return Processor(rulebook, runner, clock, PlanContext(execute=True), store=store)


def _alert(service: str) -> Alert:
    return Alert(
        source="alertmanager",
        fingerprint=f"fp-{service}",
        status="firing",
        labels=freeze({"alertname": "Budgeted", "service": service}),
        starts_at=T0 - HOUR,
    )


@pytest.mark.parametrize(
    ("method", "on_call"),
    [
        # ``alert_state`` is read twice per remediation: before the approval
        # and right before acting (the last check); the second read fails.
        ("alert_state", 2),
        ("mark_sending", 1),  # nothing was sent
    ],
    ids=["last-check", "mark-sending"],
)
async def test_an_outage_before_sending_leaves_the_occurrence_free_to_run(
    store: Store, tmp_path: Any, method: str, on_call: int
) -> None:
    """The store fails once before anything is sent: the retry runs the step once."""
    executor = Executor()
    processor = _processor(tmp_path, store, executor)
    _fail_once(store, method, on_call=on_call)
    with pytest.raises(StoreUnavailableError):
        await processor.decide([_alert("a")], "payload-1")
    assert executor.calls == []
    [trace] = await processor.decide([_alert("a")], "payload-1")
    step = trace.matches[0].steps[-1]
    assert step.decision is Decision.EXECUTED, step.reason
    assert executor.calls == ["http://hooks.test/a"]


async def test_an_outage_at_the_last_check_returns_the_budget_slot(
    store: Store, tmp_path: Any
) -> None:
    """Budget of 1: the attempt that failed before sending spent none of it."""
    executor = Executor()
    processor = _processor(tmp_path, store, executor)
    _fail_once(store, "alert_state", on_call=2)
    with pytest.raises(StoreUnavailableError):
        await processor.decide([_alert("a")], "payload-1")
    [trace] = await processor.decide([_alert("b")], "payload-2")
    step = trace.matches[0].steps[-1]
    assert step.decision is Decision.EXECUTED, step.reason
    assert executor.calls == ["http://hooks.test/b"]


@pytest.mark.parametrize("part", ["release_budget", "release_key", "release_lock"])
async def test_a_hand_back_the_outage_also_stopped_is_made_before_the_next_pass(
    store: Store, tmp_path: Any, part: str
) -> None:
    """Still down as the claim, slot or lock is handed back: owed, then returned.

    Without it, the claim read "already started by worker-1 ... not run again"
    until a restart, the lock held the target for its TTL, the slot spent the
    budget of one.
    """
    executor = Executor()
    keeper = _keeper(store)
    processor = _processor(tmp_path, store, executor, keeper)
    _fail_once(store, "mark_sending")
    _fail_once(store, part)
    with pytest.raises(StoreUnavailableError):
        await processor.decide([_alert("a")], "payload-1")
    assert keeper.owed == 1
    [trace] = await processor.decide([_alert("a")], "payload-1")
    step = trace.matches[0].steps[-1]
    assert step.decision is Decision.EXECUTED, step.reason
    assert executor.calls == ["http://hooks.test/a"]
    assert keeper.owed == 0


async def test_a_hand_back_owed_waits_out_a_longer_outage(
    store: Store, tmp_path: Any
) -> None:
    """The hand-back fails again at the next pass: still owed, returned later."""
    executor = Executor()
    keeper = _keeper(store)
    processor = _processor(tmp_path, store, executor, keeper)
    _fail_once(store, "mark_sending")
    calls = _fail_once(store, "release_key")
    with pytest.raises(StoreUnavailableError):
        await processor.decide([_alert("a")], "payload-1")
    # The next pass: its hand-back of the owed claim fails (2nd call) and so
    # does the pass itself, before it claims anything.
    real = store.release_key
    down = [True]

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        if down[0]:
            down[0] = False
            raise StoreUnavailableError("injected: still down")
        return await real(*args, **kwargs)

    store.release_key = flaky  # type: ignore[method-assign]
    await keeper.settle()
    assert keeper.owed == 1
    assert calls[0] == 1
    [trace] = await processor.decide([_alert("a")], "payload-1")
    step = trace.matches[0].steps[-1]
    assert step.decision is Decision.EXECUTED, step.reason
    assert keeper.owed == 0


async def test_a_lock_renewal_whose_client_swallows_the_cancel_still_stops(
    store: Store, tmp_path: Any
) -> None:
    """The step ends while a lock renewal is in flight: the renewal ends too.

    A client that turns the cancel into an error of its own (redis-py at times)
    made the renewal log "lock_not_renewed" and renew again for ever; the
    step's run waited for it and never finished.
    """
    keeper = _keeper(store)
    runner = Runner({"http": Executor()}, Clock(), mode="execute", guards=keeper)
    lock = await store.acquire_lock("target:x", "worker-1", T0, HOUR)
    assert lock is not None
    held = Held("key", "worker-1", lock)
    renewing = asyncio.Event()

    async def hanging_renew(*_args: Any, **_kwargs: Any) -> Any:
        await never_answer_then_fail(renewing)

    store.renew_lock = hanging_renew  # type: ignore[method-assign]
    async with asyncio.timeout(10):
        async with runner._renewing(held, timedelta(milliseconds=150)):
            await renewing.wait()
