"""The Alertmanager fast path (msgspec) reads every body exactly as pydantic does.

``from_body`` and the edge's ``admit`` decode with msgspec first and fall back to
the pydantic model for whatever msgspec refuses. A body either gives the same
alerts both ways, or the same ``InputError`` (from the pydantic path); ``admit``
gives the edge the same fingerprints, statuses, start times and label maps the
alerts carry.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.errors import InputError
from receiver.model import Alert
from receiver.sources import alertmanager

SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
ALERT = {
    "status": "firing",
    "labels": {"alertname": "A"},
    "startsAt": "2026-01-01T00:00:00Z",
    "fingerprint": "f",
}

offsets = st.sampled_from(["Z", "z", "+00:00", "-00:00", "+05:30", "-12:00", ""])
fractions = st.sampled_from(["", ".5", ".123", ".123456", ".1234567", ".123456789"])
times = st.builds(
    lambda dt, sep, frac, off: dt.strftime(f"%Y-%m-%d{sep}%H:%M:%S") + frac + off,
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),  # noqa: DTZ001 (bounds of naive values)
    st.sampled_from(["T", "t", " "]),
    fractions,
    offsets,
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | times
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
ALERT_FIELDS = [*ALERT, "annotations", "endsAt", "generatorURL", "extra"]
TOP_FIELDS = [
    "status",
    "version",
    "receiver",
    "groupLabels",
    "commonLabels",
    "externalURL",
    "groupKey",
    "truncatedAlerts",
    "extra",
]


def pydantic_only(body: bytes) -> list[Alert] | str:
    """The alerts by the pydantic path alone, or its error text."""
    try:
        return alertmanager.to_alerts(alertmanager.parse_json(body), datetime.now(UTC))
    except InputError as exc:
        return f"InputError: {exc}"


def both_ways(body: bytes) -> tuple[list[Alert] | str, list[Alert] | str]:
    try:
        fast: list[Alert] | str = alertmanager.from_body(body)
    except InputError as exc:
        fast = f"InputError: {exc}"
    return fast, pydantic_only(body)


def webhook(alerts: list[dict[str, Any]], **top: Any) -> bytes:
    return json.dumps({"status": "firing", "alerts": alerts, **top}).encode()


@SETTINGS
@given(
    field=st.sampled_from(ALERT_FIELDS),
    value=values,
    top=st.sampled_from(TOP_FIELDS),
    top_value=values,
)
def test_any_field_value_reads_the_same_both_ways(field, value, top, top_value):
    """Any value in any field: the same alerts, or an InputError, both ways."""
    body = webhook([{**ALERT, field: value}], **{top: top_value})
    fast, slow = both_ways(body)
    if isinstance(slow, str):
        assert isinstance(fast, str)
    else:
        assert fast == slow


@SETTINGS
@given(starts=times, ends=times | st.none())
def test_times_read_the_same_both_ways(starts, ends):
    """RFC 3339 in its spellings, nanoseconds included: the same instants."""
    fast, slow = both_ways(webhook([{**ALERT, "startsAt": starts, "endsAt": ends}]))
    assert fast == slow


def test_nanoseconds_are_cut_not_rounded() -> None:
    """Go's nanosecond times keep their first six digits, as pydantic reads them."""
    body = webhook([{**ALERT, "startsAt": "2026-01-01T00:00:00.999999999Z"}])
    (alert,) = alertmanager.from_body(body)
    assert alert.starts_at == datetime(2026, 1, 1, 0, 0, 0, 999999, tzinfo=UTC)


def test_a_body_nested_deeper_than_pydantic_allows_is_refused() -> None:
    """An unknown field nested 250 deep: refused as before (msgspec would take it)."""
    body = webhook([ALERT], extra=json.loads("[" * 250 + "]" * 250))
    with pytest.raises(InputError, match="deeper than 200"):
        alertmanager.admit(body)


def test_many_brackets_within_the_depth_limit_are_accepted() -> None:
    """300 brackets nested 152 deep go the pydantic way and are accepted."""
    deep = json.loads("[" * 150 + "]" * 150)
    got = alertmanager.admit(webhook([ALERT], extra=[deep, deep]))
    assert [a.fingerprint for a in got.alerts] == ["f"]


@pytest.mark.parametrize(
    ("alert", "detail"),
    [
        ({**ALERT, "fingerprint": ""}, "/alerts/0/fingerprint"),
        ({**ALERT, "startsAt": "2400-01-01T00:00:00Z"}, "out of range"),
        ({**ALERT, "startsAt": "yesterday"}, "/alerts/0/startsAt"),
        ({**ALERT, "status": "pending"}, "/alerts/0/status"),
    ],
)
def test_a_bad_alert_gets_the_pydantic_error(alert, detail) -> None:
    """What msgspec refuses is refused with the schema error naming the field."""
    with pytest.raises(InputError, match=detail):
        alertmanager.admit(webhook([alert]))


@SETTINGS
@given(
    count=st.integers(min_value=0, max_value=5),
    truncated=st.integers(min_value=-3, max_value=3),
    starts=times,
    offset=st.integers(min_value=-600, max_value=600),
)
def test_admit_gives_the_edge_what_the_alerts_carry(count, truncated, starts, offset):
    """Fingerprints, statuses, start times, maps and truncation match from_body."""
    tz = timezone(timedelta(minutes=offset))
    alerts = [
        {
            **ALERT,
            "fingerprint": f"f{i}",
            "status": "resolved" if i % 2 else "firing",
            "startsAt": starts
            if i % 2
            else datetime(2026, 1, 1, tzinfo=tz).isoformat(),
            "annotations": {"n": str(i)},
        }
        for i in range(count)
    ]
    body = webhook(alerts, truncatedAlerts=truncated, groupKey="g")
    try:
        full = alertmanager.from_body(body)
    except InputError:
        with pytest.raises(InputError):
            alertmanager.admit(body)
        return
    got = alertmanager.admit(body)
    assert [
        (a.fingerprint, a.status, starts, dict(a.labels), dict(a.annotations))
        for a, starts in zip(got.alerts, got.starts, strict=True)
    ] == [
        (a.fingerprint, a.status, a.starts_at, dict(a.labels), dict(a.annotations))
        for a in full
    ]
    assert got.truncated == max(truncated, 0)
    assert got.group_key == "g"
