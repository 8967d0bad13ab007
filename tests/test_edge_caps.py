"""Caps per alert at the edge, and decisions that store long values once."""

from __future__ import annotations

import json

import pytest
from conftest import PD_SECRET, bearer, full_settings, pd_signature, wait_for_decisions
from test_web import AM, ENQUEUE, PD, PROBLEM, am_alert, am_payload, enqueue_body

from receiver.store.base import LONG_VALUE, compact_record

BIG = 1 << 20


def settings(**overrides):
    return full_settings(
        max_body_bytes=BIG, max_unauthenticated_body_bytes=BIG, **overrides
    )


def _many_labels(n: int) -> dict[str, str]:
    return {f"l{i}": "v" for i in range(n)}


@pytest.mark.parametrize(
    ("labels", "annotations", "fragment", "pointer"),
    [
        (_many_labels(70), {}, "73 labels, over the cap of 64", "/alerts/1/labels"),
        (
            {"team": "t" * 2000},
            {},
            "label 'team': value of 2000 bytes",
            "/alerts/1/labels/team",
        ),
        ({"t" * 1100: "x"}, {}, "name of 1100 bytes", "/alerts/1/labels/"),
        (
            {},
            {"description": "d" * 20_000},
            "annotation 'description'",
            "/alerts/1/annotations/description",
        ),
        (
            {},
            {f"a{i}": "v" * 10_000 for i in range(10)},
            "over the cap of 65536 (max_alert_bytes)",
            "/alerts/1",
        ),
    ],
)
async def test_alert_over_a_cap_is_413_naming_alert_and_label(
    make_client, labels, annotations, fragment, pointer
):
    """An alert over a cap is 413 naming the alert, the label and the setting."""
    client = await make_client(settings())
    big = am_alert("fp-big", **labels)
    big["annotations"].update(annotations)
    resp = await client.post(
        AM, json=am_payload(am_alert("fp-ok"), big), headers=bearer()
    )
    problem = await resp.json(content_type=PROBLEM)
    assert resp.status == 413, problem
    assert "alert 1 (fingerprint 'fp-big')" in problem["detail"]
    assert fragment in problem["detail"]
    assert problem["errors"][0]["pointer"].startswith(pointer)
    assert await client.store.payloads() == []


async def test_events_v2_details_are_capped(make_client):
    """Events v2 custom_details become labels and are capped like any."""
    client = await make_client(settings())
    body = enqueue_body()
    body["payload"]["custom_details"] = {"team": "t" * 5000}
    resp = await client.post(ENQUEUE, json=body)
    assert resp.status == 413
    answer = await resp.json()  # the Events API's own error shape
    assert any("'team'" in e for e in [answer["message"], *answer["errors"]])


async def test_pagerduty_long_title_is_cut_not_refused(make_client):
    """A signed incident whose title is over the label cap is accepted, title cut.

    PagerDuty treats a 4xx as permanent: the alert is decided with its
    alertname cut to the cap at a character's end (a title of three-byte
    characters here), ending in an ellipsis, and the summary kept whole.
    """
    client = await make_client(settings())
    title = "停" * 1500  # 4,500 bytes in UTF-8
    event = {
        "id": "E1",
        "event_type": "incident.triggered",
        "occurred_at": "2024-05-06T07:05:00Z",
        "data": {"id": "P1", "type": "incident", "title": title},
    }
    body = json.dumps({"event": event}).encode()
    resp = await client.post(
        PD,
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-PagerDuty-Signature": pd_signature(body, PD_SECRET),
        },
    )
    assert resp.status == 202, await resp.text()
    (record,) = await wait_for_decisions(client, {"fingerprint": "pd-P1"})
    alertname = record["labels"]["alertname"]
    assert alertname.endswith("…")
    assert alertname == "停" * 340 + "…"  # 1,020 + 3 bytes: the next would pass 1,024
    assert len(alertname.encode()) <= 1024
    assert record["annotations"]["summary"] == title


async def test_caps_are_settings(make_client):
    """Raising a cap lets the same alert through."""
    client = await make_client(settings(max_labels=100))
    resp = await client.post(
        AM, json=am_payload(am_alert("fp", **_many_labels(70))), headers=bearer()
    )
    assert resp.status == 202


async def test_stored_decision_holds_a_long_value_once(make_client):
    """A long label rendered into several steps is stored once, by reference."""
    client = await make_client(settings())
    deployment = "d" * 900
    payload = am_payload(am_alert("fp-long", deployment=deployment))
    resp = await client.post(AM, json=payload, headers=bearer())
    assert resp.status == 202
    (record,) = await wait_for_decisions(client, {"fingerprint": "fp-long"})
    text = json.dumps(record)
    assert text.count(deployment) == 1
    assert record["labels"]["deployment"] == deployment
    assert record["values_by_reference"] is True
    assert "{labels.deployment}" in json.dumps(record["matches"])


def test_compact_record_leaves_short_values_alone():
    """Records whose values are all short are stored exactly as decided."""
    record = {
        "labels": {"namespace": "prod"},
        "matches": [{"steps": [{"target": "deployment/api -n prod"}]}],
    }
    assert compact_record(record) is record


def test_compact_record_round_trips():
    """Putting the values back into a compacted record gives the original."""
    value = "v" * LONG_VALUE
    record = {
        "labels": {"a": value, "b": value + "w"},
        "annotations": {"summary": "s" * 100},
        "matches": [
            {
                "description": f"about {value}w",
                "steps": [
                    {"reason": f"x {value} y {value}w", "request": {"url": value}}
                ],
            }
        ],
    }
    compacted = compact_record(record)
    text = json.dumps(compacted)
    assert text.count(value) == 2  # each label once, under labels
    restored = text.replace("{labels.b}", value + "w").replace("{labels.a}", value)
    restored_record = json.loads(restored)
    del restored_record["values_by_reference"]
    assert restored_record == record
