"""``compact_record`` gives what the plain walk over every string gives.

It looks for the long values in the JSON text of what it would swap before
walking, and returns the parts that hold none as they are; the reference below
is the walk it replaced (every string of the steps, descriptions and notes).
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from receiver.store.records import LONG_VALUE, compact_record


def reference(record):
    """The walk ``compact_record`` replaced, kept as the specification."""
    long_values = sorted(
        (
            (value, f"{{{where}.{name}}}")
            for where in ("labels", "annotations")
            for name, value in (record.get(where) or {}).items()
            if isinstance(value, str) and len(value) >= LONG_VALUE
        ),
        key=lambda pair: len(pair[0]),
        reverse=True,
    )
    if not long_values or not record.get("matches"):
        return record

    def swap(item):
        if isinstance(item, str):
            for value, ref in long_values:
                if value in item:
                    item = item.replace(value, ref)
            return item
        if isinstance(item, dict):
            return {k: swap(v) for k, v in item.items()}
        if isinstance(item, list):
            return [swap(v) for v in item]
        return item

    matches = [
        {
            **match,
            "steps": swap(match.get("steps", [])),
            **{k: swap(match[k]) for k in ("description", "notes") if k in match},
        }
        for match in record["matches"]
    ]
    out = dict(record)
    out["matches"] = matches
    out["values_by_reference"] = True
    return out


# Long values with what JSON escapes (quotes, backslashes, control and
# non-ASCII characters), some of them inside others.
PIECES = st.sampled_from(['"', "\\", "\n", "é", "\u2028", "x", "/", "{", "}"])
LONG = st.lists(PIECES | st.text(min_size=1, max_size=20), min_size=1).map(
    lambda parts: ("v" * LONG_VALUE + "".join(parts))[: LONG_VALUE + 40]
)


@st.composite
def records(draw):
    values = draw(st.lists(LONG, min_size=0, max_size=3))
    short = draw(st.text(max_size=10))
    labels = {f"l{i}": v for i, v in enumerate(values)} | {"alertname": short}
    annotations = draw(st.sampled_from([{}, {"summary": values[0]} if values else {}]))

    def text():
        parts = draw(
            st.lists(st.sampled_from([*values, short, "a", '"q"']), max_size=3)
        )
        return "".join(parts)

    def step():
        return {
            "type": "http.get",
            "target": text(),
            "reason": text(),
            "request": {"path": text(), "params": [text(), 1, None, True]},
        }

    matches = [
        {
            "rule": "r",
            "runbook_url": text(),  # not swapped
            "steps": [step() for _ in range(draw(st.integers(0, 3)))],
            **({"description": text()} if draw(st.booleans()) else {}),
            **({"notes": [text()]} if draw(st.booleans()) else {}),
        }
        for _ in range(draw(st.integers(0, 2)))
    ]
    return {
        "fingerprint": "f",
        "labels": labels,
        "annotations": annotations,
        "matches": matches,
    }


@settings(max_examples=300)
@given(records())
def test_compact_record_is_the_plain_walk(record):
    """Same record as the walk over every string, whatever the values hold."""
    before = json.dumps(record, sort_keys=True)
    got = compact_record(record)
    assert got == reference(record)
    assert json.dumps(record, sort_keys=True) == before, "the input is not changed"


def test_a_long_value_only_outside_the_steps_is_left_alone():
    """A match's own runbook URL is not swapped, and nothing is walked for it."""
    url = "https://wiki.example.com/" + "r" * LONG_VALUE
    record = {
        "annotations": {"runbook_url": url},
        "matches": [{"runbook_url": url, "steps": [{"target": "x"}]}],
    }
    got = compact_record(record)
    assert got["values_by_reference"] is True
    assert got["matches"] == record["matches"]
    assert got == reference(record)
