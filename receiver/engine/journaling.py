"""What is recorded beside a payload when it is journalled: its alerts' states.

Used wherever a payload enters the journal outside the webhook edge: an
approval journals the original payload again (``receiver.web.approvals``), and
a backtest journals each stored payload into its simulated store
(``receiver.engine.backtest``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from receiver.model import Alert
from receiver.store.base import AlertState, Store


async def alert_states(
    store: Store, alerts: Iterable[Alert], now: datetime
) -> list[AlertState]:
    """The states of the actionable ``alerts`` as the edge records them at ``now``.

    Events v2 alerts carry no start: a trigger starts now, unless the alert is
    known to be firing already (or this is its resolve), which keeps its start.
    """
    states = []
    for alert in alerts:
        if not alert.actionable:
            continue
        start = alert.starts_at
        if start is None:
            known = await store.alert_state(alert.fingerprint)
            start = now
            if known is not None and (
                known.status == "firing" or alert.status == "resolved"
            ):
                start = known.starts_at or now
        states.append(AlertState(alert.fingerprint, alert.status, start, now))
    return states
