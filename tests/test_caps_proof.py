"""The edge's cheaper proof that a webhook's alerts are within the caps.

``alertmanager.admit(body, caps)`` decodes with the caps as msgspec
constraints (counts, and texts of at most a quarter of a cap's bytes in
characters; an alert's total from the body's size); what that cannot prove is
sized text by text by ``check_caps``. Either way the outcome is the same: no
error, or the same 413 naming the same alert and label.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.errors import PayloadTooLargeError
from receiver.sources import alertmanager
from receiver.sources.caps import AlertCaps, check_caps

# Short texts around small caps, ASCII or not (up to 4 UTF-8 bytes a character).
texts = st.text(
    alphabet=st.sampled_from(["a", "b", "é", "€", "😀", "\n", '"']), max_size=40
)
maps = st.dictionaries(texts, texts, max_size=6)
caps = st.builds(
    AlertCaps,
    max_labels=st.integers(min_value=0, max_value=8) | st.just(64),
    max_annotations=st.integers(min_value=0, max_value=8) | st.just(64),
    max_label_value_bytes=st.integers(min_value=1, max_value=200)
    | st.integers(min_value=150, max_value=5000),
    max_annotation_value_bytes=st.integers(min_value=1, max_value=200)
    | st.integers(min_value=150, max_value=5000),
    max_alert_bytes=st.integers(min_value=1, max_value=200)
    | st.integers(min_value=200, max_value=20000),
)


def body_of(alerts: list[tuple[dict[str, str], dict[str, str]]]) -> bytes:
    return json.dumps(
        {
            "status": "firing",
            "alerts": [
                {
                    "status": "firing",
                    "labels": labels,
                    "annotations": notes,
                    "startsAt": "2026-01-01T00:00:00Z",
                    "fingerprint": f"f{i}",
                }
                for i, (labels, notes) in enumerate(alerts)
            ],
        },
        ensure_ascii=False,
    ).encode()


def sized(body: bytes, limits: AlertCaps) -> str:
    """Every text sized by ``check_caps`` (what the edge did before)."""
    try:
        check_caps(alertmanager.admit(body).alerts, limits)
    except PayloadTooLargeError as exc:
        return f"{exc} {exc.errors}"
    return "ok"


def edge(body: bytes, limits: AlertCaps) -> str:
    """What the edge does: the capped decoder, ``check_caps`` if not proven."""
    got = alertmanager.admit(body, limits)
    try:
        if not got.checked:
            check_caps(got.alerts, limits)
    except PayloadTooLargeError as exc:
        return f"{exc} {exc.errors}"
    return "ok"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    alerts=st.lists(st.tuples(maps, maps), min_size=1, max_size=8),
    limits=caps,
    ascii_only=st.booleans(),
    unknown=st.booleans(),
)
def test_the_proof_never_changes_the_outcome(alerts, limits, ascii_only, unknown):
    """Decoded capped or sized text by text: the same pass, or the same 413.

    A field Alertmanager may add (``unknown``) takes the lenient decoder.
    """
    body = body_of(alerts)
    if unknown:
        body = json.dumps({**json.loads(body), "routeLabels": {"a": "b"}}).encode()
    if ascii_only:
        body = json.dumps(json.loads(body)).encode()  # \u escapes
    assert edge(body, limits) == sized(body, limits)


@settings(max_examples=300, deadline=None)
@given(alerts=st.lists(st.tuples(maps, maps), min_size=1, max_size=8), data=st.data())
def test_what_the_proof_passes_is_within_every_cap(alerts, data):
    """Caps drawn around the texts' sizes: whatever the decoder passes, fits."""
    body = body_of(alerts)

    def longest(maps: list[dict[str, str]]) -> int:
        return max((len(t) for m in maps for t in [*m, *m.values()]), default=0)

    def near(chars: int) -> int:
        return max(1, 4 * chars + data.draw(st.integers(min_value=-4, max_value=4)))

    limits = AlertCaps(
        max_labels=max(len(labels) for labels, _ in alerts),
        max_annotations=max(len(notes) for _, notes in alerts),
        max_label_value_bytes=near(longest([labels for labels, _ in alerts])),
        max_annotation_value_bytes=near(longest([notes for _, notes in alerts])),
        max_alert_bytes=len(body) + data.draw(st.integers(min_value=-4, max_value=4)),
    )
    got = alertmanager.admit(body, limits)
    if got.checked:
        check_caps(got.alerts, limits)  # sized text by text: nothing over


def test_a_group_with_one_long_label_is_refused_naming_it() -> None:
    """Eight alerts, the seventh's label over the cap: 413 naming alert 6."""
    alerts = [({"team": "t"}, {"summary": "s"}) for _ in range(8)]
    alerts[6] = ({"team": "t" * 300}, {})
    body = body_of(alerts)
    assert "alert 6 (fingerprint 'f6') label 'team'" in edge(
        body, AlertCaps(max_label_value_bytes=299)
    )


def test_texts_of_many_bytes_a_character_are_sized() -> None:
    """A label of 100 four-byte characters is 400 bytes: over a 399-byte cap."""
    alerts = [({"team": "t"}, {}) for _ in range(8)]
    alerts[3] = ({"team": "😀" * 100}, {})
    body = body_of(alerts)
    assert "value of 400 bytes" in edge(body, AlertCaps(max_label_value_bytes=399))
    assert edge(body, AlertCaps(max_label_value_bytes=400)) == "ok"
