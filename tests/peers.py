"""Start real peers for end-to-end tests: the receiver, Alertmanager, Prometheus, Redis.

Each helper finds its binary or skips with the reason, unless
``RECEIVER_REQUIRE_E2E=1`` (set by CI), which turns the skip into a failure.
Processes are started without a shell, bound to loopback, and always stopped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import httpx
import pytest


def skip_or_fail(reason: str) -> NoReturn:
    """Skip with ``reason``; under RECEIVER_REQUIRE_E2E=1 (CI) fail instead."""
    if os.environ.get("RECEIVER_REQUIRE_E2E") == "1":
        pytest.fail(f"RECEIVER_REQUIRE_E2E=1 but {reason}")
    pytest.skip(f"{reason}; set RECEIVER_REQUIRE_E2E=1 to make this a failure")


def require_binary(name: str, *candidates: str, package: str | None = None) -> str:
    """Path of ``name`` (or a candidate) on PATH, else ``skip_or_fail``."""
    for option in (name, *candidates):
        found = shutil.which(option)
        if found:
            return found
    where = f"Debian package {package}" if package else "its Debian package"
    skip_or_fail(f"{name} is not installed (install {where}; .ci/run does)")


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_ready(
    url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0
) -> None:
    """Poll ``url`` until it answers 200, failing early if the process died.

    The deadline is generous on purpose: it only bounds a hang. CI machines are
    shared, and a cold start under a load of 10 on two cores has taken over 15 s.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-3000:]
            pytest.fail(f"{proc.args!r} exited with {proc.returncode}:\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.05)
    pytest.fail(f"{url} not ready after {timeout}s:\n{log.read_text()[-3000:]}")


@dataclass
class Peer:
    """A running process and where it listens."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the process (SIGKILL after 10 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@contextlib.contextmanager
def run_peer(
    args: Sequence[str],
    *,
    ready_url: str,
    url: str,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[Peer]:
    """Start ``args``, wait for ``ready_url``, yield, and always stop it."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(args),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
    peer = Peer(proc, url, log)
    try:
        wait_until_ready(ready_url, proc, log)
        yield peer
    finally:
        peer.stop()


@contextlib.contextmanager
def run_receiver(
    tmp: Path,
    *,
    rules: Path,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> Iterator[Peer]:
    """Start ``python -m receiver serve`` on a free loopback port."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with run_peer(
        [
            sys.executable,
            "-m",
            "receiver",
            "serve",
            "--port",
            str(port),
            "--rules",
            str(rules),
            *extra_args,
        ],
        ready_url=f"{base}/readyz",
        url=base,
        log=tmp / f"receiver-{port}.log",
        env={"RECEIVER_LOG_FORMAT": "json", **(env or {})},
        cwd=tmp,
    ) as peer:
        yield peer


@contextlib.contextmanager
def run_alertmanager(tmp: Path, config: str) -> Iterator[Peer]:
    """Start Alertmanager on loopback with ``config`` (YAML text), no clustering."""
    binary = require_binary("prometheus-alertmanager", "alertmanager")
    port = free_port()
    cfg = tmp / "alertmanager.yml"
    cfg.write_text(config)
    data = tmp / "am-data"
    data.mkdir(exist_ok=True)
    base = f"http://127.0.0.1:{port}"
    with run_peer(
        [
            binary,
            f"--config.file={cfg}",
            f"--storage.path={data}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--web.external-url=http://alertmanager.test:9093",
        ],
        ready_url=f"{base}/-/ready",
        url=base,
        log=tmp / "alertmanager.log",
    ) as peer:
        yield peer


def poll(fn: object, *, timeout: float = 15.0, interval: float = 0.1) -> object:
    """Call ``fn`` until it returns something truthy or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()  # type: ignore[operator]
        if value:
            return value
        if time.monotonic() > deadline:
            return value
        time.sleep(interval)


def wait_for_redis(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Send PING until redis-server answers PONG, failing early if it died."""
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-3000:]
            pytest.fail(f"{proc.args!r} exited with {proc.returncode}:\n{tail}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock,
        ):
            sock.sendall(b"PING\r\n")
            if sock.recv(64).startswith(b"+PONG"):
                return
        time.sleep(0.02)
    pytest.fail(f"redis-server on port {port} not ready:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def run_redis(tmp: Path, args: Sequence[str] = ()) -> Iterator[str]:
    """Start a throwaway redis-server on a free loopback port; yield its URL.

    Nothing is persisted (no RDB, no AOF) and the data directory is ``tmp``.
    ``args`` are more of its options (``--maxmemory 10mb``).
    """
    port = free_port()
    with start_redis(tmp / f"redis-{port}", port, args=args) as proc:
        del proc
        yield f"redis://127.0.0.1:{port}/0"


@contextlib.contextmanager
def start_redis(
    data: Path, port: int, *, durable: bool = False, args: Sequence[str] = ()
) -> Iterator[subprocess.Popen[bytes]]:
    """A redis-server on ``port`` keeping its files in ``data``.

    ``durable`` turns on the append-only file with ``appendfsync always``, so a
    restart on the same ``data`` keeps every acknowledged write. ``args`` are
    more of its options.
    """
    binary = require_binary("redis-server")
    data.mkdir(parents=True, exist_ok=True)
    log = data / f"redis-{port}.log"
    persistence = ["--appendonly", "yes", "--appendfsync", "always"]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *(persistence if durable else ["--appendonly", "no"]),
                "--dir",
                str(data),
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    peer = Peer(proc, f"redis://127.0.0.1:{port}/0", log)
    try:
        wait_for_redis(port, proc, log)
        yield proc
    finally:
        peer.stop()


@contextlib.contextmanager
def run_prometheus(
    tmp: Path, *, job: str = "prometheus", target: str | None = None
) -> Iterator[str]:
    """Prometheus on loopback scraping ``target`` (itself by default) every second."""
    binary = require_binary("prometheus", package="prometheus")
    port = free_port()
    config = tmp / "prometheus.yml"
    scraped = target or f"127.0.0.1:{port}"
    config.write_text(
        textwrap.dedent(
            f"""
            global: {{scrape_interval: 1s, evaluation_interval: 1s}}
            scrape_configs:
              - job_name: {job}
                static_configs: [{{targets: ['{scraped}']}}]
            """
        )
    )
    base = f"http://127.0.0.1:{port}"
    with run_peer(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'prom-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        ready_url=f"{base}/-/ready",
        url=base,
        log=tmp / "prometheus.log",
    ):
        yield base
