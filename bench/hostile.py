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
2. **Decision size.** The bytes stored per decision record for alerts at the
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
from common import ROOT, BenchError, run_receiver  # noqa: E402

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
