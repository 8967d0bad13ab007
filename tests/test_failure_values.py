"""Failure is a value: any exception of a step becomes a recorded ``failed`` step.

The runner and worker are driven with a real SQLite store, a clock that advances
on every reading, and executors at our own interface that raise what real ones
have raised (a ``ValueError`` from a bad port, a ``UnicodeEncodeError`` from a
lone surrogate, a ``KeyError``, a ``RuntimeError``, a ``CancelledError`` leaking
out of a client). Each alert of a payload is decided on its own; an entry that
fails as a whole is handed back, then parked after ``max_attempts`` claims.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from receiver.engine.guards import GuardDefaults, GuardKeeper, idempotency_key
from receiver.engine.planner import PlanContext
from receiver.engine.runner import Runner
from receiver.engine.worker import Processor, Worker
from receiver.errors import PermanentStepError
from receiver.metrics import Metrics
from receiver.model import Alert, Decision, StepResult, freeze
from receiver.rulebook.loader import load_rulebook
from receiver.steps.catalog import builtin_registry
from receiver.store import SqliteStore
from receiver.store.base import DecisionQuery, JournalEntry, Retention

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
SECRET = "s3cr3t-token-value"

RULES = """
playbooks:
  hook:
    remediation:
      - type: http.request
        url: "http://hooks.test/{labels.service}"
        verify: {type: http.get, url: "http://hooks.test/health/{labels.service}"}
    guards:
      cooldown: 0s
      budget: {max: 1000, window: 1h}
      circuit_breaker: {failures: 1000}
rules:
  - {name: hook, match: ['alertname="Hook"'], playbook: hook}
"""


class Tick:
    """A clock that advances a millisecond on every reading."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


RAISES: dict[str, Any] = {
    "ValueError": lambda: ValueError("Port could not be cast to integer value"),
    "UnicodeEncodeError": "\ud800".encode,
    "KeyError": lambda: {}["limits"],
    "RuntimeError": lambda: RuntimeError(f"client said {SECRET}"),
    "CancelledError": asyncio.CancelledError,
    "StepError": lambda: PermanentStepError("POST: HTTP 500"),
}


def _raise(name: str) -> None:
    made = RAISES[name]()
    if isinstance(made, BaseException):
        raise made


@dataclass
class FaultyExecutor:
    """An http executor that raises on chosen services, in run or verify."""

    fail_run: dict[str, str] = field(default_factory=dict)
    fail_verify: dict[str, str] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    async def run(self, step: Any, alert: Alert) -> StepResult:
        service = alert.labels["service"]
        self.calls.append(service)
        if service in self.fail_run:
            _raise(self.fail_run[service])
        return StepResult(ok=True, reason=f"POST {step.url}: HTTP 200")

    async def verify(self, check: Any, step: Any, alert: Alert) -> StepResult:
        service = alert.labels["service"]
        if service in self.fail_verify:
            _raise(self.fail_verify[service])
        return StepResult(ok=True, reason="verified")


def _alert(service: str, fp: str | None = None) -> Alert:
    return Alert(
        source="alertmanager",
        fingerprint=fp or f"fp-{service}",
        status="firing",
        labels=freeze({"alertname": "Hook", "service": service}),
        starts_at=T0 - timedelta(hours=1),
    )


@dataclass
class Rig:
    store: SqliteStore
    processor: Processor
    executor: FaultyExecutor
    clock: Tick


@pytest.fixture
async def rig(tmp_path):
    (tmp_path / "rules.yaml").write_text(RULES)
    store = SqliteStore(str(tmp_path / "state.db"))
    clock = Tick()
    executor = FaultyExecutor()
    keeper = GuardKeeper(store, "me", GuardDefaults(global_budget_max=1000))
    runner = Runner(
        {"http": executor},
        clock,
        mode="execute",
        guards=keeper,
        scrub=lambda text: text.replace(SECRET, "***"),
    )
    processor = Processor(
        load_rulebook([tmp_path / "rules.yaml"], steps=builtin_registry()),
        runner,
        clock,
        PlanContext(execute=True),
        store=store,
        scrub=lambda text: text.replace(SECRET, "***"),
    )
    yield Rig(store, processor, executor, clock)
    await store.close()


async def _guards_released(rig: Rig, service: str, store: Any = None) -> None:
    """The lock is free and the key recorded as finished (not left running)."""
    store = store or rig.store
    target = f"http://hooks.test/{service}"
    assert await store.lock_holder(f"target:{target}", rig.clock()) is None
    key = idempotency_key("hook", 0, "http.request", _alert(service))
    outcome = await store.claim_key(key, "probe", rig.clock(), timedelta(days=1))
    assert not outcome.won
    assert outcome.holder.status in ("done", "failed")


@pytest.mark.parametrize("raised", sorted(RAISES))
@pytest.mark.parametrize("where", ["run", "verify"])
async def test_any_exception_is_a_failed_step_and_guards_are_given_back(
    rig, raised, where
):
    """Any exception of a step or verify is a failed step; lock and key released."""
    bad = "bad"
    getattr(rig.executor, f"fail_{where}")[bad] = raised
    traces = await rig.processor.decide([_alert(bad), _alert("good")], "p-1")
    failed, fine = (t.matches[0].steps[0] for t in traces)
    assert failed.decision is Decision.FAILED
    expected = raised if raised != "StepError" else "HTTP 500"
    assert expected in failed.reason
    assert SECRET not in failed.reason
    assert fine.decision is Decision.EXECUTED, "one alert never blocks another"
    await _guards_released(rig, bad)
    await _guards_released(rig, "good")


async def test_an_alert_that_cannot_be_decided_is_recorded_and_others_go_on(
    rig, monkeypatch
):
    """An error outside any step (here: matching) becomes that alert's note."""
    book = rig.processor.rulebook

    class CrashingBook:
        def __getattr__(self, name: str) -> Any:
            return getattr(book, name)

        def match(self, alert: Alert, now: datetime) -> Any:
            if alert.fingerprint == "fp-broken":
                "\ud800".encode()
            return book.match(alert, now)

    monkeypatch.setattr(rig.processor, "rulebook", CrashingBook())
    traces = await rig.processor.decide([_alert("x", "fp-broken"), _alert("good")])
    assert (
        traces[0]
        .notes[0]
        .startswith(
            "failed: could not decide this alert: UnicodeEncodeError: 'utf-8' codec"
        )
    )
    assert traces[1].matches[0].steps[0].decision is Decision.EXECUTED


class PoisonProcessor(Processor):
    """Fails as a whole on payloads marked poison (an entry-level bug)."""

    async def process(self, entry: JournalEntry, prepared: Any = None) -> list[Any]:
        if b"poison" in entry.body:
            msg = f"bug while deciding {entry.id} with {SECRET}"
            raise RuntimeError(msg)
        return await super().process(entry, prepared)


def _body(services: list[str], tag: str = "") -> bytes:
    alerts = [
        {
            "status": "firing",
            "labels": {"alertname": "Hook", "service": s, "tag": tag},
            "annotations": {},
            "startsAt": "2026-11-26T09:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": f"fp-{s}",
        }
        for s in services
    ]
    return json.dumps(
        {"version": "4", "status": "firing", "groupKey": "g", "alerts": alerts}
    ).encode()


class CountingStore(SqliteStore):
    """Counts claims per entry, to prove nothing is attempted more than N times."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.claims: Counter[str] = Counter()

    async def claim_batch(
        self, consumer: str, limit: int, wait: float, now: datetime
    ) -> Any:
        leases = await super().claim_batch(consumer, limit, wait, now)
        for lease in leases:
            self.claims[lease.entry.id] += 1
        return leases


async def _drain(store: SqliteStore, bound: int = 2000) -> None:
    for _ in range(bound):
        if (await store.pending())[0] == 0:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"journal not drained: {await store.pending()}")


async def _run_worker(tmp_path, rig: Rig, store: CountingStore, **kwargs: Any):
    metrics = Metrics()
    processor = PoisonProcessor(
        rig.processor.rulebook,
        rig.processor._runner,
        rig.clock,
        PlanContext(execute=True),
        store=store,
        scrub=rig.processor.scrub,
    )
    worker = Worker(store, processor, 3, metrics=metrics, clock=rig.clock, **kwargs)
    await worker.start()
    return worker, metrics


async def test_a_poison_entry_is_parked_after_max_attempts(tmp_path, rig):
    """An entry failing as a whole is retried, then parked (listed, counted)."""
    store = CountingStore(str(tmp_path / "poison.db"))
    rig.processor._runner._guards.store = store
    entries = [
        JournalEntry(f"e{i}", "alertmanager", T0, _body([f"s{i}"], tag))
        for i, tag in enumerate(["", "poison", ""])
    ]
    for entry in entries:
        await store.append(entry, [])
    worker, metrics = await _run_worker(tmp_path, rig, store, max_attempts=3)
    try:
        await _drain(store)
    finally:
        await worker.stop()
    (parked,) = await store.parked()
    assert parked.entry.id == "e1"
    assert parked.reason.startswith("failed 3 times; last error: RuntimeError: bug")
    assert SECRET not in parked.reason
    assert store.claims["e1"] == 3
    assert metrics.journal_parked._value.get() == 1
    decided = {d["payload_id"] for d in await store.decisions(DecisionQuery())}
    assert decided == {"e0", "e2"}
    assert await store.retry_parked("e1", rig.clock())
    assert await store.parked_count() == 0
    await store.close()


@pytest.mark.parametrize("seed", range(6))
async def test_fault_injection_every_alert_gets_a_decision(tmp_path, rig, seed):
    """Random exceptions anywhere: every alert decided or its entry parked, <= N."""
    rnd = random.Random(seed)  # noqa: S311 (test data)
    store = CountingStore(
        str(tmp_path / f"faults-{seed}.db"), retention=Retention(lease=timedelta(1))
    )
    rig.processor._runner._guards.store = store
    names = sorted(RAISES)
    services: dict[str, list[str]] = {}
    for i in range(12):
        batch = [f"p{i}s{j}" for j in range(rnd.randint(1, 4))]
        for service in batch:
            roll = rnd.random()
            if roll < 0.25:
                rig.executor.fail_run[service] = rnd.choice(names)
            elif roll < 0.4:
                rig.executor.fail_verify[service] = rnd.choice(names)
        tag = "poison" if rnd.random() < 0.2 else ""
        services[f"e{i:02d}"] = batch
        await store.append(
            JournalEntry(f"e{i:02d}", "alertmanager", T0, _body(batch, tag)), []
        )
    max_attempts = 3
    worker, _metrics = await _run_worker(
        tmp_path, rig, store, max_attempts=max_attempts
    )
    try:
        await _drain(store)
    finally:
        await worker.stop()
    parked = {p.entry.id: p for p in await store.parked(1000)}
    records = await store.decisions(DecisionQuery(limit=10_000))
    by_entry: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_entry.setdefault(record["payload_id"], []).append(record)
    for entry_id, batch in services.items():
        assert store.claims[entry_id] <= max_attempts
        if entry_id in parked:
            assert parked[entry_id].reason
            assert entry_id not in by_entry
            continue
        got = sorted(r["labels"]["service"] for r in by_entry[entry_id])
        assert got == sorted(batch), "exactly one decision per alert"
        for record in by_entry[entry_id]:
            step = record["matches"][0]["steps"][0]
            service = record["labels"]["service"]
            failing = service in rig.executor.fail_run or (
                service in rig.executor.fail_verify
            )
            assert step["decision"] == ("failed" if failing else "executed"), step
            assert step["reason"]
            assert SECRET not in step["reason"]
            await _guards_released(rig, service, store)
    await store.close()
