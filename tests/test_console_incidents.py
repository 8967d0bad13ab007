"""Resolving an incident from the console's incident page.

An incident that lost track of an alert storm never resolves by itself; the
on-call resolves it from its page (approve scope, as the API's resolve), with
an optional why, through the incident service the API uses. A real app (in-memory
stores, the test rules, no background ticker) receives an Alertmanager storm
bigger than the (lowered) caps; the console is exercised over HTTP.
"""

from __future__ import annotations

import base64
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import (
    APPROVE_TOKEN,
    TOKEN,
    basic,
    bearer,
    full_settings,
    journal_drained,
    refusal,
)
from incident_helpers import TickingClock
from pydantic import SecretStr
from test_web import AM, am_alert, am_payload

from receiver.app import create_app
from receiver.app_incidents import INCIDENTS, IncidentWiring
from receiver.incidents import lifecycle
from receiver.incidents.model import State
from receiver.metrics import Metrics
from receiver.rulebook.loader import load_rulebook
from receiver.runtime import build_runtime
from receiver.steps.catalog import builtin_registry
from receiver.store import MemoryStore
from receiver.store.incidents_base import IncidentQuery

JANE_TOKEN = "tok-jane-58d1"
FORM = re.compile(r'<form method=post action="(/ui/incidents/[^"]+/resolve)">')


def signed_in(user: str, token: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{token}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


JANE = signed_in("jane", JANE_TOKEN)


@pytest.fixture
async def client(aiohttp_client, web_rules, monkeypatch):
    """An app whose incidents lose track past 2 listed + 3 unlisted alerts."""
    monkeypatch.setattr(lifecycle, "MAX_ALERTS", 2)
    monkeypatch.setattr(lifecycle, "MAX_UNLISTED", 3)
    store = MemoryStore()
    app = create_app(
        build_runtime(
            full_settings(
                approver_tokens={"jane": SecretStr(JANE_TOKEN)},
                # As served (5 MiB): room for the longest why, urlencoded.
                max_body_bytes=64 * 1024,
            )
        ),
        rulebook=load_rulebook([web_rules], steps=builtin_registry()),
        store=store,
        clock=TickingClock(),
        metrics=Metrics(),
        incidents=IncidentWiring(tick_every=None),
    )
    client = await aiohttp_client(app)
    client.store = store
    client.service = app[INCIDENTS]
    return client


async def storm(client: Any) -> str:
    """Eight alerts firing at once in one group: an incident that lost track."""
    payload = am_payload(*(am_alert(f"fp-{i}") for i in range(8)))
    resp = await client.post(AM, json=payload, headers=bearer())
    assert resp.status == 202
    await journal_drained(client.store)
    await client.service.drain()
    [incident] = (await client.service.page(IncidentQuery(limit=5)))[0]
    assert incident.lost_track
    assert incident.active
    return incident.id


async def page(client: Any, incident_id: str, headers: dict[str, str]) -> str:
    resp = await client.get(f"/ui/incidents/{incident_id}", headers=headers)
    assert resp.status == 200, await resp.text()
    return await resp.text()


def form_token(html: str) -> str:
    found = re.search(r'name=token value="([0-9a-f]+)"', html)
    assert found is not None, html
    return found.group(1)


async def test_an_open_incident_has_the_form_a_resolved_one_has_none(client):
    """The Resolve form (and why it is needed) shows only while the incident is open."""
    incident_id = await storm(client)
    html = await page(client, incident_id, JANE)
    assert FORM.findall(html) == [f"/ui/incidents/{incident_id}/resolve"]
    assert "name=text" in html
    assert "lost track of its alert storm" in html
    await client.service.resolve(incident_id, by="alice", text="over")
    html = await page(client, incident_id, JANE)
    assert "<span class=state>resolved</span>" in html
    assert FORM.findall(html) == []
    assert f"/ui/incidents/{incident_id}/resolve" not in html
    assert "lost track of its alert storm: it will not" not in html


async def test_resolving_from_the_console_goes_through_the_service(client, monkeypatch):
    """Resolved as the signed-in person, with why, by the API's service call.

    (``resolve_open`` is ``resolve`` that also says whether this call resolved
    it: the API's ``resolve`` returns its first part.)
    """
    incident_id = await storm(client)
    calls: list[tuple[str, str, str]] = []
    service_resolve = client.service.resolve_open

    async def recorded(incident_id: str, *, by: str, text: str) -> Any:
        calls.append((incident_id, by, text))
        return await service_resolve(incident_id, by=by, text=text)

    monkeypatch.setattr(client.service, "resolve_open", recorded)
    token = form_token(await page(client, incident_id, JANE))
    resp = await client.post(
        f"/ui/incidents/{incident_id}/resolve",
        data={"token": token, "text": "  storm over, nodes back  "},
        headers=JANE,
        allow_redirects=False,
    )
    assert resp.status == 303, await resp.text()
    location = urlsplit(resp.headers["Location"])
    assert location.path == f"/ui/incidents/{incident_id}"
    [notice] = parse_qs(location.query)["notice"]
    assert notice.startswith(f"{incident_id} resolved by jane at ")
    assert notice.endswith(": Resolved: storm over, nodes back")
    assert calls == [(incident_id, "jane", "storm over, nodes back")]

    incident = await client.service.get(incident_id)
    assert incident is not None
    assert incident.state is State.RESOLVED
    assert incident.resolved_at is not None
    [entry] = [e for e in incident.timeline if e.kind == "resolved"]
    assert (entry.by, entry.text) == ("jane", "Resolved: storm over, nodes back")

    # The page the browser is sent to: the new state, the notice, the line.
    resp = await client.get(resp.headers["Location"], headers=JANE)
    html = await resp.text()
    assert "<span class=state>resolved</span>" in html
    assert f"<p role=status><strong>{incident_id} resolved by jane" in html
    assert (
        '<td data-label="What"><span class="nw">resolved</span></td>'
        '<td data-label="By"><span class="w">jane</span></td>'
        '<td data-label="Detail"><pre>Resolved: storm over, nodes back</pre></td>'
    ) in html
    assert FORM.findall(html) == []


async def test_without_a_why_the_timeline_says_a_person_resolved_it(client):
    incident_id = await storm(client)
    token = form_token(await page(client, incident_id, JANE))
    resp = await client.post(
        f"/ui/incidents/{incident_id}/resolve",
        data={"token": token},
        headers=JANE,
        allow_redirects=False,
    )
    assert resp.status == 303, await resp.text()
    incident = await client.service.get(incident_id)
    assert incident is not None
    [entry] = [e for e in incident.timeline if e.kind == "resolved"]
    assert (entry.by, entry.text) == ("jane", "Resolved: resolved by a person")


@pytest.mark.parametrize(
    "reader",
    [signed_in("ops", TOKEN), basic()],
    ids=["alertmanager-token", "basic-auth"],
)
async def test_a_read_only_credential_is_refused(client, reader):
    """Signed in without the approve scope: the page says so; nothing changes."""
    incident_id = await storm(client)
    form = form_token(await page(client, incident_id, reader))
    resp = await client.post(
        f"/ui/incidents/{incident_id}/resolve",
        data={"token": form, "text": "done"},
        headers=reader,
        allow_redirects=False,
    )
    assert resp.status == 403, await resp.text()
    assert resp.content_type == "text/html"
    text = await resp.text()
    assert "Refused: Resolving incidents needs the approve scope" in text
    incident = await client.service.get(incident_id)
    assert incident is not None
    assert incident.active


async def test_a_shared_approve_token_resolves_as_the_name_signed_in(client):
    """As for approvals: a shared token records the name typed at the prompt."""
    incident_id = await storm(client)
    ops = signed_in("ops", APPROVE_TOKEN)
    token = form_token(await page(client, incident_id, ops))
    resp = await client.post(
        f"/ui/incidents/{incident_id}/resolve",
        data={"token": token},
        headers=ops,
        allow_redirects=False,
    )
    assert resp.status == 303, await resp.text()
    incident = await client.service.get(incident_id)
    assert incident is not None
    assert [e.by for e in incident.timeline if e.kind == "resolved"] == ["ops"]


async def test_resolving_an_already_resolved_incident_says_so(client):
    """A page loaded before someone else resolved it: a notice, nothing changes."""
    incident_id = await storm(client)
    token = form_token(await page(client, incident_id, JANE))
    await client.service.resolve(incident_id, by="alice", text="storm over")
    before = await client.service.get(incident_id)
    resp = await client.post(
        f"/ui/incidents/{incident_id}/resolve",
        data={"token": token, "text": "me too"},
        headers=JANE,
        allow_redirects=False,
    )
    assert resp.status == 303, await resp.text()
    [notice] = parse_qs(urlsplit(resp.headers["Location"]).query)["notice"]
    assert notice.startswith(f"{incident_id} was already resolved by alice at ")
    assert notice.endswith("Resolved: storm over; nothing changed")
    assert await client.service.get(incident_id) == before
    html = await (await client.get(resp.headers["Location"], headers=JANE)).text()
    assert "was already resolved by alice" in html


async def test_a_why_longer_than_the_api_takes_is_refused(client):
    incident_id = await storm(client)
    token = form_token(await page(client, incident_id, JANE))
    resp = await client.post(
        f"/ui/incidents/{incident_id}/resolve",
        data={"token": token, "text": "x" * 4001},
        headers=JANE,
        allow_redirects=False,
    )
    assert resp.status == 400, await resp.text()
    assert "at most 4000" in await refusal(resp)
    incident = await client.service.get(incident_id)
    assert incident is not None
    assert incident.active


async def test_a_long_why_is_on_the_timeline_and_shortened_in_the_notice(client):
    """The longest why (4000 non-ASCII characters) still leads to a readable page."""
    incident_id = await storm(client)
    token = form_token(await page(client, incident_id, JANE))
    why = "é" * 4000
    resp = await client.post(
        f"/ui/incidents/{incident_id}/resolve",
        data={"token": token, "text": why},
        headers=JANE,
        allow_redirects=False,
    )
    assert resp.status == 303, await resp.text()
    [notice] = parse_qs(urlsplit(resp.headers["Location"]).query)["notice"]
    assert notice.endswith(": Resolved: " + "é" * 109 + "…")  # 120 characters
    resp = await client.get(resp.headers["Location"], headers=JANE)
    assert resp.status == 200, await resp.text()
    assert f"<pre>Resolved: {why}</pre>" in await resp.text()


async def test_an_unknown_incident_is_a_404_page(client):
    await storm(client)
    resp = await client.get("/ui/guards", headers=JANE)
    token = form_token(await resp.text())
    resp = await client.post(
        "/ui/incidents/INC-nope/resolve",
        data={"token": token},
        headers=JANE,
        allow_redirects=False,
    )
    assert resp.status == 404
    assert "There is no incident INC-nope." in await resp.text()
