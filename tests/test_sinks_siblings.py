"""A sink that crashes does not leave its siblings running behind the retry.

One sink of a delivery raises an unexpected error at once while another is
still waiting for its server. The row is retried; the retry must not contact
the sink that was still on its way (and then succeeded) a second time.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from conftest import Ticking, passing

from receiver.model import (
    Alert,
    AlertTrace,
    Decision,
    MatchTrace,
    Severity,
    StepKind,
    StepTrace,
    freeze,
)
from receiver.retrying import RetryPolicy
from receiver.sinks import SinkDispatcher, SinkOutcome
from receiver.store import MemoryStore
from receiver.store.outbox import SqliteOutbox

NOW = datetime(2026, 11, 26, 10, 12, tzinfo=UTC)


def trace(payload_id: str) -> AlertTrace:
    alert = Alert(
        source="alertmanager",
        fingerprint="fp1",
        status="firing",
        labels=freeze({"alertname": "SiemDown"}),
        starts_at=NOW,
    )
    step = StepTrace(
        kind=StepKind.REMEDIATION,
        type="k8s.restart",
        target="deploy/siem",
        decision=Decision.EXECUTED,
        reason="done",
    )
    match = MatchTrace(
        rule="siem", severity=Severity.P1, playbook="siem", steps=(step,)
    )
    return AlertTrace(
        alert=alert,
        matches=(match,),
        decided_at=NOW,
        payload_id=payload_id,
        mode="execute",
    )


class Crashing:
    """Raises an unexpected error on its first call, then succeeds."""

    name = "crashing"
    dedupe = "decision"

    def __init__(self) -> None:
        self.calls = 0
        self.failed = asyncio.Event()

    async def send(self, trace: AlertTrace) -> SinkOutcome:
        self.calls += 1
        if self.calls == 1:
            self.failed.set()
            msg = "renderer bug"
            raise RuntimeError(msg)
        return SinkOutcome(self.name, "sent", "ok", 1)

    async def aclose(self) -> None:
        pass


class Slow:
    """Waits for ``gate`` before its server answers; records every call."""

    name = "slow"
    dedupe = "decision"

    def __init__(self) -> None:
        self.calls = 0
        self.gate = asyncio.Event()
        self.sent = 0

    async def send(self, trace: AlertTrace) -> SinkOutcome:
        self.calls += 1
        if self.calls > 1:
            self.gate.set()  # a second call: nothing to wait for any more
        await self.gate.wait()
        self.sent += 1
        return SinkOutcome(self.name, "sent", "ok", 1)

    async def aclose(self) -> None:
        pass


class GateOnRenewal:
    """The outbox; a renewal after the crash opens the slow sink's gate.

    The renewal is the dispatcher's own timer running while a delivery is
    still going on: it proves the delivery waited for the slow sink.
    """

    def __init__(self, inner: SqliteOutbox, crashing: Crashing, slow: Slow) -> None:
        self.inner = inner
        self.crashing = crashing
        self.slow = slow

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def extend(
        self, row_id: str, until: datetime, *, claim: int | None = None
    ) -> bool:
        if self.crashing.failed.is_set():
            self.slow.gate.set()
        return await self.inner.extend(row_id, until, claim=claim)


async def test_a_crashing_sink_does_not_resend_a_slow_sibling(tmp_path):
    crashing, slow = Crashing(), Slow()
    outbox = GateOnRenewal(SqliteOutbox(str(tmp_path / "o.db")), crashing, slow)
    clock = Ticking(NOW, step=timedelta(milliseconds=1))
    store = MemoryStore()
    d = SinkDispatcher(
        {crashing.name: crashing, slow.name: slow},
        store=store,
        outbox=outbox,  # type: ignore[arg-type]
        choose=lambda _t: [crashing.name, slow.name],
        clock=clock,
        retry=RetryPolicy(multiplier=0.001, cap=0.01),
        poll=0.01,
        lease=timedelta(seconds=30),
        renew_sleep=passing(clock),
    )
    await d.put([trace("p1")])
    await d.drain()
    assert await d.counts() == (0, 0)
    assert crashing.calls == 2  # failed, then retried
    assert slow.calls == 1, "the retry contacted a sink that had succeeded"
    assert slow.sent == 1
    await d.aclose()
    await store.close()


class ClaimBreaksOnce:
    """The outbox; its first claim fails with an error that is not a store's."""

    def __init__(self, inner: SqliteOutbox) -> None:
        self.inner = inner
        self.broke = False

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def claim(self, now: datetime, lease: timedelta) -> object:
        if not self.broke:
            self.broke = True
            # What a row read back half gone gives (Redis: fields of a row
            # another holder deleted between the claim and the read).
            raise KeyError("owner")
        return await self.inner.claim(now, lease)


async def test_a_claim_that_breaks_does_not_kill_the_delivery_loop(tmp_path):
    slow = Slow()
    slow.gate.set()
    outbox = ClaimBreaksOnce(SqliteOutbox(str(tmp_path / "o.db")))
    store = MemoryStore()
    d = SinkDispatcher(
        {slow.name: slow},
        store=store,
        outbox=outbox,  # type: ignore[arg-type]
        choose=lambda _t: [slow.name],
        clock=Ticking(NOW, step=timedelta(milliseconds=1)),
        retry=RetryPolicy(multiplier=0.001, cap=0.01),
        poll=0.01,
        concurrency=1,
    )
    await d.put([trace("p1")])
    (loop,) = d._loops
    drained = asyncio.create_task(d.drain())
    done, _ = await asyncio.wait([drained, loop], return_when=asyncio.FIRST_COMPLETED)
    assert drained in done, "the only delivery loop died"
    assert slow.sent == 1
    await d.aclose()
    await store.close()
