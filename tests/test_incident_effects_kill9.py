"""kill -9 of the worker while an incident's announcement is on its way.

``receiver serve`` (SQLite, role ``all``) decides in a child process, which
folds the alert into a new incident and announces it to the webhook. The
webhook holds that first announcement; the child is killed; the supervisor
starts another, which takes the dead one's claims over and sends the
announcement again at its first tick. The incident's timeline says it was late.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from pathlib import Path

import httpx
import pytest
from counting import CountingServer, hook_env, hook_rules
from fakes import RecordingServer, Reply, Request
from peers import poll, run_receiver
from test_process_split import AUTH, TOKEN, _burst

pytestmark = pytest.mark.e2e


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    with contextlib.suppress(OSError):
        return [int(p) for p in path.read_text().split()]
    return []


def _kind(request: Request) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        return str(request.json().get("kind", ""))
    return ""


def _opened_lines(base: str) -> list[str]:
    with httpx.Client(base_url=base, headers=AUTH, timeout=10) as client:
        listed = client.get("/api/v1/incidents").json()["incidents"]
        lines: list[str] = []
        for incident in listed:
            got = client.get(f"/api/v1/incidents/{incident['id']}").json()
            lines += [
                e["text"]
                for e in got["timeline"]
                if e["kind"] == "message_sent" and "(opened)" in e["text"]
            ]
        return lines


def test_kill_9_between_the_incident_write_and_its_announcement(tmp_path):
    """The announcement a killed worker was sending is sent by its successor."""
    rules = tmp_path / "rules.yaml"
    answer = threading.Event()

    def first_hangs(request: Request) -> Reply:
        if _kind(request) == "opened" and not answer.is_set():
            answer.wait(60)
        return Reply(200, b"ok")

    with CountingServer() as hook, RecordingServer() as sink:
        sink.route("POST", "/hook", first_hangs)

        def announced() -> list[Request]:
            return [r for r in sink.seen("POST", "/hook") if _kind(r) == "opened"]

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
                asyncio.run(_burst(rx.url, [1]))
                assert poll(announced, timeout=30), "no announcement began"
                os.kill(worker, signal.SIGKILL)
                restarted = poll(
                    lambda: [p for p in _children(rx.proc.pid) if p != worker],
                    timeout=30,
                )
                assert restarted, "the supervisor did not start a new worker"
                answer.set()
                # Well inside the five minutes' lease the dead claim holds.
                assert poll(lambda: len(announced()) >= 2, timeout=30), "not resent"
                lines = poll(lambda: _opened_lines(rx.url), timeout=30)
                assert lines, "the announcement is not on the timeline"
        finally:
            answer.set()
    assert len(announced()) == 2
    [line] = lines  # type: ignore[misc]
    assert "webhook: sent" in line
    assert "late: attempt 2" in line
