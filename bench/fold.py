"""CPU per trace folding resent 20-alert payloads into their one incident.

What the worker's incident task does while it drains a backlog of the same
Alertmanager group: every alert of every payload folds into one incident that
already holds them (each decided again, in dry-run, by the shipped rule pack).
The payloads are decided first; the measure is the thread CPU time of
``IncidentService.observe`` (in-memory SQLite store) over batches of
``--batch`` payloads, per trace. ``--tree`` imports the receiver from another
checkout, to compare old and new code with the same script (alternate runs).

    .venv/bin/python bench/fold.py [--payloads 300] [--batch 50] [--tree DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent


async def measure(tree: Path, payloads: int, batch: int) -> float:
    """Thread CPU us per trace folded."""
    from common import group_body  # noqa: PLC0415

    from receiver import logs  # noqa: PLC0415
    from receiver.engine.planner import PlanContext  # noqa: PLC0415
    from receiver.engine.processing import Processor  # noqa: PLC0415
    from receiver.engine.runner import Runner  # noqa: PLC0415
    from receiver.incidents.service import IncidentService  # noqa: PLC0415
    from receiver.rulebook.loader import load_rulebook  # noqa: PLC0415
    from receiver.steps.catalog import builtin_registry  # noqa: PLC0415
    from receiver.store.incidents_sqlite import SqliteIncidentStore  # noqa: PLC0415

    logs.configure("json", "warning")
    book = load_rulebook([tree / "rules"], steps=builtin_registry())
    start = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    processor = Processor(
        book,
        Runner({}, lambda: start, mode="dry-run"),
        lambda: start,
        PlanContext(execute=False, namespaces=None),
    )
    body = group_body(20)
    decided = [
        await processor.decide_dry_run(
            processor.alerts("alertmanager", body, start), now=start
        )
        for _ in range(payloads)
    ]
    ticks = [start]

    def clock() -> datetime:
        ticks[0] += timedelta(milliseconds=1)
        return ticks[0]

    service = IncidentService(
        SqliteIncidentStore(":memory:"), clock=clock, rulebook=lambda: book
    )
    await service.observe(decided[0])  # opens the incident
    cpu, traces = 0.0, 0
    gc.freeze()
    try:
        for i in range(1, payloads, batch):
            folded = [trace for payload in decided[i : i + batch] for trace in payload]
            began = time.thread_time()
            await service.observe(folded)
            cpu += time.thread_time() - began
            traces += len(folded)
    finally:
        gc.unfreeze()
    return cpu / traces * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--payloads", type=int, default=300)
    parser.add_argument("--batch", type=int, default=50, help="payloads per fold")
    parser.add_argument("--tree", type=Path, default=HERE.parent)
    args = parser.parse_args()
    sys.path[:0] = [str(HERE), str(args.tree.resolve())]
    cost = asyncio.run(measure(args.tree.resolve(), args.payloads, args.batch))
    print(f"{cost:.1f} us CPU per trace (batches of {args.batch} payloads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
