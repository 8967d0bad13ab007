"""Several replicas on one Redis: one execution per occurrence, and Redis outages.

Real processes throughout: three receivers sharing a throwaway redis-server, a
counting HTTP server as the remediation target, and a Redis that is stopped
mid-burst and started again from its append-only file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from counting import CountingServer, hook_env, hook_rules
from peers import free_port, poll, run_receiver, start_redis

pytestmark = pytest.mark.e2e

TOKEN = "replica-token-51c2"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {**AUTH, "Content-Type": "application/json"}


def _payload(tag: str, count: int) -> bytes:
    alerts = [
        {
            "status": "firing",
            "labels": {"alertname": "Replica", "n": f"{tag}-{i}"},
            "annotations": {},
            "startsAt": "2026-11-26T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "",
            "fingerprint": f"{tag}{i:04d}",
        }
        for i in range(count)
    ]
    body = {"version": "4", "status": "firing", "receiver": "r", "alerts": alerts}
    return json.dumps(body).encode()


def durable_redis(
    tmp: Path, port: int
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """A redis-server with appendfsync always, so a restart keeps every write."""
    return start_redis(tmp / "redis-data", port, durable=True)


def _decided(client: httpx.Client, payload_id: str) -> bool:
    response = client.get("/api/v1/decisions", params={"payload_id": payload_id})
    return bool(response.json()["decisions"])


def test_three_replicas_run_each_occurrence_once(tmp_path):
    """The same payload POSTed to three replicas at once, ten times: one run each."""
    port = free_port()
    with durable_redis(tmp_path, port), CountingServer() as hook:
        rules = tmp_path / "rules.yaml"
        rules.write_text(hook_rules(hook.url, "Replica"))
        env = hook_env(hook.port, f"redis://127.0.0.1:{port}/0", TOKEN)
        with (
            run_receiver(tmp_path, rules=rules, env=env) as a,
            run_receiver(tmp_path, rules=rules, env=env) as b,
            run_receiver(tmp_path, rules=rules, env=env) as c,
        ):
            body = _payload("r", 5)

            async def rounds() -> list[str]:
                ids: list[str] = []
                async with httpx.AsyncClient(timeout=10) as client:
                    for _ in range(10):
                        responses = await asyncio.gather(
                            *(
                                client.post(
                                    f"{rx.url}/webhooks/alertmanager",
                                    content=body,
                                    headers=JSON,
                                )
                                for rx in (a, b, c)
                            )
                        )
                        assert [r.status_code for r in responses] == [202] * 3
                        ids.extend(r.json()["id"] for r in responses)
                return ids

            ids = asyncio.run(rounds())
            with httpx.Client(base_url=a.url, headers=AUTH, timeout=5) as client:
                assert poll(
                    lambda: all(_decided(client, i) for i in ids),
                    timeout=30,
                    interval=0.2,
                ), "not every accepted payload was decided"
                decisions = client.get(
                    "/api/v1/decisions", params={"limit": 1000}
                ).json()["decisions"]
        hits = hook.snapshot()
        assert hits == {f"/run/r{i:04d}": 1 for i in range(5)}, hits
        executed = [
            d
            for d in decisions
            if d["matches"][0]["steps"][0]["decision"] == "executed"
        ]
        assert len(executed) == 5
        assert len(decisions) == 150
        owners = {d["payload_id"] for d in executed}
        assert owners, "executions are recorded with their payload"


def test_redis_stopped_mid_burst_answers_503_and_loses_nothing(tmp_path):
    """With Redis down webhooks get 503 + Retry-After; every 202 is decided later."""
    port = free_port()
    rules = tmp_path / "rules.yaml"
    rules.write_text(hook_rules("http://127.0.0.1:9", "Replica"))
    env = hook_env(9, f"redis://127.0.0.1:{port}/0", TOKEN, mode="dry-run")
    accepted: list[str] = []
    refused: list[httpx.Response] = []
    with (
        durable_redis(tmp_path, port) as redis_proc,
        run_receiver(tmp_path, rules=rules, env=env) as rx,
    ):

        async def burst(start: int, count: int) -> None:
            async with httpx.AsyncClient(timeout=15) as client:
                sem = asyncio.Semaphore(8)

                async def one(i: int) -> None:
                    async with sem:
                        response = await client.post(
                            f"{rx.url}/webhooks/alertmanager",
                            content=_payload(f"b{i}-", 1),
                            headers=JSON,
                        )
                        if response.status_code == 202:
                            accepted.append(response.json()["id"])
                        else:
                            refused.append(response)

                await asyncio.gather(*(one(i) for i in range(start, start + count)))

        asyncio.run(burst(0, 100))
        assert len(accepted) == 100
        redis_proc.send_signal(signal.SIGTERM)
        redis_proc.wait(timeout=10)
        asyncio.run(burst(100, 20))
        ready = httpx.get(f"{rx.url}/readyz", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["store"] == "unreachable"

        assert refused, "no webhook was refused while Redis was down"
        for response in refused:
            assert response.status_code == 503
            assert response.headers["Content-Type"].startswith(
                "application/problem+json"
            )
            assert response.headers["Retry-After"]
            assert "unreachable" in response.json()["detail"]

        with durable_redis(tmp_path, port):
            assert poll(
                lambda: httpx.get(f"{rx.url}/readyz", timeout=10).status_code == 200,
                timeout=20,
            )
            asyncio.run(burst(200, 20))
            with httpx.Client(base_url=rx.url, headers=AUTH, timeout=5) as client:
                assert poll(
                    lambda: all(_decided(client, i) for i in accepted),
                    timeout=30,
                    interval=0.3,
                ), "an accepted payload was lost"
    assert len(accepted) >= 120
