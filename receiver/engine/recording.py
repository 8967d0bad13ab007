"""Group commit of decided journal entries: many completions, one store call.

The worker's tasks hand each decided entry (its id and decision records) to one
``Recorder``. The first waits for no one: its entry is written at once. Entries
decided while that write is on its way are written together in the next
``complete_batch`` (one SQLite transaction per file, one Redis script call),
and each caller hears back only once its own entry is recorded. Under load one
write then serves many entries instead of one; alone, an entry waits no longer
than before.

Up to ``in_flight`` writes are on their way at once, each with entries of its
own: while one waits for the disk, the next encodes its records and writes
them, so recording is not one write after another at the disk's pace. Built
and closed by ``Worker``: one that writes the records (``record_batch``, as
soon as an entry is decided) and one that marks entries done
(``complete_batch``, once their incidents are folded).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from receiver.errors import StoreUnavailableError
from receiver.model import JSONValue
from receiver.retrying import cancel_and_wait, stop_if_cancelled
from receiver.store.base import Store

_Pending = tuple[str, Sequence[Mapping[str, JSONValue]], "asyncio.Future[None]"]


class Recorder:
    """Completes journal entries (or writes their records) in batches of ``limit``."""

    def __init__(
        self,
        store: Store,
        limit: int = 64,
        in_flight: int = 2,
        *,
        records_only: bool = False,
    ) -> None:
        self._store = store
        # ``record_batch``: the records alone, no entry marked done.
        self._call = "record_batch" if records_only else "complete_batch"
        self._limit = max(limit, 1)
        self._in_flight = max(in_flight, 1)
        self._queue: list[_Pending] = []
        self._flushers: set[asyncio.Task[None]] = set()
        # How many store calls recorded how many entries (for the bench).
        self.writes = 0
        self.entries = 0

    async def record(
        self, entry_id: str, traces: Sequence[Mapping[str, JSONValue]]
    ) -> None:
        """Record an entry's decisions and mark it done; return once written.

        (Records alone with ``records_only``.) Raises what the store call
        raised for the batch it was in.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((entry_id, traces, future))
        # Counted by whether they are done, not by a done-callback: that runs
        # a turn later, and a flusher that has just ended still counted would
        # leave this entry with no one to write it.
        running = {f for f in self._flushers if not f.done()}
        if len(running) < self._in_flight:
            running.add(asyncio.create_task(self._flush(), name="recorder"))
        self._flushers = running
        await future

    async def _flush(self) -> None:
        # Each flusher takes what waits when it is free: a batch is never split
        # between two of them, and no entry is in two batches.
        while self._queue:
            # A cancel a store client swallowed (its write then failing or even
            # succeeding): stop, do not write the next batch (``aclose``
            # cancels its callers).
            stop_if_cancelled()
            batch = [p for p in self._queue[: self._limit] if not p[2].cancelled()]
            self._queue = self._queue[self._limit :]
            if batch:
                await self._write(batch)

    async def _write(self, batch: list[_Pending]) -> None:
        """Write ``batch`` in one store call; each caller hears its outcome.

        The store down: every caller gets that (each retries). Any other error
        (a bug, such as one entry's records that cannot be encoded): each entry
        is written again alone, so only the one at fault fails, not the
        entries that shared its batch (they would be handed back, decided
        again, and parked with it at the attempts' limit).
        """
        try:
            write = getattr(self._store, self._call)  # looked up when called
            await write([(i, t) for i, t, _ in batch])
        except asyncio.CancelledError:
            for _, _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 (each caller gets it)
            if len(batch) > 1 and not isinstance(exc, StoreUnavailableError):
                await self._one_by_one(batch)
                return
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        self.writes += 1
        self.entries += len(batch)
        for _, _, future in batch:
            if not future.done():
                future.set_result(None)

    async def _one_by_one(self, batch: list[_Pending]) -> None:
        """Write each entry of ``batch`` alone, in order."""
        for index, pending in enumerate(batch):
            try:
                await self._write([pending])
            except asyncio.CancelledError:
                for _, _, future in batch[index + 1 :]:
                    future.cancel()
                raise

    async def aclose(self) -> None:
        """Stop writing; whoever still waits is cancelled."""
        try:
            await cancel_and_wait(*self._flushers)
        finally:
            for _, _, future in self._queue:
                future.cancel()
            self._queue = []
