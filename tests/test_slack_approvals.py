"""Approvals from Slack buttons (``receiver/web/slack.py``), end to end.

The receiver runs in execute mode with a real ``http.request`` executor aimed at
a counting server, the Slack sink posts its message to a local stand-in (the
buttons are read from what it received), a local stand-in answers the PagerDuty
schedule look-up and records what the receiver posts to ``response_url``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import textwrap
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from conftest import bearer, full_settings, journal_drained
from counting import CountingServer
from fakes import RecordingServer, Reply, Request
from pydantic import SecretStr

from receiver.app import SINKS, create_app
from receiver.rulebook.loader import load_rulebook
from receiver.rulebook.schema import Approvers
from receiver.runtime import build_runtime
from receiver.steps.http import HttpExecutor
from receiver.store import MemoryStore
from receiver.store.handles import JournalEntry
from receiver.web.approvals import NotOnCallError, OnCall, admitted
from receiver.web.slack import SLACK, verify_signature

SECRET = "slack-signing-secret-for-tests"
T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
USERS = {
    "UALICE": "alice@example.com",
    "UBOB": "bob@example.com",
    "UCAROL": "carol@example.com",
    "UDAVE": "dave@example.com",
}


def ticking(
    start: datetime, step: timedelta = timedelta(milliseconds=5)
) -> Callable[[], datetime]:
    """A clock that advances on every read."""
    counter = itertools.count()
    return lambda: start + step * next(counter)


def rules(hook: str) -> str:
    """A restart any approver may approve, and a destructive wipe needing two."""
    return textwrap.dedent(
        f"""
        playbooks:
          restart:
            remediation:
              - type: http.request
                url: "{hook}/run/{{alert.fingerprint}}"
                approval: required
            approvers:
              people: [alice@example.com]
              groups: {{sre: [bob@example.com]}}
              pagerduty_schedule: PSARK01
              schedule_name: SARK-primary
            guards: {{cooldown: 0s}}
          wipe:
            remediation:
              - type: http.request
                url: "{hook}/wipe/{{alert.fingerprint}}"
                approval: required
                destructive: true
            approvers:
              people: [alice@example.com, bob@example.com]
            guards: {{cooldown: 0s}}
        rules:
          - name: restart
            match: ['alertname="Restart"']
            playbook: restart
            severity: P2
          - name: wipe
            match: ['alertname="Wipe"']
            playbook: wipe
            severity: P1
        """
    )


def alert_body(alertname: str, fingerprint: str) -> dict[str, Any]:
    """An Alertmanager webhook with one firing alert."""
    return {
        "version": "4",
        "status": "firing",
        "groupKey": f"g-{fingerprint}",
        "receiver": "r",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": alertname},
                "annotations": {},
                "startsAt": "2026-12-05T11:50:00Z",
                "fingerprint": fingerprint,
            }
        ],
    }


def sign(body: bytes, ts: int, secret: str = SECRET) -> str:
    """Slack's v0 signature."""
    base = f"v0:{ts}:".encode() + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


class Slack:
    """The stand-ins and the receiver under test, with helpers to press buttons."""

    def __init__(
        self,
        client: Any,
        store: MemoryStore,
        side: RecordingServer,
        hook: CountingServer,
    ) -> None:
        self.client = client
        self.store = store
        self.side = side
        self.hook = hook
        self._nonce = itertools.count()

    def message_for(self, approval_id: str) -> dict[str, Any]:
        """The Slack sink's message that carries this approval's buttons."""
        for request in self.side.seen("POST", "/slack/webhook"):
            message = request.json()
            for block in message.get("blocks", []):
                if block.get("block_id") == f"approval:{approval_id}":
                    return message
        pytest.fail(f"no Slack message with buttons for {approval_id}")

    def payload(self, user: str, approval_id: str, action: str = "approve") -> bytes:
        """A form-encoded block_actions interaction, as Slack sends it."""
        message = self.message_for(approval_id)
        (button,) = [
            e
            for b in message["blocks"]
            if b.get("block_id") == f"approval:{approval_id}"
            for e in b["elements"]
            if e["action_id"] == action
        ]
        data = {
            "type": "block_actions",
            "user": {"id": user, "username": user.lower()},
            "actions": [{"action_id": button["action_id"], "value": button["value"]}],
            "response_url": f"{self.side.url}/respond/{next(self._nonce)}",
            "message": message,
            "trigger_id": str(next(self._nonce)),
        }
        return urlencode({"payload": json.dumps(data)}).encode()

    async def press(
        self, body: bytes, *, ts: int | None = None, signature: str | None = None
    ) -> Any:
        """POST a (by default correctly signed) interaction."""
        ts = int(T0.timestamp()) if ts is None else ts
        return await self.client.post(
            "/slack/interactions",
            data=body,
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Slack-Request-Timestamp": str(ts),
                "X-Slack-Signature": signature or sign(body, ts),
            },
        )

    async def fire(self, alertname: str, fingerprint: str) -> str:
        """Send an alert; return the id of the approval its step waits for."""
        resp = await self.client.post(
            "/webhooks/alertmanager",
            json=alert_body(alertname, fingerprint),
            headers=bearer(),
        )
        assert resp.status == 202, await resp.text()
        await journal_drained(self.store)
        (approval_id,) = [
            approval.id
            for approval in await self.store.approvals("pending")
            if approval.request["fingerprint"] == fingerprint
        ]
        await self.client.app[SINKS].drain()
        assert any(
            f"approval:{approval_id}" in r.body.decode()
            for r in self.side.seen("POST", "/slack/webhook")
        ), "the Slack message with the buttons was not posted"
        return approval_id

    async def settled(self) -> None:
        """Wait until the journal is drained (bounded)."""
        await journal_drained(self.store)

    async def response(self, text: str) -> dict[str, Any]:
        """The response_url post saying ``text``, once every update has been sent."""
        await self.client.app[SLACK].idle()
        for request in self.side.seen("POST", "/respond/.*"):
            if text in request.body.decode():
                return request.json()
        pytest.fail(f"no response_url post saying {text!r}")


@pytest.fixture
def side() -> Iterator[RecordingServer]:
    """Slack's webhook and response_url, and PagerDuty's schedules API."""
    server = RecordingServer()

    def on_call(request: Request) -> Reply:
        authorised = request.headers.get("Authorization") == "Token token=pd-token"
        if not authorised or not request.query.get("since"):
            return Reply(401, {"error": "token or window missing"})
        return Reply(
            200,
            {"users": [{"id": "PC1", "name": "Carol", "email": "carol@example.com"}]},
        )

    server.route("GET", "/schedules/PSARK01/users", on_call)
    server.script("POST", "/slack/webhook", Reply(200, b"ok"))
    server.script("POST", "/respond/.*", Reply(200, b"ok"))
    with server:
        yield server


@pytest.fixture
async def slack(aiohttp_client, tmp_path, side) -> Any:
    """The receiver in execute mode with Slack approvals configured."""
    with CountingServer() as hook:
        path = tmp_path / "rules.yaml"
        path.write_text(rules(hook.url), encoding="utf-8")
        settings = full_settings(
            mode="execute",
            http_allowlist=[f"127.0.0.1:{hook.port}"],
            sinks=["slack"],
            slack_webhook_url=SecretStr(f"{side.url}/slack/webhook"),
            slack_signing_secret=SecretStr(SECRET),
            slack_approvers=USERS,
            pagerduty_api_url=side.url,
            pagerduty_api_token=SecretStr("pd-token"),
            global_budget_max=1000,
        )
        store = MemoryStore()
        http = httpx.AsyncClient(timeout=5)
        app = create_app(
            build_runtime(settings),
            rulebook=load_rulebook([path]),
            store=store,
            clock=ticking(T0),
            executors={"http": HttpExecutor(http, [f"127.0.0.1:{hook.port}"])},
        )
        client = await aiohttp_client(app)
        yield Slack(client, store, side, hook)
        await client.close()
        await http.aclose()


async def test_the_slack_message_carries_buttons_for_a_waiting_step(slack):
    """A step awaiting approval is posted to Slack with Approve and Reject buttons."""
    approval_id = await slack.fire("Restart", "fp-buttons")
    message = slack.message_for(approval_id)
    (actions,) = [b for b in message["blocks"] if b["type"] == "actions"]
    assert [(e["action_id"], e["value"]) for e in actions["elements"]] == [
        ("approve", approval_id),
        ("reject", approval_id),
    ]
    assert slack.hook.snapshot() == {}


async def test_badly_signed_stale_and_replayed_requests_are_refused(slack):
    """Wrong signature and stale timestamp are 401s; a replay is a 409; one run."""
    approval_id = await slack.fire("Restart", "fp-signed")
    body = slack.payload("UALICE", approval_id)
    resp = await slack.press(body, signature="v0=" + "0" * 64)
    assert resp.status == 401
    assert "bad Slack signature" in (await resp.json())["detail"]
    stale = int((T0 - timedelta(minutes=6)).timestamp())
    resp = await slack.press(body, ts=stale)
    assert resp.status == 401
    assert "stale Slack request" in (await resp.json())["detail"]
    resp = await slack.press(body, ts=int(T0.timestamp()), signature=sign(body, 1, "x"))
    assert resp.status == 401
    resp = await slack.client.post("/slack/interactions", data=body)
    assert resp.status == 401
    assert "missing X-Slack-Request-Timestamp" in (await resp.json())["detail"]
    (pending,) = await slack.store.approvals("pending")
    assert pending.id == approval_id, "nothing was decided by a bad request"

    resp = await slack.press(body)
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert answer["decided"] is True
    assert "approved by alice@example.com" in answer["text"]
    final = await slack.response("ran: executed")
    assert "approved by alice@example.com" in json.dumps(final)
    assert final["replace_original"] is True
    assert not any(
        b.get("block_id") == f"approval:{approval_id}" for b in final["blocks"]
    )

    resp = await slack.press(body)
    assert resp.status == 409
    assert "already handled" in (await resp.json())["detail"]
    resp = await slack.press(slack.payload("UBOB", approval_id))
    assert "is already approved by alice@example.com" in (await resp.json())["text"]
    await slack.settled()
    assert slack.hook.snapshot() == {"/run/fp-signed": 1}


async def test_unmapped_and_unlisted_users_are_refused_with_the_reason(slack, side):
    """An unknown Slack user and someone not on call are told why; nothing runs."""
    approval_id = await slack.fire("Restart", "fp-who")
    resp = await slack.press(slack.payload("UMALLORY", approval_id))
    assert resp.status == 200
    body = await resp.json()
    assert body["decided"] is False
    assert "your Slack user UMALLORY is not mapped to an approver" in body["text"]
    resp = await slack.press(slack.payload("UDAVE", approval_id))
    body = await resp.json()
    assert body == {
        "response_type": "ephemeral",
        "replace_original": False,
        "text": "you are not on call for SARK-primary",
        "decided": False,
    }
    refusal = await slack.response("you are not on call for SARK-primary")
    assert refusal["replace_original"] is False
    assert side.seen("GET", "/schedules/PSARK01/users"), "PagerDuty was asked"
    (pending,) = await slack.store.approvals("pending")
    assert pending.id == approval_id
    assert slack.hook.snapshot() == {}


async def test_the_current_on_call_may_approve_and_it_runs_once(slack):
    """Carol is on call now (asked at the press): her approval runs the step once."""
    approval_id = await slack.fire("Restart", "fp-oncall")
    resp = await slack.press(slack.payload("UCAROL", approval_id))
    assert (await resp.json())["decided"] is True
    await slack.response("ran: executed")
    await slack.settled()
    (approved,) = await slack.store.approvals("approved")
    assert approved.decided_by == "carol@example.com"
    assert slack.hook.snapshot() == {"/run/fp-oncall": 1}


async def test_a_group_member_may_reject(slack):
    """Bob (group sre) rejects: the message says so and the step never runs."""
    approval_id = await slack.fire("Restart", "fp-reject")
    resp = await slack.press(slack.payload("UBOB", approval_id, "reject"))
    assert "rejected by bob@example.com" in (await resp.json())["text"]
    final = await slack.response("rejected by bob@example.com")
    assert final["replace_original"] is True
    (rejected,) = await slack.store.approvals("rejected")
    assert rejected.id == approval_id
    await slack.settled()
    assert slack.hook.snapshot() == {}


async def test_a_destructive_step_needs_two_different_approvers(slack):
    """The same person twice is refused; a second person approves; it runs once."""
    approval_id = await slack.fire("Wipe", "fp-wipe")
    resp = await slack.press(slack.payload("UALICE", approval_id))
    body = await resp.json()
    assert body["decided"] is False
    assert "first approval of" in body["text"]
    assert "needs a second, different approver" in body["text"]
    resp = await slack.press(slack.payload("UALICE", approval_id))
    body = await resp.json()
    assert body["decided"] is False
    assert body["text"].startswith(f"you already approved {approval_id}")
    (pending,) = await slack.store.approvals("pending")
    assert pending.id == approval_id
    assert slack.hook.snapshot() == {}

    resp = await slack.press(slack.payload("UCAROL", approval_id))
    assert "not an approver for playbook wipe" in (await resp.json())["text"]
    resp = await slack.press(slack.payload("UBOB", approval_id))
    body = await resp.json()
    assert body["decided"] is True
    assert "approved by alice@example.com and bob@example.com" in body["text"]
    await slack.response("ran: executed")
    resp = await slack.press(slack.payload("UBOB", approval_id))
    assert "already approved" in (await resp.json())["text"]
    await slack.settled()
    assert slack.hook.snapshot() == {"/wipe/fp-wipe": 1}


async def test_concurrent_presses_apply_the_approval_once(slack):
    """Two approvers pressing at once: one decides, the other is told; one run."""
    approval_id = await slack.fire("Restart", "fp-race")
    responses = await asyncio.gather(
        slack.press(slack.payload("UALICE", approval_id)),
        slack.press(slack.payload("UBOB", approval_id)),
    )
    answers = [await r.json() for r in responses]
    assert sorted(a["decided"] for a in answers) == [False, True]
    await slack.response("ran: executed")
    await slack.settled()
    assert slack.hook.snapshot() == {"/run/fp-race": 1}


async def test_an_outcome_not_decided_within_the_wait_says_where_to_look(slack):
    """The message update names the decisions query when the worker is not done."""
    approval_id = await slack.fire("Restart", "fp-slow")
    interactions = slack.client.app[SLACK]
    interactions._outcome_wait = timedelta(0)
    entry = JournalEntry("undecided", "alertmanager", T0, b"{}")
    assert await interactions._outcome(approval_id, entry) == (
        "outcome not decided yet; see GET /api/v1/decisions?payload_id=undecided"
    )


def test_signature_checks_are_exact():
    """Only Slack's v0 HMAC of the exact body, within five minutes, passes."""
    body = b"payload=%7B%7D"
    ts = int(T0.timestamp())
    verify_signature(
        SECRET, timestamp=str(ts), signature=sign(body, ts), body=body, now=T0
    )
    bad = [
        (str(ts), sign(body + b"x", ts), T0),
        (str(ts), sign(body, ts).upper(), T0),
        ("abc", sign(body, ts), T0),
        (str(ts), sign(body, ts), T0 + timedelta(minutes=5, seconds=1)),
        (str(ts), sign(body, ts), T0 - timedelta(minutes=5, seconds=1)),
    ]
    for timestamp, signature, now in bad:
        with pytest.raises(Exception, match="Slack") as info:
            verify_signature(
                SECRET, timestamp=timestamp, signature=signature, body=body, now=now
            )
        assert type(info.value).__name__ == "AuthError"


async def test_a_failed_on_call_lookup_refuses_with_the_reason():
    """PagerDuty down or unauthorised: the approval is refused, saying so."""
    server = RecordingServer()
    server.script("GET", "/schedules/P1/users", Reply(401, {"error": "no"}))
    with server:
        async with httpx.AsyncClient(timeout=5) as client:
            oncall = OnCall(client, server.url, "t")
            with pytest.raises(NotOnCallError, match="HTTP 401"):
                await oncall.people("P1", T0)
            why = await admitted(
                Approvers(pagerduty_schedule="P1", schedule_name="SARK-primary"),
                "carol@example.com",
                on_call=lambda s: oncall.people(s, T0),
                playbook="restart",
            )
            with pytest.raises(NotOnCallError, match="API_TOKEN is not set"):
                await OnCall(client, server.url, None).people("P1", T0)
    assert why == "could not ask PagerDuty who is on call for SARK-primary: HTTP 401"


async def test_without_a_signing_secret_the_endpoint_is_disabled(make_client):
    """No signing secret configured: 403 saying which setting enables it."""
    client = await make_client()
    body = urlencode({"payload": "{}"}).encode()
    resp = await client.post(
        "/slack/interactions",
        data=body,
        headers={
            "X-Slack-Request-Timestamp": str(int(T0.timestamp())),
            "X-Slack-Signature": sign(body, int(T0.timestamp())),
        },
    )
    assert resp.status == 403
    assert "RECEIVER_SLACK_SIGNING_SECRET" in (await resp.json())["detail"]
