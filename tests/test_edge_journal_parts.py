"""What the edge journals with a payload: its alerts' states and kept headers.

Both are built for every webhook in cheaper ways than the obvious ones; these
tests pin them to the obvious ones.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from receiver.sources import alertmanager
from receiver.store.base import AlertState
from receiver.web.edge import KEPT_HEADERS, alert_states, kept_headers

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_alert_states_are_the_dataclass_built_as_usual() -> None:
    """Equal, hashed and shown as AlertState(...) builds them; still frozen."""
    body = (
        b'{"status": "firing", "alerts": ['
        b'{"status": "firing", "labels": {}, "fingerprint": "a",'
        b' "startsAt": "2026-01-01T00:00:00Z"},'
        b'{"status": "resolved", "labels": {}, "fingerprint": "b",'
        b' "startsAt": "0001-01-01T00:00:00Z"}]}'
    )
    got = alertmanager.admit(body)
    states = alert_states(got.alerts, got.starts, NOW)
    expected = [
        AlertState("a", "firing", datetime(2026, 1, 1, tzinfo=UTC), NOW),
        AlertState("b", "resolved", NOW, NOW),
    ]
    assert states == expected
    assert [hash(s) for s in states] == [hash(s) for s in expected]
    assert [repr(s) for s in states] == [repr(s) for s in expected]
    with pytest.raises(dataclasses.FrozenInstanceError):
        states[0].status = "resolved"  # type: ignore[misc]


names = st.sampled_from(
    [*KEPT_HEADERS, "Content-Type", "X-Request-ID", "Authorization", "Host", "Cookie"]
)


@given(headers=st.lists(st.tuples(names, st.text(max_size=5)), max_size=12))
def test_kept_headers_of_a_request_are_those_of_its_items(headers) -> None:
    """A request's headers (repeated, any case): the last of each, lower-cased."""
    request = CIMultiDictProxy(CIMultiDict(headers))
    lowered = {name.lower(): value for name, value in headers}
    assert kept_headers(request) == kept_headers(lowered)
    assert "authorization" not in kept_headers(request)
