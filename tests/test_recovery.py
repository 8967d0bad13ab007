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

from receiver.engine.guards import GuardDefaults, GuardKeeper, idempotency_key
from receiver.engine.planner import PlanContext
from receiver.engine.runner import Runner
from receiver.engine.worker import Processor, Worker
from receiver.model import Alert, Decision, StepResult, freeze
from receiver.rulebook.loader import load_rulebook
from receiver.store import SqliteStore
from receiver.store.base import DecisionQuery, JournalEntry, Lease, Retention

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
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


class Clock:
    """Advances a millisecond on every reading; ``advance`` moves it further."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


class SpyStore(SqliteStore):
    """Records claims per consumer and the latest lease renewal."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.claimed: Counter[str] = Counter()
        self.renewed_until = T0

    async def claim(self, consumer: str, wait: float, now: datetime) -> Any:
        lease = await super().claim(consumer, wait, now)
        if lease is not None:
            self.claimed[consumer.rpartition("/")[0]] += 1
        return lease

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
    rechecks: frozenset[str] = frozenset()
    already: bool = False

    async def run(self, step: Any, alert: Alert) -> StepResult:
        self.runs.append(step.url)
        if self.already:
            return StepResult(ok=True, reason="already as wanted", changed=False)
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
        return StepResult(ok=True, reason="healthy after a long wait")


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
        load_rulebook([tmp_path / "rules.yaml"]),
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
        assert await store.mark_sending(key, "dead", clock())
    return key


async def _after_restart(
    tmp_path: Any, executor_kwargs: dict[str, Any], status: str
) -> tuple[dict[str, Any], SlowVerify, SqliteStore]:
    path = str(tmp_path / "state.db")
    clock = Clock()
    dead = SqliteStore(path)
    await _crashed(dead, clock, status)
    await dead.close()  # kill -9: nothing released
    store = SpyStore(path, retention=Retention(lease=LEASE))
    executor = SlowVerify(clock, store, **executor_kwargs)
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


async def test_a_sent_interrupted_remediation_is_not_re_run(tmp_path):
    """A dead process's sent run without re-check: failed, unknown, never re-run."""
    step, executor, store = await _after_restart(tmp_path, {}, "sending")
    assert step["decision"] == "failed"
    assert step["reason"].startswith("interrupted by a crash of dead after the action")
    assert "whether it took effect is unknown and it is not re-run" in step["reason"]
    assert executor.runs == []
    await store.close()


@pytest.mark.parametrize(
    ("already", "decision", "says"),
    [
        (True, Decision.EXECUTED, "executed, recovered after a crash of dead"),
        (False, Decision.EXECUTED, "was interrupted by a crash before it took effect"),
    ],
)
async def test_a_sent_interrupted_remediation_is_re_checked(
    tmp_path, already, decision, says
):
    """A re-checking executor decides whether the interrupted run took effect."""
    step, executor, store = await _after_restart(
        tmp_path,
        {"rechecks": frozenset({"http.request"}), "already": already},
        "sending",
    )
    assert step["decision"] == decision.value
    assert says in step["reason"]
    assert executor.runs == ["http://hooks.test/api"]
    await store.close()
