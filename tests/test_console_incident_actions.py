"""Acknowledge, mark mitigated and comment from the console's incident page.

Beside Resolve, the page has a form for each thing the API lets a person add
(approve scope, the signed-in identity, the API's service calls), shown only
while it can change something. A page loaded before someone else acted, a
version conflict, an unknown incident and the store being down are each
answered as for Resolve. The app, storm and helpers are those of
``test_console_incidents``.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import structlog
from conftest import APPROVE_TOKEN, TOKEN, refusal
from test_console_incidents import (  # noqa: F401 (client is a fixture)
    JANE,
    client,
    form_token,
    page,
    signed_in,
    storm,
)

from receiver.errors import StoreUnavailableError
from receiver.incidents.model import Incident, State
from receiver.incidents.service import IncidentService

ACTIONS = ("acknowledge", "mitigate", "resolve", "comment")


def forms(html_text: str, incident_id: str) -> list[str]:
    """The actions the page has a form for, in page order."""
    return [
        a
        for a in ACTIONS
        if f'<form method=post action="/ui/incidents/{incident_id}/{a}">' in html_text
    ]


async def post(
    client: Any,  # noqa: F811
    incident_id: str,
    action: str,
    text: str | None = None,
    headers: dict[str, str] = JANE,
) -> Any:
    """Post ``action``'s form with the token of the page the person sees."""
    data = {"token": form_token(await page(client, incident_id, headers))}
    if text is not None:
        data["text"] = text
    return await client.post(
        f"/ui/incidents/{incident_id}/{action}",
        data=data,
        headers=headers,
        allow_redirects=False,
    )


def notice(resp: Any) -> str:
    """The notice the redirect back to the incident's page carries."""
    [said] = parse_qs(urlsplit(resp.headers["Location"]).query)["notice"]
    return str(said)


async def get(service: IncidentService, incident_id: str) -> Incident:
    incident = await service.get(incident_id)
    assert incident is not None
    return incident


async def test_each_form_shows_only_while_it_can_change_something(client):  # noqa: F811
    """Triggered: four forms; acknowledged: three; mitigated: two; resolved: one."""
    service = client.service
    incident_id = await storm(client)
    assert forms(await page(client, incident_id, JANE), incident_id) == list(ACTIONS)
    await service.acknowledge(incident_id, by="alice")
    assert forms(await page(client, incident_id, JANE), incident_id) == [
        "mitigate",
        "resolve",
        "comment",
    ]
    await service.mitigate(incident_id, by="alice", text="failed over")
    assert forms(await page(client, incident_id, JANE), incident_id) == [
        "resolve",
        "comment",
    ]
    await service.resolve(incident_id, by="alice", text="over")
    assert forms(await page(client, incident_id, JANE), incident_id) == ["comment"]


async def test_mitigated_before_anyone_acknowledged_has_no_acknowledge(client):  # noqa: F811
    """Mitigating stopped the acknowledge clock; acknowledging later would move it."""
    incident_id = await storm(client)
    await client.service.mitigate(incident_id, by="receiver", text="restarted")
    assert forms(await page(client, incident_id, JANE), incident_id) == [
        "resolve",
        "comment",
    ]


async def test_acknowledging_goes_through_the_service(client, monkeypatch):  # noqa: F811
    """Acknowledged as the signed-in person; the clock stops; the form goes."""
    incident_id = await storm(client)
    calls: list[tuple[str, str, str]] = []
    service_acknowledge = client.service.acknowledge_first

    async def recorded(incident_id: str, *, by: str, via: str) -> Any:
        calls.append((incident_id, by, via))
        return await service_acknowledge(incident_id, by=by, via=via)

    monkeypatch.setattr(client.service, "acknowledge_first", recorded)
    with structlog.testing.capture_logs() as logs:
        resp = await post(client, incident_id, "acknowledge")
    assert resp.status == 303, await resp.text()
    assert urlsplit(resp.headers["Location"]).path == f"/ui/incidents/{incident_id}"
    said = notice(resp)
    assert said.startswith(f"{incident_id} acknowledged by jane at "), said
    assert said.endswith("; the acknowledge clock stopped"), said
    assert calls == [(incident_id, "jane", "the console")]
    assert [
        (e["incident"], e["by"])
        for e in logs
        if e["event"] == "console_incident_acknowledged"
    ] == [(incident_id, "jane")]

    incident = await get(client.service, incident_id)
    assert incident.state is State.ACKNOWLEDGED
    assert incident.acknowledged_at is not None
    [entry] = [e for e in incident.timeline if e.kind == "acknowledged"]
    assert (entry.by, entry.text) == ("jane", "Acknowledged via the console")

    html_text = await (await client.get(resp.headers["Location"], headers=JANE)).text()
    assert "<span class=state>acknowledged</span>" in html_text
    assert f"<p role=status><strong>{incident_id} acknowledged by jane" in html_text
    assert ">acknowledge: stopped at " in html_text
    assert "acknowledge" not in forms(html_text, incident_id)


async def test_mitigating_with_what_goes_through_the_service(client, monkeypatch):  # noqa: F811
    """With what mitigated it (sent with CRLF, as a textarea is): on the timeline."""
    incident_id = await storm(client)
    calls: list[tuple[str, str, str]] = []
    service_mitigate = client.service.mitigate_first

    async def recorded(incident_id: str, *, by: str, text: str) -> Any:
        calls.append((incident_id, by, text))
        return await service_mitigate(incident_id, by=by, text=text)

    monkeypatch.setattr(client.service, "mitigate_first", recorded)
    resp = await post(client, incident_id, "mitigate", "  failed over\r\nto eu-west  ")
    assert resp.status == 303, await resp.text()
    said = notice(resp)
    assert said.startswith(f"{incident_id} mitigated by jane at "), said
    assert said.endswith(": Mitigated: failed over\nto eu-west"), said
    assert calls == [(incident_id, "jane", "failed over\nto eu-west")]
    incident = await get(client.service, incident_id)
    assert incident.state is State.MITIGATED
    [entry] = [e for e in incident.timeline if e.kind == "mitigated"]
    assert (entry.by, entry.text) == ("jane", "Mitigated: failed over\nto eu-west")
    html_text = await (await client.get(resp.headers["Location"], headers=JANE)).text()
    assert "<span class=state>mitigated</span>" in html_text
    assert forms(html_text, incident_id) == ["resolve", "comment"]


async def test_mitigating_without_what_says_a_person_marked_it(client):  # noqa: F811
    incident_id = await storm(client)
    resp = await post(client, incident_id, "mitigate")
    assert resp.status == 303, await resp.text()
    incident = await get(client.service, incident_id)
    [entry] = [e for e in incident.timeline if e.kind == "mitigated"]
    assert (entry.by, entry.text) == ("jane", "Mitigated: marked by a person")


async def test_commenting_goes_through_the_service(client, monkeypatch):  # noqa: F811
    """The comment is on the timeline as the signed-in person, line breaks as typed."""
    incident_id = await storm(client)
    calls: list[tuple[str, str, str]] = []
    service_comment = client.service.comment

    async def recorded(incident_id: str, *, by: str, text: str) -> Any:
        calls.append((incident_id, by, text))
        return await service_comment(incident_id, by=by, text=text)

    monkeypatch.setattr(client.service, "comment", recorded)
    with structlog.testing.capture_logs() as logs:
        resp = await post(client, incident_id, "comment", "db at 90%\r\nwatching")
    assert resp.status == 303, await resp.text()
    assert notice(resp) == f"{incident_id}: comment added to the timeline as jane"
    assert calls == [(incident_id, "jane", "db at 90%\nwatching")]
    assert [e["by"] for e in logs if e["event"] == "console_incident_commented"] == [
        "jane"
    ]
    incident = await get(client.service, incident_id)
    assert [(e.by, e.text) for e in incident.timeline if e.kind == "comment"] == [
        ("jane", "db at 90%\nwatching")
    ]
    assert incident.state is State.TRIGGERED  # a comment stops no clock


async def test_html_in_a_comment_and_a_name_is_shown_as_text(client):  # noqa: F811
    """A comment, a what and a user name are people's text: escaped on the page."""
    incident_id = await storm(client)
    name = '<img src=x onerror="alert(1)">'
    person = signed_in(name, APPROVE_TOKEN)
    comment = "<script>alert('x')</script> & <b>bold</b>"
    resp = await post(client, incident_id, "comment", comment, headers=person)
    assert resp.status == 303, await resp.text()
    resp = await post(client, incident_id, "mitigate", "<i>rolled</i>", headers=person)
    assert resp.status == 303, await resp.text()
    html_text = await (await client.get(resp.headers["Location"], headers=JANE)).text()
    for raw in (comment, "<i>rolled</i>", name):
        assert html.escape(raw, quote=True) in html_text
    for live in ("<script>alert", "<b>bold", "<i>rolled", "<img src=x"):
        assert live not in html_text
    incident = await get(client.service, incident_id)
    assert [(e.by, e.text) for e in incident.timeline if e.kind == "comment"] == [
        (name, comment)
    ]


async def test_a_resolved_incident_takes_comments(client):  # noqa: F811
    """As the API does: the post-mortem's notes go on the timeline after the end."""
    incident_id = await storm(client)
    await client.service.resolve(incident_id, by="alice", text="over")
    resp = await post(client, incident_id, "comment", "root cause: a full disk")
    assert resp.status == 303, await resp.text()
    incident = await get(client.service, incident_id)
    assert not incident.active
    assert incident.timeline[-1].kind == "comment"
    assert incident.timeline[-1].text == "root cause: a full disk"


@pytest.mark.parametrize(
    ("action", "text", "detail"),
    [
        ("comment", None, "the comment is empty: say what to add to the timeline"),
        ("comment", " \r\n\t ", "the comment is empty"),
        ("comment", "x" * 4001, "the comment is 4001 characters long; at most 4000"),
        ("mitigate", "x" * 4001, "what mitigated it is 4001 characters long"),
        ("resolve", "x" * 4001, "why is 4001 characters long; at most 4000"),
    ],
)
async def test_text_the_api_would_refuse_is_refused(client, action, text, detail):  # noqa: F811
    """Empty comments and texts past the API's 4000 characters: 400, nothing changes."""
    incident_id = await storm(client)
    before = await get(client.service, incident_id)
    resp = await post(client, incident_id, action, text)
    assert resp.status == 400, await resp.text()
    assert detail in await refusal(resp)
    assert await get(client.service, incident_id) == before


@pytest.mark.parametrize(
    ("action", "doing"),
    [
        ("acknowledge", "Acknowledging incidents"),
        ("mitigate", "Marking incidents mitigated"),
        ("comment", "Commenting on incidents"),
    ],
)
async def test_a_read_only_credential_is_refused(client, action, doing):  # noqa: F811
    """Signed in without the approve scope: the page says so; nothing changes."""
    incident_id = await storm(client)
    reader = signed_in("ops", TOKEN)
    before = await get(client.service, incident_id)
    resp = await post(client, incident_id, action, "done", headers=reader)
    assert resp.status == 403, await resp.text()
    assert resp.content_type == "text/html"
    assert f"Refused: {doing} needs the approve scope" in await resp.text()
    assert await get(client.service, incident_id) == before


@pytest.mark.parametrize("action", ACTIONS)
async def test_an_unknown_incident_is_a_404_page(client, action):  # noqa: F811
    await storm(client)
    token = form_token(await (await client.get("/ui/guards", headers=JANE)).text())
    resp = await client.post(
        f"/ui/incidents/INC-nope/{action}",
        data={"token": token, "text": "x"},
        headers=JANE,
        allow_redirects=False,
    )
    assert resp.status == 404
    assert resp.content_type == "text/html"
    assert "There is no incident INC-nope." in await resp.text()


# What someone else did meanwhile, and what the notice then says was first.
Meanwhile = Callable[[IncidentService, str], Awaitable[object]]


async def _acknowledged(service: IncidentService, incident_id: str) -> object:
    return await service.acknowledge(incident_id, by="alice")


async def _mitigated(service: IncidentService, incident_id: str) -> object:
    return await service.mitigate(incident_id, by="alice", text="failed over")


async def _resolved(service: IncidentService, incident_id: str) -> object:
    return await service.resolve(incident_id, by="alice", text="storm over")


@pytest.mark.parametrize(
    ("action", "meanwhile", "said"),
    [
        ("acknowledge", _acknowledged, "was already acknowledged by alice at "),
        ("acknowledge", _mitigated, "(the acknowledge clock stopped then)"),
        ("acknowledge", _resolved, "was already resolved by alice at "),
        ("mitigate", _mitigated, "was already mitigated by alice at "),
        ("mitigate", _resolved, "was already resolved by alice at "),
        ("resolve", _resolved, "was already resolved by alice at "),
    ],
    ids=[
        "acknowledge-acknowledged",
        "acknowledge-mitigated",
        "acknowledge-resolved",
        "mitigate-mitigated",
        "mitigate-resolved",
        "resolve-resolved",
    ],
)
async def test_an_action_that_lost_the_race_says_nothing_changed(
    client,  # noqa: F811
    monkeypatch,
    action: str,
    meanwhile: Meanwhile,
    said: str,
):
    """Alice's change lands between the service's read and its write.

    The first write is refused on its version; the service reads again and the
    reading that counts is that one: nothing changes, the notice says who was
    first, and no action by jane is logged.
    """
    incident_id = await storm(client)
    token = form_token(await page(client, incident_id, JANE))
    store = client.service.store
    stale = await store.get(incident_id)
    await meanwhile(client.service, incident_id)
    after_alice = await get(client.service, incident_id)
    store_get = store.get
    reads = 0

    async def read_before_alice(wanted: str) -> Any:
        nonlocal reads
        reads += 1
        return stale if reads == 1 else await store_get(wanted)

    monkeypatch.setattr(store, "get", read_before_alice)
    with structlog.testing.capture_logs() as logs:
        resp = await client.post(
            f"/ui/incidents/{incident_id}/{action}",
            data={"token": token, "text": "me too"},
            headers=JANE,
            allow_redirects=False,
        )
    assert resp.status == 303, await resp.text()
    assert reads >= 2, "the service never read the stale incident first"
    monkeypatch.undo()
    assert await get(client.service, incident_id) == after_alice
    text = notice(resp)
    assert text.startswith(f"{incident_id} was already "), text
    assert said in text
    assert text.endswith("; nothing changed"), text
    assert not [e for e in logs if e["event"].startswith("console_incident_")]


async def test_a_comment_that_raced_another_change_is_written_once(
    client,  # noqa: F811
    monkeypatch,
):
    """The version check refuses the first write; the retry keeps both changes."""
    incident_id = await storm(client)
    token = form_token(await page(client, incident_id, JANE))
    store = client.service.store
    stale = await store.get(incident_id)
    await client.service.acknowledge(incident_id, by="alice")
    store_get = store.get
    reads = 0

    async def read_before_alice(wanted: str) -> Any:
        nonlocal reads
        reads += 1
        return stale if reads == 1 else await store_get(wanted)

    monkeypatch.setattr(store, "get", read_before_alice)
    resp = await client.post(
        f"/ui/incidents/{incident_id}/comment",
        data={"token": token, "text": "on it too"},
        headers=JANE,
        allow_redirects=False,
    )
    assert resp.status == 303, await resp.text()
    monkeypatch.undo()
    incident = await get(client.service, incident_id)
    assert incident.state is State.ACKNOWLEDGED
    assert [(e.kind, e.by) for e in incident.timeline[-2:]] == [
        ("acknowledged", "alice"),
        ("comment", "jane"),
    ]


@pytest.mark.parametrize("action", ACTIONS)
async def test_a_write_that_keeps_conflicting_is_a_409(client, monkeypatch, action):  # noqa: F811
    """Every attempt's version refused: 409, "try again", the incident unchanged."""
    incident_id = await storm(client)
    token = form_token(await page(client, incident_id, JANE))
    before = await get(client.service, incident_id)

    async def refused(*_args: object, **_kwargs: object) -> None:
        return None

    monkeypatch.setattr(client.service.store, "update", refused)
    resp = await client.post(
        f"/ui/incidents/{incident_id}/{action}",
        data={"token": token, "text": "x"},
        headers=JANE,
        allow_redirects=False,
    )
    assert resp.status == 409, await resp.text()
    detail = await refusal(resp)
    assert detail == f"incident {incident_id} kept changing under us; try again."
    # A page a person reads, with the way back to the incident.
    assert f'<a href="/ui/incidents/{incident_id}">Back</a>' in await resp.text()
    monkeypatch.undo()
    assert await get(client.service, incident_id) == before


@pytest.mark.parametrize("action", ACTIONS)
async def test_the_store_down_is_a_503_to_retry(client, monkeypatch, action):  # noqa: F811
    """The incident store unreachable: 503 with Retry-After, as the API answers."""
    incident_id = await storm(client)
    token = form_token(await page(client, incident_id, JANE))
    before = await get(client.service, incident_id)

    async def down(*_args: object, **_kwargs: object) -> None:
        msg = "incident store unreachable"
        raise StoreUnavailableError(msg)

    monkeypatch.setattr(client.service.store, "get", down)
    resp = await client.post(
        f"/ui/incidents/{incident_id}/{action}",
        data={"token": token, "text": "x"},
        headers=JANE,
        allow_redirects=False,
    )
    assert resp.status == 503, await resp.text()
    assert resp.headers["Retry-After"]
    assert await refusal(resp) == (
        f"incident store unreachable. Try again in {resp.headers['Retry-After']} "
        "seconds."
    )
    monkeypatch.undo()
    assert await get(client.service, incident_id) == before


@pytest.mark.parametrize("action", ACTIONS)
async def test_a_bug_is_a_500_page_naming_its_log_line(client, monkeypatch, action):  # noqa: F811
    """An unexpected exception: a 500 page with the request id it was logged under."""
    incident_id = await storm(client)
    token = form_token(await page(client, incident_id, JANE))
    before = await get(client.service, incident_id)

    async def broken(*_args: object, **_kwargs: object) -> None:
        msg = "a bug"
        raise RuntimeError(msg)

    monkeypatch.setattr(client.service.store, "get", broken)
    with structlog.testing.capture_logs() as logs:
        resp = await client.post(
            f"/ui/incidents/{incident_id}/{action}",
            data={"token": token, "text": "x"},
            headers={**JANE, "X-Request-Id": "req-console-bug"},
            allow_redirects=False,
        )
    assert resp.status == 500, await resp.text()
    assert await refusal(resp) == (
        "internal error while handling the request; it was logged with request "
        "id req-console-bug."
    )
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["request_failed"]
    monkeypatch.undo()
    assert await get(client.service, incident_id) == before
