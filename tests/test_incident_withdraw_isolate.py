"""A withdrawn put keeps the one-by-one window (after a bug) at its size.

After a fold raised a bug, ``_isolate`` counts the items at the head of the
queue to fold one at a time, and the one being folded right now, which has
left the queue already (it is decremented once that fold ends). ``_withdraw``
counts the withdrawn traces among ``self._queue[: self._isolate]``: with an
isolated fold in flight that slice reaches one item past the window, so a
withdrawn trace just behind the window takes a turn that was not its own, and
the window's last trace is folded in a batch with others (the one-by-one
isolation meant to fold every innocent trace and drop only the culprit).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from receiver.incidents.queueing import FoldQueue


@dataclass(frozen=True)
class Item:
    name: str


async def test_a_withdrawn_put_behind_the_isolated_window_keeps_its_size() -> None:
    batches: list[list[str]] = []
    held = asyncio.Event()
    holding = asyncio.Event()

    async def fold(batch: Sequence[Item], done: set[int]) -> None:
        names = [t.name for t in batch]
        batches.append(names)
        if len(batch) > 1 and "bad" in names:
            msg = "a bug"
            raise RuntimeError(msg)
        if names == ["a"]:
            holding.set()
            await held.wait()

    queue = FoldQueue(fold, 100)  # type: ignore[arg-type]
    first = await queue.put([Item("a"), Item("bad"), Item("c")])  # type: ignore[list-item]
    await holding.wait()  # the batch failed; "a" is folded alone, held
    assert batches[0] == ["a", "bad", "c"]
    gone = await queue.put([Item("x")])  # type: ignore[list-item]
    kept = await queue.put([Item("y")])  # type: ignore[list-item]
    withdrawn = asyncio.Event()
    # Runs after the queue's own callback (the withdraw): registered later.
    gone.add_done_callback(lambda _f: withdrawn.set())
    gone.cancel()  # its worker stopped: "x" leaves the queue
    await withdrawn.wait()
    held.set()
    await asyncio.wait_for(asyncio.gather(first, kept), 10)
    await queue.drain()
    # "a", "bad" and "c" one at a time (only "bad" on its own is fine), then "y".
    assert batches[1:] == [["a"], ["bad"], ["c"], ["y"]], batches
