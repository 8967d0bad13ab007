"""Hostile-client measurements: slow unauthenticated uploads and decision size.

``python bench/hostile.py`` (``--smoke`` for tiny sizes) writes the section
between the ``hostile`` markers in ``bench/RESULTS.md`` (below the hand-written
marker, so ``make bench`` keeps it).

1. **Slow uploads.** Many connections post to ``/v2/enqueue`` (whose credential
   is in the body, so it must be read before anyone is authenticated), each
   sending as much as the receiver takes without answering, then stalling. The
   receiver's peak RSS growth is measured with the edge's limits at their
   defaults and, as the baseline in the same run, with them lifted (5 MiB
   bodies, no read cap, an hour's body timeout: the edge before the limits).
2. **Reads beside writes.** A store seeded with tens of thousands of decision
   records; the latency of each filtered ``GET /api/v1/decisions``, and the
   webhook's time to 202 while four clients keep querying, against the same
   without readers.
3. **Decision size.** The bytes stored per decision record for alerts at the
   label caps whose values flow into templated steps, with and without
   ``compact_record`` (long values once per record).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).parents[1])]
import aiohttp  # noqa: E402
from common import (  # noqa: E402
    ROOT,
    TOKEN,
    BenchError,
    one_alert_body,
    percentile,
    run_receiver,
)

RESULTS = ROOT / "bench" / "RESULTS.md"
START, END = "<!-- hostile:start -->", "<!-- hostile:end -->"
ROUTING_KEY = "bench-routing-key"
KIB = 1024


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise BenchError(f"no {field} for {pid}")


async def upload(url: str, send: int, outcome: dict[str, int]) -> None:
    """Post chunked, send ``send`` bytes, then stall until answered or closed."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        b"POST /v2/enqueue HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    writer.write(head)
    chunk = b"x" * (64 * KIB)
    sent = 0
    try:
        while sent < send:
            part = chunk[: min(len(chunk), send - sent)]
            writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            sent += len(part)
            await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 3600)
        status = line.split(b" ")[1].decode() if line else "closed"
    except (ConnectionError, IndexError):
        status = "reset"
    except TimeoutError:
        status = "held"
    outcome[status] = outcome.get(status, 0) + 1
    writer.close()


async def slow_uploads(url: str, pid: int, conns: int, send: int, hold: float) -> dict:
    base = rss_kib(pid, "VmRSS")
    outcome: dict[str, int] = {}
    tasks = [asyncio.create_task(upload(url, send, outcome)) for _ in range(conns)]
    await asyncio.sleep(hold)
    peak = rss_kib(pid, "VmHWM")
    open_now = sum(1 for t in tasks if not t.done())
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "base_mib": base / KIB,
        "growth_mib": max(peak - base, 0) / KIB,
        "held_at_end": open_now,
        "outcome": outcome,
    }


def bound_mib(reads: int, cap: int, connections: int) -> float:
    """The stated bound: two copies of each allowed body, 64 KiB per connection."""
    return (2 * reads * cap + connections * 64 * KIB) / (KIB * KIB)


async def part_uploads(tmp: Path, smoke: bool) -> list[str]:
    conns = 20 if smoke else 100
    hold = 2.0 if smoke else 6.0
    reads, cap, timeout = 32, 512 * KIB, 4
    limited = {
        "RECEIVER_ROUTING_KEYS": ROUTING_KEY,
        "RECEIVER_BODY_TIMEOUT": f"{timeout}s",
    }
    lifted = {
        "RECEIVER_ROUTING_KEYS": ROUTING_KEY,
        "RECEIVER_MAX_UNAUTHENTICATED_BODY_BYTES": str(5 * KIB * KIB),
        "RECEIVER_UNAUTHENTICATED_BODY_READS": "100000",
        "RECEIVER_BODY_TIMEOUT": "1h",
        "RECEIVER_MAX_CONNECTIONS": "100000",
    }
    rows = []
    for name, env, send in (
        ("limits lifted (baseline)", lifted, (1 if smoke else 4) * KIB * KIB),
        ("default limits", limited, cap - 16 * KIB),
    ):
        store = f"sqlite:///{tmp}/{name[:7].strip()}.db"
        with run_receiver(tmp, rules=ROOT / "rules", store=store, env=env) as proc:
            result = await slow_uploads(proc.url, proc.pid, conns, send, hold)
        rows.append((name, send, result))
    bound = bound_mib(reads, cap, 1000)
    out = [
        "### Slow unauthenticated uploads to /v2/enqueue",
        "",
        (
            f"{conns} connections, each sending as much as the receiver takes without "
            f"answering (chunked), then stalling; peak RSS growth over {hold:g} s "
            f"(body timeout {timeout} s with the default limits)."
        ),
        "",
        (
            "| edge | sent per connection | RSS before MiB | peak growth MiB | "
            "still open at end | answers |"
        ),
        "|---|---|---|---|---|---|",
    ]
    for name, send, r in rows:
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(r["outcome"].items()))
        out.append(
            f"| {name} | {send // KIB:,} KiB | {r['base_mib']:.0f} | "
            f"{r['growth_mib']:.0f} | {r['held_at_end']} | {answers or '-'} |"
        )
    growth = rows[1][2]["growth_mib"]
    verdict = "holds" if growth <= bound else "MISSED"
    out += [
        "",
        (
            f"- **{verdict}**: with the default limits the growth is {growth:.0f} MiB, "
            f"under the stated bound of {bound:.0f} MiB (2 x "
            f"unauthenticated_body_reads {reads} x max_unauthenticated_body_bytes "
            f"{cap // KIB} KiB + max_connections 1000 x 64 KiB); "
            f"{rows[0][2]['growth_mib']:.0f} MiB with the limits lifted."
        ),
        "",
    ]
    return out


async def _seed(path: Path, records: int) -> dict[str, str]:
    """Fill a SQLite store with ``records`` realistic decision records."""
    from receiver.store.sqlite import SqliteStore  # noqa: PLC0415

    example = ROOT / "examples/alertmanager/sark-api-down.firing.json"
    done = subprocess.run(
        [sys.executable, "-m", "receiver", "replay", "--json", str(example)],
        capture_output=True,
        check=True,
        cwd=ROOT,
        timeout=120,
    )
    template = json.loads(done.stdout)["alerts"][0]
    store = SqliteStore(str(path))
    batch = []
    for i in range(records):
        record = dict(template)
        record["fingerprint"] = f"seed-{i:08x}"
        record["payload_id"] = f"seed-payload-{i // 10}"
        batch.append(record)
        if len(batch) == 1000:
            await store.record(batch)
            batch = []
    if batch:
        await store.record(batch)
    await store.close()
    match = template["matches"][0]
    return {
        "rule (common)": f"rule={match['rule']}",
        "playbook (common)": f"playbook={match['playbook']}",
        "decision (absent)": "decision=executed",
        "rule (absent)": "rule=no-such-rule",
        "fingerprint": f"fingerprint=seed-{records // 2:08x}",
        "payload_id": f"payload_id=seed-payload-{records // 20}",
        "since (future)": "since=2199-01-01T00:00:00Z",
    }


async def _timed(session: aiohttp.ClientSession, method: str, url: str, **kw) -> float:
    started = time.perf_counter()
    async with session.request(method, url, **kw) as resp:
        await resp.read()
        if resp.status >= 300:
            raise BenchError(f"{method} {url}: {resp.status}")
    return (time.perf_counter() - started) * 1000


async def part_reads(tmp: Path, smoke: bool) -> list[str]:
    records = 2_000 if smoke else 60_000
    posts = 40 if smoke else 300
    db = tmp / "reads.db"
    queries = await _seed(db, records)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = one_alert_body()
    with run_receiver(tmp, rules=ROOT / "rules", store=f"sqlite:///{db}") as proc:
        async with aiohttp.ClientSession(headers=auth) as session:
            query_ms = {}
            for name, query in queries.items():
                url = f"{proc.url}/api/v1/decisions?limit=100&{query}"
                times = [await _timed(session, "GET", url) for _ in range(5)]
                query_ms[name] = percentile(times, 50)

            async def post_all() -> list[float]:
                headers = {"Content-Type": "application/json"}
                url = f"{proc.url}/webhooks/alertmanager"
                return [
                    await _timed(session, "POST", url, data=body, headers=headers)
                    for _ in range(posts)
                ]

            idle = await post_all()
            stop = asyncio.Event()

            async def reader(query: str) -> int:
                count = 0
                url = f"{proc.url}/api/v1/decisions?limit=1000&{query}"
                while not stop.is_set():
                    await _timed(session, "GET", url)
                    count += 1
                return count

            readers = [
                asyncio.create_task(reader(q))
                for q in ("", queries["rule (common)"], "decision=dry_run", "")
            ]
            busy = await post_all()
            stop.set()
            reads = sum(await asyncio.gather(*readers))
    return [
        "### Reads beside writes (SQLite)",
        "",
        (
            f"{records:,} decision records in the store. Each filtered "
            "`GET /api/v1/decisions?limit=100` (median of 5):"
        ),
        "",
        "| filter | ms |",
        "|---|---|",
        *(f"| {name} | {ms:.1f} |" for name, ms in query_ms.items()),
        "",
        (
            f"Time to 202 for {posts} sequential one-alert webhooks, alone and while "
            f"four clients keep reading pages of 1,000 records ({reads:,} pages read):"
        ),
        "",
        "| webhooks | p50 ms | p99 ms |",
        "|---|---|---|",
        f"| alone | {percentile(idle, 50):.1f} | {percentile(idle, 99):.1f} |",
        f"| with 4 readers | {percentile(busy, 50):.1f} | {percentile(busy, 99):.1f} |",
        "",
        (
            "Reads run on their own SQLite connection and thread and take no lock the "
            "journal needs; what the webhooks still wait for is CPU, shared on this "
            "machine by the receiver, its read thread and the bench's own clients "
            f"downloading {reads:,} pages of about 4 MB."
        ),
        "",
    ]


def part_decisions(tmp: Path, smoke: bool) -> list[str]:
    from receiver.store.base import compact_record  # noqa: PLC0415

    alerts = 10 if smoke else 200
    example = json.loads(
        (ROOT / "examples/alertmanager/sark-api-down.firing.json").read_text()
    )
    template = example["alerts"][0]
    batch = []
    for i in range(alerts):
        alert = json.loads(json.dumps(template))
        alert["fingerprint"] = f"amp-{i:05d}"
        # At the default caps: 1 KiB values in the labels steps are rendered from.
        alert["labels"]["deployment"] = f"{i:05d}" + "d" * 1019
        alert["labels"]["namespace"] = f"{i:05d}" + "n" * 1019
        batch.append(alert)
    example["alerts"] = batch
    path = tmp / "amplify.json"
    path.write_text(json.dumps(example))
    done = subprocess.run(
        [sys.executable, "-m", "receiver", "replay", "--json", str(path)],
        capture_output=True,
        check=True,
        cwd=ROOT,
        timeout=600,
    )
    traces = json.loads(done.stdout)["alerts"]
    plain = sum(len(json.dumps(t)) for t in traces)
    compact = sum(len(json.dumps(compact_record(t))) for t in traces)
    size = path.stat().st_size
    return [
        "### Decision records for alerts at the label caps",
        "",
        (
            f"{alerts} SarkApiDown alerts with 1 KiB `deployment` and `namespace` "
            f"labels (payload {size / KIB:,.0f} KiB), decided by the runbook rules."
        ),
        "",
        "| records | bytes stored | per payload byte |",
        "|---|---|---|",
        (
            f"| every step repeats the values (before) | {plain / KIB:,.0f} KiB | "
            f"{plain / size:.1f}x |"
        ),
        (
            f"| long values once per record (`compact_record`) | {compact / KIB:,.0f} "
            f"KiB | {compact / size:.1f}x |"
        ),
        "",
    ]


def write(section: list[str]) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else ""
    block = "\n".join(
        [START, "## Hostile clients (`bench/hostile.py`)", "", *section, END]
    )
    if START in text:
        text = re.sub(
            re.escape(START) + ".*?" + re.escape(END), block, text, flags=re.DOTALL
        )
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


async def main_async(smoke: bool) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        section = await part_uploads(Path(tmp), smoke)
        section += await part_reads(Path(tmp), smoke)
        section += part_decisions(Path(tmp), smoke)
        section.append(f"(run {time.monotonic() - started:.0f} s)")
        return section


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    section = asyncio.run(main_async(args.smoke))
    print("\n".join(section))
    if not args.no_write:
        with contextlib.suppress(OSError):
            write(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
