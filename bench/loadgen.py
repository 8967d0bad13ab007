"""Python load generator: a separate process that POSTs Alertmanager payloads.

Started by ``bench/run.py``; prints one JSON object on stdout. Modes:

- ``closed``: ``--connections`` clients each send the next request as soon as
  the last answered, for ``--duration`` seconds (sustained requests/s).
- ``rate``: requests leave on a fixed schedule of ``--rate`` per second for
  ``--duration`` seconds; latency is measured from each request's scheduled
  time, so a stalled server cannot hide behind a slowed client.
- ``e2e``: like ``rate`` (or, with ``--count``, closed-loop for that many
  requests), each payload one alert with a fresh fingerprint; reports when each
  was sent (wall clock) so the driver can time the pipeline behind the 202.

Everything is bounded: by ``--duration``, by ``--count``, and by ``--max-inflight``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import AUTH, alert, payload, percentile


def _summary(lat: list[float], elapsed: float, errors: int, statuses: dict) -> dict:
    return {
        "requests": len(lat),
        "rps": len(lat) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile(lat, 50) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
        "max_ms": max(lat) * 1000 if lat else float("nan"),
        "errors": errors,
        "statuses": statuses,
        "elapsed": elapsed,
    }


async def closed(url: str, body: bytes, connections: int, duration: float) -> dict:
    headers = {**AUTH, "Content-Type": "application/json"}
    lat: list[float] = []
    statuses: dict[str, int] = {}
    errors = 0
    conn = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=conn) as session:
        start = time.perf_counter()
        deadline = start + duration

        async def client() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        statuses[str(resp.status)] = (
                            statuses.get(str(resp.status), 0) + 1
                        )
                except aiohttp.ClientError:
                    errors += 1
                    continue
                lat.append(time.perf_counter() - sent)

        await asyncio.gather(*(client() for _ in range(connections)))
        elapsed = time.perf_counter() - start
    return _summary(lat, elapsed, errors, statuses)


async def paced(
    url: str,
    bodies,
    rate: float,
    duration: float,
    max_inflight: int,
    count: int | None = None,
    connections: int = 16,
) -> tuple[dict, list]:
    """Send on a schedule (or closed-loop when ``count`` is set); return sends."""
    headers = {**AUTH, "Content-Type": "application/json"}
    lat: list[float] = []
    statuses: dict[str, int] = {}
    sends: list = []
    errors = 0
    late = 0
    conn = aiohttp.TCPConnector(limit=max_inflight)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def one(i: int, due: float) -> None:
            nonlocal errors
            key, body = bodies(i)
            wall = time.time()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    status = resp.status
            except aiohttp.ClientError:
                errors += 1
                return
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            lat.append(time.perf_counter() - due)
            sends.append((key, wall, status))

        start = time.perf_counter()
        if count is not None:
            queue = iter(range(count))
            deadline = start + duration

            async def client() -> None:
                for i in queue:
                    if time.perf_counter() > deadline:
                        return
                    await one(i, time.perf_counter())

            await asyncio.gather(*(client() for _ in range(connections)))
        else:
            tasks: set[asyncio.Task] = set()
            total = int(rate * duration)
            for i in range(total):
                due = start + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if len(tasks) >= max_inflight:
                    late += 1
                    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                task = asyncio.create_task(one(i, due))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks, timeout=duration + 30)
        elapsed = time.perf_counter() - start
    out = _summary(lat, elapsed, errors, statuses)
    out["late"] = late
    return out, sends


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["closed", "rate", "e2e"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", type=Path, help="payload file (closed, rate)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--count", type=int, help="e2e: this many, closed-loop")
    parser.add_argument("--tag", default="e2e", help="e2e: fingerprint prefix")
    parser.add_argument("--max-inflight", type=int, default=256)
    args = parser.parse_args()

    if args.mode == "closed":
        body = args.body.read_bytes()
        result = asyncio.run(closed(args.url, body, args.connections, args.duration))
    elif args.mode == "rate":
        body = args.body.read_bytes()
        result, _ = asyncio.run(
            paced(
                args.url,
                lambda i: (i, body),
                args.rate,
                args.duration,
                args.max_inflight,
            )
        )
    else:

        def bodies(i: int) -> tuple[str, bytes]:
            item = alert(i, "BenchE2E", tag=args.tag)
            return str(item["fingerprint"]), payload([item], f"{args.tag}-{i}")

        result, sends = asyncio.run(
            paced(
                args.url,
                bodies,
                args.rate,
                args.duration,
                args.max_inflight,
                count=args.count,
                connections=args.connections,
            )
        )
        result["sends"] = sends
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
