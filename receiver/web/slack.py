"""``POST /slack/interactions``: Approve / Reject buttons pressed in Slack.

The Slack sink's message for a step awaiting approval carries the buttons
(``render.approval_actions``). When one is pressed, Slack posts here:

1. The request is Slack's: ``X-Slack-Signature`` is ``v0=`` + HMAC-SHA256 of
   ``v0:{X-Slack-Request-Timestamp}:{raw body}`` under the signing secret
   (constant-time compare), the timestamp is within five minutes, and the same
   signed request is never handled twice (the store's ``seen``).
2. The Slack user maps to an approver (``slack_approvers``), and the approval
   policy shared with the API and the console (``approvals.ApprovalDesk``)
   decides: the playbook's ``approvers`` must admit that person, destructive
   steps need two different approvers, the approval is decided once and the
   payload journalled again, so the worker runs the approved step once.
3. The original message is updated through ``response_url``: who approved and,
   once the worker decided, what ran and its outcome. A refusal says why.

Built in ``create_app``; ``attach`` registers the route and the cleanup.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal
from urllib.parse import parse_qs

import httpx
import structlog
from aiohttp import web

from receiver.errors import AuthError, ForbiddenError, InputError
from receiver.model import json_objects
from receiver.retrying import poll_until
from receiver.settings import SlackSettings
from receiver.store.base import DecisionQuery, JournalEntry, Store
from receiver.web.approvals import Answer, ApprovalDesk, Approver, read_body
from receiver.web.routing import Routes

if TYPE_CHECKING:
    from receiver.model import JSONObject, JSONValue
    from receiver.web.openapi_schemas import Operations

log = structlog.get_logger("receiver.slack")

MAX_BODY = 64 * 1024  # Slack's interaction payloads are a few kilobytes
MAX_SKEW = timedelta(minutes=5)
SEEN_FOR = timedelta(minutes=15)  # longer than the skew Slack may replay within


@dataclass(frozen=True)
class Press:
    """One button press, parsed."""

    action: str
    approval_id: str
    user_id: str
    user_name: str
    response_url: str
    message: Mapping[str, JSONValue]


def verify_signature(
    secret: str, *, timestamp: str, signature: str, body: bytes, now: datetime
) -> None:
    """Raise ``AuthError`` unless Slack signed this body recently."""
    if not timestamp or not signature:
        raise AuthError(
            "missing X-Slack-Request-Timestamp or X-Slack-Signature; "
            "only Slack's signed interaction requests are accepted"
        )
    # Unix seconds as Slack sends them: a few ASCII digits (a longer number
    # cannot be compared with the clock, and int() would take "1_0" or " 1").
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
        raise AuthError("X-Slack-Request-Timestamp must be Unix seconds")
    sent = int(timestamp)
    if abs(now.timestamp() - sent) > MAX_SKEW.total_seconds():
        raise AuthError(
            "stale Slack request: its timestamp is more than 5 minutes from now "
            "(check the clock of this host)"
        )
    base = b"v0:" + timestamp.encode() + b":" + body
    expected = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    # A header may hold any bytes; Slack's signature is ASCII (v0= and hex).
    given = signature.encode("utf-8", "surrogatepass")
    if not hmac.compare_digest(expected.encode(), given):
        raise AuthError(
            "bad Slack signature: check RECEIVER_SLACK_SIGNING_SECRET against the "
            "Slack app's signing secret"
        )


def parse_press(body: bytes) -> Press:
    """The button press in a form-encoded ``payload=<json>`` body."""
    try:
        form = parse_qs(body.decode(), strict_parsing=True)
        payload = json.loads(form["payload"][0])
    except (UnicodeDecodeError, ValueError, KeyError) as exc:
        raise InputError(
            "send Slack's form-encoded interaction: payload=<JSON>"
        ) from exc
    if not isinstance(payload, dict) or payload.get("type") != "block_actions":
        raise InputError('only "block_actions" interactions are handled')
    actions = payload.get("actions")
    user = payload.get("user")
    if not isinstance(actions, list) or not actions or not isinstance(user, dict):
        raise InputError("a block_actions payload needs actions and a user")
    action = actions[0]
    if not isinstance(action, dict) or action.get("action_id") not in (
        "approve",
        "reject",
    ):
        raise InputError('the action must be the "approve" or "reject" button')
    message = payload.get("message")
    return Press(
        action=str(action["action_id"]),
        approval_id=str(action.get("value", ""))[:100],
        user_id=str(user.get("id", ""))[:100],
        user_name=str(user.get("username") or user.get("name") or "")[:100],
        response_url=str(payload.get("response_url", "")),
        message=message if isinstance(message, dict) else {},
    )


class SlackInteractions:
    """The ``/slack/interactions`` handler and its background message updates."""

    def __init__(
        self,
        *,
        slack: SlackSettings,
        store: Store,
        desk: ApprovalDesk,
        clock: Callable[[], datetime],
        client: httpx.AsyncClient,
        outcome_wait: timedelta = timedelta(minutes=2),
        poll_every: float = 0.2,
    ) -> None:
        secret = slack.signing_secret
        self._secret = secret.get_secret_value() if secret else ""
        self._users = dict(slack.approvers)
        self._store = store
        self._desk = desk
        self._clock = clock
        # Shared with the PagerDuty on-call look-up; closed at shutdown.
        self._client = client
        self._outcome_wait = outcome_wait
        self._poll_every = poll_every
        self._tasks: set[asyncio.Task[None]] = set()

    def attach(self, app: web.Application) -> None:
        """Register the route, and finish message updates at shutdown."""
        Routes(app.router).add_post("/slack/interactions", self.interactions)
        app.on_cleanup.append(self._cleanup)
        app[SLACK] = self

    async def _cleanup(self, _app: web.Application) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.aclose()

    async def idle(self) -> None:
        """Wait for every message update started so far (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ---------------------------------------------------------------- edge

    async def interactions(self, request: web.Request) -> web.Response:
        """POST /slack/interactions: verify, authorise, decide, update the message."""
        if not self._secret:
            raise ForbiddenError(
                "Slack interactions are not enabled: set RECEIVER_SLACK_SIGNING_SECRET"
            )
        body = await read_body(request, MAX_BODY)
        signature = request.headers.get("X-Slack-Signature", "")
        verify_signature(
            self._secret,
            timestamp=request.headers.get("X-Slack-Request-Timestamp", ""),
            signature=signature,
            body=body,
            now=self._clock(),
        )
        if await self._store.seen(
            f"slack.interaction.{signature}", SEEN_FOR, self._clock()
        ):
            log.warning("slack_interaction_replayed")
            raise web.HTTPConflict(
                text="this signed Slack request was already handled; "
                "a replay is never applied twice"
            )
        press = parse_press(body)
        answer = await self._decide(press)
        log.info(
            "slack_interaction_handled",
            approval=press.approval_id,
            action=press.action,
            slack_user=press.user_id,
            decided=answer.final,
        )
        self._update(press, answer)
        return web.json_response(
            {
                "response_type": "ephemeral",
                "replace_original": False,
                "text": answer.text,
                "decided": answer.final,
            }
        )

    # ------------------------------------------------------------- decision

    async def _decide(self, press: Press) -> Answer:
        """The answer for the person, and the re-journalled entry if one was."""
        person = self._users.get(press.user_id)
        if not person:
            return Answer(
                f"your Slack user {press.user_id} is not mapped to an approver; "
                "ask an admin to add it to RECEIVER_SLACK_APPROVERS"
            )
        action: Literal["approve", "reject"] = (
            "approve" if press.action == "approve" else "reject"
        )
        return await self._desk.decide(
            press.approval_id, action, Approver(person, verified=True), via="slack"
        )

    # ------------------------------------------------------------ the message

    def _update(self, press: Press, answer: Answer) -> None:
        if not press.response_url.startswith(("https://", "http://")):
            return
        task = asyncio.create_task(self._post_updates(press, answer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post_updates(self, press: Press, answer: Answer) -> None:
        if not answer.final:
            await self._post(
                press.response_url,
                {
                    "response_type": "ephemeral",
                    "replace_original": False,
                    "text": answer.text,
                },
            )
            return
        await self._post(press.response_url, self._replaced(press, answer.text))
        if answer.entry is None:
            return
        outcome = await self._outcome(press.approval_id, answer.entry)
        who = answer.text.split(";", 1)[0]
        await self._post(press.response_url, self._replaced(press, f"{who}; {outcome}"))

    def _replaced(self, press: Press, text: str) -> JSONObject:
        """The original message with this approval's buttons replaced by ``text``."""
        blocks: list[JSONValue] = [
            b
            for b in json_objects(press.message.get("blocks"))
            if b.get("block_id") != f"approval:{press.approval_id}"
        ]
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}}
        )
        return {
            "replace_original": True,
            "text": str(press.message.get("text", text))[:3000],
            "blocks": blocks[:50],
        }

    async def _outcome(self, approval_id: str, entry: JournalEntry) -> str:
        """What the worker decided for the approved step, once it has."""
        approval = await self._store.get_approval(approval_id)
        request = approval.request if approval else {}

        async def decided() -> tuple[bool, str]:
            records = await self._store.decisions(
                DecisionQuery(payload_id=entry.id, limit=50)
            )
            found = [_step_outcome(record, request) for record in records]
            outcome = next((text for text in found if text), "")
            return bool(outcome), outcome

        polled = await poll_until(
            decided, self._outcome_wait, self._poll_every, transient=lambda _exc: ""
        )
        if polled.done:
            return polled.last
        return (
            f"outcome not decided yet; see GET /api/v1/decisions?payload_id={entry.id}"
        )

    async def _post(self, url: str, body: Mapping[str, JSONValue]) -> None:
        try:
            response = await self._client.post(url, json=body)
        except httpx.HTTPError as exc:
            log.warning("slack_response_failed", error=type(exc).__name__)
            return
        if response.status_code != 200:
            log.warning("slack_response_failed", status=response.status_code)


def _step_outcome(
    record: Mapping[str, JSONValue], request: Mapping[str, JSONValue]
) -> str:
    for match in json_objects(record.get("matches")):
        if match.get("rule") != request.get("rule"):
            continue
        for step in json_objects(match.get("steps")):
            if step.get("type") == request.get("step") and step.get(
                "target"
            ) == request.get("target"):
                return f"ran: {step.get('decision')}: {step.get('reason', '')}"[:1500]
    return ""


def slack_paths() -> Operations:
    """The OpenAPI path of this module's route."""
    problem: JSONObject = {
        "description": "Rejected; the body says what to fix.",
        "content": {
            "application/problem+json": {
                "schema": {"$ref": "#/components/schemas/Problem"}
            }
        },
    }
    return {
        "/slack/interactions": {
            "post": {
                "summary": "Approve / Reject buttons pressed in Slack (signed by "
                "Slack: X-Slack-Signature, X-Slack-Request-Timestamp). Answers 200 "
                "with the text shown to the person, also when refused.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {
                            "schema": {
                                "type": "object",
                                "properties": {"payload": {"type": "string"}},
                                "required": ["payload"],
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "Handled; the text says what happened.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "400": problem,
                    "401": problem,
                    "403": problem,
                    "409": problem,
                },
            }
        }
    }


SLACK = web.AppKey("slack", SlackInteractions)
