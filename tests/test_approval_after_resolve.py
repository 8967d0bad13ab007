"""An approval decided after its alert resolved leaves the alert resolved.

Approving journals the original payload again, so the approved step passes its
guard once. An Events v2 trigger carries no start: journaled again with its
states, after the resolve, it read as a new occurrence starting now, firing,
and overwrote the recorded resolve (a later approval would then have run a
remediation on a resolved alert).
"""

from __future__ import annotations

from datetime import timedelta

from conftest import APPROVE_TOKEN, NOW, ROUTING_KEY, bearer, journal_drained

from receiver.app import PROCESSOR
from receiver.store.handles import Approval

ENQUEUE = "/v2/enqueue"


def _event(action: str) -> dict[str, object]:
    return {
        "routing_key": ROUTING_KEY,
        "event_action": action,
        "dedup_key": "disk-db-1",
        "payload": {"summary": "DiskFull", "source": "db-1", "severity": "critical"},
    }


async def test_approving_after_the_resolve_keeps_the_alert_resolved(make_client):
    client = await make_client()
    store = client.store
    resp = await client.post(ENQUEUE, json=_event("trigger"))
    assert resp.status == 202, await resp.text()
    trigger = await store.payload((await resp.json())["id"])
    assert trigger is not None
    (alert,) = client.app[PROCESSOR].alerts(trigger.source, trigger.body, NOW)
    await journal_drained(store)
    resp = await client.post(ENQUEUE, json=_event("resolve"))
    assert resp.status == 202, await resp.text()
    await journal_drained(store)
    resolved = await store.alert_state(alert.fingerprint)
    assert resolved is not None
    assert resolved.status == "resolved"
    await store.put_approval(
        Approval(
            id="ap-1",
            key="run-once-key",
            created_at=NOW,
            expires_at=NOW + timedelta(days=1),
            request={"payload_id": trigger.id, "fingerprint": alert.fingerprint},
        )
    )
    resp = await client.post(
        "/api/v1/approvals/ap-1",
        json={"decision": "approve"},
        headers=bearer(APPROVE_TOKEN),
    )
    assert resp.status == 200, await resp.text()
    await journal_drained(store)
    assert await store.alert_state(alert.fingerprint) == resolved
