"""``make bench``: ingest, end to end, rule scale and storm, against targets.

Starts every process it measures (the receiver per store, a bare aiohttp
baseline, a throwaway redis-server, a load generator) on loopback, runs each
measurement several times, prints a table and writes ``bench/RESULTS.md``
(everything above the hand-written marker; the notes below it are kept).
``--smoke`` runs every part with tiny sizes in seconds (``make bench-smoke`` and
``tests/test_bench_smoke.py``); smoke numbers mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Self

import aiohttp
from aiohttp import web

# The bench's own helpers, and the receiver of this checkout (not an installed one).
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).parents[1])]
from common import (  # noqa: E402
    AUTH,
    BENCH,
    ROOT,
    TOKEN,
    BenchError,
    Spread,
    burst_bodies,
    children,
    cpu_seconds,
    group_body,
    lean_storm_body,
    one_alert_body,
    peak_rss_mib,
    percentile,
    redis_binary,
    rss_mib,
    run_bare,
    run_floor,
    run_receiver,
    run_redis,
    storm_body,
)

from receiver.store.sqlite import decisions_path  # noqa: E402

MARKER = "<!-- Hand-written notes below this line are kept by `make bench`. -->"
RUNBOOK_RULES = ROOT / "rules"
MAX_BODY = 5 * 1024 * 1024  # the receiver's default body cap


@dataclass(frozen=True)
class Sizes:
    """How big and how long each part is."""

    runs: int = 3
    warmup: float = 1.0
    duration: float = 4.0
    connections: int = 32
    e2e_count: int = 600
    e2e_duration: float = 4.0
    storm_alerts: int = 5000
    burst_payloads: int = 500
    burst_per: int = 10
    rule_sizes: tuple[int, ...] = (10, 100, 1000, 10000)
    match_seconds: float = 0.3
    drain_timeout: float = 60.0
    e2e_rate: float | None = None  # None: half the saturated rate
    sustain_duration: float = 10.0
    sustain_bound: int = 2000
    healthz_alerts: int = 38000
    soak_duration: float = 300.0
    soak_rate: float | None = None  # None: half the saturated end-to-end rate


# Every part runs, each as briefly as it can: its fresh receivers' start-ups are
# most of the smoke's time, and no smoke figure is read.
SMOKE = Sizes(
    runs=1,
    warmup=0.1,
    duration=0.3,
    connections=4,
    e2e_count=10,
    e2e_duration=0.5,
    storm_alerts=50,
    burst_payloads=5,
    burst_per=10,
    rule_sizes=(10, 100),
    match_seconds=0.01,
    drain_timeout=30.0,
    sustain_duration=0.3,
    sustain_bound=50,
    healthz_alerts=500,
    soak_duration=1.0,
    soak_rate=20.0,
)


@dataclass
class Report:
    """Everything measured, and the lines of the table."""

    sizes: Sizes
    loadgen: str
    sections: list[str] = field(default_factory=list)
    targets: list[tuple[str, bool | None, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Figures one part hands to a later one (the soak's rate).
    facts: dict[str, float] = field(default_factory=dict)

    def target(self, name: str, ok: bool | None, detail: str) -> None:
        """Record whether a target holds."""
        self.targets.append((name, ok, detail))

    def table(self, title: str, head: list[str], rows: list[list[str]]) -> None:
        """Add a Markdown table and print it."""
        lines = [f"### {title}", "", "| " + " | ".join(head) + " |"]
        lines.append("|" + "|".join("---" for _ in head) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        self.sections.append("\n".join(lines))
        print("\n" + "\n".join(lines), flush=True)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ load

WRK_LINE = "BENCH_JSON "


async def _run(args: list[str], env: dict[str, str], timeout: float) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise BenchError(f"{args[0]} did not finish in {timeout:.0f}s") from None
    if proc.returncode != 0:
        raise BenchError(f"{args!r} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return out.decode()


async def load(
    kind: str,
    url: str,
    body: Path,
    *,
    duration: float,
    connections: int,
    rate: float | None = None,
) -> dict[str, float]:
    """Requests/s and latency of POSTing ``body`` to ``url``."""
    target = f"{url}/webhooks/alertmanager"
    if kind == "wrk":
        out = await _run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                # wrk takes whole seconds only
                f"-d{max(1, round(duration))}s",
                "--timeout",
                "5s",
                "-s",
                str(BENCH / "post.lua"),
                target,
            ],
            {
                "BENCH_BODY": str(body),
                "BENCH_TOKEN": TOKEN,
                "BENCH_RATE": str(rate or 0),
            },
            duration + 60,
        )
        line = next((x for x in out.splitlines() if x.startswith(WRK_LINE)), None)
        if line is None:
            raise BenchError(f"wrk printed no result:\n{out[-2000:]}")
        data = json.loads(line.removeprefix(WRK_LINE))
        seconds = data["duration_us"] / 1e6
        good = data["requests"] - data["status_errors"]
        return {
            "rps": good / seconds,
            "p50_ms": data["p50_us"] / 1000,
            "p99_ms": data["p99_us"] / 1000,
            "errors": data["errors"] + data["status_errors"],
            "shed": data["status_errors"],
            "elapsed": seconds,
        }
    mode = ["rate", "--rate", str(rate)] if rate else ["closed"]
    out = await _run(
        [
            sys.executable,
            str(BENCH / "loadgen.py"),
            *mode,
            "--url",
            target,
            "--body",
            str(body),
            "--connections",
            str(connections),
            "--duration",
            str(duration),
        ],
        {},
        duration + 60,
    )
    data = json.loads(out)
    bad = sum(n for s, n in data["statuses"].items() if s != "202")
    return {
        "rps": (data["requests"] - bad) / data["elapsed"],
        "p50_ms": data["p50_ms"],
        "p99_ms": data["p99_ms"],
        "errors": data["errors"] + bad,
        "shed": data["statuses"].get("503", 0),
        "elapsed": data["elapsed"],
    }


def cpu_ticks() -> tuple[int, int] | None:
    """The machine's CPU time so far in ticks: (all, idle or waiting on I/O).

    None where /proc/stat cannot be read (not Linux).
    """
    try:
        with Path("/proc/stat").open(encoding="ascii") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(fields[:8]), fields[3] + fields[4]


def _percent(spread: Spread) -> str:
    return spread.fmt(0) + " %" if spread.runs else "n/a"


def idle_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float:
    """The share of the machine's CPU time left idle between two readings."""
    if before is None or after is None or after[0] <= before[0]:
        return float("nan")
    return (after[1] - before[1]) / (after[0] - before[0])


# ------------------------------------------------------------------ stores

STORES = ("sqlite", "redis")


def stores_run() -> list[str]:
    """The stores measured: ``--stores`` (default both), Redis only if installed."""
    return [s for s in SELECTED_STORES if s != "redis" or redis_binary()]


SELECTED_STORES: list[str] = list(STORES)


@contextlib.contextmanager
def receiver(
    store: str,
    tmp: Path,
    *,
    rules: Path = RUNBOOK_RULES,
    env: dict | None = None,
    role: str = "all",
) -> Iterator[tuple[object, str]]:
    """A fresh ``serve --role ROLE`` on a fresh store; yields (process, store URL)."""
    run_dir = Path(tempfile.mkdtemp(dir=tmp, prefix=f"{store}-"))
    with contextlib.ExitStack() as stack:
        if store == "redis":
            url = stack.enter_context(run_redis(run_dir))
        else:
            url = f"sqlite:///{run_dir / 'receiver.db'}"
        proc = stack.enter_context(
            run_receiver(run_dir, rules=rules, store=url, env=env, role=role)
        )
        yield proc, url


class Decisions:
    """Reads what the receiver recorded, straight from its store."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._seq = 0
        self._seen = 0
        self._last_fresh = 0
        self._db: sqlite3.Connection | None = None
        self._log: sqlite3.Connection | None = None  # the decision log's file
        self._redis = None

    async def __aenter__(self) -> Self:
        if self.url.startswith("sqlite:///"):
            path = self.url.removeprefix("sqlite:///")
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            self._log = sqlite3.connect(
                f"file:{decisions_path(path)}?mode=ro", uri=True
            )
        else:
            import redis.asyncio  # noqa: PLC0415

            self._redis = redis.asyncio.Redis.from_url(self.url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._db is not None:
            self._db.close()
        if self._log is not None:
            self._log.close()
        if self._redis is not None:
            await self._redis.aclose()

    async def backlog(self) -> int:
        """Accepted payloads not decided yet."""
        if self._db is not None:
            return int(
                self._db.execute(
                    "SELECT count(*) FROM journal WHERE state != 'done'"
                ).fetchone()[0]
            )
        return int(await self._redis.xlen("receiver:journal"))

    async def count(self) -> int:
        """Decisions recorded."""
        if self._log is not None:
            (count,) = self._log.execute("SELECT count(*) FROM decisions").fetchone()
            return int(count)
        return int(await self._redis.llen("receiver:decisions"))

    async def new_fingerprints(self) -> list[str]:
        """Fingerprints of decisions recorded since the last call."""
        if self._log is not None:
            rows = self._log.execute(
                "SELECT seq, fingerprint FROM decisions WHERE seq > ? ORDER BY seq",
                (self._seq,),
            ).fetchall()
            if rows:
                self._seq = rows[-1][0]
            return [r[1] for r in rows]
        # LLEN and LRANGE in one transaction: records pushed in between would
        # otherwise shift the newest-first list under the read. Only about as
        # many as came last time (at least 64): reading the newest 1,000 on
        # every poll (every 5 ms) cost the bench, Redis and, on a 2-core
        # machine, the receiver beside them more than the records themselves.
        want = max(64, 2 * self._last_fresh)
        for _ in range(20):
            pipe = self._redis.pipeline(transaction=True)
            pipe.llen("receiver:decisions")
            pipe.lrange("receiver:decisions", 0, want - 1)
            total, raw = await pipe.execute()
            fresh = int(total) - self._seen
            if fresh <= len(raw):
                break
            want = fresh
        else:
            raise BenchError("decision log grows faster than it can be read")
        self._seen = int(total)
        self._last_fresh = max(fresh, 0)
        return [json.loads(r[14:])["fingerprint"] for r in raw[: max(fresh, 0)]]


async def wait_for(
    check: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.01
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(interval)
    return await check()


# ------------------------------------------------------------------ 1. ingest

BASELINES = ("bare", "floor")
LABELS = {"bare": "bare aiohttp", "floor": "durable floor (aiohttp + SQLite FULL)"}
# A receiver target is a store, served by `serve` (the edge and its worker child
# on the same cores), or STORE + EDGE: the edge role alone, as when the roles run
# on machines of their own; a worker alone then drains what it accepted.
EDGE = " edge"


def target_label(target: str) -> str:
    """How a server is named in the tables."""
    if target in LABELS:
        return LABELS[target]
    if target.endswith(EDGE):
        return f"receiver, {target.removesuffix(EDGE)}, edge role alone"
    return f"receiver, {target} (serve: edge + worker)"


@contextlib.contextmanager
def server(target: str, tmp: Path, env: dict | None = None) -> Iterator[tuple]:
    """A fresh bare, floor or receiver server; yields (process, store URL or None)."""
    if target == "bare":
        with run_bare(tmp) as proc:
            yield proc, None
    elif target == "floor":
        with run_floor(tmp) as proc:
            yield proc, None
    elif target.endswith(EDGE):
        store = target.removesuffix(EDGE)
        with receiver(store, tmp, env=env, role="edge") as (proc, url):
            yield proc, url
    else:
        with receiver(target, tmp, env=env) as (proc, url):
            yield proc, url


async def worker_alone(
    url: str, tmp: Path, env: dict, seconds: float, timeout: float
) -> tuple[float, float]:
    """A worker role alone on a backlog on ``url``: (payloads decided/s, CPU us each).

    Timed from its first decision (its start-up is not counted) for ``seconds``
    or until the backlog is gone, whichever comes first. The CPU time is the
    worker process's, all its threads, over the same span.
    """
    run_dir = Path(tempfile.mkdtemp(dir=tmp, prefix="worker-"))
    nan = float("nan")
    async with Decisions(url) as reader:
        before = await reader.backlog()
        if before == 0:
            return nan, nan
        with run_receiver(
            run_dir, rules=RUNBOOK_RULES, store=url, env=env, role="worker"
        ) as worker:
            deadline = time.monotonic() + timeout
            while (first := await reader.backlog()) >= before:
                if time.monotonic() > deadline:
                    raise BenchError("the worker decided nothing")
                await asyncio.sleep(0.02)
            start, used = time.monotonic(), cpu_seconds(worker.pid)
            end, left = start, first
            while left > 0 and end - start < seconds:
                await asyncio.sleep(0.05)
                left = await reader.backlog()
                end = time.monotonic()
            used = cpu_seconds(worker.pid) - used
    if end == start or first == left:  # all decided before the first look
        return nan, nan
    return (first - left) / (end - start), used / (first - left) * 1e6


# Ingest measures how fast the edge accepts: the journal's bound is set out of
# reach, so a backlog that reaches the default (20,000) within the few seconds of
# a run is not measured as shedding (part 1b measures the bound).
INGEST_ENV = {"RECEIVER_JOURNAL_MAX_DEPTH": "10000000"}


async def ingest(report: Report, sizes: Sizes, tmp: Path) -> None:
    bodies = {"1 alert": tmp / "one-alert.json", "20 alerts": tmp / "group.json"}
    bodies["1 alert"].write_bytes(one_alert_body())
    bodies["20 alerts"].write_bytes(group_body(20))
    stores = stores_run()
    if "redis" in SELECTED_STORES and "redis" not in stores:
        report.notes.append("redis-server not installed: Redis rows skipped.")
    targets = [*BASELINES, *(t for store in stores for t in (store, store + EDGE))]
    got: dict[tuple[str, str], list[dict[str, float]]] = {}
    for run in range(sizes.runs):
        for kind, body in bodies.items():
            for target in targets:
                log(f"ingest {target}, {kind}, run {run + 1}/{sizes.runs}")
                with server(target, tmp, env=INGEST_ENV) as (proc, store):
                    await load(
                        report.loadgen,
                        proc.url,
                        body,
                        duration=sizes.warmup,
                        connections=sizes.connections,
                    )
                    ticks, used = cpu_ticks(), cpu_seconds(proc.pid)
                    result = await load(
                        report.loadgen,
                        proc.url,
                        body,
                        duration=sizes.duration,
                        connections=sizes.connections,
                    )
                    result["idle"] = idle_share(ticks, cpu_ticks()) * 100
                    # The server's own CPU per accepted request (a `serve`'s
                    # worker child is not counted: it is the worker's cost).
                    accepted = result["rps"] * result["elapsed"]
                    if accepted > 0:
                        used = cpu_seconds(proc.pid) - used
                        result["cpu_us"] = used / accepted * 1e6
                    if store is not None:
                        async with Decisions(store) as reader:
                            result["backlog"] = await reader.backlog()
                    if store is not None and target.endswith(EDGE):
                        result["worker"], result["worker_us"] = await worker_alone(
                            store, tmp, INGEST_ENV, sizes.duration, sizes.drain_timeout
                        )
                got.setdefault((target, kind), []).append(result)
    rows = []
    for kind in bodies:
        bare = Spread.of([r["rps"] for r in got["bare", kind]]).median
        floor = Spread.of([r["rps"] for r in got["floor", kind]]).median
        for target in targets:
            results = got[target, kind]
            rps = Spread.of([r["rps"] for r in results])
            of_bare = Spread.of([r["rps"] / bare * 100 for r in results])
            of_floor = Spread.of([r["rps"] / floor * 100 for r in results])
            worker = [r["worker"] for r in results if "worker" in r]
            rows.append(
                [
                    target_label(target),
                    kind,
                    rps.fmt(0),
                    Spread.of([r["p50_ms"] for r in results]).fmt(2),
                    Spread.of([r["p99_ms"] for r in results]).fmt(2),
                    of_bare.fmt(0) + " %",
                    of_floor.fmt(0) + " %",
                    Spread.of([r.get("backlog", float("nan")) for r in results]).fmt(0),
                    Spread.of(worker).fmt(0) if worker else "n/a",
                    _percent(Spread.of([r["idle"] for r in results])),
                    str(int(sum(r["errors"] for r in results))),
                ]
            )
            if target not in ("sqlite", "sqlite" + EDGE):
                continue
            how = "serve" if target == "sqlite" else "edge role alone"
            if kind == "1 alert":
                report.target(
                    f"ingest, 1 alert, SQLite, {how} >= 50% of bare aiohttp",
                    of_bare.median >= 50,
                    f"{of_bare.median:.0f} % ({rps.median:,.0f} vs {bare:,.0f} req/s)",
                )
                report.target(
                    f"ingest, 1 alert, SQLite, {how} >= 80% of the durable floor",
                    of_floor.median >= 80,
                    f"{of_floor.median:.0f} % "
                    f"({rps.median:,.0f} vs {floor:,.0f} req/s)",
                )
            else:
                report.target(
                    f"ingest, 20-alert groups, SQLite, {how} >= 40% of bare aiohttp",
                    of_bare.median >= 40,
                    f"{of_bare.median:.0f} % ({rps.median:,.0f} vs {bare:,.0f} req/s)",
                )
    report.table(
        "1. Ingest: POST /webhooks/alertmanager, bearer auth, saturated",
        [
            "server",
            "payload",
            "req/s",
            "p50 ms",
            "p99 ms",
            "of bare",
            "of floor",
            "undecided at end",
            "worker alone: payloads decided/s",
            "machine idle",
            "non-202",
        ],
        rows,
    )
    cpu_budget(report, got, bodies, stores)


def cpu_budget(
    report: Report,
    got: dict[tuple[str, str], list[dict[str, float]]],
    bodies: dict[str, Path],
    stores: list[str],
) -> None:
    """What `serve` could ingest on these cores if it decided all it accepted.

    The edge role's CPU per request and the worker role's per payload, each
    measured alone above: together they are what one payload costs the machine
    end to end. Every core busy with nothing else (not even the load
    generator), ``serve`` could accept and decide no more than cores / that
    cost per second.
    """
    cores = len(os.sched_getaffinity(0))
    nan = float("nan")
    rows = []
    for kind in bodies:
        bare = Spread.of([r["rps"] for r in got["bare", kind]]).median
        bare_cpu = Spread.of([r.get("cpu_us", nan) for r in got["bare", kind]])
        for store in stores:
            edge = Spread.of([r.get("cpu_us", nan) for r in got[store + EDGE, kind]])
            worker = Spread.of(
                [r.get("worker_us", nan) for r in got[store + EDGE, kind]]
            )
            serve = Spread.of([r["rps"] for r in got[store, kind]]).median
            ceiling = cores * 1e6 / (edge.median + worker.median)
            known = ceiling == ceiling  # not NaN: both were measured
            rows.append(
                [
                    store,
                    kind,
                    bare_cpu.fmt(0),
                    edge.fmt(0),
                    worker.fmt(0),
                    f"{ceiling:,.0f}" if known else "n/a",
                    f"{ceiling / bare * 100:.0f} %" if known else "n/a",
                    f"{serve:,.0f} ({serve / bare * 100:.0f} %)",
                ]
            )
    report.table(
        f"1a. The CPU budget of serve: {cores} cores, one payload accepted and decided",
        [
            "store",
            "payload",
            "bare aiohttp: CPU us per request",
            "edge role: CPU us per request",
            "worker role: CPU us per payload",
            "ceiling, every core on it: req/s",
            "ceiling, of bare",
            "serve measured (of bare)",
        ],
        rows,
    )


# ------------------------------------------------------------------ 1b. sustained


async def sustained(report: Report, sizes: Sizes, tmp: Path) -> None:
    """Saturated for longer, with a reachable bound: does deciding keep up?"""
    body = tmp / "one-alert.json"
    body.write_bytes(one_alert_body())
    bound = sizes.sustain_bound
    env = {"RECEIVER_JOURNAL_MAX_DEPTH": str(bound)}
    rows = []
    for store in stores_run():
        results = []
        for run in range(sizes.runs):
            log(f"sustained {store} run {run + 1}/{sizes.runs}")
            with server(store, tmp, env) as (proc, url):
                async with Decisions(url) as reader:
                    peak = 0

                    async def watch(reader: Decisions = reader) -> None:
                        nonlocal peak
                        while True:
                            peak = max(peak, await reader.backlog())
                            await asyncio.sleep(0.1)

                    watcher = asyncio.create_task(watch())
                    before = await reader.count()
                    result = await load(
                        report.loadgen,
                        proc.url,
                        body,
                        duration=sizes.sustain_duration,
                        connections=sizes.connections,
                    )
                    decided = await reader.count() - before
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watcher
                    result["decided_per_s"] = decided / result["elapsed"]
                    result["peak_backlog"] = peak
                    results.append(result)
        accepted = Spread.of([r["rps"] for r in results])
        decided = Spread.of([r["decided_per_s"] for r in results])
        shed = sum(r["shed"] for r in results)
        peak = Spread.of([r["peak_backlog"] for r in results])
        keeps_up = decided.median >= 0.95 * accepted.median
        # The edge counts the journal at most once a second: allow what one
        # second of accepting adds past the bound.
        bounded = shed > 0 and peak.high <= bound + accepted.median
        rows.append(
            [
                store,
                accepted.fmt(0),
                decided.fmt(0),
                f"{decided.median / accepted.median:.2f}" if accepted.median else "n/a",
                str(int(shed)),
                peak.fmt(0),
                f"{bound:,}",
            ]
        )
        report.target(
            f"at saturation, decided/s >= accepted/s or shedding before the bound "
            f"({store})",
            keeps_up or bounded,
            f"{decided.median:,.0f} decided/s vs {accepted.median:,.0f} accepted/s, "
            f"{shed} shed, peak backlog {peak.high:,.0f} (bound {bound:,})",
        )
    report.table(
        f"1b. Sustained: {sizes.sustain_duration:.0f} s saturated, journal bound "
        f"{bound:,} payloads",
        [
            "store",
            "accepted/s",
            "decided/s",
            "decided / accepted",
            "shed (503)",
            "peak backlog",
            "bound",
        ],
        rows,
    )


# ------------------------------------------------------------------ 2. end to end

E2E_RULES = """
playbooks:
  bench:
    description: one probe (a real step that starts), one remediation (dry-run)
    diagnostics:
      - type: http.get
        name: probe
        url: "http://127.0.0.1:{port}/probe/{{alert.fingerprint}}"
    remediation:
      - type: http.request
        url: "http://127.0.0.1:{port}/remediate/{{alert.fingerprint}}"
    guards:
      dry_run: true
rules:
  - name: bench-e2e
    match: ['alertname="BenchE2E"']
    playbook: bench
"""


class Probe:
    """The loopback endpoint the bench playbook's diagnostic calls."""

    def __init__(self) -> None:
        self.first: dict[str, float] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        """Listen on a free loopback port."""

        async def hit(request: web.Request) -> web.Response:
            self.first.setdefault(request.match_info["fp"], time.time())
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_get("/probe/{fp}", hit)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()


async def e2e_run(
    store: str,
    tmp: Path,
    rules: Path,
    probe: Probe,
    sizes: Sizes,
    tag: str,
    *,
    rate: float | None,
) -> dict[str, float]:
    env = {
        "RECEIVER_MODE": "execute",
        "RECEIVER_HTTP_ALLOWLIST": f"127.0.0.1:{probe.port}",
    }
    probe.first.clear()
    with receiver(store, tmp, rules=rules, env=env) as (proc, url):
        args = [
            sys.executable,
            str(BENCH / "loadgen.py"),
            "e2e",
            "--url",
            f"{proc.url}/webhooks/alertmanager",
            "--tag",
            tag,
            "--connections",
            "16",
        ]
        if rate is None:
            args += ["--count", str(sizes.e2e_count), "--duration", "60"]
        else:
            args += ["--rate", f"{rate:.3f}", "--duration", str(sizes.e2e_duration)]
        decided: dict[str, float] = {}
        async with Decisions(url) as reader:
            sender = asyncio.create_task(_run(args, {}, 120))
            while not sender.done():
                now = time.time()
                for fp in await reader.new_fingerprints():
                    decided.setdefault(fp, now)
                await asyncio.sleep(0.005)
            result = json.loads(await sender)
            sends = {fp: at for fp, at, status in result["sends"] if status == 202}

            async def all_decided() -> bool:
                now = time.time()
                for fp in await reader.new_fingerprints():
                    decided.setdefault(fp, now)
                return all(fp in decided for fp in sends)

            if not await wait_for(all_decided, sizes.drain_timeout, 0.005):
                missing = sum(fp not in decided for fp in sends)
                raise BenchError(f"e2e {store}: {missing} alerts never decided")
    if not sends:
        raise BenchError(f"e2e {store}: no payload accepted")
    first = min(sends.values())
    last = max(decided[fp] for fp in sends)
    to_decision = [decided[fp] - at for fp, at in sends.items()]
    to_step = [probe.first[fp] - at for fp, at in sends.items() if fp in probe.first]
    return {
        "alerts_per_s": len(sends) / (last - first),
        "rate": len(sends) / result["elapsed"],
        "decision_p50": percentile(to_decision, 50) * 1000,
        "decision_p99": percentile(to_decision, 99) * 1000,
        "step_p50": percentile(to_step, 50) * 1000,
        "step_p99": percentile(to_step, 99) * 1000,
        "steps_seen": len(to_step) / len(sends),
        "errors": len(result["sends"]) - len(sends) + result["errors"],
    }


async def e2e(report: Report, sizes: Sizes, tmp: Path) -> None:
    probe = Probe()
    await probe.start()
    try:
        rules = tmp / "e2e-rules.yaml"
        rules.write_text(E2E_RULES.format(port=probe.port))
        rows = []
        for store in stores_run():
            capacity = []
            for run in range(sizes.runs):
                log(f"e2e {store} capacity run {run + 1}/{sizes.runs}")
                capacity.append(
                    await e2e_run(store, tmp, rules, probe, sizes, f"c{run}", rate=None)
                )
            cap = Spread.of([r["alerts_per_s"] for r in capacity])
            rate = sizes.e2e_rate or max(cap.median / 2, 2.0)
            if store == "sqlite":
                report.facts["half_rate"] = rate
            steady = []
            for run in range(sizes.runs):
                log(f"e2e {store} at {rate:.0f}/s run {run + 1}/{sizes.runs}")
                steady.append(
                    await e2e_run(store, tmp, rules, probe, sizes, f"s{run}", rate=rate)
                )
            p99 = Spread.of([r["decision_p99"] for r in steady])
            report.target(
                f"POST -> decision p99 < 50 ms at half the saturated rate ({store})",
                p99.median < 50,
                f"p99 {p99.median:.1f} ms at {rate:,.0f} alerts/s "
                f"(saturated: {cap.median:,.0f}/s)",
            )
            rows.append(
                [
                    store,
                    cap.fmt(0),
                    Spread.of([r["rate"] for r in steady]).fmt(0),
                    Spread.of([r["step_p50"] for r in steady]).fmt(1),
                    Spread.of([r["step_p99"] for r in steady]).fmt(1),
                    Spread.of([r["decision_p50"] for r in steady]).fmt(1),
                    Spread.of([r["decision_p99"] for r in steady]).fmt(1),
                    str(int(sum(r["errors"] for r in capacity + steady))),
                ]
            )
    finally:
        await probe.stop()
    report.table(
        "2. End to end: POST -> first step starts -> decision recorded",
        [
            "store",
            "alerts/s (saturated)",
            "steady alerts/s",
            "first step p50 ms",
            "p99 ms",
            "decision p50 ms",
            "p99 ms",
            "non-202",
        ],
        rows,
    )


# ------------------------------------------------------------------ 3. rule scale


def synthetic_rules(n: int, *, regex: bool = True) -> tuple[list[dict], int]:
    """``n`` rules: most pin alertname=, some another label, 10% regex only.

    Regex-only rules have no equality matcher and no literal alternation:
    ``service=~"svc-1234(-canary|-blue)?"`` or ``alertname=~"Gen1234(-.*)?"``,
    each with ``namespace=~"prod.*|production"`` besides. Without ``regex`` they
    pin alertname= like the rest.
    """
    rules: list[dict] = []
    regex_only = 0
    for i in range(n):
        if regex and (i % 10 == 5 or (n < 10 and i == n // 2)):
            regex_only += 1
            if i % 20 == 5:
                first = f'service=~"svc-{i}(-canary|-blue)?"'
            else:
                first = f'alertname=~"Gen{i}(-.*)?"'
            match = [first, 'namespace=~"prod.*|production"']
        elif i % 10 == 7:
            match = [f'service="svc-{i}"', 'alertname=~"Gen.*"']
        elif i % 3 == 0:
            match = [f'alertname="Gen{i}"', 'namespace=~"prod.*|production"']
        elif i % 5 == 1:
            match = [f'alertname="Gen{i}"', 'severity="critical"', 'team!=""']
        else:
            match = [f'alertname="Gen{i}"']
        rules.append(
            {"name": f"r{i}", "match": match, "playbook": "p", "status": "any"}
        )
    return rules, regex_only


def rule_scale(report: Report, sizes: Sizes) -> None:
    from receiver.rulebook.loader import Rulebook  # noqa: PLC0415
    from receiver.rulebook.matchers import Matcher  # noqa: PLC0415
    from receiver.rulebook.schema import CompiledRule, Playbook, Rule  # noqa: PLC0415
    from receiver.sources import alertmanager  # noqa: PLC0415

    rows = []
    per_alert: dict[int, float] = {}
    per_alert_eq: dict[int, float] = {}
    now = datetime.now(UTC)

    def build(raw: list[dict]) -> Rulebook:
        compiled = [
            CompiledRule(
                i,
                Rule.model_validate(r),
                tuple(Matcher.parse(m) for m in r["match"]),
                "bench",
            )
            for i, r in enumerate(raw)
        ]
        return Rulebook(tuple(compiled), {"p": Playbook()})

    def timed(rulebook: Rulebook, alerts: list, *, linear: bool) -> float:
        """Microseconds of this thread's CPU per alert.

        Another process's turn on the core is not counted.
        """
        count = 0
        start = time.perf_counter()
        cpu = time.thread_time()
        deadline = start + sizes.match_seconds
        # bounded by time (linear scans of 10k rules are slow) and by count
        while True:
            for a in alerts:
                rulebook.match(a, now, linear=linear)
            count += len(alerts)
            if time.perf_counter() >= deadline or count >= 200_000:
                break
        return (time.thread_time() - cpu) / count * 1e6

    cases = {}
    for n in sizes.rule_sizes:
        raw, regex_only = synthetic_rules(n)
        book = build(raw)
        plain = build(synthetic_rules(n, regex=False)[0])
        rng = random.Random(n)
        items = []
        for k in range(500):
            i = rng.randrange(n)
            labels = {
                "alertname": f"Gen{i}" if k % 10 else f"Unknown{i}",
                "namespace": "production",
                "severity": "critical",
                "team": "sre",
                "service": f"svc-{rng.randrange(n)}",
                "instance": f"10.0.0.{k % 250}:8080",
            }
            items.append(
                {
                    "status": "firing",
                    "labels": labels,
                    "annotations": {},
                    "startsAt": "2026-11-26T10:00:00Z",
                    "endsAt": "0001-01-01T00:00:00Z",
                    "fingerprint": f"{k:016x}",
                }
            )
        alerts = alertmanager.to_alerts(
            {"version": "4", "status": "firing", "receiver": "b", "alerts": items}, now
        )
        for rulebook in (book, plain):
            for a in alerts:
                fast = [m.rule.name for m in rulebook.match(a, now)]
                slow = [m.rule.name for m in rulebook.match(a, now, linear=True)]
                if fast != slow:
                    raise BenchError(f"index and linear scan disagree at {n} rules")
        cases[n] = (book, plain, alerts, regex_only)

    # Run by run, every size in turn: whatever else the machine does in a
    # stretch of the part weighs on the small and the big rule sets alike.
    # As ``receiver serve`` does once its rules are loaded, what is built so far
    # is frozen out of the collector while timing.
    index_us: dict[int, list[float]] = defaultdict(list)
    linear_us: dict[int, list[float]] = defaultdict(list)
    eq_us: dict[int, list[float]] = defaultdict(list)
    gc.freeze()
    try:
        for _ in range(sizes.runs):
            for n, (book, plain, alerts, _) in cases.items():
                index_us[n].append(timed(book, alerts, linear=False))
                linear_us[n].append(timed(book, alerts, linear=True))
                eq_us[n].append(timed(plain, alerts, linear=False))
    finally:
        gc.unfreeze()
    for n, (_, _, _, regex_only) in cases.items():
        index = Spread.of(index_us[n])
        linear = Spread.of(linear_us[n])
        only_eq = Spread.of(eq_us[n])
        per_alert[n] = index.median
        per_alert_eq[n] = only_eq.median
        rows.append(
            [
                f"{n:,}",
                str(regex_only),
                index.fmt(1),
                linear.fmt(1),
                f"{linear.median / index.median:,.1f}x",
                only_eq.fmt(1),
            ]
        )
        log(f"rules {n}: index {index.median:.1f} us, linear {linear.median:.1f} us")
    small, big = min(per_alert), max(per_alert)
    ratio = per_alert[big] / per_alert[small]
    report.target(
        f"matching at {big:,} rules within 2x of {small:,} rules (index)",
        ratio <= 2,
        f"{ratio:.2f}x ({per_alert[big]:.1f} vs {per_alert[small]:.1f} us/alert)",
    )
    eq_ratio = per_alert_eq[big] / per_alert_eq[small]
    report.notes.append(
        f"rule scale without regex-only rules: {big:,} rules cost {eq_ratio:.2f}x "
        f"of {small:,} ({per_alert_eq[big]:.1f} vs {per_alert_eq[small]:.1f} us)"
    )
    report.table(
        "3. Rule scale: Rulebook.match per alert, CPU us (90% matching, 10% unmatched)",
        [
            "rules",
            "regex-only",
            "index us/alert",
            "linear us/alert",
            "index speedup",
            "index, no regex-only rules",
        ],
        rows,
    )


# ------------------------------------------------------------------ 4. storm


async def storm_run(
    store: str, tmp: Path, bodies: list[bytes], expected: int, sizes: Sizes
) -> dict[str, float]:
    with receiver(store, tmp) as (proc, url):
        async with Decisions(url) as reader:
            timeout = aiohttp.ClientTimeout(total=120)
            headers = {**AUTH, "Content-Type": "application/json"}
            conn = aiohttp.TCPConnector(limit=16)
            async with aiohttp.ClientSession(timeout=timeout, connector=conn) as http:
                sem = asyncio.Semaphore(16)
                statuses: list[int] = []

                async def post(body: bytes) -> None:
                    async with (
                        sem,
                        http.post(
                            f"{proc.url}/webhooks/alertmanager",
                            data=body,
                            headers=headers,
                        ) as resp,
                    ):
                        await resp.read()
                        statuses.append(resp.status)

                start = time.monotonic()
                await asyncio.gather(*(post(b) for b in bodies))
                accepted = time.monotonic() - start

                async def done() -> bool:
                    return await reader.count() >= expected

                finished = await wait_for(done, sizes.drain_timeout)
                elapsed = time.monotonic() - start

                async def settled() -> bool:
                    return await reader.backlog() == 0

                # Decided is the records; done is the journal entries marked
                # done, once their alerts are folded into the incidents.
                if finished:
                    finished = await wait_for(settled, sizes.drain_timeout)
                all_done = time.monotonic() - start
            if not finished:
                raise BenchError(
                    f"storm on {store}: {await _count(url)} of {expected} decided "
                    f"after {sizes.drain_timeout:.0f}s"
                )
            bad = sum(s != 202 for s in statuses)
            workers = children(proc.pid)
            return {
                "seconds": elapsed,
                "done": all_done,
                "accepted": accepted,
                "rss": peak_rss_mib(proc.pid),
                "worker_rss": max((peak_rss_mib(w) for w in workers), default=0.0),
                "errors": bad,
            }


async def _count(url: str) -> int:
    async with Decisions(url) as reader:
        return await reader.count()


async def storm(report: Report, sizes: Sizes, tmp: Path) -> None:
    rows = []
    n = sizes.storm_alerts
    burst_n = sizes.burst_payloads * sizes.burst_per
    for store in stores_run():
        one, many = [], []
        for run in range(sizes.runs):
            log(f"storm {store} {n} alerts run {run + 1}/{sizes.runs}")
            one.append(
                await storm_run(store, tmp, [storm_body(n, f"s{run}")], n, sizes)
            )
            log(f"burst {store} {sizes.burst_payloads}x{sizes.burst_per} run {run + 1}")
            bodies = burst_bodies(sizes.burst_payloads, sizes.burst_per, f"b{run}")
            many.append(await storm_run(store, tmp, bodies, burst_n, sizes))
        secs = Spread.of([r["seconds"] for r in one])
        rss = Spread.of([r["rss"] for r in one])
        worker_rss = Spread.of([r["worker_rss"] for r in one])
        rows.append(
            [
                store,
                secs.fmt(2),
                Spread.of([r["done"] for r in one]).fmt(2),
                Spread.of([r["accepted"] for r in one]).fmt(2),
                f"{rss.fmt(0)} / {worker_rss.fmt(0)}",
                Spread.of([r["seconds"] for r in many]).fmt(2),
                Spread.of([r["done"] for r in many]).fmt(2),
                (
                    f"{Spread.of([r['rss'] for r in many]).fmt(0)} / "
                    f"{Spread.of([r['worker_rss'] for r in many]).fmt(0)}"
                ),
                str(int(sum(r["errors"] for r in one + many))),
            ]
        )
        report.target(
            f"{n:,}-alert storm decided in < 1 s ({store})",
            secs.median < 1,
            f"{secs.median:.2f} s",
        )
        report.target(
            f"{n:,}-alert storm peak RSS < 200 MiB, each process ({store})",
            max(rss.median, worker_rss.median) < 200,
            f"edge {rss.median:.0f} MiB, worker {worker_rss.median:.0f} MiB",
        )
    report.table(
        f"4. Storm: one payload of {n:,} alerts; a burst of "
        f"{sizes.burst_payloads} payloads x {sizes.burst_per} alerts",
        [
            "store",
            f"{n:,} alerts: all decided s",
            "all done (incidents folded) s",
            "202 after s",
            "peak RSS MiB edge / worker",
            f"burst of {burst_n:,}: all decided s",
            "all done s",
            "peak RSS MiB edge / worker",
            "non-202",
        ],
        rows,
    )


# ------------------------------------------------------------------ 5. decide cost


async def decide_cost(report: Report, sizes: Sizes) -> None:
    """Deciding the runbook pack in process: no store, no HTTP, dry-run.

    The cost is the deciding thread's CPU time (``time.thread_time``): on a
    shared machine wall time also counts the time other processes held the
    core. Garbage collections the decide path triggers run on this thread and
    are counted. As ``receiver serve`` does once the app is built, what was
    loaded before the first payload (modules, rules) is frozen out of the
    collector's generations, so a full collection does not walk the bench's
    own heap.
    """
    from receiver import logs  # noqa: PLC0415
    from receiver.engine.planner import PlanContext  # noqa: PLC0415
    from receiver.engine.runner import Runner  # noqa: PLC0415
    from receiver.engine.worker import Processor  # noqa: PLC0415
    from receiver.metrics import Metrics  # noqa: PLC0415
    from receiver.rulebook.loader import load_rulebook  # noqa: PLC0415
    from receiver.steps.catalog import builtin_registry  # noqa: PLC0415

    # As the service logs: JSON at info (to nowhere, the cost is what counts).
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):  # noqa: PTH123
        logs.configure("json", "info")
        book = load_rulebook([RUNBOOK_RULES], steps=builtin_registry())

        def clock() -> datetime:
            return datetime.now(UTC)

        processor = Processor(
            book, Runner({}, clock), clock, PlanContext(), metrics=Metrics()
        )
        n = sizes.storm_alerts
        per_alert, wall, storm_s, parse_s, young = [], [], [], [], []
        gc.freeze()
        try:
            for run in range(max(sizes.runs, 3)):
                body = storm_body(n, f"d{run}")
                start = time.perf_counter()
                alerts = processor.alerts("alertmanager", body, clock())
                parsed = time.perf_counter()
                cpu = time.thread_time()
                await processor.decide(alerts)
                cpu = time.thread_time() - cpu
                done = time.perf_counter()
                parse_s.append(parsed - start)
                storm_s.append(done - start)
                per_alert.append(cpu / n * 1e6)
                wall.append((done - parsed) / n * 1e6)
                # A storm as it arrives: every alert started firing 30 s ago.
                just = datetime.now(UTC) - timedelta(seconds=30)
                body = storm_body(n, f"y{run}", starts_at=just.isoformat())
                alerts = processor.alerts("alertmanager", body, clock())
                cpu = time.thread_time()
                await processor.decide(alerts)
                young.append((time.thread_time() - cpu) / n * 1e6)
        finally:
            gc.unfreeze()
            # Its summary line now, while the null sink is still open (later,
            # its timer wrote to a closed file: a logging error in the run).
            processor.flush_decided()
    cost = Spread.of(per_alert)
    report.target(
        "decide cost per alert <= 50 us (runbook pack, in process, thread CPU)",
        cost.median <= 50,
        f"{cost.median:.1f} us",
    )
    fresh = Spread.of(young)
    report.target(
        "decide cost per alert <= 50 us, a storm of alerts firing for 30 s",
        fresh.median <= 50,
        f"{fresh.median:.1f} us",
    )
    report.table(
        f"5. Decide cost in process: runbook pack, {n:,} alerts, dry-run, no store "
        "(us per alert: CPU time of the deciding thread, GC included; wall time "
        "beside it)",
        [
            "CPU us per alert (decide)",
            "wall us per alert (decide)",
            f"parse {n:,} alerts s",
            f"parse + decide {n:,} s",
            "CPU us per alert, alerts firing for 30 s",
        ],
        [
            [
                cost.fmt(1),
                Spread.of(wall).fmt(1),
                Spread.of(parse_s).fmt(3),
                Spread.of(storm_s).fmt(3),
                Spread.of(young).fmt(1),
            ]
        ],
    )


# ------------------------------------------------------------------ 6. healthz


async def healthz_under_storm(report: Report, sizes: Sizes, tmp: Path) -> None:
    """/healthz latency while a 38,000-alert payload is accepted and decided."""
    n = sizes.healthz_alerts
    body = lean_storm_body(n, "h")
    results = []
    for run in range(sizes.runs):
        log(
            f"healthz under a {n:,}-alert payload ({len(body) / 2**20:.1f} MiB), "
            f"run {run + 1}/{sizes.runs}"
        )
        body = lean_storm_body(n, f"h{run}")
        if len(body) > MAX_BODY:
            raise BenchError(f"{n:,} alerts take {len(body):,} bytes, over the cap")
        with receiver("sqlite", tmp) as (proc, url):
            async with Decisions(url) as reader, aiohttp.ClientSession() as http:
                latencies: list[float] = []
                stop = asyncio.Event()

                async def probe(
                    stop: asyncio.Event = stop, latencies: list[float] = latencies
                ) -> None:
                    while not stop.is_set():
                        sent = time.perf_counter()
                        async with http.get(f"{proc.url}/healthz") as resp:
                            await resp.read()
                        latencies.append(time.perf_counter() - sent)
                        await asyncio.sleep(0.02)

                prober = asyncio.create_task(probe())
                start = time.monotonic()
                async with http.post(
                    f"{proc.url}/webhooks/alertmanager",
                    data=body,
                    headers={**AUTH, "Content-Type": "application/json"},
                ) as resp:
                    status = resp.status
                    await resp.read()
                accepted = time.monotonic() - start

                async def done() -> bool:
                    return await reader.count() >= n

                finished = await wait_for(done, sizes.drain_timeout, 0.05)
                decided = time.monotonic() - start
                stop.set()
                await prober
        if status != 202 or not finished:
            raise BenchError(f"healthz run: status {status}, all decided: {finished}")
        results.append(
            {
                "p50": percentile(latencies, 50) * 1000,
                "p99": percentile(latencies, 99) * 1000,
                "max": max(latencies) * 1000,
                "accepted": accepted,
                "decided": decided,
                "probes": len(latencies),
            }
        )
    p99 = Spread.of([r["p99"] for r in results])
    report.target(
        f"/healthz p99 < 1 s while a {n:,}-alert payload is decided",
        p99.median < 1000,
        f"p99 {p99.median:,.0f} ms, "
        f"max {Spread.of([r['max'] for r in results]).high:,.0f} ms",
    )
    report.table(
        f"6. /healthz every 20 ms while one {n:,}-alert payload "
        f"({len(body) / 2**20:.1f} MiB) is accepted and decided (SQLite)",
        ["p50 ms", "p99 ms", "max ms", "probes", "202 after s", "all decided s"],
        [
            [
                Spread.of([r["p50"] for r in results]).fmt(1),
                p99.fmt(1),
                Spread.of([r["max"] for r in results]).fmt(1),
                Spread.of([r["probes"] for r in results]).fmt(0),
                Spread.of([r["accepted"] for r in results]).fmt(2),
                Spread.of([r["decided"] for r in results]).fmt(2),
            ]
        ],
    )


# ------------------------------------------------------------------ 7. soak


def _db_bytes(url: str) -> int:
    """The store's files: its own, the decision log's, and each one's WAL."""
    path = url.removeprefix("sqlite:///")
    files = (path, decisions_path(path))
    return sum(
        p.stat().st_size
        for p in (Path(f + suffix) for f in files for suffix in ("", "-wal"))
        if p.exists()
    )


async def soak(report: Report, sizes: Sizes, tmp: Path) -> None:
    """Half the saturated rate for a while: RSS flat, database files bounded."""
    body = tmp / "one-alert.json"
    body.write_bytes(one_alert_body())
    env = {
        "RECEIVER_RETENTION_PAYLOADS": "2000",
        "RECEIVER_RETENTION_DECISIONS": "2000",
        "RECEIVER_PRUNE_INTERVAL": f"{max(int(sizes.soak_duration * 50), 500)}ms",
    }
    rate = sizes.soak_rate or report.facts.get("half_rate", 100.0)
    log(f"soak: {rate:,.0f}/s for {sizes.soak_duration:.0f} s")
    samples: list[tuple[float, float, float, float]] = []
    with receiver("sqlite", tmp, env=env) as (proc, url):
        workers = children(proc.pid)
        sender = asyncio.create_task(
            load(
                report.loadgen,
                proc.url,
                body,
                duration=sizes.soak_duration,
                connections=16,
                rate=rate,
            )
        )
        start = time.monotonic()
        while not sender.done():
            samples.append(
                (
                    time.monotonic() - start,
                    rss_mib(proc.pid),
                    sum(rss_mib(w) for w in workers),
                    _db_bytes(url) / 2**20,
                )
            )
            await asyncio.wait({sender}, timeout=sizes.soak_duration / 10)
        result = await sender
    third = samples[max(len(samples) // 3, 1) - 1]
    last = samples[-1]
    flat = last[1] <= third[1] * 1.1 + 2 and last[2] <= third[2] * 1.1 + 2
    bounded = last[3] <= max(s[3] for s in samples[: len(samples) // 2 + 1]) * 1.2 + 1
    report.target(
        f"soak at {rate:,.0f}/s for {sizes.soak_duration:.0f} s: RSS flat",
        flat,
        f"edge {third[1]:.0f} -> {last[1]:.0f} MiB, worker {third[2]:.0f} -> "
        f"{last[2]:.0f} MiB (from a third of the way to the end)",
    )
    report.target(
        "soak: database files (store and decision log) bounded by retention",
        bounded,
        f"{last[3]:.1f} MiB at the end, {max(s[3] for s in samples):.1f} MiB at most",
    )
    report.table(
        f"7. Soak: {rate:,.0f} payloads/s for {sizes.soak_duration:.0f} s (SQLite, "
        "retention 2,000 payloads and decisions)",
        ["t s", "edge RSS MiB", "worker RSS MiB", "database MiB"],
        [[f"{t:.0f}", f"{e:.0f}", f"{w:.0f}", f"{d:.1f}"] for t, e, w, d in samples]
        + [
            [
                "requests/s reached",
                f"{result['rps']:,.0f}",
                "non-202",
                str(int(result["errors"])),
            ]
        ],
    )


# ------------------------------------------------------------------ output


def machine(loadgen: str) -> list[str]:
    wrk = ""
    if loadgen == "wrk":
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            first = subprocess.run(
                ["wrk", "--version"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout.splitlines()
            wrk = f" ({first[0].split(' [')[0]})" if first else ""
    commit = dirty = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            check=False,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            check=False,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    return [
        (
            f"- machine: {os.cpu_count()} cores, {platform.machine()}, "
            f"{platform.system()} {platform.release()}"
        ),
        f"- Python {platform.python_version()} ({platform.python_implementation()})",
        f"- load generator: {loadgen}{wrk}, a separate process on loopback",
        (
            f"- commit {commit or '?'}{' + uncommitted changes' if dirty else ''}, "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
        ),
    ]


def render(report: Report, seconds: float) -> str:
    sizes = report.sizes
    lines = [
        "# Benchmark results",
        "",
        (
            "Written by `make bench` (`bench/run.py`); see bench/README.md for what "
            f"each part measures. Each figure is the median of {sizes.runs} runs, "
            "with (min-max)."
        ),
        "",
        *machine(report.loadgen),
        f"- whole run: {seconds:.0f} s",
        "",
        "## Targets",
        "",
    ]
    for name, ok, detail in report.targets:
        mark = "n/a" if ok is None else ("holds" if ok else "MISSED")
        lines.append(f"- **{mark}**: {name}: {detail}")
    lines.append("")
    for section in report.sections:
        lines += [section, ""]
    for note in report.notes:
        lines.append(f"- note: {note}")
    return "\n".join(lines).rstrip() + "\n"


def write(path: Path, text: str) -> None:
    kept = ""
    if path.exists():
        old = path.read_text(encoding="utf-8")
        if MARKER in old:
            kept = old.split(MARKER, 1)[1]
    path.write_text(f"{text}\n{MARKER}{kept or chr(10)}", encoding="utf-8")


PARTS = ("ingest", "sustained", "e2e", "rules", "storm", "decide", "healthz", "soak")


async def main_async(args: argparse.Namespace) -> int:
    sizes = SMOKE if args.smoke else Sizes()
    if args.runs:
        sizes = replace(sizes, runs=args.runs)
    if args.e2e_rate:
        sizes = replace(sizes, e2e_rate=args.e2e_rate)
    loadgen = args.loadgen
    if loadgen == "auto":
        loadgen = "wrk" if shutil.which("wrk") else "python"
        if loadgen == "python" and not args.smoke:
            log("wrk not found: using the Python load generator (apt-get install wrk)")
    report = Report(sizes, loadgen)
    started = time.monotonic()
    parts = args.parts.split(",") if args.parts else list(PARTS)
    if args.stores:
        SELECTED_STORES[:] = [s for s in STORES if s in args.stores.split(",")]
    with tempfile.TemporaryDirectory(prefix="receiver-bench-") as raw:
        tmp = Path(raw)
        if "rules" in parts:
            rule_scale(report, sizes)
        if "decide" in parts:
            await decide_cost(report, sizes)
        if "ingest" in parts:
            await ingest(report, sizes, tmp)
        if "sustained" in parts:
            await sustained(report, sizes, tmp)
        if "e2e" in parts:
            await e2e(report, sizes, tmp)
        if "storm" in parts:
            await storm(report, sizes, tmp)
        if "healthz" in parts:
            await healthz_under_storm(report, sizes, tmp)
        if "soak" in parts:
            await soak(report, sizes, tmp)
    text = render(report, time.monotonic() - started)
    print("\n" + text.split("## Targets", 1)[1].split("###", 1)[0].strip())
    out = args.out or (None if args.smoke else BENCH / "RESULTS.md")
    if out is not None:
        write(Path(out), text)
        log(f"wrote {out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    parser.add_argument("--out", type=Path, help="results file (smoke: none)")
    parser.add_argument("--runs", type=int, help="runs per figure")
    parser.add_argument(
        "--e2e-rate", type=float, help="steady end-to-end rate (default: half of max)"
    )
    parser.add_argument("--parts", help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument(
        "--stores", help=f"comma-separated subset of {','.join(STORES)}"
    )
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
