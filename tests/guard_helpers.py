"""What the guard tests share: a ticking clock (and, in conftest, ``any_store``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


class Clock:
    """Advances a millisecond on every reading; ``advance`` moves it further."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta
