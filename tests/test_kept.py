"""Kept: a memo that holds at most ``limit`` answers and starts over when full."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from receiver.kept import Kept


@given(st.integers(1, 8), st.lists(st.tuples(st.integers(0, 20), st.integers())))
def test_kept_never_passes_its_limit_and_holds_the_last_answer(limit, puts):
    """Whatever is put, it stays within the limit and returns the latest value."""
    kept: Kept[int, int] = Kept(limit)
    for key, value in puts:
        assert kept.keep(key, value) == value
        assert kept[key] == value
        assert len(kept) <= limit


def test_a_full_memo_forgets_everything_at_once():
    """The entry past the limit finds an empty memo (no per-hit bookkeeping)."""
    kept: Kept[str, int] = Kept(2)
    kept.keep("a", 1)
    kept.keep("b", 2)
    kept.keep("c", 3)
    assert dict(kept) == {"c": 3}
