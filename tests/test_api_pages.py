"""The read API: bounded limits, cursor pages, approvals expiring on a timer."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from conftest import NOW, bearer, full_settings
from test_web import AM, PROBLEM, am_alert, am_payload, wait_for_decisions

from receiver.store.base import Approval


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/api/v1/decisions", "limit=1001"),
        ("/api/v1/decisions", "limit=0"),
        ("/api/v1/decisions", "limit=%D9%A5"),
        ("/api/v1/payloads", "limit=5000"),
        ("/api/v1/approvals", "limit=-1"),
        ("/api/v1/approvals", "status=bogus"),
        ("/api/v1/decisions", "cursor=abc"),
    ],
)
async def test_out_of_bounds_queries_are_400(make_client, path, query):
    """Limits outside 1..1000, unknown statuses and foreign cursors are 400."""
    client = await make_client()
    resp = await client.get(f"{path}?{query}", headers=bearer())
    assert resp.status == 400
    assert resp.content_type == PROBLEM


async def test_decisions_page_through_with_next_cursor(make_client):
    """next_cursor walks every decision once, newest first, then is null."""
    client = await make_client()
    alerts = [am_alert(f"fp-{i}") for i in range(5)]
    resp = await client.post(AM, json=am_payload(*alerts), headers=bearer())
    assert resp.status == 202
    await wait_for_decisions(client, {}, count=5)
    seen, cursor = [], None
    for _ in range(10):
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        body = await (
            await client.get("/api/v1/decisions", params=params, headers=bearer())
        ).json()
        seen += [d["fingerprint"] for d in body["decisions"]]
        assert body["count"] == len(body["decisions"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"fp-{i}" for i in reversed(range(5))]


async def test_payloads_page_through(make_client):
    """GET /api/v1/payloads pages by cursor too."""
    client = await make_client()
    for i in range(3):
        resp = await client.post(
            AM, json=am_payload(am_alert(f"p{i}")), headers=bearer()
        )
        assert resp.status == 202
    first = await (
        await client.get("/api/v1/payloads?limit=2", headers=bearer())
    ).json()
    assert first["count"] == 2
    rest = await (
        await client.get(
            f"/api/v1/payloads?limit=2&cursor={first['next_cursor']}",
            headers=bearer(),
        )
    ).json()
    assert rest["count"] == 1
    assert rest["next_cursor"] is None


async def test_pending_approvals_expire_on_a_timer(make_client):
    """A pending approval past its expiry is marked expired without being touched."""
    client = await make_client(full_settings(approval_sweep="10ms"))
    await client.store.put_approval(
        Approval(
            id="ap-1",
            key="k-1",
            created_at=NOW - timedelta(hours=2),
            expires_at=NOW - timedelta(hours=1),
            request={},
        )
    )
    for _ in range(500):
        body = await (
            await client.get("/api/v1/approvals?status=expired", headers=bearer())
        ).json()
        if body["approvals"]:
            break
        await asyncio.sleep(0.01)
    assert [a["id"] for a in body["approvals"]] == ["ap-1"]
    assert body["approvals"][0]["decided_by"] == "receiver"
