"""The benchmark still runs: every part of bench/run.py in smoke mode, untimed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from peers import require_binary

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
def test_bench_smoke_runs_every_part(tmp_path):
    """`bench/run.py --smoke` runs every part and writes its results file."""
    require_binary("redis-server")
    out = tmp_path / "RESULTS.md"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--smoke",
            "--loadgen",
            "python",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=360,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    text = out.read_text()
    for part in (
        "1. Ingest",
        "1b. Sustained",
        "2. End to end",
        "3. Rule scale",
        "4. Storm",
        "5. Decide cost",
        "6. /healthz",
        "7. Soak",
    ):
        assert part in text
    for row in (
        "bare aiohttp",
        "durable floor",
        "receiver, sqlite (serve",
        "receiver, sqlite, edge role alone",
        "receiver, redis (serve",
        "receiver, redis, edge role alone",
    ):
        assert row in text
    assert "## Targets" in text
    assert "cores" in text


def test_the_incident_fold_bench_runs():
    """`bench/incidents.py` on a small storm prints both shapes' ratios."""
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "incidents.py"),
            "--alerts",
            "20",
            "--repeat",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "one group of 20 alerts" in done.stdout
    assert "20 groups of one alert" in done.stdout
