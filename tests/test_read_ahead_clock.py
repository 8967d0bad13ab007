"""A claimed batch's read-ahead is used only while fresh, whichever way the clock moves.

A clock stepped back (NTP, a VM restored) makes the read-ahead look younger
than it is: it must then be read again, not trusted for as long as the step.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from test_events_v2 import RULES, _pd_entry, _read_ahead_rig


@pytest.fixture
def web_rules(tmp_path: Path) -> Path:
    """The rules of the read-ahead tests (a playbook that stands down)."""
    path = tmp_path / "rules.yaml"
    path.write_text(RULES, encoding="utf-8")
    return path


async def test_a_read_ahead_from_the_future_is_read_again(web_rules):
    """After the clock steps back, an entry reads its acknowledgements itself."""
    processor, store, journal = await _read_ahead_rig(web_rules)
    first = await journal(_pd_entry("incident.priority_updated", 2, processor._clock()))
    second = await journal(_pd_entry("incident.escalated", 3, processor._clock()))
    prepared = await processor.prepare([first, second])
    assert prepared is not None
    reads = store.ack_reads
    await processor.process(first, prepared)
    assert store.ack_reads == reads  # fresh: nothing read
    processor._clock.now -= timedelta(hours=1)
    await processor.process(second, prepared)
    assert store.ack_reads == reads + 1
