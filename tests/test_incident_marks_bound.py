"""Fold marks outlive the time a killed worker's payloads take to come back.

A worker killed mid-storm leaves payloads it had folded but not recorded; the
next worker decides them again once their lease lapses (``journal.lease``,
five minutes by default), and meanwhile it folds new traffic, every trace
marked. Marks are kept by age (three leases), not by count: at 1,000 traces a
second a lease is 300,000 mark writes, and a count bound of 200,000 forgot
the dead worker's marks before its payloads came back, which were then folded
a second time. Past three leases, marks are forgotten (the table stays
bounded by the rate times that).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from receiver.settings import Settings
from receiver.store.incidents_base import marks_kept_for
from receiver.store.incidents_sqlite import SqliteIncidentStore

RATE = 1_000  # traces folded a second: a fraction of the documented rates
T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


async def test_marks_outlive_the_lease_at_a_modest_fold_rate() -> None:
    lease = Settings().journal.lease
    assert lease == timedelta(minutes=5)
    clock = Clock()
    store = SqliteIncidentStore(
        ":memory:", keep_marks=marks_kept_for(lease), clock=clock
    )
    try:
        # Folded by the worker that is then killed (not recorded).
        crashed = ("0190dead0001", "aee5a1c5120919c6")
        await store.mark_folded([crashed])
        # The next worker folds new traffic until the lease lapses.
        seconds = int(lease.total_seconds())
        for second in range(0, seconds, 10):
            clock.now = T0 + timedelta(seconds=second)
            await store.mark_folded(
                [
                    (f"0190{n:08x}", "fp")
                    for n in range(second * RATE, (second + 10) * RATE)
                ]
            )
        clock.now = T0 + lease
        # The payload comes back: decided again, its trace must still be known.
        assert await store.folded([crashed]) == {crashed}, (
            "the mark was forgotten before the entry's lease lapsed"
        )
        # Three leases later, a write forgets it (and everything that old).
        clock.now = T0 + marks_kept_for(lease) + timedelta(seconds=1)
        await store.mark_folded([("0190ffff0001", "fp")])
        assert await store.folded([crashed, ("0190ffff0001", "fp")]) == {
            ("0190ffff0001", "fp")
        }
    finally:
        await store.close()
