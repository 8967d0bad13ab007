"""Hold a claim while what it was claimed for is carried out, or stop before it lapses.

Two things claim work for a lease and then contact people: the incident
service (a pending message or PagerDuty call, ``IncidentStore.renew_effect``)
and the sink dispatcher (an outbox row, ``Outbox.extend``). Once a claim
lapses, another receiver (or this one's own loop) may claim the work and send
it: a send that outlives its claim (a sink's timeouts and retries, a long
``Retry-After``, several sinks in turn, work late in a batch) would go out
twice at once. ``ClaimHolder.hold`` runs the send while it renews the claim
every third of the lease (through the caller's ``renew``, which must move only
this claim), and cuts the send off when the claim could not be renewed and is
about to lapse: a sixth of the lease before (for other receivers' clocks and
the cancellation itself). Renewal keeps a slow sink's message from being cut
off while the receiver and its store are alive; the cut-off keeps one that
cannot be renewed from being sent beside its next claimer's.

The callers map the two errors: ``ClaimLapsingError`` (cut off) is a failed
attempt, tried again later; ``ClaimLostError`` (someone else claimed it, or
too little of the claim is left to start) leaves the work, and writing about
it, to whoever claims it next.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import structlog

from receiver.errors import ReceiverError
from receiver.retrying import cancel_and_wait, stop_if_cancelled

T = TypeVar("T")

Renew = Callable[[datetime], Awaitable[bool]]
"""Move this claim's lapse to the time given: True if done, False if the claim
is no longer this holder's (claimed since by another, finished, handed back).
Raises (``ReceiverError``) when the store cannot say."""


class ClaimLostError(Exception):
    """The claim is not this holder's to act on (now or any more).

    Someone else claimed the work, or the claim is about to lapse and could
    not be renewed before the send started. If a send had started, it was
    stopped.
    """


class ClaimLapsingError(Exception):
    """The send was cut off: its claim could not be renewed and was lapsing.

    It may have reached the sink before it was stopped.
    """

    def __str__(self) -> str:
        return "cut off: its claim could not be renewed; it may have reached the sink"


@dataclass(frozen=True)
class ClaimHolder:
    """Renews claims while their work is carried out; cuts off the rest.

    ``sleep`` waits between the checks (``asyncio.sleep``; tests pass one that
    wakes when their clock says so). ``events`` prefixes the log events
    (``<events>_claim_not_renewed``, ``<events>_claim_lost``), written to the
    ``logger`` named.
    """

    clock: Callable[[], datetime]
    lease: timedelta
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    events: str = "claim"
    logger: str = "receiver"

    @property
    def every(self) -> timedelta:
        """How often a held claim is renewed (a third of the lease)."""
        return self.lease / 3

    @property
    def margin(self) -> timedelta:
        """How long before a claim lapses a send it could not renew is cut off."""
        return self.lease / 6

    async def hold(
        self,
        renew: Renew,
        until: datetime,
        send: Callable[[], Awaitable[T]],
        **about: object,
    ) -> T:
        """``send()``, while the claim ``renew`` moves (lapsing at ``until``) holds.

        A claim with a third or more of its lease gone is renewed before the
        send starts, then every third of the lease while it runs. ``about``:
        what the log lines name (the claim, its attempt).

        Raises:
            ClaimLostError: someone else claimed it, or too little of the
                claim was left to start; ``send`` was stopped or never started.
            ClaimLapsingError: the claim could not be renewed and was about to
                lapse; ``send`` was cut off.
        """
        try:
            until = await self._kept(renew, until, about, sending=False)
        except ClaimLapsingError:
            raise ClaimLostError from None  # nothing started: left to the next
        task = asyncio.ensure_future(send())
        try:
            while not await self._ended_by(task, self._wake(until)):
                # Raced with the send: one that ends while its store does not
                # answer a renewal is not kept waiting for that answer.
                checking = asyncio.ensure_future(
                    self._kept(renew, until, about, sending=True)
                )
                either: set[asyncio.Future[Any]] = {task, checking}
                try:
                    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not checking.done():
                        await cancel_and_wait(checking)
                if task.done():
                    if not checking.cancelled():
                        checking.exception()  # it ended meanwhile: what it did stands
                    break
                until = checking.result()  # or ClaimLostError, ClaimLapsingError
            return task.result()
        finally:
            if not task.done():
                await cancel_and_wait(task)

    def _wake(self, until: datetime) -> float:
        """Seconds until the claim is due for renewal, or to be cut off."""
        now = self.clock()
        renew = until - self.lease + self.every
        wake = min(renew if renew > now else now + self.every, until - self.margin)
        return max((wake - now).total_seconds(), 0.0)

    async def _ended_by(self, task: asyncio.Future[T], seconds: float) -> bool:
        """Wait ``seconds`` or until ``task`` ends; whether it has."""
        sleeping = asyncio.ensure_future(self.sleep(seconds))
        either: set[asyncio.Future[Any]] = {task, sleeping}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(sleeping)
        return task.done()

    async def _kept(
        self,
        renew: Renew,
        until: datetime,
        about: dict[str, object],
        *,
        sending: bool,
    ) -> datetime:
        """When the claim lapses now: renewed if it is due, as it was if not.

        Raises:
            ClaimLostError: someone else claimed it.
            ClaimLapsingError: not renewed, and a ``margin`` or less is left.
        """
        now = self.clock()
        if until - now <= self.lease - self.every:
            renewed = await self._renew(renew, now, until, about, sending=sending)
            if renewed is not None:
                return renewed
            now = self.clock()
        if now >= until - self.margin:
            raise ClaimLapsingError
        return until

    async def _renew(
        self,
        renew: Renew,
        now: datetime,
        until: datetime,
        about: dict[str, object],
        *,
        sending: bool,
    ) -> datetime | None:
        """The claim renewed from ``now``; None if the store could not say.

        While a send runs, the store's answer is awaited only until the claim
        is to be cut off: a store that hangs must not keep the send going
        past it.
        """
        left = (until - self.margin - now).total_seconds()
        if sending and left <= 0:
            return None
        log = structlog.get_logger(self.logger)
        not_renewed = f"{self.events}_claim_not_renewed"
        try:
            async with asyncio.timeout(left if sending else None):
                held = await renew(now + self.lease)
        except TimeoutError:
            held = None
            log.warning(
                not_renewed,
                **about,
                error="the store did not answer in time",
            )
        except ReceiverError as exc:
            held = None
            log.warning(not_renewed, **about, error=str(exc))
        except Exception:  # the send goes on; the next renewal may work
            held = None
            log.exception(not_renewed, **about)
        stop_if_cancelled()
        if held is False:
            lost = f"{self.events}_claim_lost"
            log.warning(lost, **about)
            raise ClaimLostError
        return now + self.lease if held else None
