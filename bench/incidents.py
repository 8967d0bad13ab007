"""What folding traces into incidents costs, as a ratio of deciding them.

Both halves run in one process on the same traces: the baseline decides every
alert of a storm with the shipped rule pack (dry-run, what the worker does
anyway), the measured part folds the resulting traces into incidents
(``IncidentService`` on a SQLite file, as ``receiver serve`` runs it). Two shapes:
one storm payload of N alerts in one group (one incident, the batch-write path)
and N one-alert payloads in N groups (N incidents). Prints the ratios; numbers
are medians of ``--repeat`` runs.

    .venv/bin/python bench/incidents.py [--alerts 2000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).parents[1])]
from common import burst_bodies, storm_body  # noqa: E402

from receiver import logs  # noqa: E402
from receiver.engine.planner import PlanContext  # noqa: E402
from receiver.engine.runner import Runner  # noqa: E402
from receiver.engine.worker import Processor  # noqa: E402
from receiver.incidents.service import IncidentService  # noqa: E402
from receiver.rulebook.loader import load_rulebook  # noqa: E402
from receiver.steps.catalog import builtin_registry  # noqa: E402
from receiver.store.incidents_sqlite import SqliteIncidentStore  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def clock() -> datetime:
    return datetime.now(UTC)


async def once(bodies: list[bytes], db: Path) -> tuple[float, float]:
    book = load_rulebook([ROOT / "rules"], steps=builtin_registry())
    processor = Processor(book, Runner({}, clock), clock, PlanContext())
    started = time.perf_counter()
    traces = [
        await processor.decide(processor.alerts("alertmanager", body, clock()))
        for body in bodies
    ]
    decided = time.perf_counter() - started
    service = IncidentService(
        SqliteIncidentStore(str(db)), clock=clock, rulebook=lambda: book
    )
    started = time.perf_counter()
    for batch in traces:
        await service.put(batch)
    await service.drain()
    folded = time.perf_counter() - started
    await service.aclose()
    return decided, folded


async def shape(name: str, bodies: list[bytes], repeat: int) -> None:
    ratios, decide, fold = [], [], []
    for i in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            d, f = await once(bodies, Path(tmp) / f"r{i}.db")
        decide.append(d)
        fold.append(f)
        ratios.append(f / d)
    print(
        f"{name}: decide {statistics.median(decide):.3f}s, fold into incidents "
        f"{statistics.median(fold):.3f}s, ratio {statistics.median(ratios):.2f} "
        f"(runs: {', '.join(f'{r:.2f}' for r in ratios)})"
    )


async def main() -> None:
    # As ``receiver serve`` logs (JSON), at warning: neither half pays for
    # its info lines, which would otherwise dominate both.
    logs.configure("json", "warning")
    parser = argparse.ArgumentParser()
    parser.add_argument("--alerts", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n = args.alerts
    await shape(f"one group of {n} alerts", [storm_body(n, "s")], args.repeat)
    await shape(f"{n} groups of one alert", burst_bodies(n, 1, "b"), args.repeat)


if __name__ == "__main__":
    asyncio.run(main())
