"""Golden decision traces: ``receiver replay --json`` of every example payload.

Each file under ``examples/alertmanager``, ``examples/pagerduty`` and
``examples/events-v2`` is replayed against ``rules/`` at a fixed time and compared
with ``tests/golden/<directory>.<file name>``. A difference means the rule pack, a
source adapter or the planner changed what the receiver decides.

After an intended change, regenerate and review the diff like code::

    RECEIVER_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_golden.py
    git diff tests/golden/

which is the same as, per example::

    receiver replay --json --rules rules --at 2026-11-26T10:20:00Z EXAMPLE
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from receiver.cli import main

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "rules"
EXAMPLES = ROOT / "examples"
GOLDEN = Path(__file__).resolve().parent / "golden"
SOURCES = ("alertmanager", "pagerduty", "events-v2")
# Twenty minutes after the examples' startsAt (10:00): past every
# require_firing_for guard, inside the matrix's 5-30 minute band.
AT = "2026-11-26T10:20:00Z"
UPDATE = os.environ.get("RECEIVER_UPDATE_GOLDEN") == "1"
# Keys whose values depend on when the replay ran, not on what it decided.
VOLATILE = frozenset({"decided_at"})


def example_files() -> list[Path]:
    return sorted(p for d in SOURCES for p in (EXAMPLES / d).glob("*.json"))


def golden_path(example: Path) -> Path:
    return GOLDEN / f"{example.parent.name}.{example.name}"


def strip_volatile(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip_volatile(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [strip_volatile(v) for v in value]
    return value


def replay_json(example: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    capsys.readouterr()
    code = main(["replay", "--json", "--rules", str(RULES), "--at", AT, str(example)])
    out = capsys.readouterr().out
    assert code == 0, out
    return strip_volatile(json.loads(out))


@pytest.mark.parametrize(
    "example", example_files(), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_replay_matches_golden(example: Path, capsys):
    """Replaying the example yields exactly the recorded decision trace."""
    got = replay_json(example, capsys)
    golden = golden_path(example)
    if UPDATE:
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(json.dumps(got, indent=2, ensure_ascii=False) + "\n")
    assert golden.exists(), (
        f"no golden trace for {example}; run RECEIVER_UPDATE_GOLDEN=1 pytest "
        f"{Path(__file__).name}"
    )
    want = json.loads(golden.read_text(encoding="utf-8"))
    assert got == want, (
        f"{example.relative_to(ROOT)} decides differently from {golden.name}; if "
        "intended, regenerate with RECEIVER_UPDATE_GOLDEN=1 and review the diff"
    )


def test_every_golden_file_has_an_example():
    """No golden trace outlives the example payload it was recorded from."""
    expected = {golden_path(p).name for p in example_files()}
    orphans = sorted(p.name for p in GOLDEN.glob("*.json") if p.name not in expected)
    assert not orphans, f"golden traces without an example, delete them: {orphans}"


def test_examples_exist():
    """Every source directory holds example payloads, so the goldens cover all three."""
    for source in SOURCES:
        assert list((EXAMPLES / source).glob("*.json")), f"no examples in {source}/"
