"""The approval policy through the API and the console (Slack's is tested apart).

One policy decides everywhere: the approver is who the credential says (a
personal approver token), a playbook's ``approvers`` apply, a destructive step
needs two different people (the first may press in the API, the second in the
console), and the approved step runs once, counted at the receiving end.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import httpx
import pytest
from conftest import APPROVE_TOKEN, bearer, full_settings, journal_drained
from counting import CountingServer
from pydantic import SecretStr
from test_slack_approvals import T0, alert_body, rules, ticking

from receiver.app import create_app
from receiver.rulebook.loader import load_rulebook
from receiver.runtime import build_runtime
from receiver.settings import Settings, load_settings
from receiver.steps.catalog import builtin_registry
from receiver.steps.http import HttpExecutor
from receiver.store import MemoryStore
from receiver.store.base import DecisionQuery
from receiver.web.auth import Authenticator

PEOPLE = {
    "alice@example.com": "tok-alice-71c2",
    "bob@example.com": "tok-bob-0d3e",
    "dave@example.com": "tok-dave-5a9f",
}
PROBLEM = "application/problem+json"


def as_person(email: str) -> dict[str, str]:
    """Bearer credentials of one person's own token."""
    return bearer(PEOPLE[email])


@pytest.fixture
async def served(aiohttp_client, tmp_path) -> Any:
    """The receiver (execute mode) with a counting hook; yields client, store, hook."""
    with CountingServer() as hook:
        path = tmp_path / "rules.yaml"
        path.write_text(rules(hook.url), encoding="utf-8")
        store = MemoryStore()
        http = httpx.AsyncClient(timeout=5)
        app = create_app(
            build_runtime(
                full_settings(
                    mode="execute",
                    http_allowlist=[f"127.0.0.1:{hook.port}"],
                    approver_tokens={k: SecretStr(v) for k, v in PEOPLE.items()},
                )
            ),
            rulebook=load_rulebook([path], steps=builtin_registry()),
            store=store,
            clock=ticking(T0),
            executors={"http": HttpExecutor(http, [f"127.0.0.1:{hook.port}"])},
            sinks={},
        )
        client = await aiohttp_client(app)
        yield client, store, hook
        await http.aclose()


async def fire(client: Any, store: MemoryStore, name: str, fingerprint: str) -> str:
    """Send an alert; the id of the approval its step waits for."""
    resp = await client.post(
        "/webhooks/alertmanager", json=alert_body(name, fingerprint), headers=bearer()
    )
    assert resp.status == 202
    await journal_drained(store)
    (approval,) = [
        a
        for a in await store.approvals("pending")
        if a.request["fingerprint"] == fingerprint
    ]
    return approval.id


async def decide(client: Any, approval_id: str, headers: dict[str, str], **body: Any):
    """POST /api/v1/approvals/{id}; the response."""
    return await client.post(
        f"/api/v1/approvals/{approval_id}",
        json={"decision": "approve", **body},
        headers=headers,
    )


async def test_api_applies_the_playbook_approvers(served):
    """Shared token, a stranger and a "by" field are refused; alice approves once."""
    client, store, hook = served
    approval_id = await fire(client, store, "Restart", "fp-api-1")

    resp = await decide(client, approval_id, bearer(APPROVE_TOKEN))
    assert resp.status == 403
    detail = (await resp.json(content_type=PROBLEM))["detail"]
    assert "own approver token" in detail

    resp = await decide(client, approval_id, as_person("dave@example.com"))
    assert resp.status == 403
    assert "SARK-primary" in (await resp.json(content_type=PROBLEM))["detail"]

    resp = await decide(
        client, approval_id, as_person("alice@example.com"), by="bob@example.com"
    )
    assert resp.status == 400
    assert '"by" is not accepted' in (await resp.json(content_type=PROBLEM))["detail"]
    assert hook.snapshot() == {}

    resp = await decide(client, approval_id, as_person("alice@example.com"))
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert (answer["status"], answer["decided_by"]) == ("approved", "alice@example.com")
    await journal_drained(store)
    assert hook.snapshot() == {"/run/fp-api-1": 1}

    resp = await decide(client, approval_id, as_person("alice@example.com"))
    assert resp.status == 409
    await journal_drained(store)
    assert hook.snapshot() == {"/run/fp-api-1": 1}


async def console_press(client: Any, email: str, approval_id: str) -> str:
    """Press Approve in the console signed in as ``email``; the notice shown."""
    token = base64.b64encode(f"{email}:{PEOPLE[email]}".encode()).decode()
    headers = {"Authorization": f"Basic {token}"}
    page = await (await client.get("/ui/approvals", headers=headers)).text()
    form_token = re.search(r'name=token value="([0-9a-f]+)"', page)
    assert form_token is not None
    resp = await client.post(
        f"/ui/approvals/{approval_id}",
        data={"decision": "approve", "token": form_token.group(1)},
        headers=headers,
        allow_redirects=False,
    )
    assert resp.status == 303
    location = resp.headers["Location"]
    page = await (await client.get(location, headers=headers)).text()
    notice = re.search(r"<p role=status><strong>(.*?)</strong>", page)
    assert notice is not None
    return notice.group(1)


async def test_destructive_step_needs_two_people_across_api_and_console(served):
    """Alice in the API, alice again in the console (refused), bob decides."""
    client, store, hook = served
    approval_id = await fire(client, store, "Wipe", "fp-two")

    resp = await decide(client, approval_id, as_person("alice@example.com"))
    assert resp.status == 202
    assert "first approval" in (await resp.json())["message"]

    notice = await console_press(client, "alice@example.com", approval_id)
    assert "second, different approver" in notice
    resp = await decide(client, approval_id, bearer(APPROVE_TOKEN))
    assert resp.status == 403  # a shared token cannot be the second person
    await journal_drained(store)
    assert hook.snapshot() == {}

    notice = await console_press(client, "bob@example.com", approval_id)
    assert "approved by alice@example.com and bob@example.com" in notice
    await journal_drained(store)
    assert hook.snapshot() == {"/wipe/fp-two": 1}
    (approved,) = await store.approvals("approved")
    assert approved.decided_by == "alice@example.com and bob@example.com"
    audit = [
        (r["event"], r["by"], r["via"])
        for r in await store.decisions(DecisionQuery(limit=50))
        if r.get("approval") == approval_id
    ]
    assert sorted(audit) == [
        ("approved", "alice@example.com and bob@example.com", "console"),
        ("first_approval", "alice@example.com", "api"),
    ]


def test_approver_tokens_from_the_environment_are_secrets():
    """NAME=token pairs load, are redacted like other secrets, and none is empty."""
    settings = load_settings(
        environ={"RECEIVER_APPROVER_TOKENS": "alice@example.com=tok-a-1,bob=tok-b-2"}
    )
    assert {
        k: v.get_secret_value() for k, v in settings.auth.approver_tokens.items()
    } == {
        "alice@example.com": "tok-a-1",
        "bob": "tok-b-2",
    }
    assert {"tok-a-1", "tok-b-2"} <= set(settings.secret_values())
    assert "tok-a-1" not in repr(settings)
    with pytest.raises(ValueError, match="empty"):
        Settings(auth={"approver_tokens": {"alice": SecretStr("  ")}})


def test_only_a_personal_token_names_a_person():
    """The person comes from the token, never from the basic-auth user name."""
    auth = Authenticator.from_settings(
        full_settings(approver_tokens={"alice": SecretStr("tok-alice-1")}).auth,
        loopback=False,
    )
    basic = base64.b64encode(b"mallory:tok-alice-1").decode()
    assert auth.person(f"Basic {basic}") == "alice"
    assert auth.person("Bearer tok-alice-1") == "alice"
    assert auth.person(f"Bearer {APPROVE_TOKEN}") == ""
    assert auth.person("Bearer wrong") == ""
    auth.require("Bearer tok-alice-1", "approve")
