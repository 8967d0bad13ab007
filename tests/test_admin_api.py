"""The pause switch and parked entries over HTTP (``receiver/web/admin.py``)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
from conftest import ADMIN_TOKEN, basic, bearer, full_settings, journal_drained
from peers import poll, run_receiver

from receiver.app import create_app
from receiver.cli import main
from receiver.rulebook.loader import load_rulebook
from receiver.runtime import build_runtime
from receiver.steps.catalog import builtin_registry
from receiver.store import MemoryStore, SqliteStore
from receiver.store.base import DecisionQuery, JournalEntry

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


async def test_pause_and_resume_are_audited(make_client):
    """POST pauses, DELETE resumes; each switch is a decision record and a metric."""
    client = await make_client()
    resp = await client.get("/api/v1/pause", headers=bearer(ADMIN_TOKEN))
    assert (await resp.json()) == {"paused": False}
    resp = await client.post(
        "/api/v1/pause",
        json={"reason": "failover drill"},
        headers=basic("alice", ADMIN_TOKEN),
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert (body["paused"], body["by"], body["reason"]) == (
        True,
        "alice",
        "failover drill",
    )
    pause = await client.store.pause()
    assert pause is not None
    assert pause.by == "alice"
    assert "receiver_paused 1.0" in client.metrics.render().decode()
    resp = await client.delete("/api/v1/pause?reason=done", headers=bearer(ADMIN_TOKEN))
    assert (await resp.json()) == {"paused": False}
    assert await client.store.pause() is None
    assert "receiver_paused 0.0" in client.metrics.render().decode()
    audit = [
        d
        for d in await client.store.decisions(DecisionQuery(limit=10))
        if d["payload_id"].startswith("admin.pause.")
    ]
    assert [(d["event"], d["by"], d["reason"]) for d in audit] == [
        ("resumed", "api", "done"),
        ("paused", "alice", "failover drill"),
    ]


async def test_pause_takes_no_free_text_by(make_client):
    """Who paused is the credential's identity: a "by" field or query is a 400."""
    client = await make_client()
    resp = await client.post(
        "/api/v1/pause",
        json={"by": "mallory", "reason": "x"},
        headers=bearer(ADMIN_TOKEN),
    )
    assert resp.status == 400
    problem = await resp.json()
    assert '"by" is not accepted' in problem["detail"]
    assert await client.store.pause() is None
    resp = await client.delete("/api/v1/pause?by=mallory", headers=bearer(ADMIN_TOKEN))
    assert resp.status == 400
    assert '"by" is not accepted' in (await resp.json())["detail"]


async def test_pause_rejects_a_bad_body_and_needs_credentials(make_client):
    """A non-boolean 'paused' is a 400 problem; no credentials is a 401."""
    client = await make_client()
    resp = await client.post(
        "/api/v1/pause", json={"paused": "no"}, headers=bearer(ADMIN_TOKEN)
    )
    assert resp.status == 400
    assert '"paused" must be true or false' in (await resp.json())["detail"]
    resp = await client.post("/api/v1/pause", json={})
    assert resp.status == 401
    assert await client.store.pause() is None


async def test_parked_entries_are_listed_and_retried(aiohttp_client, web_rules):
    """GET /api/v1/parked lists parked entries; retry queues one and it is decided."""
    store = MemoryStore()
    entry = JournalEntry("e-parked", "alertmanager", T0, b'{"alerts": []}')
    await store.append(entry, [])
    lease = await store.claim("crashed", 1.0, T0)
    assert lease is not None
    await store.park(lease, "failed 5 times; last error: KeyError: 'x'", T0)
    app = create_app(
        build_runtime(full_settings()),
        rulebook=load_rulebook([web_rules], steps=builtin_registry()),
        store=store,
    )
    client = await aiohttp_client(app)
    resp = await client.get("/api/v1/parked", headers=bearer(ADMIN_TOKEN))
    body = await resp.json()
    assert body["count"] == 1
    (item,) = body["parked"]
    assert (item["id"], item["attempts"]) == ("e-parked", 1)
    assert item["reason"] == "failed 5 times; last error: KeyError: 'x'"
    resp = await client.post(
        "/api/v1/parked/e-parked/retry", headers=bearer(ADMIN_TOKEN)
    )
    assert resp.status == 202
    resp = await client.post(
        "/api/v1/parked/e-parked/retry", headers=bearer(ADMIN_TOKEN)
    )
    assert resp.status == 404
    assert await store.parked_count() == 0
    await journal_drained(store)  # the app's worker decides it again


def test_replay_retry_queues_a_parked_entry_of_a_running_receiver(
    tmp_path, monkeypatch, capsys, web_rules
):
    """`replay --retry --from URL/ID` puts a parked entry back; it is decided."""
    db = tmp_path / "state.db"

    async def park() -> None:
        store = SqliteStore(str(db))
        body = (
            b'{"version": "4", "status": "firing", "groupKey": "g", "alerts": '
            b'[{"status": "firing", "labels": {"alertname": "X"}, '
            b'"startsAt": "2026-11-26T09:00:00Z", "fingerprint": "f1"}]}'
        )
        await store.append(JournalEntry("e-cli", "alertmanager", T0, body), [])
        lease = await store.claim("crashed", 1.0, T0)
        assert lease is not None
        await store.park(lease, "claimed 6 times without finishing", T0)
        await store.close()

    asyncio.run(park())
    env = {
        "RECEIVER_AUTH_TOKENS": "cli-token",
        "RECEIVER_ADMIN_TOKENS": "cli-token",
        "RECEIVER_STORE": f"sqlite:///{db}",
    }
    with run_receiver(tmp_path, rules=web_rules, env=env) as rx:
        auth = {"Authorization": "Bearer cli-token"}
        listed = httpx.get(f"{rx.url}/api/v1/parked", headers=auth, timeout=5)
        assert [p["id"] for p in listed.json()["parked"]] == ["e-cli"]
        monkeypatch.setenv("RECEIVER_AUTH_TOKENS", "cli-token")
        assert main(["replay", "--retry", "--from", f"{rx.url}/e-cli"]) == 0
        assert "queued parked entry e-cli again" in capsys.readouterr().out

        def decided() -> bool:
            found = httpx.get(
                f"{rx.url}/api/v1/decisions",
                params={"payload_id": "e-cli"},
                headers=auth,
                timeout=5,
            ).json()["decisions"]
            return len(found) == 1

        assert poll(decided)
        assert main(["replay", "--retry", "--from", f"{rx.url}/e-cli"]) == 2
