"""Edge and worker in two processes: kill -9 either, nothing lost or doubled.

(Nor folded into the incidents twice, or not at all.)

``receiver serve`` (role ``all``) accepts in one process and decides in a child
it supervises. Killing the child mid-burst gets it restarted, and it takes up
what the dead one had claimed; killing the edge takes the child down with it.
Counted at the receiving end: a real HTTP server counts each remediation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from counting import CountingServer, hook_env, hook_rules
from fakes import RecordingServer, Reply, Request
from peers import poll, run_receiver, run_redis
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

TOKEN = "split-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BURST = 600


def _payload(i: int) -> bytes:
    alert = {
        "status": "firing",
        "labels": {"alertname": "Split", "n": str(i)},
        "annotations": {},
        "startsAt": "2026-11-26T10:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": f"{i:016x}",
    }
    return json.dumps(
        {"version": "4", "status": "firing", "receiver": "r", "alerts": [alert]}
    ).encode()


async def _burst(base: str, indices: list[int]) -> dict[int, str]:
    """POST payloads concurrently; index -> payload id for each 202."""
    accepted: dict[int, str] = {}
    async with httpx.AsyncClient(timeout=10) as client:
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


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    with contextlib.suppress(OSError):
        return [int(p) for p in path.read_text().split()]
    return []


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def _decisions_per_payload(base: str, ids: list[str]) -> dict[str, int]:
    with httpx.Client(base_url=base, headers=AUTH, timeout=10) as client:
        return {
            p: len(
                client.get(
                    "/api/v1/decisions", params={"payload_id": p, "limit": 10}
                ).json()["decisions"]
            )
            for p in ids
        }


def _folds_per_fingerprint(base: str) -> dict[str, list[int]]:
    """Each alert's incidents' ledger counts: [n] per incident listing it.

    Every payload here is its own incident (no group key): folded once, an
    alert is listed by one incident whose ledger counts its one step once.
    """
    seen: dict[str, list[int]] = {}
    with httpx.Client(base_url=base, headers=AUTH, timeout=10) as client:
        cursor: str | None = None
        while True:
            params = {"limit": "500", **({"cursor": cursor} if cursor else {})}
            page = client.get("/api/v1/incidents", params=params).json()
            for listed in page["incidents"]:
                incident = client.get(f"/api/v1/incidents/{listed['id']}").json()
                times: dict[str, int] = {}
                for item in incident["ledger"]:
                    fp = item["fingerprint"]
                    times[fp] = times.get(fp, 0) + item["times"]
                for alert in incident["alerts"]:
                    fp = alert["fingerprint"]
                    seen.setdefault(fp, []).append(times.get(fp, 0))
            cursor = page["next_cursor"]
            if cursor is None:
                return seen


@contextlib.contextmanager
def _store(kind: str, tmp: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'state.db'}"
        return
    with run_redis(tmp) as url:
        yield url


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_kill_9_worker_mid_burst_loses_nothing_and_doubles_nothing(tmp_path, kind):
    """The supervisor restarts a killed worker; every 202 is decided exactly once."""
    rules = tmp_path / "rules.yaml"
    with CountingServer() as hook, _store(kind, tmp_path) as store:
        rules.write_text(hook_rules(hook.url, "Split"))
        # A restarted worker is a new incarnation: on Redis it takes over what
        # the killed one held once those leases lapse (renewed while alive).
        env = {**hook_env(hook.port, store, TOKEN), "RECEIVER_JOURNAL_LEASE": "5s"}
        with run_receiver(tmp_path, rules=rules, env=env) as rx:
            first = poll(lambda: _children(rx.proc.pid), timeout=20)
            assert first, "the edge started no worker process"
            worker = first[0]  # type: ignore[index]

            async def burst_and_kill() -> dict[int, str]:
                task = asyncio.create_task(_burst(rx.url, list(range(BURST))))
                # Mid-burst: once the worker has run 100 remediations.
                ran = await asyncio.to_thread(
                    hook.wait_for, "POST", f"{hook.prefix}/run/.*", 100, 30
                )
                assert ran, "the worker ran fewer than 100 remediations in 30s"
                os.kill(worker, signal.SIGKILL)
                return await task

            accepted = asyncio.run(burst_and_kill())
            assert len(accepted) == BURST, "the edge refused payloads"
            restarted = poll(
                lambda: [p for p in _children(rx.proc.pid) if p != worker],
                timeout=30,
            )
            assert restarted, "the supervisor did not start a new worker"
            ids = list(accepted.values())

            def all_decided_once() -> bool:
                counts = _decisions_per_payload(rx.url, ids)
                return all(n >= 1 for n in counts.values())

            assert poll(all_decided_once, timeout=90, interval=0.5)
            counts = _decisions_per_payload(rx.url, ids)
            # The incidents too: the traces the killed worker had decided are
            # folded once (none lost with it, none folded again when the
            # payloads it had not recorded were decided again).
            folds = _folds_per_fingerprint(rx.url)
        wanted = {f"{i:016x}" for i in accepted}
        missing = sorted(wanted - set(folds))
        assert missing == [], f"alerts no incident took in: {missing[:10]}"
        twice = {fp: n for fp, n in folds.items() if n != [1]}
        assert twice == {}, f"alerts folded other than once: {twice}"
        doubled = {p: n for p, n in counts.items() if n != 1}
        assert doubled == {}, f"payloads decided more than once: {doubled}"
        ran = {path: n for path, n in hook.snapshot().items() if n > 1}
        assert ran == {}, f"remediations ran more than once: {ran}"
        # At most once: a step interrupted by the kill is not repeated.
        assert len(hook.snapshot()) >= BURST - 16


def test_kill_9_edge_takes_the_worker_down_and_a_restart_finishes(tmp_path):
    """A killed edge leaves no orphan worker; the next start decides the backlog."""
    rules = tmp_path / "rules.yaml"
    store = f"sqlite:///{tmp_path / 'state.db'}"
    with CountingServer() as hook:
        rules.write_text(hook_rules(hook.url, "Split"))
        env = hook_env(hook.port, store, TOKEN)
        with run_receiver(tmp_path, rules=rules, env=env) as first:
            children = poll(lambda: _children(first.proc.pid), timeout=20)
            assert children
            worker = children[0]  # type: ignore[index]
            accepted = asyncio.run(_burst(first.url, list(range(200))))
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(timeout=10)
            assert poll(lambda: not _alive(worker), timeout=30), "orphaned worker"
        with run_receiver(tmp_path, rules=rules, env=env) as second:
            ids = list(accepted.values())

            def all_decided() -> bool:
                counts = _decisions_per_payload(second.url, ids)
                return all(n >= 1 for n in counts.values())

            assert poll(all_decided, timeout=60, interval=0.5)
            counts = _decisions_per_payload(second.url, ids)
        assert {p: n for p, n in counts.items() if n != 1} == {}
        assert {p: n for p, n in hook.snapshot().items() if n > 1} == {}


def _payload_id(request: Request) -> str:
    """The decision a webhook delivery carries ("" for other posts: incidents)."""
    headers = {k.lower(): v for k, v in request.headers.items()}
    return headers.get("x-receiver-payload-id", "")


def test_a_delivery_the_killed_worker_was_making_goes_out_from_its_successor(
    tmp_path,
):
    """A worker killed (-9) mid-delivery: the next one sends it at once.

    The row is claimed for a lease of a minute; on SQLite (one instance) the
    restarted worker hands it back as it starts, so the webhook gets the
    decision within seconds, and its outcome reaches the decision log.
    """
    rules = tmp_path / "rules.yaml"
    answer = threading.Event()

    def first_hangs(request: Request) -> Reply:
        # The decision's first delivery is in flight when its worker dies.
        if _payload_id(request) and not answer.is_set():
            answer.wait(60)
        return Reply(200, b"ok")

    with CountingServer() as hook, RecordingServer() as sink:
        sink.route("POST", "/hook", first_hangs)

        def deliveries() -> list[str]:
            return [p for r in sink.seen("POST", "/hook") if (p := _payload_id(r))]

        rules.write_text(hook_rules(hook.url, "Split"))
        env = {
            **hook_env(hook.port, f"sqlite:///{tmp_path / 'state.db'}", TOKEN),
            "RECEIVER_SINKS": "webhook",
            "RECEIVER_WEBHOOK_URLS": f"{sink.url}/hook",
        }
        try:
            with run_receiver(tmp_path, rules=rules, env=env) as rx:
                first = poll(lambda: _children(rx.proc.pid), timeout=20)
                assert first, "the edge started no worker process"
                worker = first[0]  # type: ignore[index]
                payload = asyncio.run(_burst(rx.url, [1]))[1]
                assert poll(deliveries, timeout=30), "no delivery began"
                os.kill(worker, signal.SIGKILL)
                restarted = poll(
                    lambda: [p for p in _children(rx.proc.pid) if p != worker],
                    timeout=30,
                )
                assert restarted, "the supervisor did not start a new worker"
                answer.set()
                # Well inside the minute's lease the dead claim holds.
                again = poll(lambda: len(deliveries()) >= 2, timeout=30)
                assert again, "not sent again"

                def outcome_logged() -> bool:
                    sinks = f"{payload}.sinks"
                    return _decisions_per_payload(rx.url, [sinks])[sinks] >= 1

                assert poll(outcome_logged, timeout=30, interval=0.2)
                log = rx.log.read_text()
        finally:
            answer.set()
    reclaimed = [
        json.loads(line)
        for line in log.splitlines()
        if '"sink_outbox_reclaimed"' in line
    ]
    assert [r["rows"] for r in reclaimed] == [1], log[-3000:]
    # Sent twice (the first call's answer never reached the dead worker); the
    # receiving end has the payload id to drop the repeat.
    assert deliveries() == [payload, payload]


def test_sigterm_on_the_edge_stops_the_worker(tmp_path):
    """Stopping ``receiver serve`` stops its worker process too."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(hook_rules("http://127.0.0.1:9", "Split"))
    env = {
        "RECEIVER_STORE": f"sqlite:///{tmp_path / 'state.db'}",
        "RECEIVER_AUTH_TOKENS": TOKEN,
    }
    with run_receiver(tmp_path, rules=rules, env=env) as rx:
        children = poll(lambda: _children(rx.proc.pid), timeout=20)
        assert children
        rx.stop()
    assert poll(lambda: not _alive(children[0]), timeout=30)  # type: ignore[index]


def _matched_rules(base: str, payload_id: str) -> list[str] | None:
    """The rules the payload's one decision matched; None until it is decided."""
    with httpx.Client(base_url=base, headers=AUTH, timeout=10) as client:
        found = client.get(
            "/api/v1/decisions", params={"payload_id": payload_id, "limit": 10}
        ).json()["decisions"]
    if not found:
        return None
    return [m["rule"] for m in found[0]["matches"]]


def test_reload_on_the_edge_reaches_the_worker(tmp_path):
    """``POST /-/reload`` to the edge changes the rules the worker child decides by."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(hook_rules("http://127.0.0.1:9", "NotSplit"))
    env = {
        "RECEIVER_STORE": f"sqlite:///{tmp_path / 'state.db'}",
        "RECEIVER_AUTH_TOKENS": TOKEN,
        "RECEIVER_ADMIN_TOKENS": "split-admin",
    }
    with run_receiver(tmp_path, rules=rules, env=env) as rx:
        assert poll(lambda: _children(rx.proc.pid), timeout=20)
        before = asyncio.run(_burst(rx.url, [1]))[1]
        assert poll(lambda: _matched_rules(rx.url, before) is not None, timeout=30)
        assert _matched_rules(rx.url, before) == []
        rules.write_text(hook_rules("http://127.0.0.1:9", "Split"))
        reloaded = httpx.post(
            f"{rx.url}/-/reload",
            headers={"Authorization": "Bearer split-admin"},
            timeout=10,
        )
        assert reloaded.status_code == 200, reloaded.text
        # The child reloads on its own SIGHUP; alerts sent until then may still
        # meet the old rules, so send until one is decided by the new ones.

        def decided_by_new_rules() -> bool:
            sent = asyncio.run(_burst(rx.url, [2]))[2]
            assert poll(lambda: _matched_rules(rx.url, sent) is not None, timeout=30)
            return _matched_rules(rx.url, sent) == ["hook"]

        assert poll(decided_by_new_rules, timeout=30)


def _samples(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return {
        sample.name: float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_edges_metrics_say_which_rules_the_worker_decides_by(tmp_path):
    """/metrics shows the worker child's own rules load, failed or not."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(hook_rules("http://127.0.0.1:9", "Split"))
    env = {
        "RECEIVER_STORE": f"sqlite:///{tmp_path / 'state.db'}",
        "RECEIVER_AUTH_TOKENS": TOKEN,
        "RECEIVER_ADMIN_TOKENS": "split-admin",
    }
    with run_receiver(tmp_path, rules=rules, env=env) as rx:
        children = poll(lambda: _children(rx.proc.pid), timeout=20)
        assert children
        assert poll(
            lambda: _samples(rx.url).get("receiver_worker_rules_loaded") == 1,
            timeout=20,
        )
        # Only the worker child is told to reload, and its files are broken.
        rules.write_text("rules: [{name: broken")
        os.kill(children[0], signal.SIGHUP)
        assert poll(
            lambda: (
                _samples(rx.url).get("receiver_worker_config_last_reload_successful")
                == 0
            ),
            timeout=20,
        )
        now = _samples(rx.url)
        assert now["receiver_config_last_reload_successful"] == 1  # the edge's
        assert now["receiver_worker_rules_loaded"] == 1  # the old rules stay
        two = hook_rules("http://127.0.0.1:9", "Split") + (
            "  - {name: other, match: ['alertname=\"Other\"'], playbook: hook}\n"
        )
        rules.write_text(two)
        reloaded = httpx.post(
            f"{rx.url}/-/reload",
            headers={"Authorization": "Bearer split-admin"},
            timeout=10,
        )
        assert reloaded.status_code == 200, reloaded.text

        def worker_has_both() -> bool:
            samples = _samples(rx.url)
            return (
                samples["receiver_worker_rules_loaded"] == 2
                and samples["receiver_worker_config_last_reload_successful"] == 1
            )

        assert poll(worker_has_both, timeout=20)
        assert _samples(rx.url)["receiver_rules_loaded"] == 2
