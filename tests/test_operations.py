"""Operating the receiver like Prometheus and Alertmanager.

Started as a real process: ``--version``; start-up failures are one JSON line and
exit 1; ``receiver_started`` only after the bind; every stderr line is JSON with
``timestamp``, ``level`` and ``message`` (aiohttp's own loggers too); rules
reload on SIGHUP and ``POST /-/reload``, atomically, keeping the current rules
when a file is bad.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import warnings
from typing import Any

import httpx
import pytest
import redis
import structlog
from peers import free_port, poll, require_binary, run_receiver, run_redis
from prometheus_client.parser import text_string_to_metric_families

from receiver import __version__, logs

TOKEN = "tok-ops-5c1f"
GOOD = """
playbooks:
  noop: {}
rules:
  - name: first
    match: ['alertname="A"']
    playbook: noop
"""
TWO = (
    GOOD
    + """
  - name: second
    match: ['alertname="B"']
    playbook: noop
"""
)
BAD = (
    GOOD
    + """
  - name: broken
    match: ['alertname=~"("']
    playbook: nope
"""
)


def _receiver(*args: str, env: dict[str, str] | None = None) -> Any:
    # In memory: a store file would land in the working tree.
    env = {"RECEIVER_STORE": "sqlite://:memory:", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "receiver", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RECEIVER_LOG_FORMAT": "json", **env},
        check=False,
    )


def _json_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]
    for entry in parsed:
        assert {"timestamp", "level", "message", "event"} <= set(entry), entry
    return parsed


def _metric(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not exposed")


def test_version():
    """The --version flag prints the version and exits 0."""
    done = _receiver("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"receiver {__version__}"


def test_port_in_use_is_one_line_and_exit_1(tmp_path):
    """A port already taken: one JSON error line, exit 1, never receiver_started."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(GOOD)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _receiver("serve", "--port", str(port), "--rules", str(rules))
    assert done.returncode == 1
    entries = _json_lines(done.stderr)
    errors = [e for e in entries if e["level"] == "error"]
    assert [e["event"] for e in errors] == ["serve_failed"]
    assert "address already in use" in errors[0]["error"]
    assert str(port) in errors[0]["message"]
    assert "receiver_started" not in [e["event"] for e in entries]


def test_port_0_lines_name_the_bound_port(tmp_path):
    """``--port 0``: the start line and the try-it hint name the port bound."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(GOOD)
    env = {
        **os.environ,
        "RECEIVER_LOG_FORMAT": "json",
        "RECEIVER_STORE": "sqlite://:memory:",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "receiver",
            "serve",
            "--port",
            "0",
            "--rules",
            str(rules),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    entries: dict[str, dict[str, Any]] = {}
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # ends when the process does
            entry = json.loads(line)
            entries[entry["event"]] = entry
            if entry["event"] == "try_it":
                break
        url = entries["receiver_started"]["url"]
        assert not url.endswith(":0")
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.communicate(timeout=60)  # reads to the end and closes the pipe
    assert f"examples/send.sh {url} " in entries["try_it"]["detail"]


@pytest.mark.parametrize("content", [None, BAD], ids=["missing", "invalid"])
def test_unloadable_rules_are_one_line_and_exit_1(tmp_path, content):
    """Missing or invalid rules: one JSON line naming every problem, exit 1."""
    rules = tmp_path / "rules.yaml"
    if content is not None:
        rules.write_text(content)
    done = _receiver("serve", "--port", str(free_port()), "--rules", str(rules))
    assert done.returncode == 1
    [entry] = _json_lines(done.stderr)
    assert entry["event"] == "serve_failed"
    assert entry["level"] == "error"
    assert "the rules do not load" in entry["error"]
    assert "rules.yaml" in entry["error"]
    if content is None:  # one problem, counted in English
        assert "(1 problem)" in entry["error"]


def test_bad_settings_are_one_line_and_exit_1(tmp_path):
    """An invalid setting is one JSON line and exit 1, before anything listens."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(GOOD)
    done = _receiver("serve", "--rules", str(rules), env={"RECEIVER_WORKERS": "many"})
    assert done.returncode == 1
    [entry] = _json_lines(done.stderr)
    assert entry["event"] == "serve_failed"
    assert "RECEIVER_WORKERS" in entry["error"] or "workers" in entry["error"]


def test_a_store_out_of_reach_is_one_line_and_exit_1(tmp_path):
    """A Redis store nobody answers: one JSON line naming it, exit 1, no traceback.

    Before, a worker's start raised past the handler: a raw traceback (which
    no log processor masks) and, under ``serve``, a child restarted for ever.
    """
    rules = tmp_path / "rules.yaml"
    rules.write_text(GOOD)
    store = f"redis://:s3cretpw@127.0.0.1:{free_port()}/0"
    done = _receiver(
        "serve",
        "--role",
        "worker",
        "--port",
        "0",
        "--rules",
        str(rules),
        env={"RECEIVER_STORE": store},
    )
    assert done.returncode == 1
    # Background tasks that started first may warn of the store too.
    entries = _json_lines(done.stderr)
    [entry] = [e for e in entries if e["level"] == "error"]
    assert entry["event"] == "serve_failed"
    assert "unreachable" in entry["error"]
    assert "check that the store is up" in entry["error"]
    assert "s3cretpw" not in done.stderr + done.stdout


def test_a_store_refusing_the_password_says_so_in_one_line(tmp_path):
    """A Redis store that refuses the credentials: said as it is, exit 1."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(GOOD)
    with run_redis(tmp_path) as url:
        admin = redis.Redis.from_url(url)
        admin.config_set("requirepass", "the-password")
        try:
            done = _receiver(
                "serve",
                "--role",
                "worker",
                "--port",
                "0",
                "--rules",
                str(rules),
                env={"RECEIVER_STORE": url.replace("redis://", "redis://:s3cretpw@")},
            )
        finally:
            admin.execute_command("AUTH", "the-password")
            admin.close()
    assert done.returncode == 1
    entries = _json_lines(done.stderr)
    [entry] = [e for e in entries if e["level"] == "error"]
    assert entry["event"] == "serve_failed"
    assert "refuses the credentials" in entry["error"]
    assert "check that the store is up" not in entry["error"]
    assert "s3cretpw" not in done.stderr + done.stdout


def _reload(base: str) -> httpx.Response:
    return httpx.post(
        f"{base}/-/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )


def _rules_loaded(base: str) -> int:
    return int(httpx.get(f"{base}/readyz", timeout=5).json()["rules"])


def test_reload_by_signal_and_endpoint(tmp_path):
    """SIGHUP and POST /-/reload swap in good rules and keep them on a bad file."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(GOOD)
    env = {
        "RECEIVER_AUTH_TOKENS": TOKEN,
        "RECEIVER_ADMIN_TOKENS": TOKEN,
        "RECEIVER_LOG_LEVEL": "debug",
    }
    with run_receiver(tmp_path, rules=rules, env=env) as rx:
        base = rx.url
        assert _rules_loaded(base) == 1
        assert _metric(base, "receiver_config_last_reload_successful") == 1
        stamp = "receiver_config_last_reload_success_timestamp_seconds"
        first_ok = _metric(base, stamp)
        assert first_ok > 0

        rules.write_text(TWO)
        rx.proc.send_signal(signal.SIGHUP)
        assert poll(lambda: _rules_loaded(base) == 2), "SIGHUP did not reload"
        assert rx.proc.poll() is None, "SIGHUP must not stop the process"
        assert _metric(base, "receiver_config_last_reload_successful") == 1

        rules.write_text(BAD)
        rx.proc.send_signal(signal.SIGHUP)
        assert poll(
            lambda: _metric(base, "receiver_config_last_reload_successful") == 0
        )
        assert _rules_loaded(base) == 2  # the current rules stay

        resp = _reload(base)
        assert resp.status_code == 422
        assert resp.headers["Content-Type"].startswith("application/problem+json")
        detail = resp.json()["detail"]
        assert "the current rules stay loaded" in detail
        assert "invalid regex" in detail
        assert _rules_loaded(base) == 2

        unauthenticated = httpx.post(f"{base}/-/reload", timeout=5)
        assert unauthenticated.status_code == 401

        rules.write_text(GOOD)
        resp = _reload(base)
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"status": "success", "rules": 1, "playbooks": 1}
        assert _metric(base, "receiver_config_last_reload_successful") == 1
        assert _metric(base, stamp) >= first_ok
        rx.stop()
        entries = _json_lines(rx.log.read_text())
    events = [e["event"] for e in entries]
    assert events.index("receiver_started") < events.index("rules_reloaded")
    failed = [e for e in entries if e["event"] == "rules_reload_failed"]
    assert [e["trigger"] for e in failed] == ["sighup", "api"]
    assert all(e["level"] == "error" for e in failed)
    assert {e["trigger"] for e in entries if e["event"] == "rules_reloaded"} == {
        "sighup",
        "api",
    }


def test_aiohttp_lines_are_json_too(tmp_path):
    """The access and server loggers of aiohttp write the same JSON lines."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(GOOD)
    env = {"RECEIVER_LOG_LEVEL": "debug"}
    with run_receiver(tmp_path, rules=rules, env=env) as rx:
        host, port = rx.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            raw.recv(1024)
        httpx.get(f"{rx.url}/healthz", timeout=5)
        rx.stop()
        entries = _json_lines(rx.log.read_text())
    [started] = [e for e in entries if e["event"] == "receiver_started"]
    assert started["url"] == rx.url  # the bound address
    # Stopped by SIGTERM: said, so the log does not end as a crash would.
    events = [e["event"] for e in entries]
    assert events.index("receiver_stopping") < events.index("receiver_stopped")
    foreign = [e for e in entries if e.get("logger", "").startswith("aiohttp")]
    assert any(
        e["logger"] == "aiohttp.access" and "GET /healthz" in e["message"]
        for e in foreign
    ), foreign


def test_promtool_checks_the_metrics(tmp_path):
    """Prometheus' promtool finds no problem in /metrics after real traffic."""
    promtool = require_binary("promtool", package="prometheus")
    rules = tmp_path / "rules.yaml"
    rules.write_text(GOOD)
    with run_receiver(tmp_path, rules=rules, env={"RECEIVER_AUTH_TOKENS": TOKEN}) as rx:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        httpx.post(f"{rx.url}/webhooks/alertmanager", json={}, headers=headers)
        text = httpx.get(f"{rx.url}/metrics", timeout=5).text
    checked = subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "", checked.stdout
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"process_cpu_seconds", "python_info", "receiver_build_info"} <= names
    assert "_created" not in text
    # Known label values are exposed before anything happened to them.
    assert 'receiver_alerts_total{source="pagerduty",status="firing"} 0.0' in text
    assert 'receiver_rule_matches_total{rule="first",severity="P2"} 0.0' in text
    assert 'receiver_steps_total{decision="executed",type=' not in text  # noop rules


def test_warnings_and_library_loggers_are_json(capsys):
    """Warnings and other libraries' log records come out as the same JSON."""
    logs.configure("json", "info", ["s3cr3t-value"])
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("an old API", DeprecationWarning, stacklevel=1)
    try:
        raise ValueError("boom s3cr3t-value")  # noqa: TRY301
    except ValueError:
        logging.getLogger("aiohttp.server").exception("Error handling request")
    structlog.get_logger("receiver").warning("thing_happened", detail="it did")
    entries = _json_lines(capsys.readouterr().err)
    by_logger = {e.get("logger", "receiver"): e for e in entries}
    warned = by_logger["py.warnings"]
    assert warned["level"] == "warning"
    assert "an old API" in warned["message"]
    server = by_logger["aiohttp.server"]
    assert server["level"] == "error"
    assert server["message"] == "Error handling request"
    assert "ValueError: boom ***" in server["exception"]
    assert "s3cr3t-value" not in json.dumps(entries)
    ours = by_logger["receiver"]
    assert ours["message"] == "thing_happened: it did"
    assert ours["event"] == "thing_happened"
    assert ours["timestamp"].endswith("Z")


class _Writes:
    """A stream that keeps each ``write`` call apart."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def test_each_log_line_is_one_write(monkeypatch):
    """A line and its newline go out in one write.

    ``receiver serve`` runs the edge and the worker as two processes on one
    stderr: a line written in two parts could be glued to the other's line.
    """
    stream = _Writes()
    monkeypatch.setattr(sys, "stderr", stream)
    logs.configure("json", "info")
    structlog.get_logger("receiver").info("one_thing", n=1)
    logging.getLogger("aiohttp.server").warning("another thing")
    assert len(stream.writes) == 2
    for text in stream.writes:
        assert text.endswith("\n")
        assert text.count("\n") == 1
        json.loads(text)
