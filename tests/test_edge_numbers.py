"""Numbers a float or a counter cannot hold, sent to the webhooks.

Found by hostile requests against the edge: a ``truncatedAlerts`` past a float's
range was a 500, and ``NaN`` / ``Infinity`` / ``1e400`` in fields the sources do
not read were accepted (and came back as non-JSON from the payload view).
"""

from __future__ import annotations

import json

import pytest
from conftest import bearer, full_settings
from test_web import AM, ENQUEUE, PROBLEM, am_payload, enqueue_body

from receiver.errors import InputError
from receiver.sources import alertmanager, parse_json
from receiver.sources.caps import AlertCaps

BIG = 1 << 20
JSON_AUTH = {"Content-Type": "application/json", **bearer()}


def _with_extra(payload: dict[str, object], literal: bytes) -> bytes:
    """``payload`` with an unknown top-level field holding ``literal`` as is."""
    body = json.dumps({**payload, "extra": "@@"}).encode()
    return body.replace(b'"@@"', literal)


async def test_truncated_alerts_past_a_float_is_400_naming_it(make_client):
    """A count no uint64 holds is a 400 at /truncatedAlerts, not a 500."""
    client = await make_client(full_settings(max_body_bytes=BIG))
    payload = {**am_payload(), "truncatedAlerts": 10**400}
    resp = await client.post(AM, data=json.dumps(payload), headers=JSON_AUTH)
    assert resp.status == 400, await resp.text()
    problem = await resp.json(content_type=PROBLEM)
    assert problem["errors"][0]["pointer"] == "/truncatedAlerts"


async def test_truncated_alerts_up_to_uint64_is_accepted(make_client):
    """Alertmanager's own range (uint64) is still accepted and counted."""
    client = await make_client(full_settings(max_body_bytes=BIG))
    payload = {**am_payload(), "truncatedAlerts": 2**64 - 1}
    resp = await client.post(AM, data=json.dumps(payload), headers=JSON_AUTH)
    assert resp.status == 202, await resp.text()


@pytest.mark.parametrize(
    "literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1E+999"]
)
async def test_non_finite_numbers_in_unread_alertmanager_fields_are_400(
    make_client, literal
):
    """Docs: NaN and a number too large are 400, also where the source does not look."""
    client = await make_client(full_settings(max_body_bytes=BIG))
    body = _with_extra(am_payload(), literal)
    resp = await client.post(
        AM, data=body, headers={"Content-Type": "application/json", **bearer()}
    )
    assert resp.status == 400, await resp.text()
    assert await client.store.payloads() == []


@pytest.mark.parametrize("where", ["top", "custom_details"])
async def test_number_too_large_in_events_v2_is_400_naming_the_field(
    make_client, where
):
    """``1e400`` decodes to infinity: refused with its pointer, never journaled."""
    client = await make_client(full_settings(max_unauthenticated_body_bytes=BIG))
    data = enqueue_body()
    if where == "top":
        data["extra"] = "@@"
        pointer = "/extra"
    else:
        data["payload"]["custom_details"] = {"n": "@@"}
        pointer = "/payload/custom_details/n"
    body = json.dumps(data).encode().replace(b'"@@"', b"1e400")
    resp = await client.post(
        ENQUEUE, data=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400, await resp.text()
    answer = await resp.json()
    assert answer["status"] == "invalid event"
    assert any(e.startswith(f"{pointer}: ") for e in answer["errors"]), answer
    assert await client.store.payloads() == []


def test_parse_json_refuses_infinity_and_keeps_large_finite_numbers():
    """The finite neighbours of the refused numbers still parse."""
    for text in (b"[1e400]", b"[" + b"9" * 400 + b".0]", b'{"a": {"b": -1e999}}'):
        with pytest.raises(InputError, match="number too large"):
            parse_json(text)
    assert parse_json(b'[1e308, 1e-400, "1e400", "5e123abc"]') == [
        1e308,
        0.0,
        "1e400",
        "5e123abc",
    ]


def test_alertmanager_worker_path_still_reads_what_admit_refuses():
    """A body journaled before the edge refused it is still decided by the worker."""
    body = _with_extra(am_payload(), b"1e400")
    with pytest.raises(InputError):
        alertmanager.admit(body, AlertCaps())
    assert len(alertmanager.from_body(body)) == 1
