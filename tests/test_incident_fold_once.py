"""A payload decided again after a crash folds nothing into its incidents twice.

The worker hands a payload's traces to the incidents before it records the
decision; a crash in between decides the payload again (the journal entry was
never done), and the incidents see the same traces (same payload id and
fingerprint) a second time. Each incident write carries the fold marks of the
traces it folds (in the same atomic write), so the second time is told apart
from news: no resend counted twice, and no incident opened again for an alert
that resolved meanwhile. Both incident stores; each "restart" is a new service
on the same store, with nothing in memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from incident_helpers import (
    TickingClock,
    example,
    resolved,
    rulebook,
    traces,
)

from receiver.incidents.service import IncidentService
from receiver.model import AlertTrace
from receiver.store.incidents_base import IncidentQuery, IncidentStore

SIEM = "alertmanager/sark-siem-forwarding-down.firing.json"


@contextlib.asynccontextmanager
async def service(
    reopen_incidents: Callable[[], IncidentStore], clock: TickingClock
) -> AsyncIterator[IncidentService]:
    book = rulebook()
    running = IncidentService(reopen_incidents(), clock=clock, rulebook=lambda: book)
    try:
        yield running
    finally:
        await running.aclose()


def from_payload(batch: list[AlertTrace], payload_id: str) -> list[AlertTrace]:
    return [replace(t, payload_id=payload_id) for t in batch]


async def decided(payload: dict, payload_id: str, clock: TickingClock):
    return from_payload(
        await traces(rulebook(), "alertmanager", payload, clock()), payload_id
    )


async def all_incidents(running: IncidentService):
    page, _ = await running.page(IncidentQuery(limit=100))
    return page


async def test_a_payload_folded_again_changes_nothing(reopen_incidents) -> None:
    """Fired, resent, then both decided again: the incident is as it was."""
    clock = TickingClock()
    first = await decided(example(SIEM), "0190a0000001", clock)
    resend = await decided(example(SIEM), "0190a0000002", clock)
    async with service(reopen_incidents, clock) as running:
        await running.observe(first)
        await running.observe(resend)
        [before] = await all_incidents(running)
    assert {item.times for item in before.ledger} == {2}
    async with service(reopen_incidents, clock) as running:
        # The same traces again, as a worker deciding both payloads again sends.
        again = [
            *await decided(example(SIEM), "0190a0000001", clock),
            *await decided(example(SIEM), "0190a0000002", clock),
        ]
        await running.observe(again)
        [after] = await all_incidents(running)
    assert after == before


async def test_a_firing_decided_again_after_it_resolved_opens_nothing(
    reopen_incidents,
) -> None:
    """Fire, resolve; the firing payload decided again is not a new incident."""
    clock = TickingClock()
    fired = await decided(example(SIEM), "0190a0000001", clock)
    gone = await decided(resolved(example(SIEM), clock.now), "0190a0000002", clock)
    async with service(reopen_incidents, clock) as running:
        await running.observe(fired)
        await running.observe(gone)
        [incident] = await all_incidents(running)
    assert incident.state.value == "resolved"
    async with service(reopen_incidents, clock) as running:
        await running.observe(await decided(example(SIEM), "0190a0000001", clock))
        assert await all_incidents(running) == [incident]


def stepless(batch: list[AlertTrace]) -> list[AlertTrace]:
    """The traces with no step decided: a resend of them changes nothing."""
    return [
        replace(t, matches=tuple(replace(m, steps=()) for m in t.matches))
        for t in batch
    ]


async def test_a_resend_that_changed_nothing_is_not_folded_again_later(
    reopen_incidents,
) -> None:
    """A quiet resend, then the resolution; the resend decided again reopens nothing.

    The resend changed nothing when it was folded (no incident write), so its
    mark is written on its own; without it, the resend decided again after the
    resolution would open a new incident.
    """
    clock = TickingClock()
    async with service(reopen_incidents, clock) as running:
        await running.observe(
            stepless(await decided(example(SIEM), "0190a0000001", clock))
        )
        [opened] = await all_incidents(running)
        quiet = stepless(await decided(example(SIEM), "0190a0000003", clock))
        [unchanged] = await running.observe(quiet)
        assert unchanged == opened  # nothing written
        gone = await decided(resolved(example(SIEM), clock.now), "0190a0000004", clock)
        await running.observe(gone)
    async with service(reopen_incidents, clock) as running:
        again = stepless(await decided(example(SIEM), "0190a0000003", clock))
        await running.observe(again)
        incidents = await all_incidents(running)
    assert [i.id for i in incidents] == [opened.id]


async def test_traces_queued_twice_in_one_batch_after_a_restart_fold_once(
    reopen_incidents,
) -> None:
    """Through the queue (the worker's path): a batch of replays and news."""
    clock = TickingClock()
    fired = await decided(example(SIEM), "0190a0000001", clock)
    async with service(reopen_incidents, clock) as running:
        await running.put(fired)
        await running.drain()
        [before] = await all_incidents(running)
    async with service(reopen_incidents, clock) as running:
        await running.put(await decided(example(SIEM), "0190a0000001", clock))
        await running.put(await decided(example(SIEM), "0190a0000002", clock))
        await running.drain()
        [after] = await all_incidents(running)
    assert after.id == before.id
    # Counted once for the first payload, once for the new one.
    assert {item.times for item in after.ledger} == {2}
