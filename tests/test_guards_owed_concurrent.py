"""An owed hand-back settled by two of a worker's passes at once, once.

A worker runs ``concurrency`` loops over one ``GuardKeeper``; each pass calls
``settle()`` first. Two passes settling the same owed ``Held`` at once both
release ``budgets[0]`` and then both ``pop(0)``: one slot is never released and
the later pop hit an empty list (IndexError out of ``enter``), and the owed
entry was put back although it was handed back. One settles at a time now.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from guard_helpers import HOUR, T0

from receiver.engine.guards import GuardDefaults, GuardKeeper
from receiver.errors import StoreUnavailableError
from receiver.rulebook.schema import Guards
from receiver.store import SqliteStore


async def test_two_passes_settling_one_owed_hand_back(tmp_path: Any) -> None:
    """Two concurrent passes after an outage: both enter, nothing stays owed."""
    store = SqliteStore(str(tmp_path / "state.db"))
    keeper = GuardKeeper(
        store, "worker-1", GuardDefaults(global_budget_max=1000, cooldown=timedelta(0))
    )
    try:
        held = await keeper.enter(
            key="k-0",
            playbook="p",
            target="t0",
            guards=Guards(),
            now=T0,
            lock_ttl=HOUR,
        )
        assert len(held.budgets) == 2
        real = store.release_budget
        down = [True]

        async def release_budget(slot: Any) -> None:
            if down[0]:
                down[0] = False
                msg = "injected: store down"
                raise StoreUnavailableError(msg)
            await real(slot)

        store.release_budget = release_budget  # type: ignore[method-assign]
        with pytest.raises(StoreUnavailableError):
            await keeper.abandon(held)
        assert keeper.owed == 1
        # The store is back; two of the worker's loops start a pass each.
        results = await asyncio.gather(
            *(
                keeper.enter(
                    key=f"k-{i}",
                    playbook="p",
                    target=f"t{i}",
                    guards=Guards(),
                    now=T0 + timedelta(seconds=i),
                    lock_ttl=HOUR,
                )
                for i in (1, 2)
            ),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert errors == [], errors
        assert keeper.owed == 0
    finally:
        await store.close()
