r"""The console's Resolve form when it races, and with a why the browser sends.

1. Two people resolve at once (or a page's POST races a PagerDuty resolve):
   the handler reads the incident, sees it open, then calls the service, which
   finds it already resolved and returns it unchanged. The handler cannot tell:
   it logs ``console_incident_resolved by=<the second person>`` (an audit line
   for a resolve that did not happen) and answers "resolved by <first>" without
   "nothing changed". It must say nothing changed, and log no resolve.
2. A why typed in the form's textarea is sent with CRLF line breaks (HTML form
   submission), while the textarea's ``maxlength`` counts a line break once:
   a why the form accepts (4000 characters with line breaks) is refused with a
   400 that loses what was typed, and the timeline keeps ``\\r\\n``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog
from test_console_incidents import JANE, client, form_token, page, storm  # noqa: F401


async def test_a_resolve_that_lost_the_race_says_nothing_changed(client, monkeypatch):  # noqa: F811
    incident_id = await storm(client)
    token = form_token(await page(client, incident_id, JANE))
    # Alice's resolve (API, PagerDuty, another tab) lands between the
    # console's read of the incident and its resolve call: the read is the
    # incident as it was just before.
    stale = await client.service.get(incident_id)
    await client.service.resolve(incident_id, by="alice", text="storm over")
    service_get = client.service.get
    reads = 0

    async def read_before_alice(wanted: str) -> Any:
        nonlocal reads
        reads += 1
        return stale if reads == 1 else await service_get(wanted)

    monkeypatch.setattr(client.service, "get", read_before_alice)
    with structlog.testing.capture_logs() as logs:
        resp = await client.post(
            f"/ui/incidents/{incident_id}/resolve",
            data={"token": token, "text": "me too"},
            headers=JANE,
            allow_redirects=False,
        )
    assert resp.status == 303, await resp.text()
    incident = await service_get(incident_id)  # not the stale read
    assert [e.by for e in incident.timeline if e.kind == "resolved"] == ["alice"]
    resolved_by = [
        e.get("by") for e in logs if e["event"] == "console_incident_resolved"
    ]
    assert "jane" not in resolved_by, "jane logged as resolving what alice resolved"
    [notice] = parse_qs(urlsplit(resp.headers["Location"]).query)["notice"]
    assert notice.endswith("nothing changed"), notice


async def test_a_why_as_long_as_the_form_allows_is_taken(client):  # noqa: F811
    """2000 lines of "a": 4000 characters to the textarea, CRLF-sent as 6000."""
    incident_id = await storm(client)
    token = form_token(await page(client, incident_id, JANE))
    typed = "a\n" * 1999 + "ab"  # what maxlength=4000 counts: 4000
    assert len(typed) == 4000
    sent = typed.replace("\n", "\r\n")  # how a browser submits a textarea
    resp = await client.post(
        f"/ui/incidents/{incident_id}/resolve",
        data={"token": token, "text": sent},
        headers=JANE,
        allow_redirects=False,
    )
    assert resp.status == 303, await resp.text()
    incident = await client.service.get(incident_id)
    [entry] = [e for e in incident.timeline if e.kind == "resolved"]
    assert entry.text == f"Resolved: {typed}"
