"""The pause switch and parked entries over HTTP (``receiver/web/admin.py``)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
from conftest import (
    ADMIN_TOKEN,
    basic,
    bearer,
    full_settings,
    journal_drained,
    park_entry,
)
from fakes import RecordingServer, Reply
from peers import poll, run_receiver

from receiver.app import OUTBOX, create_app
from receiver.cli import main
from receiver.model import Alert, AlertTrace, MatchTrace, Severity, freeze
from receiver.rulebook.loader import load_rulebook
from receiver.runtime import build_runtime
from receiver.sinks.outbox import encode_trace
from receiver.steps.catalog import builtin_registry
from receiver.store import MemoryStore, SqliteStore
from receiver.store.base import DecisionQuery, JournalEntry
from receiver.store.outbox import SqliteOutbox

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


def _recorded_once(base: str, payload_id: str, headers: dict[str, str]) -> bool:
    """Whether the decision log holds exactly one record of ``payload_id``."""
    found = httpx.get(
        f"{base}/api/v1/decisions",
        params={"payload_id": payload_id},
        headers=headers,
        timeout=5,
    ).json()["decisions"]
    return len(found) == 1


def test_replay_retry_queues_a_parked_entry_of_a_running_receiver(
    tmp_path, monkeypatch, capsys, web_rules
):
    """`replay --retry --from URL/ID` puts a parked entry back; it is decided."""
    db = tmp_path / "state.db"

    async def park() -> None:
        store = SqliteStore(str(db))
        await park_entry(store, "e-cli", "f1", T0, "claimed 6 times without finishing")
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

        assert poll(lambda: _recorded_once(rx.url, "e-cli", auth))
        assert main(["replay", "--retry", "--from", f"{rx.url}/e-cli"]) == 2


def test_a_parked_sink_delivery_is_listed_and_retried_through_the_edge(
    tmp_path, web_rules
):
    """The edge lists a parked webhook call; a retry gets it sent by the worker.

    ``receiver serve`` (edge and worker child) on a SQLite file that holds a
    delivery parked by an earlier run. Read access lists it, with why; only
    admin access retries it; the worker's dispatcher then sends it within
    seconds and records the outcome.
    """
    db = tmp_path / "state.db"
    alert = Alert(
        source="alertmanager",
        fingerprint="f-parked",
        status="firing",
        labels=freeze({"alertname": "SiemDown"}),
        starts_at=T0,
    )
    decided = AlertTrace(
        alert=alert,
        matches=(MatchTrace(rule="siem", severity=Severity.P1, playbook="siem"),),
        decided_at=T0,
        payload_id="e-sinks",
        mode="execute",
    )

    async def park() -> None:
        outbox = SqliteOutbox(str(db))
        await outbox.put([("e-sinks.0", "o", encode_trace(decided), ["webhook"])], T0)
        assert await outbox.claim(T0, timedelta(minutes=5)) is not None
        await outbox.park("e-sinks.0", "failed 5 times; last error: Boom")
        await outbox.close()

    asyncio.run(park())
    with RecordingServer() as hook:
        hook.script("POST", "/hook", Reply(200, b"ok"))
        env = {
            "RECEIVER_AUTH_TOKENS": "read-token",
            "RECEIVER_ADMIN_TOKENS": "admin-token",
            "RECEIVER_STORE": f"sqlite:///{db}",
            "RECEIVER_SINKS": "webhook",
            "RECEIVER_WEBHOOK_URLS": f"{hook.url}/hook",
        }
        with run_receiver(tmp_path, rules=web_rules, env=env) as rx:
            reader = {"Authorization": "Bearer read-token"}
            admin = {"Authorization": "Bearer admin-token"}
            listed = httpx.get(
                f"{rx.url}/api/v1/sinks/parked", headers=reader, timeout=5
            )
            assert listed.status_code == 200, listed.text
            assert listed.json() == {
                "count": 1,
                "parked": [
                    {
                        "id": "e-sinks.0",
                        "reason": "failed 5 times; last error: Boom",
                        "attempts": 1,
                        "sinks": ["webhook"],
                        "left": ["webhook"],
                        "done": [],
                        "payload_id": "e-sinks",
                        "fingerprint": "f-parked",
                        "alertname": "SiemDown",
                        "decided_at": "2026-11-26T10:00:00.000Z",
                        "mode": "execute",
                        "rules": ["siem"],
                    }
                ],
            }
            bad = httpx.get(
                f"{rx.url}/api/v1/sinks/parked?limit=0", headers=reader, timeout=5
            )
            assert bad.status_code == 400
            assert "limit must be between 1 and 1000" in bad.json()["detail"]
            retry = f"{rx.url}/api/v1/sinks/parked/e-sinks.0/retry"
            assert httpx.post(retry, headers=reader, timeout=5).status_code == 403
            assert hook.seen("POST", "/hook") == []
            answered = httpx.post(retry, headers=admin, timeout=5)
            assert answered.status_code == 202, answered.text
            assert hook.wait_for("POST", "/hook", 1, 30), "the retry was not sent"

            assert poll(
                lambda: _recorded_once(rx.url, "e-sinks.sinks", reader),
                timeout=30,
                interval=0.2,
            )
            again = httpx.post(retry, headers=admin, timeout=5)
            assert again.status_code == 404
            assert "GET /api/v1/sinks/parked lists them" in again.text
            empty = httpx.get(
                f"{rx.url}/api/v1/sinks/parked", headers=reader, timeout=5
            )
            assert empty.json() == {"count": 0, "parked": []}
            log = rx.log.read_text()
        assert len(hook.seen("POST", "/hook")) == 1
    assert '"sink_delivery_retried"' in log


async def test_the_guards_page_says_when_its_parked_lists_are_cut(
    aiohttp_client, web_rules
):
    """Past 50 parked rows the page says how many there are and where the rest is."""
    store = MemoryStore()
    app = create_app(
        build_runtime(full_settings()),
        rulebook=load_rulebook([web_rules], steps=builtin_registry()),
        store=store,
        sinks={},
    )
    outbox = app[OUTBOX]
    rows = [(f"p{i:03}.0", "o", "{}", ["webhook"]) for i in range(52)]
    await outbox.put(rows, T0)
    for row_id, *_ in rows:
        assert await outbox.claim(T0, timedelta(minutes=1)) is not None
        await outbox.park(row_id, "failed 5 times")
    for i in range(3):
        await park_entry(store, f"e{i}", f"f{i}", T0, "claimed 6 times")
    client = await aiohttp_client(app)
    resp = await client.get("/ui/guards", headers=basic("alice", ADMIN_TOKEN))
    page = await resp.text()
    assert resp.status == 200, page
    assert "50 of 52 shown, newest first" in page
    assert "GET /api/v1/sinks/parked?limit=1000" in page
    assert "p051.0" in page  # newest first: the two oldest are cut
    assert "p000.0" not in page
    assert "of 3 shown" not in page  # three parked entries: all listed
    assert all(f"e{i}" in page for i in range(3))


async def test_a_damaged_or_hostile_parked_delivery_is_shown_safely(
    aiohttp_client, web_rules
):
    """A row whose trace is garbage is listed as damaged; hostile labels are text."""
    app = create_app(
        build_runtime(full_settings()),
        rulebook=load_rulebook([web_rules], steps=builtin_registry()),
        store=MemoryStore(),
        sinks={},
    )
    hostile = AlertTrace(
        alert=Alert(
            source="alertmanager",
            fingerprint='"><img src=x onerror=alert(1)>',
            status="firing",
            labels=freeze({"alertname": "<script>alert(1)</script>"}),
        ),
        matches=(),
        decided_at=T0,
        payload_id="p-hostile",
        mode="execute",
    )
    outbox = app[OUTBOX]
    await outbox.put(
        [
            ("p-damaged.0", "o", '{"alert": {"labels": [1, 2', ["webhook"]),
            ("p-hostile.0", "o", encode_trace(hostile), ["<b>sink</b>"]),
        ],
        T0,
    )
    for _ in range(2):
        row = await outbox.claim(T0, timedelta(minutes=1))
        assert row is not None
        await outbox.park(row.id, "failed 5 times; last error: <Boom>")
    client = await aiohttp_client(app)
    resp = await client.get("/api/v1/sinks/parked", headers=bearer(ADMIN_TOKEN))
    listed = {p["id"]: p for p in (await resp.json())["parked"]}
    assert listed["p-damaged.0"]["trace"].startswith("damaged: ValidationError")
    assert "alertname" not in listed["p-damaged.0"]
    assert listed["p-hostile.0"]["alertname"] == "<script>alert(1)</script>"
    resp = await client.get("/ui/guards", headers=basic("alice", ADMIN_TOKEN))
    page = await resp.text()
    assert resp.status == 200, page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert(1)" not in page
    assert "<img src=x" not in page
    assert "<b>sink</b>" not in page
    assert "&lt;Boom&gt;" in page
    assert "p-damaged.0" in page  # listed (as "? (?)"), so it can be sent again
