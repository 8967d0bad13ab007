"""Two edges of the HTTP API: list cursors never issued, and ``Expect`` headers.

``GET /api/v1/payloads`` and ``GET /api/v1/approvals`` page by the id of the last
record (``next_cursor``, a ``new_id``): a cursor of any other shape was never
issued and is a 400 problem naming ``/cursor``, while a well-formed one whose
record is gone (pruned) still reads as the end of the list. An ``Expect`` other
than ``100-continue`` is a 417 problem+json on every route, said the way every
other refusal is; ``Expect: 100-continue`` still gets its ``100 Continue``.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from conftest import NOW, bearer
from test_web import ENQUEUE, PROBLEM, assert_problem, enqueue_body

from receiver.store.base import Approval, new_id

LISTS = ("/api/v1/payloads", "/api/v1/approvals")
NEVER_ISSUED = [
    pytest.param("abc", id="word"),
    pytest.param("%27%3B--", id="sql"),
    pytest.param("null", id="json-null"),
    pytest.param("12345", id="digits"),
    pytest.param("0" * 24, id="hex-too-short"),
    pytest.param("0" * 26, id="hex-too-long"),
    pytest.param("0" * 24 + "g", id="not-hex"),
    pytest.param("18F5A6B7C8D9E0A1B2C3D4E5F", id="upper-case-hex"),
    pytest.param("%D9%A5" * 25, id="unicode-digits"),
]


@pytest.mark.parametrize("path", LISTS)
@pytest.mark.parametrize("cursor", NEVER_ISSUED)
async def test_a_cursor_never_issued_is_a_400_naming_it(make_client, path, cursor):
    """A cursor not shaped like a stored id is refused, not an empty page."""
    client = await make_client()
    resp = await client.get(f"{path}?cursor={cursor}", headers=bearer())
    body = await resp.json(content_type=None)
    assert_problem(resp, body, 400)
    assert "next_cursor" in body["detail"]
    assert body["errors"] == [
        {"pointer": "/cursor", "detail": "not a next_cursor this receiver issued"}
    ]


@pytest.mark.parametrize("path", LISTS)
async def test_a_well_formed_cursor_whose_record_is_gone_ends_the_list(
    make_client, path
):
    """An id-shaped cursor naming no stored record (pruned since) is an empty page."""
    client = await make_client()
    resp = await client.get(path, params={"cursor": new_id()}, headers=bearer())
    assert resp.status == 200
    assert (await resp.json())["count"] == 0


async def test_approvals_page_through_with_the_cursors_they_issue(make_client):
    """Approval ids are issued cursors: three approvals read as pages of 2 and 1."""
    client = await make_client()
    for hours in range(3):
        await client.store.put_approval(
            Approval(
                id=new_id(),
                key=f"k-{hours}",
                created_at=NOW + timedelta(hours=hours),
                expires_at=NOW + timedelta(days=1),
                request={},
            )
        )
    first = await (
        await client.get("/api/v1/approvals?limit=2", headers=bearer())
    ).json()
    assert [a["key"] for a in first["approvals"]] == ["k-2", "k-1"]
    resp = await client.get(
        "/api/v1/approvals",
        params={"limit": "2", "cursor": first["next_cursor"]},
        headers=bearer(),
    )
    assert resp.status == 200
    rest = await resp.json()
    assert [a["key"] for a in rest["approvals"]] == ["k-0"]
    assert rest["next_cursor"] is None


async def test_an_unsupported_expect_on_enqueue_is_a_417_problem(make_client):
    """Expect: 200-ok is answered 417 problem+json saying to drop it; nothing stored."""
    client = await make_client()
    resp = await client.post(ENQUEUE, json=enqueue_body(), headers={"Expect": "200-ok"})
    body = await resp.json(content_type=None)
    assert_problem(resp, body, 417)
    assert body["title"] == "Expectation failed"
    assert "100-continue" in body["detail"]
    assert "200-ok" in body["detail"]
    assert resp.headers["X-Request-Id"]
    assert await client.store.payloads() == []


async def test_every_route_answers_an_unsupported_expect_with_a_problem(make_client):
    """No route falls back to aiohttp's text/plain 417."""
    client = await make_client()
    routes = [
        (route.method, route.resource.canonical.replace("{id}", "x"))
        for route in client.app.router.routes()
        if route.resource is not None
    ]
    assert len(routes) > 30
    for method, path in routes:
        resp = await client.request(
            method, path, data=b"{}", headers={**bearer(), "Expect": "200-ok"}
        )
        assert resp.status == 417, (method, path)
        assert resp.content_type == PROBLEM, (method, path)


@pytest.mark.parametrize("expect", ["100-continue", "100-Continue"])
async def test_expect_100_continue_still_gets_its_continue(make_client, expect):
    """The client waits for 100 Continue before it sends the body: then a 202."""
    client = await make_client()
    resp = await client.post(ENQUEUE, json=enqueue_body(), headers={"Expect": expect})
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["status"] == "success"
    assert len(await client.store.payloads()) == 1


async def test_the_openapi_document_lists_the_417_on_every_operation(make_client):
    """What every route answers, the document says."""
    client = await make_client()
    document = await (await client.get("/openapi.json")).json()
    missing = [
        (method, path)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if "417" not in operation["responses"]
    ]
    assert missing == []
