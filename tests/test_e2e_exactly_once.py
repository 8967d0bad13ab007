"""Nothing lost, nothing done twice: kill -9 again and again mid-burst, and resends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import textwrap
from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from counting import CountingServer, hook_env, hook_rules
from peers import poll, run_alertmanager, run_receiver, run_redis

from receiver.store import open_store
from receiver.store.base import DecisionQuery

pytestmark = pytest.mark.e2e

TOKEN = "exactly-once-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _payload(i: int) -> bytes:
    started = "2026-11-26T10:00:00.123456789Z"
    alert = {
        "status": "firing",
        "labels": {"alertname": "Burst", "n": str(i)},
        "annotations": {},
        "startsAt": started,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "",
        "fingerprint": f"{i:016x}",
    }
    return json.dumps(
        {
            "version": "4",
            "status": "firing",
            "receiver": "r",
            "groupKey": f'{{}}:{{n="{i}"}}',
            "alerts": [alert],
        }
    ).encode()


async def _burst(
    base: str, indices: list[int], accepted: dict[int, str] | None = None
) -> dict[int, str]:
    """POST payloads concurrently; return index -> payload id for each 202.

    ``accepted``, when given, is filled as the 202s come back.
    """
    accepted = {} if accepted is None else accepted
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with sem:
                try:
                    response = await client.post(
                        f"{base}/webhooks/alertmanager",
                        content=_payload(i),
                        headers={**AUTH, "Content-Type": "application/json"},
                    )
                except httpx.HTTPError:
                    return
                if response.status_code == 202:
                    accepted[i] = response.json()["id"]

        await asyncio.gather(*(one(i) for i in indices))
    return accepted


def _undecided(base: str, payload_ids: list[str]) -> list[str]:
    """The payload ids that have no recorded decision yet."""
    with httpx.Client(base_url=base, headers=AUTH, timeout=5) as client:
        return [
            p
            for p in payload_ids
            if not client.get(
                "/api/v1/decisions", params={"payload_id": p, "limit": 1}
            ).json()["decisions"]
        ]


KILLS = 10
PAYLOADS = 1000
# What a non-executed final decision must say about whether the action took
# effect (or why it never started).
TOOK_EFFECT_OR_NOT = (
    "already done by",  # another payload of the same occurrence ran it
    "nothing sent yet",  # a concurrent resend holds it, nothing left yet
    "the action was sent",  # a concurrent resend holds it, already sent
    "unknown whether it took effect",  # sent, then the process was killed
    "nothing was sent",  # failed before anything left
)


def _decisions(store_url: str) -> list[dict]:
    """Every decision record, read from the store after the receiver stopped."""

    async def read() -> list[dict]:
        store = open_store(store_url)
        try:
            return await store.decisions(DecisionQuery(limit=100_000))
        finally:
            await store.close()

    return asyncio.run(read())


def _round(rx, hook: CountingServer, todo: list[int], rnd: random.Random):
    """Burst ``todo`` at ``rx`` and SIGKILL it at a random moment of the work."""

    async def go() -> dict[int, str]:
        got: dict[int, str] = {}
        task = asyncio.create_task(_burst(rx.url, todo, got))
        loop = asyncio.get_running_loop()
        start = sum(hook.snapshot().values())
        # Killed at whichever comes first: a number of remediations reaching
        # the target, a share of the burst accepted (the edge accepts faster
        # than the worker acts, so without it a kill could land only after
        # the last 202), or a deadline.
        want = rnd.randint(5, 80)
        accepted_by = rnd.randint(1, max(1, len(todo) - 1))
        deadline = loop.time() + rnd.uniform(0.05, 2.0)
        while (
            sum(hook.snapshot().values()) - start < want
            and len(got) < accepted_by
            and not task.done()
        ):
            if loop.time() > deadline:
                break
            await asyncio.sleep(0.005)
        rx.proc.send_signal(signal.SIGKILL)
        return await task

    return asyncio.run(go())


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_sigkill_chaos_every_202_decided_once_nothing_twice(tmp_path, backend):
    """Ten SIGKILLs mid-burst: one decision per 202, nothing twice, reasons true."""
    rnd = random.Random(20261126)  # noqa: S311 (test schedule, reproducible)
    rules = tmp_path / "rules.yaml"
    with contextlib.ExitStack() as stack:
        hook = stack.enter_context(CountingServer())
        if backend == "redis":
            store_url = stack.enter_context(run_redis(tmp_path / "redis"))
        else:
            store_url = f"sqlite:///{tmp_path / 'state.db'}"
        # The verify asks the target whether the request arrived: a crash
        # re-check of an interrupted request is then decided by the truth.
        rules.write_text(hook_rules(hook.url, "Burst", verify=True))
        env = {
            **hook_env(hook.port, store_url, TOKEN),
            "RECEIVER_JOURNAL_LEASE": "2s",
            "RECEIVER_JOURNAL_MAX_ATTEMPTS": "100",
        }
        accepted: dict[int, str] = {}
        mid_burst = 0
        for _ in range(KILLS):
            todo = [i for i in range(PAYLOADS) if i not in accepted]
            with run_receiver(tmp_path, rules=rules, env=env) as rx:
                got = _round(rx, hook, todo, rnd)
                rx.proc.wait(timeout=10)
            accepted.update(got)
            mid_burst += 0 < len(got) < len(todo)
        assert mid_burst >= KILLS // 2, f"only {mid_burst} kills landed mid-burst"
        with run_receiver(tmp_path, rules=rules, env=env) as last:
            # As a sender does: what was shed (503) or timed out is sent again.
            for _ in range(20):
                todo = [i for i in range(PAYLOADS) if i not in accepted]
                if not todo:
                    break
                accepted.update(asyncio.run(_burst(last.url, todo)))
            assert len(accepted) == PAYLOADS
            waiting = list(accepted.values())

            def all_decided() -> bool:
                waiting[:] = _undecided(last.url, waiting)
                return not waiting

            assert poll(all_decided, timeout=60, interval=0.2), (
                f"{len(waiting)} accepted payloads never decided"
            )
        hits = hook.snapshot()
        records = _decisions(store_url)

    twice = {path: n for path, n in hits.items() if n > 1}
    assert twice == {}, (
        f"an occurrence reached the target twice: {twice}; "
        + "; ".join(
            f"{r.path} from {r.client} at {r.received_at:.3f} {r.headers}"
            for r in hook.mine()
            if r.path.removeprefix(hook.prefix) in twice
        )
    )
    per_payload: dict[str, list[dict]] = {}
    for record in records:
        per_payload.setdefault(record["payload_id"], []).append(record)
    for i, payload_id in accepted.items():
        (record,) = per_payload[payload_id]  # exactly one final decision
        (step,) = record["matches"][0]["steps"]
        path = f"/run/{i:016x}"
        if step["decision"] == "executed":
            assert hits[path] == 1, (i, step)
            continue
        assert step["decision"] in ("failed", "skipped"), (i, step)
        assert any(s in step["reason"] for s in TOOK_EFFECT_OR_NOT), (i, step["reason"])
        if "unknown whether it took effect" in step["reason"]:
            # Its verification said the request never arrived: it did not.
            assert hits[path] == 0, (i, step["reason"])
    ran = {f"/run/{i:016x}" for i in accepted}
    assert set(hits) <= ran
    outcomes = Counter(
        r["matches"][0]["steps"][0]["decision"] for r in per_payload_first(per_payload)
    )
    assert outcomes["executed"] >= PAYLOADS - 10 * KILLS, outcomes


def per_payload_first(per_payload: dict[str, list[dict]]) -> list[dict]:
    """The one record of each payload."""
    return [records[0] for records in per_payload.values()]


def test_alertmanager_resends_run_once(tmp_path):
    """A firing alert resent on every repeat_interval runs its remediation once."""
    rules = tmp_path / "rules.yaml"
    with CountingServer() as hook:
        rules.write_text(hook_rules(hook.url, "Burst"))
        env = hook_env(hook.port, f"sqlite:///{tmp_path / 'state.db'}", TOKEN)
        with run_receiver(tmp_path, rules=rules, env=env) as rx:
            config = textwrap.dedent(
                f"""
                route:
                  receiver: rx
                  group_by: [alertname]
                  group_wait: 1s
                  group_interval: 1s
                  repeat_interval: 1s
                receivers:
                  - name: rx
                    webhook_configs:
                      - url: {rx.url}/webhooks/alertmanager
                        send_resolved: true
                        http_config:
                          authorization: {{type: Bearer, credentials: {TOKEN}}}
                """
            )
            with run_alertmanager(tmp_path, config) as am:
                started = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
                alert = {
                    "labels": {"alertname": "Burst", "n": "x"},
                    "startsAt": started,
                }
                httpx.post(f"{am.url}/api/v2/alerts", json=[alert], timeout=5)

                def deliveries() -> int:
                    response = httpx.get(
                        f"{rx.url}/api/v1/payloads", headers=AUTH, timeout=5
                    )
                    return len(response.json()["payloads"])

                assert poll(lambda: deliveries() >= 4, timeout=20, interval=0.2)
                decisions = httpx.get(
                    f"{rx.url}/api/v1/decisions",
                    params={"rule": "hook"},
                    headers=AUTH,
                    timeout=5,
                ).json()["decisions"]
        hits = hook.snapshot()
        assert sum(hits.values()) == 1, hits
        reasons = [d["matches"][0]["steps"][0]["reason"] for d in decisions]
        assert sum(r.startswith("already done by") for r in reasons) >= 2, reasons
