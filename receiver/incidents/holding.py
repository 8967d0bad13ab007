"""Hold the claim on an effect while it is carried out, or stop before it lapses.

``service`` claims pending effects for a lease (``IncidentStore``). Once a
claim lapses, another receiver, or this one's ticker, may claim the effect and
send it: a send that outlives its claim (a sink's timeouts and retries, a long
``Retry-After``, several sinks in turn, an effect late in a batch) would go out
twice at once. ``ClaimHolder.hold`` runs the send while it renews the claim
every third of the lease (``IncidentStore.renew_effect``, only while it is
still this claim), and cuts the send off when the claim could not be renewed
and is about to lapse: a sixth of the lease before (for other receivers'
clocks and the cancellation itself). Renewal keeps a slow sink's message from
being cut off while the receiver and its store are alive; the cut-off keeps
one that cannot be renewed from being sent beside its next claimer's.

The service maps the two errors: ``ClaimLapsingError`` (cut off) is a failed
attempt, tried again later; ``ClaimLostError`` (another receiver claimed it,
or too little of the claim is left to start) leaves the effect to whoever
claims it next.
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
from receiver.store.incidents_base import ClaimedEffect, IncidentStore

log = structlog.get_logger("receiver.incidents")

T = TypeVar("T")


class ClaimLostError(Exception):
    """The claim is not this receiver's to act on (now or any more).

    Another receiver claimed the effect, or the claim is about to lapse and
    could not be renewed before the send started. If a send had started, it
    was stopped.
    """


class ClaimLapsingError(Exception):
    """The send was cut off: its claim could not be renewed and was lapsing.

    It may have reached the sink before it was stopped.
    """


@dataclass(frozen=True)
class ClaimHolder:
    """Renews claims on effects while they are carried out; cuts off the rest.

    ``sleep`` waits between the checks (``asyncio.sleep``; tests pass one that
    wakes when their clock says so).
    """

    store: IncidentStore
    clock: Callable[[], datetime]
    lease: timedelta
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    @property
    def every(self) -> timedelta:
        """How often a held claim is renewed (a third of the lease)."""
        return self.lease / 3

    @property
    def margin(self) -> timedelta:
        """How long before a claim lapses a send it could not renew is cut off."""
        return self.lease / 6

    async def hold(
        self, claimed: ClaimedEffect, until: datetime, send: Callable[[], Awaitable[T]]
    ) -> T:
        """``send()``, while the claim on ``claimed`` (lapsing at ``until``) holds.

        A claim with a third or more of its lease gone is renewed before the
        send starts, then every third of the lease while it runs.

        Raises:
            ClaimLostError: another receiver claimed it, or too little of the
                claim was left to start; ``send`` was stopped or never started.
            ClaimLapsingError: the claim could not be renewed and was about to
                lapse; ``send`` was cut off.
        """
        try:
            until = await self._kept(claimed, until, sending=False)
        except ClaimLapsingError:
            raise ClaimLostError from None  # nothing started: left to the next
        task = asyncio.ensure_future(send())
        try:
            while not await self._ended_by(task, self._wake(until)):
                try:
                    until = await self._kept(claimed, until, sending=True)
                except (ClaimLostError, ClaimLapsingError):
                    if task.done():
                        break  # it ended meanwhile: what it did stands
                    raise
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
        self, claimed: ClaimedEffect, until: datetime, *, sending: bool
    ) -> datetime:
        """When the claim lapses now: renewed if it is due, as it was if not.

        Raises:
            ClaimLostError: another receiver claimed it.
            ClaimLapsingError: not renewed, and a ``margin`` or less is left.
        """
        now = self.clock()
        if until - now <= self.lease - self.every:
            renewed = await self._renew(claimed, now, until, sending=sending)
            if renewed is not None:
                return renewed
            now = self.clock()
        if now >= until - self.margin:
            raise ClaimLapsingError
        return until

    async def _renew(
        self, claimed: ClaimedEffect, now: datetime, until: datetime, *, sending: bool
    ) -> datetime | None:
        """The claim renewed from ``now``; None if the store could not say.

        While a send runs, the store's answer is awaited only until the claim
        is to be cut off: a store that hangs must not keep the send going
        past it.
        """
        left = (until - self.margin - now).total_seconds()
        if sending and left <= 0:
            return None
        try:
            async with asyncio.timeout(left if sending else None):
                held = await self.store.renew_effect(claimed, now + self.lease)
        except TimeoutError:
            held = None
            log.warning(
                "incident_effect_claim_not_renewed",
                incident=claimed.incident_id,
                effect=claimed.id,
                error="the store did not answer in time",
            )
        except ReceiverError as exc:
            held = None
            log.warning(
                "incident_effect_claim_not_renewed",
                incident=claimed.incident_id,
                effect=claimed.id,
                error=str(exc),
            )
        except Exception:  # the send goes on; the next renewal may work
            held = None
            log.exception(
                "incident_effect_claim_not_renewed",
                incident=claimed.incident_id,
                effect=claimed.id,
            )
        stop_if_cancelled()
        if held is False:
            log.warning(
                "incident_effect_claim_lost",
                incident=claimed.incident_id,
                effect=claimed.id,
                attempt=claimed.attempts,
            )
            raise ClaimLostError
        return now + self.lease if held else None
