"""The console's forms cannot be forged cross-site.

Browsers send basic credentials with every request to the receiver, also one a
page on another site makes them send, so each form carries a token. The token
must be one only the signed-in credential can obtain: a user name is anyone's
to type at the prompt, so a holder of any credential (a read token, the
Alertmanager token) who signs in under an admin's or an approver's name must
not get a token that passes for theirs. A browser that says the form came from
another site (``Sec-Fetch-Site``) is refused whatever the token.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest
from conftest import ADMIN_TOKEN, APPROVE_TOKEN, TOKEN, bearer, journal_drained, refusal
from test_web import AM, am_payload

from receiver.app_incidents import INCIDENTS
from receiver.incidents.service import IncidentService
from receiver.store.incidents_base import IncidentQuery

GUARDS = "/ui/guards"


def signed_in(user: str, token: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{token}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


async def form_token(client: Any, headers: dict[str, str]) -> str:
    page = await (await client.get(GUARDS, headers=headers)).text()
    found = re.search(r'name=token value="([0-9a-f]+)"', page)
    assert found is not None, page
    return found.group(1)


async def test_a_token_read_under_someone_elses_name_does_not_pass(make_client):
    """A read-only credential signed in as "ops" cannot forge ops's pause form."""
    client = await make_client()
    admin = signed_in("ops", ADMIN_TOKEN)
    reader = signed_in("ops", TOKEN)  # the Alertmanager token: webhook and read
    forged = await form_token(client, reader)
    resp = await client.post(
        f"{GUARDS}/pause",
        data={"token": forged, "paused": "true", "reason": "forged"},
        headers=admin,
        allow_redirects=False,
    )
    assert resp.status == 403, await resp.text()
    assert "not from this console" in await refusal(resp)
    assert await client.store.pause() is None

    # The admin's own page still works.
    own = await form_token(client, admin)
    resp = await client.post(
        f"{GUARDS}/pause",
        data={"token": own, "paused": "true", "reason": "drill"},
        headers=admin,
        allow_redirects=False,
    )
    assert resp.status == 303, await resp.text()
    pause = await client.store.pause()
    assert pause is not None
    assert (pause.by, pause.reason) == ("ops", "drill")


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
async def test_a_form_another_site_sent_is_refused(make_client, site):
    """Sec-Fetch-Site says another site made the browser post: 403, no change."""
    client = await make_client()
    admin = signed_in("ops", ADMIN_TOKEN)
    token = await form_token(client, admin)
    resp = await client.post(
        f"{GUARDS}/pause",
        data={"token": token, "paused": "true", "reason": "x"},
        headers={**admin, "Sec-Fetch-Site": site},
        allow_redirects=False,
    )
    assert resp.status == 403, await resp.text()
    assert await client.store.pause() is None


async def test_a_same_origin_form_passes(make_client):
    client = await make_client()
    admin = signed_in("ops", ADMIN_TOKEN)
    token = await form_token(client, admin)
    resp = await client.post(
        f"{GUARDS}/pause",
        data={"token": token, "paused": "true", "reason": "x"},
        headers={**admin, "Sec-Fetch-Site": "same-origin"},
        allow_redirects=False,
    )
    assert resp.status == 303, await resp.text()


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Basic !!!"}, 401),
        (signed_in("ops", "not-a-token"), 403),
    ],
)
async def test_console_refusals_are_problems_with_the_prompt(
    make_client, headers, status
):
    """No or wrong credentials: problem+json, and the browser's basic prompt.

    (Signed in without the scope of an action, the page says so in HTML.)
    """
    client = await make_client()
    paths = [GUARDS] if status == 403 else [GUARDS, f"{GUARDS}/pause"]
    for path in paths:
        method = client.get if path == GUARDS else client.post
        resp = await method(path, headers=headers)
        assert resp.status == status, await resp.text()
        assert resp.content_type == "application/problem+json"
        assert resp.headers["WWW-Authenticate"].startswith("Basic ")
        assert (await resp.json(content_type=None))["status"] == status


async def open_incident(client: Any) -> tuple[IncidentService, str]:
    """An alert opens an incident; its service and id."""
    resp = await client.post(AM, json=am_payload(), headers=bearer())
    assert resp.status == 202
    await journal_drained(client.store)
    service = client.server.app[INCIDENTS]
    await service.drain()
    [incident] = (await service.page(IncidentQuery(limit=5)))[0]
    return service, incident.id


async def test_a_resolve_form_read_under_someone_elses_name_does_not_pass(
    make_client,
):
    """A read credential signed in as "jane" cannot forge jane's Resolve form."""
    client = await make_client()
    service, incident_id = await open_incident(client)
    page = f"/ui/incidents/{incident_id}"
    approver = signed_in("jane", APPROVE_TOKEN)
    reader = signed_in("jane", TOKEN)
    html = await (await client.get(page, headers=reader)).text()
    found = re.search(r'name=token value="([0-9a-f]+)"', html)
    assert found is not None, html
    resp = await client.post(
        f"{page}/resolve",
        data={"token": found.group(1), "text": "forged"},
        headers=approver,
        allow_redirects=False,
    )
    assert resp.status == 403, await resp.text()
    assert "not from this console" in await refusal(resp)
    incident = await service.get(incident_id)
    assert incident is not None
    assert incident.active


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
async def test_a_resolve_form_another_site_sent_is_refused(make_client, site):
    """With jane's own token but sent from another site: 403, still open."""
    client = await make_client()
    service, incident_id = await open_incident(client)
    page = f"/ui/incidents/{incident_id}"
    approver = signed_in("jane", APPROVE_TOKEN)
    html = await (await client.get(page, headers=approver)).text()
    found = re.search(r'name=token value="([0-9a-f]+)"', html)
    assert found is not None, html
    resp = await client.post(
        f"{page}/resolve",
        data={"token": found.group(1)},
        headers={**approver, "Sec-Fetch-Site": site},
        allow_redirects=False,
    )
    assert resp.status == 403, await resp.text()
    assert "sent from another site" in await refusal(resp)
    incident = await service.get(incident_id)
    assert incident is not None
    assert incident.active

    # The same form from the console's own page resolves it.
    resp = await client.post(
        f"{page}/resolve",
        data={"token": found.group(1)},
        headers={**approver, "Sec-Fetch-Site": "same-origin"},
        allow_redirects=False,
    )
    assert resp.status == 303, await resp.text()
    incident = await service.get(incident_id)
    assert incident is not None
    assert not incident.active


INCIDENT_FORMS = ("acknowledge", "mitigate", "comment")


@pytest.mark.parametrize("action", INCIDENT_FORMS)
async def test_an_incident_form_read_under_someone_elses_name_does_not_pass(
    make_client, action
):
    """A read credential signed in as "jane" cannot forge jane's other incident forms.

    (Acknowledge, Mark mitigated, Comment: the Resolve form's token, same checks.)
    """
    client = await make_client()
    service, incident_id = await open_incident(client)
    page = f"/ui/incidents/{incident_id}"
    approver = signed_in("jane", APPROVE_TOKEN)
    reader = signed_in("jane", TOKEN)
    html = await (await client.get(page, headers=reader)).text()
    found = re.search(r'name=token value="([0-9a-f]+)"', html)
    assert found is not None, html
    before = await service.get(incident_id)
    resp = await client.post(
        f"{page}/{action}",
        data={"token": found.group(1), "text": "forged"},
        headers=approver,
        allow_redirects=False,
    )
    assert resp.status == 403, await resp.text()
    assert "not from this console" in await refusal(resp)
    assert await service.get(incident_id) == before


@pytest.mark.parametrize("action", INCIDENT_FORMS)
@pytest.mark.parametrize("site", ["cross-site", "same-site"])
async def test_an_incident_form_another_site_sent_is_refused(make_client, site, action):
    """With jane's own token but sent from another site: 403, nothing added."""
    client = await make_client()
    service, incident_id = await open_incident(client)
    page = f"/ui/incidents/{incident_id}"
    approver = signed_in("jane", APPROVE_TOKEN)
    html = await (await client.get(page, headers=approver)).text()
    found = re.search(r'name=token value="([0-9a-f]+)"', html)
    assert found is not None, html
    before = await service.get(incident_id)
    assert before is not None
    form = {"token": found.group(1), "text": "from elsewhere"}
    resp = await client.post(
        f"{page}/{action}",
        data=form,
        headers={**approver, "Sec-Fetch-Site": site},
        allow_redirects=False,
    )
    assert resp.status == 403, await resp.text()
    assert "sent from another site" in await refusal(resp)
    assert await service.get(incident_id) == before

    # The same form from the console's own page is taken.
    resp = await client.post(
        f"{page}/{action}",
        data=form,
        headers={**approver, "Sec-Fetch-Site": "same-origin"},
        allow_redirects=False,
    )
    assert resp.status == 303, await resp.text()
    after = await service.get(incident_id)
    assert after is not None
    kind = {"acknowledge": "acknowledged", "mitigate": "mitigated"}.get(action, action)
    assert [e.by for e in after.timeline if e.kind == kind] == ["jane"]
