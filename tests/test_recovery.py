"""Leases and locks held while work is in flight; crashes re-checked, not re-run.

A real SQLite store, real ``Worker``s and ``Processor``s, and executors at our
own interface. The clock is injected and advances on every reading; a long
verification is simulated by moving that clock, and the test waits on the
renewal it expects (a condition with a generous bound), never on wall time.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from guard_helpers import T0, Clock

from receiver.engine.guards import GuardDefaults, GuardKeeper, idempotency_key
from receiver.engine.planner import PlanContext
from receiver.engine.runner import Runner
from receiver.engine.worker import Processor, Worker
from receiver.model import Alert, Intent, RecheckResult, StepResult, freeze
from receiver.rulebook.loader import load_rulebook
from receiver.steps.catalog import builtin_registry
from receiver.store import SqliteStore
from receiver.store.base import DecisionQuery, JournalEntry, Lease, Retention

LEASE = timedelta(milliseconds=300)

RULES = """
playbooks:
  hook:
    remediation:
      - type: http.request
        url: "http://hooks.test/{labels.service}"
        verify:
          type: http.get
          url: "http://hooks.test/health/{labels.service}"
          timeout: 10m
    guards:
      cooldown: 0s
      budget: {max: 100, window: 1h}
rules:
  - {name: hook, match: ['alertname="Hook"'], playbook: hook}
"""


class SpyStore(SqliteStore):
    """Records claims per consumer and the latest lease renewal."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.claimed: Counter[str] = Counter()
        self.renewed_until = T0

    async def claim_batch(
        self, consumer: str, limit: int, wait: float, now: datetime
    ) -> Any:
        leases = await super().claim_batch(consumer, limit, wait, now)
        self.claimed[consumer.rpartition("/")[0]] += len(leases)
        return leases

    async def renew(self, lease: Lease, now: datetime) -> Lease | None:
        renewed = await super().renew(lease, now)
        if renewed is not None:
            self.renewed_until = renewed.expires_at
        return renewed


@dataclass
class SlowVerify:
    """A verify that "takes" ten leases (moves the clock, awaits each renewal)."""

    clock: Clock
    store: SpyStore
    runs: list[str] = field(default_factory=list)
    healthy: bool = True

    async def run(self, step: Any, alert: Alert) -> StepResult:
        self.runs.append(step.url)
        return StepResult(ok=True, reason=f"POST {step.url}: HTTP 200")

    async def verify(self, check: Any, step: Any, alert: Alert) -> StepResult:
        for _ in range(10):
            self.clock.advance(LEASE / 2)
            target = self.clock.now
            for _ in range(1000):
                if self.store.renewed_until > target:
                    break
                await asyncio.sleep(0.01)
            else:
                return StepResult(ok=False, reason="the lease was never renewed")
        if not self.healthy:
            return StepResult(ok=False, reason="still unhealthy")
        return StepResult(ok=True, reason="healthy after a long wait")


@dataclass
class Rechecking(SlowVerify):
    """Prepares an intent, applies exactly it, and re-checks it with ``seen``."""

    seen: RecheckResult = field(default_factory=lambda: RecheckResult(None, "?"))
    rechecked: list[Intent] = field(default_factory=list)

    async def prepare(self, step: Any, alert: Alert) -> Intent:
        return Intent(f"POST {step.url}", {"url": step.url})

    async def apply(self, step: Any, alert: Alert, intent: Intent) -> StepResult:
        return await self.run(step, alert)

    async def recheck(self, step: Any, alert: Alert, intent: Intent) -> RecheckResult:
        self.rechecked.append(intent)
        return self.seen


def _body(service: str) -> bytes:
    alert = {
        "status": "firing",
        "labels": {"alertname": "Hook", "service": service},
        "annotations": {},
        "startsAt": "2026-11-26T09:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": f"fp-{service}",
    }
    return json.dumps(
        {"version": "4", "status": "firing", "groupKey": "g", "alerts": [alert]}
    ).encode()


def _alert(service: str) -> Alert:
    return Alert(
        source="alertmanager",
        fingerprint=f"fp-{service}",
        status="firing",
        labels=freeze({"alertname": "Hook", "service": service}),
        starts_at=datetime(2026, 11, 26, 9, 0, tzinfo=UTC),
    )


def _worker(
    tmp_path: Any, store: SpyStore, clock: Clock, executor: Any, owner: str
) -> Worker:
    (tmp_path / "rules.yaml").write_text(RULES)
    keeper = GuardKeeper(store, owner, GuardDefaults())
    runner = Runner({"http": executor}, clock, mode="execute", guards=keeper)
    processor = Processor(
        load_rulebook([tmp_path / "rules.yaml"], steps=builtin_registry()),
        runner,
        clock,
        PlanContext(execute=True),
        store=store,
    )
    return Worker(store, processor, 1, consumer=owner, clock=clock, lease=LEASE)


async def _wait_done(store: SqliteStore) -> None:
    for _ in range(2000):
        if (await store.pending())[0] == 0:
            return
        await asyncio.sleep(0.01)
    pytest.fail("the entry was never completed")


async def test_a_verify_longer_than_the_lease_records_its_real_outcome(tmp_path):
    """A verify longer than the lease keeps it renewed and records its outcome."""
    clock = Clock()
    store = SpyStore(str(tmp_path / "state.db"), retention=Retention(lease=LEASE))
    executor = SlowVerify(clock, store)
    first = _worker(tmp_path, store, clock, executor, "first")
    second = _worker(tmp_path, store, clock, executor, "second")
    await store.append(JournalEntry("e1", "alertmanager", T0, _body("api")), [])
    await first.start()
    await asyncio.sleep(0)
    await second.start()
    try:
        await _wait_done(store)
    finally:
        await first.stop()
        await second.stop()
    (record,) = await store.decisions(DecisionQuery(payload_id="e1"))
    step = record["matches"][0]["steps"][0]
    assert step["decision"] == "executed"
    assert step["reason"].endswith("; healthy after a long wait")
    assert executor.runs == ["http://hooks.test/api"]
    assert store.claimed == Counter({"first": 1})
    await store.close()


DEAD_INTENT = Intent("POST http://hooks.test/api", {"url": "http://hooks.test/api"})


async def _crashed(store: SqliteStore, clock: Clock, status: str) -> str:
    """What a process killed mid-remediation leaves: its lock and its key."""
    key = idempotency_key("hook", 0, "http.request", _alert("api"))
    await store.register("dead", clock(), timedelta(hours=1))
    lock = await store.acquire_lock(
        "target:http://hooks.test/api", "dead", clock(), timedelta(hours=1)
    )
    assert lock is not None
    assert (await store.claim_key(key, "dead", clock(), timedelta(days=1))).won
    if status == "sending":
        assert await store.mark_sending(key, "dead", clock(), DEAD_INTENT.to_json())
    return key


async def _after_restart(
    tmp_path: Any,
    executor_kwargs: dict[str, Any],
    status: str,
    kind: type[SlowVerify] = SlowVerify,
) -> tuple[dict[str, Any], Any, SqliteStore]:
    path = str(tmp_path / "state.db")
    clock = Clock()
    dead = SqliteStore(path)
    await _crashed(dead, clock, status)
    await dead.close()  # kill -9: nothing released
    store = SpyStore(path, retention=Retention(lease=LEASE))
    executor = kind(clock, store, **executor_kwargs)
    worker = _worker(tmp_path, store, clock, executor, "restarted")
    await store.append(JournalEntry("e1", "alertmanager", T0, _body("api")), [])
    await worker.start()
    try:
        await _wait_done(store)
    finally:
        await worker.stop()
    (record,) = await store.decisions(DecisionQuery(payload_id="e1"))
    return record["matches"][0]["steps"][0], executor, store


async def test_an_unsent_interrupted_remediation_runs_after_restart(tmp_path):
    """A dead process's unsent run: lock released on recovery, run once."""
    step, executor, store = await _after_restart(tmp_path, {}, "running")
    assert step["decision"] == "executed"
    assert "interrupted by a crash before anything was sent" in step["reason"]
    assert executor.runs == ["http://hooks.test/api"]
    await store.close()


@pytest.mark.parametrize(
    ("healthy", "decision", "says"),
    [
        (
            True,
            "executed",
            (
                "executed, recovered after a crash of dead: http.request has no "
                "re-check (intent: POST http://hooks.test/api); but its "
                "verification passes now: healthy after a long wait"
            ),
        ),
        (
            False,
            "failed",
            (
                "failed, interrupted by a crash of dead after the action was sent; "
                "unknown whether it took effect (http.request has no re-check"
            ),
        ),
    ],
)
async def test_a_sent_run_without_a_recheck_is_decided_by_its_verify(
    tmp_path, healthy, decision, says
):
    """No re-check: a passing verify counts as done; else unknown, not re-run."""
    step, executor, store = await _after_restart(
        tmp_path, {"healthy": healthy}, "sending"
    )
    assert step["decision"] == decision
    assert step["reason"].startswith(says)
    assert (
        "its verification does not pass either: still unhealthy" in step["reason"]
        or healthy
    )
    assert executor.runs == [], "never sent again"
    claim = (await store.claim_key(_key(), "x", T0, timedelta(days=1))).holder
    assert claim.status == ("done" if healthy else "failed")
    await store.close()


def _key() -> str:
    return idempotency_key("hook", 0, "http.request", _alert("api"))


async def test_a_sent_run_that_took_effect_is_recorded_not_re_run(tmp_path):
    """Its re-check says it took effect: executed (recovered), verified, not re-run."""
    seen = RecheckResult(took_effect=True, reason="the hook shows the request")
    step, executor, store = await _after_restart(
        tmp_path, {"seen": seen}, "sending", Rechecking
    )
    assert step["decision"] == "executed"
    assert step["reason"] == (
        "executed, recovered after a crash of dead: the hook shows the request; "
        "healthy after a long wait"
    )
    assert executor.rechecked == [DEAD_INTENT], "the recorded intent is re-checked"
    assert executor.runs == []
    claim = (await store.claim_key(_key(), "x", T0, timedelta(days=1))).holder
    assert (claim.status, claim.owner) == ("done", "restarted")
    await store.close()


async def test_a_sent_run_that_did_not_take_effect_runs_once_now(tmp_path):
    """Its re-check says the target is as before: it runs once now."""
    seen = RecheckResult(took_effect=False, reason="the hook never saw it")
    step, executor, store = await _after_restart(
        tmp_path, {"seen": seen}, "sending", Rechecking
    )
    assert step["decision"] == "executed"
    assert step["reason"] == (
        "POST http://hooks.test/api: HTTP 200; healthy after a long wait (the "
        "attempt by dead was interrupted by a crash before it took effect (the "
        "hook never saw it); run once now)"
    )
    assert executor.runs == ["http://hooks.test/api"]
    claim = (await store.claim_key(_key(), "x", T0, timedelta(days=1))).holder
    assert claim.status == "done"
    await store.close()


async def test_a_sent_run_whose_effect_is_unknown_fails_and_is_not_re_run(tmp_path):
    """Its re-check cannot tell and the verify fails: failed, unknown, never re-run."""
    seen = RecheckResult(took_effect=None, reason="someone else changed the hook")
    step, executor, store = await _after_restart(
        tmp_path, {"seen": seen, "healthy": False}, "sending", Rechecking
    )
    assert step["decision"] == "failed"
    assert step["reason"] == (
        "failed, interrupted by a crash of dead after the action was sent; unknown "
        "whether it took effect (someone else changed the hook; its verification "
        "does not pass either: still unhealthy); not re-run (at most once): "
        "POST http://hooks.test/api"
    )
    assert executor.runs == []
    await store.close()


class Exploding(Rechecking):
    """A re-check that raises: the failure is a value (unknown, not re-run)."""

    async def recheck(self, step: Any, alert: Alert, intent: Intent) -> RecheckResult:
        raise KeyError(intent.summary)


async def test_a_recheck_that_raises_is_unknown_not_a_poison_entry(tmp_path):
    """An exception in the re-check becomes "unknown whether it took effect"."""
    step, executor, store = await _after_restart(
        tmp_path, {"healthy": False}, "sending", Exploding
    )
    assert step["decision"] == "failed"
    assert (
        "unknown whether it took effect (the re-check failed: KeyError: "
        in (step["reason"])
    )
    assert executor.runs == []
    await store.close()


@dataclass
class HeldAtPrepare(SlowVerify):
    """Blocks the first ``prepare`` (claimed, not yet sending) until released."""

    entered: asyncio.Event = field(default_factory=asyncio.Event)
    go: asyncio.Event = field(default_factory=asyncio.Event)
    prepared: int = 0

    async def prepare(self, step: Any, alert: Alert) -> Intent:
        self.prepared += 1
        if self.prepared == 1:
            self.entered.set()
            await self.go.wait()
        return Intent(f"POST {step.url}", {"url": step.url})

    first: asyncio.Task[Any] | None = None

    async def apply(self, step: Any, alert: Alert, intent: Intent) -> StepResult:
        result = await self.run(step, alert)
        if not self.go.is_set() and self.first is not None:
            # A second pass got here while the first still holds its claim:
            # let the first go on, and stay "in flight" until it has decided.
            self.go.set()
            await asyncio.wait({self.first}, timeout=10)
        return result

    async def verify(self, check: Any, step: Any, alert: Alert) -> StepResult:
        return StepResult(ok=True, reason="healthy")


async def test_a_live_process_whose_heartbeat_lapsed_never_runs_an_occurrence_twice(
    tmp_path,
):
    """Own heartbeat lapsed mid-run: a second payload of it waits, never re-runs."""
    clock = Clock()
    store = SpyStore(str(tmp_path / "state.db"), retention=Retention(lease=LEASE))
    executor = HeldAtPrepare(clock, store)
    (tmp_path / "rules.yaml").write_text(RULES)
    keeper = GuardKeeper(store, "alive", GuardDefaults())
    runner = Runner({"http": executor}, clock, mode="execute", guards=keeper)
    processor = Processor(
        load_rulebook([tmp_path / "rules.yaml"], steps=builtin_registry()),
        runner,
        clock,
        PlanContext(execute=True),
        store=store,
    )
    # Alive for a second; the event loop is then starved (machine load) and
    # the heartbeat misses its renewal while a task is deciding.
    await store.register("alive", clock(), timedelta(seconds=1))
    first = asyncio.create_task(
        processor.process(JournalEntry("e1", "alertmanager", T0, _body("api")))
    )
    executor.first = first
    await asyncio.wait_for(executor.entered.wait(), 10)
    clock.advance(timedelta(seconds=5))
    (resent,) = await processor.process(
        JournalEntry("e2", "alertmanager", T0, _body("api"))
    )
    executor.go.set()
    (original,) = await asyncio.wait_for(first, 10)
    assert executor.runs == ["http://hooks.test/api"], "sent exactly once"
    assert original.matches[0].steps[0].decision.value == "executed"
    second = resent.matches[0].steps[0]
    assert second.decision.value == "skipped"
    assert "already started by alive" in second.reason
    await store.close()


@dataclass
class StuckRecheck(Rechecking):
    """A re-check that never returns: its process dies in the middle of it."""

    entered: asyncio.Event = field(default_factory=asyncio.Event)

    async def recheck(self, step: Any, alert: Alert, intent: Intent) -> RecheckResult:
        self.entered.set()
        await asyncio.Event().wait()
        raise AssertionError  # pragma: no cover (never woken)


async def test_a_crash_during_the_recheck_of_a_crash_never_sends_twice(tmp_path):
    """Two crashes in a row: the second one, mid re-check, leaves "it was sent".

    Seen under kill -9 chaos: the taker of a ``sending`` claim was stopped
    while its re-check waited on the target, its claim read ``running``, and
    the next process ran the step again ("interrupted before anything was
    sent"): the request reached the target twice.
    """
    path = str(tmp_path / "state.db")
    clock = Clock()
    dead = SqliteStore(path)
    await _crashed(dead, clock, "sending")
    await dead.close()
    store = SpyStore(path, retention=Retention(lease=LEASE))
    stuck = StuckRecheck(clock, store)
    second = _worker(tmp_path, store, clock, stuck, "second")
    await store.append(JournalEntry("e1", "alertmanager", T0, _body("api")), [])
    await second.start()
    await asyncio.wait_for(stuck.entered.wait(), 20)
    await second.stop()  # dies in the middle of the re-check
    await store.close()
    store = SpyStore(path, retention=Retention(lease=LEASE))
    executor = Rechecking(clock, store, seen=RecheckResult(None, "cannot tell"))
    third = _worker(tmp_path, store, clock, executor, "third")
    await third.start()
    try:
        await _wait_done(store)
    finally:
        await third.stop()
    (record,) = await store.decisions(DecisionQuery(payload_id="e1"))
    step = record["matches"][0]["steps"][0]
    assert stuck.runs == []
    assert executor.runs == [], step["reason"]
    assert step["decision"] == "executed"
    assert step["reason"].startswith("executed, recovered after a crash of second:")
    await store.close()
