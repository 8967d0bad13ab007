"""Property tests for the three source parsers.

Whatever JSON (or bytes) arrives, a parser returns alerts or raises the typed
``InputError``, never anything else; a valid payload round-trips to the alerts
it describes (labels, status, fingerprint, times in UTC).
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.errors import InputError
from receiver.model import Alert
from receiver.sources import (
    alertmanager,
    body_alerts,
    events_v2,
    pagerduty,
    parse_json,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda m: timezone(timedelta(minutes=m))
)
any_times = st.builds(
    lambda dt, tz: dt.replace(tzinfo=tz),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),  # noqa: DTZ001 (bounds of naive values)
    offsets,
)
good_times = st.builds(
    lambda dt, tz: dt.replace(tzinfo=UTC).astimezone(tz),
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2199, 1, 1)),  # noqa: DTZ001
    offsets,
)
label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,15}", fullmatch=True)
label_maps = st.dictionaries(label_names, st.text(max_size=30), max_size=6)


def _parsers(data: Any) -> list[list[Alert] | None]:
    """Run every parser on ``data``; None where it raised InputError."""
    out: list[list[Alert] | None] = []
    for parse in (
        lambda d: alertmanager.to_alerts(d, NOW),
        lambda d: pagerduty.to_alerts(d, NOW),
        lambda d: events_v2.to_alerts(d, NOW, body=json.dumps(d).encode()),
    ):
        try:
            out.append(parse(data))
        except InputError:
            out.append(None)
    return out


def _mutate(base: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(base))
    cursor = data
    for key in path[:-1]:
        cursor = cursor[key] if isinstance(cursor, dict) else cursor[0]
    if isinstance(cursor, dict):
        cursor[path[-1]] = value
    return data


AM_BASE = {
    "version": "4",
    "status": "firing",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "A"},
            "startsAt": "2026-01-01T00:00:00Z",
            "fingerprint": "f",
        }
    ],
}
PD_BASE = {
    "event": {
        "id": "E",
        "event_type": "incident.triggered",
        "occurred_at": "2026-01-01T00:00:00Z",
        "data": {"id": "P", "type": "incident", "title": "t"},
    }
}
EV_BASE = {
    "routing_key": "k",
    "event_action": "trigger",
    "payload": {"summary": "s", "source": "x", "severity": "error"},
}
PATHS = [
    (AM_BASE, ["alerts", "x", "startsAt"]),
    (AM_BASE, ["alerts", "x", "labels"]),
    (AM_BASE, ["alerts", "x", "endsAt"]),
    (AM_BASE, ["alerts"]),
    (PD_BASE, ["event", "occurred_at"]),
    (PD_BASE, ["event", "data", "created_at"]),
    (PD_BASE, ["event", "data", "number"]),
    (PD_BASE, ["event", "data"]),
    (EV_BASE, ["payload", "timestamp"]),
    (EV_BASE, ["payload", "custom_details"]),
    (EV_BASE, ["dedup_key"]),
]


@SETTINGS
@given(data=json_values)
def test_any_json_is_alerts_or_input_error(data):
    """Arbitrary JSON never raises anything but InputError from any parser."""
    for result in _parsers(data):
        assert result is None or all(isinstance(a, Alert) for a in result)


@SETTINGS
@given(
    where=st.sampled_from(PATHS),
    value=json_values | any_times.map(lambda t: t.isoformat()),
)
def test_any_field_value_is_alerts_or_input_error(where, value):
    """Any value in any field of an otherwise valid payload: alerts or InputError."""
    base, path = where
    _parsers(_mutate(base, path, value))


@SETTINGS
@given(body=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_bytes_parse_or_input_error(body):
    """parse_json and the Alertmanager fast path take any bytes without crashing."""
    for parse in (parse_json, alertmanager.from_body):
        with contextlib.suppress(InputError):
            parse(body)


@SETTINGS
@given(
    labels=label_maps,
    annotations=label_maps,
    starts=good_times,
    status=st.sampled_from(["firing", "resolved"]),
    fingerprint=st.text(min_size=1, max_size=20),
)
def test_alertmanager_round_trips(labels, annotations, starts, status, fingerprint):
    """A valid Alertmanager alert becomes one Alert with the same fields, in UTC."""
    body = json.dumps(
        {
            "version": "4",
            "status": status,
            "alerts": [
                {
                    "status": status,
                    "labels": labels,
                    "annotations": annotations,
                    "startsAt": starts.isoformat(),
                    "endsAt": "0001-01-01T00:00:00Z",
                    "fingerprint": fingerprint,
                }
            ],
        }
    ).encode()
    (alert,) = alertmanager.from_body(body)
    assert dict(alert.labels) == labels
    assert dict(alert.annotations) == annotations
    assert alert.status == status
    assert alert.fingerprint == fingerprint
    assert alert.starts_at == starts
    assert alert.starts_at.tzinfo == UTC
    assert alert.ends_at is None


@SETTINGS
@given(
    incident=st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]),
        min_size=1,
        max_size=12,
    ),
    title=st.text(min_size=1, max_size=30),
    occurred=good_times,
    event_type=st.sampled_from(
        ["incident.triggered", "incident.resolved", "incident.acknowledged"]
    ),
)
def test_pagerduty_round_trips(incident, title, occurred, event_type):
    """A valid PagerDuty webhook becomes one Alert keyed by the incident."""
    data = {
        "event": {
            "id": "E",
            "event_type": event_type,
            "occurred_at": occurred.isoformat(),
            "data": {"id": incident, "type": "incident", "title": title},
        }
    }
    (alert,) = pagerduty.to_alerts(parse_json(json.dumps(data).encode()), NOW)
    assert alert.fingerprint == f"pd-{incident}"
    assert alert.labels["alertname"] == title
    assert alert.labels["incident_id"] == incident
    assert alert.starts_at == occurred
    assert alert.status == (
        "resolved" if event_type == "incident.resolved" else "firing"
    )
    assert alert.actionable == (event_type != "incident.acknowledged")


@SETTINGS
@given(
    details=st.dictionaries(
        label_names.filter(lambda n: n not in ("routing_key", "firing", "resolved")),
        st.text(min_size=1, max_size=20).filter(lambda v: "\n" not in v),
        max_size=5,
    ),
    dedup=st.text(min_size=1, max_size=40),
    action=st.sampled_from(["trigger", "resolve", "acknowledge"]),
    stamp=good_times,
)
def test_events_v2_round_trips(details, dedup, action, stamp):
    """A valid Events v2 request becomes one Alert with its details as labels."""
    data = {
        "routing_key": "k",
        "event_action": action,
        "dedup_key": dedup,
        "payload": {
            "summary": "s",
            "source": "src",
            "severity": "error",
            "timestamp": stamp.isoformat(),
            "custom_details": details,
        },
    }
    (alert,) = events_v2.to_alerts(data, NOW, body=json.dumps(data).encode())
    for name, value in details.items():
        assert alert.labels[name] == value
    assert alert.labels["dedup_key"] == dedup
    assert alert.status == ("resolved" if action == "resolve" else "firing")
    assert alert.starts_at == stamp
    assert "routing_key" not in alert.labels


@SETTINGS
@given(stamp=any_times)
def test_timestamps_accepted_only_in_range(stamp):
    """A timestamp is accepted exactly when its UTC instant is 1970..2200."""
    body = json.dumps(
        {
            "status": "firing",
            "alerts": [
                {
                    "status": "firing",
                    "labels": {},
                    "startsAt": stamp.isoformat(),
                    "fingerprint": "f",
                }
            ],
        }
    ).encode()
    try:
        utc = stamp.astimezone(UTC)
    except OverflowError:
        utc = None
    in_range = utc is not None and datetime(1970, 1, 1, tzinfo=UTC) <= utc < datetime(
        2200, 1, 1, tzinfo=UTC
    )
    try:
        (alert,) = alertmanager.from_body(body)
    except InputError:
        assert not in_range
    else:
        assert in_range
        assert alert.starts_at == utc


@SETTINGS
@given(
    where=st.sampled_from(["labels", "annotations", "fingerprint"]),
    prefix=st.text(max_size=5),
    surrogate=st.characters(categories=["Cs"]),
)
def test_lone_surrogate_is_named(where, prefix, surrogate):
    """A lone surrogate anywhere is an InputError that names the field."""
    alert: dict[str, Any] = {
        "status": "firing",
        "labels": {"a": "b"},
        "startsAt": "2026-01-01T00:00:00Z",
        "fingerprint": "f",
    }
    bad = prefix + surrogate
    if where == "fingerprint":
        alert["fingerprint"] = bad
        pointer = "/alerts/0/fingerprint"
    else:
        alert[where] = {"k": bad}
        pointer = f"/alerts/0/{where}/k"
    body = json.dumps({"status": "firing", "alerts": [alert]}).encode()
    with pytest.raises(InputError) as caught:
        alertmanager.from_body(body)
    assert caught.value.errors[0]["pointer"] == pointer


@pytest.mark.parametrize(
    ("source", "base"),
    [("alertmanager", AM_BASE), ("pagerduty", PD_BASE), ("events_v2", EV_BASE)],
)
def test_a_stored_body_is_parsed_by_its_own_source(source, base):
    """body_alerts gives what that source's parser gives; not JSON is an InputError."""
    body = json.dumps(base).encode()
    names = ("alertmanager", "pagerduty", "events_v2")
    by_source = dict(zip(names, _parsers(base), strict=True))
    assert body_alerts(source, body, NOW) == by_source[source]
    with pytest.raises(InputError, match="JSON"):
        body_alerts(source, b"{not json", NOW)


def test_a_stored_pagerduty_body_takes_its_alertname_from_the_setting():
    """The PagerDuty alertname comes from the field the settings name."""
    body = json.dumps(PD_BASE).encode()
    (titled,) = body_alerts("pagerduty", body, NOW)
    (by_id,) = body_alerts("pagerduty", body, NOW, alertname_from="incident_id")
    assert titled.labels["alertname"] == "t"
    assert by_id.labels["alertname"] == "P"
