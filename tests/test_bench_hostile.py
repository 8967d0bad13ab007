"""The hostile-client bench still runs (tiny sizes; its numbers mean nothing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
def test_hostile_bench_smoke_runs_both_parts(tmp_path):
    """`bench/hostile.py --smoke` measures slow uploads and decision size."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "hostile.py"), "--smoke", "--no-write"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Slow unauthenticated uploads" in done.stdout
    assert "Decision records for alerts at the label caps" in done.stdout
    assert "stated bound" in done.stdout
    # A memory bound, not a timing: with the edge's limits the growth stays under it.
    assert "**holds**" in done.stdout, done.stdout
